"""Real-engine fixtures for the local stack: a throwaway project, the real CLI, real processes.

Each test module gets its own project directory (a copy of the repository's `Pulumi.yaml` and
`__main__.py`, a stack config with free gateway ports, and its own service file running the
project's example chat server), its own `file://` state backend and its own Pulumi home, so it
never touches the repository's `dev` stack or another test's ports. Commands run as subprocesses
exactly as a user runs them: `serveform ...` (the Automation API) or plain `pulumi ...` in the
project directory.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from serveform.components.local._process import free_port, port_accepts

ROOT = Path(__file__).resolve().parents[2]
CHAT_SERVER = ROOT / "stacks" / "examples" / "chat_server.py"
PASSPHRASE = "serveform-local-only"  # what the engine uses for local stacks (serveform.stacks.engine)
COMMAND_TIMEOUT_SECONDS = 300
_POLL_SECONDS = 0.1

SERVICE_TEMPLATE = """\
type: service
name: chat
env:
  - MODEL_NAME=chat-small
  - CHAT_TOKEN_DELAY_MS=1
  - CHAT_API_SECRET
commands:
  - python {chat_server} --port 8000
port: 8000
model:
  type: chat
  name: chat-small
  format: openai
probes:
  - type: http
    url: /health
    interval: {probe_interval}
replicas: {replicas}
{scaling}{volumes}"""

# A replica range needs a scaling policy (dstack refuses one without). A high target and long
# delays and window (the scaler never scales down before its window is full): the scaler runs
# but never moves these test stacks by itself; tests change the count through its config key.
SCALING_BLOCK = """\
scaling:
  metric: rps
  target: 1000
  scale_up_delay: 1h
  scale_down_delay: 1h
  window: 5m
"""


@dataclass
class LocalProject:
    """One throwaway project with one stack of the local backend."""

    root: Path
    stack: str
    http_port: int
    https_port: int
    env: dict[str, str] = field(default_factory=dict)
    secret: str = ""
    """The value of CHAT_API_SECRET, a bare env name the service takes from the deploying environment."""
    local_state_dir: Path | None = None
    """`serveform:local.state_dir` when the stack sets one (else the default under the project)."""

    # ---- running the CLI ------------------------------------------------------------------

    def serveform(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "serveform.cli", *args[:1], "--stack", self.stack, "--project-dir", str(self.root), *args[1:]]
        return self._run(argv)

    def pulumi(self, *args: str) -> subprocess.CompletedProcess[str]:
        pulumi = shutil.which("pulumi", path=self.env["PATH"])
        assert pulumi, "the Pulumi CLI is missing: tools/setup.sh builds it"
        return self._run([pulumi, *args, "--stack", self.stack, "--non-interactive"])

    def _run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_SECONDS)

    def ok(self, result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        assert result.returncode == 0, f"{result.args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        return result

    # ---- the stack ------------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self.local_state_dir or self.root / ".serveform" / "local" / self.stack

    def write_service(
        self, *, replicas: str | int = 2, probe_interval: str = "1s", volume: str | None = None, text: str | None = None
    ) -> None:
        """Write `chat.dstack.yml`: the template, or `text` as is. `volume` mounts that network volume at /data."""
        scaling = SCALING_BLOCK if ".." in str(replicas) else ""
        volumes = f"volumes:\n  - name: {volume}\n    path: /data\n" if volume else ""
        body = text if text is not None else SERVICE_TEMPLATE.format(
            chat_server=CHAT_SERVER, replicas=replicas, probe_interval=probe_interval, scaling=scaling, volumes=volumes
        )
        (self.root / "chat.dstack.yml").write_text(body)

    def endpoints(self) -> dict[str, Any]:
        return json.loads(self.ok(self.serveform("endpoints", "--json")).stdout)

    def resources(self) -> list[dict[str, Any]]:
        """The stack's resources as `pulumi stack export` shows them (secrets stay encrypted)."""
        exported = json.loads(self.ok(self.pulumi("stack", "export")).stdout)
        return exported["deployment"].get("resources") or []

    def snapshot(self) -> list[tuple[str, str | None, dict[str, Any]]]:
        """(urn, id, plain outputs) of every resource: what "no change" must leave equal."""
        return [
            (r["urn"], r.get("id"), {k: v for k, v in (r.get("outputs") or {}).items() if not _is_secret(v)})
            for r in self.resources()
        ]

    def daemons(self) -> dict[str, dict[str, Any]]:
        """Logical name → plain outputs of the stack's daemons (gateway, scaler)."""
        return {
            r["urn"].rsplit("::", 1)[-1]: {k: v for k, v in r["outputs"].items() if not _is_secret(v)}
            for r in self.resources()
            if r["type"].endswith("serveform-local:Daemon")
        }

    def replicas(self) -> dict[str, dict[str, Any]]:
        """Logical name → plain outputs of every replica resource in the state.

        Secret outputs are left out: their ciphertext changes whenever the state is written.
        """
        return {
            r["urn"].rsplit("::", 1)[-1]: {k: v for k, v in r["outputs"].items() if not _is_secret(v)}
            for r in self.resources()
            if r["type"].endswith("serveform-local:Replica")
        }

    # ---- talking to the gateway -----------------------------------------------------------

    def client(self, host: str, *, token: str | None, ca_cert: str | None, timeout: float = 30.0) -> httpx.Client:
        """An HTTP client that reaches `https://<host>` through the gateway's loopback port.

        Not every resolver maps `*.localhost` to loopback, so the client connects to 127.0.0.1
        and keeps `host` for SNI and the Host header, as the certificate and the routes expect.
        """
        port = self.https_port if ca_cert else self.http_port
        scheme = "https" if ca_cert else "http"
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(
            base_url=f"{scheme}://{host}:{port}",
            headers=headers,
            transport=_LoopbackTransport(verify=_verify(ca_cert)),
            timeout=timeout,
        )


    def openai_client(self, endpoints: dict[str, Any]):
        """The `openai` client on the stack's OpenAI-compatible endpoint, with the stack's token."""
        import openai

        ca_cert = endpoints["gateway"]["ca_cert"]
        return openai.OpenAI(
            base_url=endpoints["openai_base_url"],
            api_key=endpoints["token"],
            http_client=httpx.Client(transport=_LoopbackTransport(verify=_verify(ca_cert)), timeout=30.0),
            max_retries=0,
        )

    # Helpers, here so that test modules reach them through the fixture.
    wait_for = staticmethod(lambda *a, **k: wait_for(*a, **k))
    serving_replicas = staticmethod(lambda *a, **k: serving_replicas(*a, **k))
    processes_mentioning = staticmethod(lambda *a, **k: processes_mentioning(*a, **k))
    port_accepts = staticmethod(port_accepts)

    def holds_port(self, port: int) -> bool:
        """True while a process of this project listens on `port`.

        Not "the port accepts connections": on a busy machine another program may take a freed
        port within moments, and that one is not ours to answer for.
        """
        return bool(listening_pids(port) & set(processes_mentioning(str(self.root))))


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and "ciphertext" in value


def _verify(ca_cert: str | None) -> ssl.SSLContext | bool:
    return ssl.create_default_context(cafile=ca_cert) if ca_cert else False


class _LoopbackTransport(httpx.HTTPTransport):
    def handle_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.host
        request.extensions["sni_hostname"] = host
        request.headers["Host"] = host if request.url.port is None else f"{host}:{request.url.port}"
        request.url = request.url.copy_with(host="127.0.0.1")
        return super().handle_request(request)


def wait_for(predicate, timeout_seconds: float, what: str) -> None:
    """Poll until `predicate()` is truthy; fail naming `what` when the deadline passes."""
    deadline = time.monotonic() + timeout_seconds
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception as exc:  # noqa: BLE001 - reported when the deadline passes
            last = exc
        time.sleep(_POLL_SECONDS)
    raise AssertionError(f"timed out after {timeout_seconds}s waiting for {what}" + (f" (last error: {last!r})" if last else ""))


def serving_replicas(client: httpx.Client, requests: int = 40) -> set[str]:
    """The distinct replicas (`X-Replica`) that answer `requests` requests through the gateway."""
    seen = set()
    for _ in range(requests):
        response = client.get("/health")
        if response.status_code == 200:
            seen.add(response.headers["x-replica"])
    return seen


def processes_mentioning(text: str) -> list[int]:
    """Live (non-zombie) processes whose command line or working directory mentions `text`."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            cwd = os.readlink(Path(entry.path, "cwd"))
            state = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, PermissionError, ProcessLookupError):
            continue
        if state != "Z" and (text in cmdline or cwd.startswith(text)):
            found.append(int(entry.name))
    return found


def listening_pids(port: int) -> set[int]:
    """Pids of the processes holding a listening TCP socket on `port` (any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                inodes.add(fields[9])
    pids = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"{entry.path}/fd"):
                link = os.readlink(fd.path)
                if link.startswith("socket:[") and link[8:-1] in inodes:
                    pids.add(int(entry.name))
        except (FileNotFoundError, PermissionError, ProcessLookupError, NotADirectoryError):
            continue
    return pids


def make_project(base: Path, stack: str) -> LocalProject:
    root = base / "project"
    (root / "stacks").mkdir(parents=True)
    pulumi_yaml = (ROOT / "Pulumi.yaml").read_text().replace("virtualenv: .venv", f"virtualenv: {Path(sys.prefix)}")
    (root / "Pulumi.yaml").write_text(pulumi_yaml)
    shutil.copy(ROOT / "__main__.py", root / "__main__.py")
    http_port, https_port = free_port(), free_port()
    config = {
        "config": {
            "serveform:backend": "local",
            "serveform:domain": "localhost",
            "serveform:services": ["chat.dstack.yml"],
            "serveform:gateway": {"tls": "internal", "http_port": http_port, "https_port": https_port, "replica_wait_seconds": 30},
            "serveform:retainVolumes": False,
        }
    }
    (root / "stacks" / f"Pulumi.{stack}.yaml").write_text(json.dumps(config, indent=2) + "\n")
    (base / "backend").mkdir()
    bin_dir = str(Path(sys.executable).parent)
    secret = "chat-secret-" + secrets.token_hex(16)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "SERVEFORM_"))},
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PULUMI_BACKEND_URL": (base / "backend").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_SKIP_UPDATE_CHECK": "1",
        "PULUMI_PYTHON_CMD": sys.executable,
        "PULUMI_HOME": str(base / "pulumi-home"),
        "SERVEFORM_PROJECT_DIR": str(root),
        "CHAT_API_SECRET": secret,
    }
    project = LocalProject(root=root, stack=stack, http_port=http_port, https_port=https_port, env=env, secret=secret)
    project.write_service()
    return project


def make_dev_project(base: Path) -> LocalProject:
    """A copy of the repository's `dev` stack (its config and example services), on free ports.

    Only the gateway's ports change (the real ones, 8080/8443, may be in use by `make up`);
    everything else is the reviewed `stacks/Pulumi.dev.yaml` as `make up` deploys it.
    """
    import yaml

    project = make_project(base, "dev")
    (project.root / "chat.dstack.yml").unlink()
    shutil.copytree(ROOT / "stacks" / "examples", project.root / "stacks" / "examples")
    config = yaml.safe_load((ROOT / "stacks" / "Pulumi.dev.yaml").read_text())
    config.pop("encryptionsalt", None)  # the copy gets its own, from its own passphrase
    gateway = dict(config["config"].get("serveform:gateway") or {})
    gateway.update(http_port=project.http_port, https_port=project.https_port)
    config["config"]["serveform:gateway"] = gateway
    (project.root / "stacks" / "Pulumi.dev.yaml").write_text(yaml.safe_dump(config))
    return project


@pytest.fixture(scope="module")
def local_project() -> Iterator[LocalProject]:
    """A fresh project; whatever a test module leaves deployed is destroyed at the end.

    It lives in a short /tmp path rather than pytest's deep one: the gateway keeps unix sockets
    in its state directory, and a socket path may not exceed 107 bytes.
    """
    base = Path(tempfile.mkdtemp(prefix="sf-"))
    project = make_project(base, "itest")
    yield project
    _clean_up(base, project)


def _clean_up(base: Path, project: LocalProject) -> None:
    if project.state_dir.exists() or processes_mentioning(str(project.root)):
        project.pulumi("destroy", "--yes")
    for pid in processes_mentioning(str(project.root)):  # last resort, so CI never keeps strays
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def local_project_factory() -> Iterator:
    """Makes projects (`dev=True`: a copy of the repository's dev stack); cleans them all up."""
    made: list[tuple[Path, LocalProject]] = []

    def make(*, dev: bool = False, stack: str = "itest") -> LocalProject:
        base = Path(tempfile.mkdtemp(prefix="sf-"))
        project = make_dev_project(base) if dev else make_project(base, stack)
        made.append((base, project))
        return project

    yield make
    for base, project in made:
        _clean_up(base, project)
