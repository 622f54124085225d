"""k8s-local with its real node: start times, `up` to the first served request, a load step, memory.

    .venv/bin/python bench/k8s_local.py            # as root (the real node); ~5 minutes

Prints, from one run in a directory of its own (a k8s-local the user has running is not touched):

- build check: `tools/k8s/build.sh all` with everything cached;
- cold start: `start` in a fresh directory (containerd empty: the runtime and pause images are
  imported), and cached start: `stop` then `start` again in the same directory (images kept);
- `up` to first served request: the chat example deployed as in tests/k8s/test_real_pods.py, from
  the start of `up` to the first 200 through the gateway pod;
- load step to a new pod serving: locust at ~8 rps against a 5 rps target, until the scaler pod's
  in-cluster `up` has a second chat pod answering;
- RSS of the whole cluster once the stack is up: every k8s-local process, the node's daemons,
  containerd's shims and the pods' containers (the node's cgroups), and their sum;
- stop.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
K8S_LOCAL = ROOT / "tools" / "k8s-local.sh"
TOKEN = "bench-token-k8s-local-3f0e9a7c1b5d2468"
DOMAIN = "k8s.bench"
LOAD_SECONDS_LIMIT = 420
STEP_TIMEOUT_SECONDS = 420


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cluster_pids(directory: Path) -> dict[str, int]:
    """Every process of the cluster: pid files, plus whatever lives in the node's namespaces and cgroups."""
    found: dict[str, int] = {}
    for folder in (directory / "pids", directory / "node" / "pids"):
        for path in folder.glob("*.pid"):
            found[path.stem] = int(path.read_text())
    holder = found.get("holder")
    mount_ns = os.readlink(f"/proc/{holder}/ns/mnt") if holder else None
    known = set(found.values())
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in known:
            continue
        try:
            cgroup = (proc / "cgroup").read_text()
            in_node = mount_ns and os.readlink(proc / "ns" / "mnt") == mount_ns
        except OSError:
            continue
        if in_node or "/serveform-" in cgroup and "kubepods" in cgroup:
            name = (proc / "comm").read_text().strip()
            found[f"{name}[{proc.name}]"] = int(proc.name)
    return found


def _run(argv: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def _serving_once(address: str, ca: Path, host: str) -> bool:
    import httpx

    original = socket.getaddrinfo
    socket.getaddrinfo = lambda h, *a, **k: original(address if str(h).endswith(DOMAIN) else h, *a, **k)
    try:
        with httpx.Client(verify=str(ca), timeout=5) as client:
            return client.get(f"https://{host}/ping", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    except (httpx.HTTPError, OSError):
        return False
    finally:
        socket.getaddrinfo = original


def _read_ca(core, namespace: str, path: Path) -> bool:
    from kubernetes.stream import stream

    pods = [p for p in core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=gateway").items
            if p.status.phase == "Running"]
    if not pods:
        return False
    try:
        text = stream(core.connect_get_namespaced_pod_exec, pods[0].metadata.name, namespace,
                      command=["cat", "/var/lib/serveform-gateway/state/caddy/pki/authorities/local/root.crt"],
                      stderr=True, stdin=False, stdout=True, tty=False)
    except Exception:
        return False
    if "BEGIN CERTIFICATE" not in text:
        return False
    path.write_text(text)
    return True


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.5)
    raise SystemExit(f"bench: {what} not reached in {timeout:.0f} s")


def main() -> int:
    if os.geteuid() != 0:
        print("bench/k8s_local.py: the real node needs root", file=sys.stderr)
        return 2
    from kubernetes import client as k8s_client
    from kubernetes import config as k8s_config
    from pulumi import automation as auto

    from serveform.stacks.engine import Engine

    results: list[tuple[str, str]] = []
    with tempfile.TemporaryDirectory(prefix="k8s-local-bench-") as tmp:
        directory = Path(tmp) / "cluster"
        env = {**os.environ, "K8S_LOCAL_DIR": str(directory), "PYTHON": sys.executable}
        results.append(("build check (cached)", f"{_run([str(ROOT / 'tools' / 'k8s' / 'build.sh'), 'all'], env):.2f} s"))
        try:
            results.append(("cold start (fresh directory, images imported)", f"{_run([str(K8S_LOCAL), 'start'], env):.1f} s"))
            _run([str(K8S_LOCAL), "stop"], env)
            results.append(("cached start (images kept)", f"{_run([str(K8S_LOCAL), 'start'], env):.1f} s"))

            printed = subprocess.run([str(K8S_LOCAL), "env"], env=env, check=True, capture_output=True, text=True).stdout
            state_env = dict(line.replace("'", "").split("=", 1) for line in printed.splitlines() if "=" in line)
            project = Path(tmp) / "project"
            (project / "services").mkdir(parents=True)
            (project / "stacks").mkdir()
            (project / "Pulumi.yaml").write_text("name: serveform\nruntime: python\nstackConfigDir: stacks\n")
            (project / "__main__.py").write_text("from serveform.components.program import run\n\nrun()\n")
            chat = (ROOT / "stacks" / "examples" / "chat.dstack.yml").read_text()
            for old, new in (("replicas: 1..3", "replicas: 1..2"), ("target: 10", "target: 5"),
                             ("scale_up_delay: 30s", "scale_up_delay: 5s"),
                             ("scale_down_delay: 60s", "scale_down_delay: 10s\n  window: 30s")):
                chat = chat.replace(old, new)
            (project / "services" / "chat.dstack.yml").write_text(chat)
            # The project is the repository shipped to /workflow: the chat server travels in it.
            (project / "stacks" / "examples").mkdir()
            (project / "stacks" / "examples" / "chat_server.py").write_text((ROOT / "stacks" / "examples" / "chat_server.py").read_text())
            namespace = "bench"
            config = {
                "serveform:backend": "k8s", "serveform:domain": DOMAIN,
                "serveform:services": ["services/chat.dstack.yml"], "serveform:retainVolumes": False,
                "serveform:gateway": {"tls": "internal"},
                "serveform:k8s": {"kubeconfig": str(directory / "kubeconfig"), "context": "k8s-local",
                                  "namespace": namespace, "rollout_timeout_seconds": 300,
                                  "python_image": "runtime", "cpu_request_fraction": 0.1},
            }
            (project / "stacks" / "Pulumi.k8s.yaml").write_text(json.dumps({"config": config}))
            os.environ.update(state_env)
            os.environ["PULUMI_CONFIG_PASSPHRASE"] = "bench-passphrase"
            os.environ["PULUMI_HOME"] = str(Path(tmp) / "pulumi-home")
            engine = Engine(stack="k8s", project=project, on_output=lambda line: None)
            engine.stack_obj.set_config("serveform:tokens[0]", auto.ConfigValue(TOKEN, secret=True), path=True)
            kube = k8s_config.new_client_from_config(config_file=str(directory / "kubeconfig"), context="k8s-local")
            core, apps = k8s_client.CoreV1Api(kube), k8s_client.AppsV1Api(kube)
            ca = Path(tmp) / "ca.crt"
            t0 = time.monotonic()
            engine.up()
            address = engine.outputs()["gateway_address"]
            _wait(lambda: _read_ca(core, namespace, ca), STEP_TIMEOUT_SECONDS, "the gateway's CA")
            _wait(lambda: _serving_once(address, ca, f"chat.{DOMAIN}"), STEP_TIMEOUT_SECONDS, "the first served request")
            results.append(("up to first served request", f"{time.monotonic() - t0:.1f} s"))

            pids = _cluster_pids(directory)
            rss = {name: _rss_kb(pid) for name, pid in pids.items()}
            load_env = {**os.environ, "SERVEFORM_LOAD_URL": f"https://chat.{DOMAIN}", "SERVEFORM_LOAD_TOKEN": TOKEN,
                        "SERVEFORM_LOAD_CA": str(ca), "SERVEFORM_LOAD_RPS_PER_USER": "4",
                        "SERVEFORM_LOAD_RESOLVE": f"chat.{DOMAIN}={address}"}
            t0 = time.monotonic()
            load = subprocess.Popen(
                [sys.executable, "-m", "locust", "-f", str(ROOT / "tests" / "load" / "locustfile.py"), "PlainUser",
                 "--headless", "-u", "2", "-r", "2", "-t", f"{LOAD_SECONDS_LIMIT}s", "--only-summary"],
                env=load_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                def two_serving() -> bool:
                    pods = [p for p in core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=chat").items
                            if p.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])]
                    return len(pods) == 2
                _wait(two_serving, STEP_TIMEOUT_SECONDS, "a second chat pod serving")
                results.append(("load step to a new pod serving", f"{time.monotonic() - t0:.1f} s"))
            finally:
                load.send_signal(signal.SIGINT)
                try:
                    load.wait(30)
                except subprocess.TimeoutExpired:
                    load.kill()
            apps.patch_namespaced_deployment_scale("scaler", namespace, {"spec": {"replicas": 0}})
            _wait(lambda: not core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=serveform-scaler").items,
                  120, "the scaler pod gone")
            engine.destroy()
        finally:
            t0 = time.monotonic()
            subprocess.run([str(K8S_LOCAL), "stop"], env=env, check=False)
            results.append(("stop", f"{time.monotonic() - t0:.1f} s"))
    for step, value in results:
        print(f"{step}: {value}")
    if "rss" in locals():
        for name, kb in sorted(rss.items(), key=lambda item: -item[1]):
            print(f"RSS {name}: {kb / 1024:.0f} MiB")
        print(f"RSS whole cluster with the chat stack up: {sum(rss.values()) / 1024:.0f} MiB ({len(rss)} processes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
