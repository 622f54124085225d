"""The service's code on k8s-local's real node: a service whose command runs a file of its
repository serves (its `files` target outside /workflow too), an unchanged tree changes nothing,
and a code change rolls the pod onto the new code. Real containers of the runtime image; checked
through the gateway (TLS, token) and the Kubernetes API.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _k8s_local import K8sLocal, poll
from kubernetes import client as k8s_client

from serveform.stacks.engine import Engine

pytestmark = pytest.mark.timeout(2400)

TOKEN = "gateway-token-SECRET-real-code-5d2e-91b0c7"
PASSPHRASE = "k8s-local-real-code-passphrase"
DOMAIN = "code.test"
CA_PATH = "/var/lib/serveform-gateway/state/caddy/pki/authorities/local/root.crt"
READY_TIMEOUT_SECONDS = 240

SERVER = """\
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        text = Path("version.txt").read_text().strip() + " " + Path("/etc/greeting/greeting.txt").read_text().strip()
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


HTTPServer(("0.0.0.0", int(os.environ.get("PORT", "8000"))), Handler).serve_forever()
"""

SERVICE = """\
type: service
name: web
python: "3.11"
working_dir: app
commands:
  - python server.py
port: 8000
files:
  - ../greeting.txt:/etc/greeting/greeting.txt
probes:
  - type: http
    url: /health
    interval: 2s
replicas: 1
resources:
  cpu: 1..
  memory: 256MB..
"""


def _git(root: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, env=env)


class Stack:
    def __init__(self, engine: Engine, namespace: str, core: k8s_client.CoreV1Api, apps: k8s_client.AppsV1Api, base: Path) -> None:
        self.engine, self.namespace, self.core, self.apps, self.base = engine, namespace, core, apps, base
        self.ca_file = base / "gateway-ca.crt"
        self.address = ""

    def ready_pods(self, name: str) -> list:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=f"app.kubernetes.io/name={name}").items
        return [
            p for p in pods
            if p.metadata.deletion_timestamp is None and p.status.phase == "Running"
            and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
        ]

    def refresh_ca(self) -> None:
        from kubernetes.stream import stream

        pod = self.ready_pods("gateway")[0]
        text = stream(self.core.connect_get_namespaced_pod_exec, pod.metadata.name, self.namespace,
                      command=["cat", CA_PATH], stderr=True, stdin=False, stdout=True, tty=False)
        assert "BEGIN CERTIFICATE" in text, text
        self.ca_file.write_text(text)

    def body(self) -> str | None:
        """GET https://web.<domain>/ through the gateway's load balancer address, with the token."""
        try:
            transport = httpx.HTTPTransport(verify=str(self.ca_file))
            with httpx.Client(base_url=f"https://web.{DOMAIN}", mounts={f"all://web.{DOMAIN}": transport}, timeout=15) as client:
                response = client.get("/", headers={"Authorization": f"Bearer {TOKEN}"})
            return response.text if response.status_code == 200 else None
        except httpx.HTTPError:
            return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, k8s_local_real_node: K8sLocal) -> Iterator[Stack]:
    from kubernetes import config as k8s_config
    from pulumi import automation as auto

    k8s_local = k8s_local_real_node
    kube = k8s_config.new_client_from_config(config_file=str(k8s_local.kubeconfig), context=k8s_local.context)
    saved = dict(os.environ)
    base = tmp_path_factory.mktemp("real-code")
    root = base / "project"
    (root / "app").mkdir(parents=True)
    (root / "stacks").mkdir()
    (root / "Pulumi.yaml").write_text("name: serveform\nruntime: python\nstackConfigDir: stacks\n")
    (root / "__main__.py").write_text("from serveform.components.program import run\n\nrun()\n")
    (root / "app" / "server.py").write_text(SERVER)
    (root / "app" / "version.txt").write_text("v1\n")
    (root / "web.dstack.yml").write_text(SERVICE)
    (root / ".gitignore").write_text(".serveform/\n")
    (base / "greeting.txt").write_text("hello from files\n")
    namespace = f"sf-code-{os.getpid()}"
    config = {
        "serveform:backend": "k8s",
        "serveform:domain": DOMAIN,
        "serveform:services": ["web.dstack.yml"],
        "serveform:gateway": {"tls": "internal"},
        "serveform:k8s": {
            "kubeconfig": str(k8s_local.kubeconfig),
            "context": k8s_local.context,
            "namespace": namespace,
            "rollout_timeout_seconds": READY_TIMEOUT_SECONDS,
            "python_image": "runtime",
            "cpu_request_fraction": 0.1,
        },
    }
    (root / "stacks" / "Pulumi.k8s.yaml").write_text(json.dumps({"config": config}, indent=2))
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-q", "-m", "web")
    (base / "state").mkdir()
    os.environ["PULUMI_BACKEND_URL"] = (base / "state").as_uri()
    os.environ["PULUMI_CONFIG_PASSPHRASE"] = PASSPHRASE
    os.environ["PULUMI_HOME"] = str(base / "pulumi-home")
    os.environ.pop("KUBECONFIG", None)
    lines: list[str] = []
    engine = Engine(stack="k8s", project=root, on_output=lines.append)
    engine.stack_obj.set_config("serveform:tokens[0]", auto.ConfigValue(TOKEN, secret=True), path=True)
    state = Stack(engine, namespace, k8s_client.CoreV1Api(kube), k8s_client.AppsV1Api(kube), base)
    state.lines = lines  # type: ignore[attr-defined]
    state.root = root  # type: ignore[attr-defined]
    original_getaddrinfo = socket.getaddrinfo
    try:
        assert engine.up().summary.result == "succeeded", "\n".join(lines[-40:])
        state.address = engine.outputs()["gateway_address"]

        def resolve(host, *args, **kwargs):
            name = host.decode() if isinstance(host, bytes) else host
            if isinstance(name, str) and name.rstrip(".").endswith(DOMAIN):
                return original_getaddrinfo(state.address, *args, **kwargs)
            return original_getaddrinfo(host, *args, **kwargs)

        socket.getaddrinfo = resolve
        poll(lambda: state.ready_pods("gateway"), timeout_seconds=READY_TIMEOUT_SECONDS, what="gateway pod Ready")
        state.refresh_ca()
        yield state
    finally:
        socket.getaddrinfo = original_getaddrinfo
        try:
            engine.destroy()
        except Exception as exc:  # the test's own failure is the one to report
            print(f"destroy: {exc}", file=sys.stderr)
        os.environ.clear()
        os.environ.update(saved)


def _web_pod(stack: Stack):
    (pod,) = poll(lambda: stack.ready_pods("web"), timeout_seconds=READY_TIMEOUT_SECONDS, what="web pod Ready")
    return pod


def test_the_pod_runs_the_repository_file_unpacked_by_its_init_container_and_serves(stack: Stack) -> None:
    pod = _web_pod(stack)
    (init,) = pod.status.init_container_statuses
    assert init.name == "code" and init.state.terminated.exit_code == 0
    sha256 = pod.metadata.annotations["serveform.dev/code-sha256"]
    secret = stack.core.read_namespaced_secret(f"web-code-{sha256[:12]}", stack.namespace)
    assert secret.immutable is True
    poll(lambda: stack.body() == "v1 hello from files", timeout_seconds=120, what="web serving its repository's file through the gateway")

    # An unchanged tree: the same archive, the same Secret, Deployment and pod.
    deployment = stack.apps.read_namespaced_deployment("web", stack.namespace)
    result = stack.engine.up()
    assert result.summary.result == "succeeded"
    assert set(result.summary.resource_changes or {}) <= {"same", "read"}, result.summary.resource_changes
    again = stack.apps.read_namespaced_deployment("web", stack.namespace)
    assert again.metadata.generation == deployment.metadata.generation
    assert stack.core.read_namespaced_secret(f"web-code-{sha256[:12]}", stack.namespace).metadata.uid == secret.metadata.uid
    assert _web_pod(stack).metadata.uid == pod.metadata.uid


def test_a_code_change_rolls_the_pod_onto_the_new_code(stack: Stack) -> None:
    old = _web_pod(stack)
    old_sha = old.metadata.annotations["serveform.dev/code-sha256"]
    (stack.root / "app" / "version.txt").write_text("v2\n")  # type: ignore[attr-defined]
    assert stack.engine.up().summary.result == "succeeded", "\n".join(stack.lines[-40:])  # type: ignore[attr-defined]
    new = poll(lambda: [p for p in stack.ready_pods("web") if p.metadata.uid != old.metadata.uid], timeout_seconds=READY_TIMEOUT_SECONDS,
               what="a new web pod Ready")[0]
    new_sha = new.metadata.annotations["serveform.dev/code-sha256"]
    assert new_sha != old_sha
    poll(lambda: stack.body() == "v2 hello from files", timeout_seconds=120, what="web serving the new code")
    names = {s.metadata.name for s in stack.core.list_namespaced_secret(stack.namespace).items}
    assert f"web-code-{new_sha[:12]}" in names and f"web-code-{old_sha[:12]}" not in names  # the old archive went with its pods
