"""An operator's commands on a k8s-local stack, through the `serveform` CLI as a person runs it.

`up` on a terminal shows its progress line; `status` reads the Deployments' ready replicas and
the pods' restart counts through the Kubernetes API, and names the gateway as unreachable (kwok
runs no container, so nothing answers behind the LoadBalancer address); `logs` asks the API for
the pods' logs — k8s-local's kwok nodes serve none, and the command must say so, naming the pod
the API listed; `destroy` refuses without a terminal, lists the volume it deletes, then goes.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _k8s_local import K8sLocal, poll
from kubernetes import client as k8s_client

pytestmark = pytest.mark.timeout(1800)

PASSPHRASE = "k8s-local-ops-passphrase"
CHAT = """\
type: service
name: chat
image: python:3.11-slim
commands:
  - python -m http.server 8000
port: 8000
probes:
  - type: http
    url: /
replicas: 2..3
scaling:
  metric: rps
  target: 10
volumes:
  - name: cache
    path: /cache
"""


def _project(root: Path, k8s_local: K8sLocal, namespace: str) -> dict[str, str]:
    (root / "services").mkdir(parents=True)
    (root / "stacks").mkdir()
    (root / "state").mkdir()
    (root / "Pulumi.yaml").write_text("name: serveform\nruntime: python\nstackConfigDir: stacks\n")
    (root / "__main__.py").write_text("from serveform.components.program import run\n\nrun()\n")
    (root / "services" / "chat.dstack.yml").write_text(CHAT)
    config = {
        "serveform:backend": "k8s",
        "serveform:domain": "ops.test",
        "serveform:services": ["services/chat.dstack.yml"],
        "serveform:retainVolumes": False,
        "serveform:gateway": {"tls": "internal"},
        "serveform:k8s": {
            "kubeconfig": str(k8s_local.kubeconfig),
            "context": k8s_local.context,
            "namespace": namespace,
            "volume_host_path": str(root / "volumes"),
            "volume_size_gb": 1,
            "rollout_timeout_seconds": 120,
            "image": "serveform:test",  # never pulled: kwok runs no container
        },
    }
    (root / "stacks" / "Pulumi.k8s.yaml").write_text(json.dumps({"config": config}, indent=2))
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "SERVEFORM_"))},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PULUMI_BACKEND_URL": (root / "state").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE,
        "PULUMI_HOME": str(root / "pulumi-home"),
        "PULUMI_SKIP_UPDATE_CHECK": "1",
    }


def _argv(root: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "serveform.cli", args[0], "--stack", "k8s", "--project-dir", str(root), *args[1:]]


def _run(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_argv(root, *args), cwd=root, env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)


def _on_pty(root: Path, env: dict[str, str], *args: str, timeout: float = 600) -> tuple[int, str]:
    master, slave = pty.openpty()
    proc = subprocess.Popen(_argv(root, *args), cwd=root, env=env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.2)[0]:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def test_up_status_logs_and_destroy_on_k8s_local(tmp_path: Path, k8s_local: K8sLocal, kube) -> None:
    namespace = f"sf-ops-{os.getpid()}"
    root = tmp_path / "project"
    env = _project(root, k8s_local, namespace)
    apps, core = k8s_client.AppsV1Api(kube), k8s_client.CoreV1Api(kube)
    try:
        code, screen = _on_pty(root, env, "up", "--yes")
        assert code == 0, screen
        assert "\r\x1b[K" in screen and "resources done" in screen and "serveform up: succeeded:" in screen
        frames = [f for f in screen.split("\r\x1b[K") if " · waiting on " in f]
        assert any("chat-deployment" in f or "deployment" in f for f in frames), frames[-5:]

        poll(lambda: (apps.read_namespaced_deployment("chat", namespace).status.ready_replicas or 0) == 2,
             timeout_seconds=60, what="chat ready on kwok")
        result = _run(root, env, "status", "--json")
        assert result.returncode == 0, result.stderr
        status = json.loads(result.stdout)
        assert status["backend"] == "k8s" and status["kubernetes"] == {"namespace": namespace, "reachable": True, "error": None}
        assert status["last_update"]["kind"] == "update" and status["last_update"]["result"] == "succeeded"
        (chat,) = status["services"]
        assert chat["replicas"] == {"min": 2, "max": 3, "desired": 2, "published": 2, "ready": 2, "restarts": 0}
        pods = sorted(p.metadata.name for p in core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=chat").items)
        assert [d["pod"] for d in chat["replica_details"]] == pods
        assert all(d["phase"] == "Running" and d["ready"] for d in chat["replica_details"])
        # The gateway's address is exported (k8s-local's balancer gives each LoadBalancer Service its
        # own loopback address), but no gateway process answers there on kwok.
        address = status["gateway"]["address"]
        assert address.startswith("127.") and address.endswith(":443") and status["gateway"]["reachable"] is False
        assert status["gateway"]["error"].startswith(f"unreachable: https://gateway.ops.test at {address}: ")
        assert "runs in the cluster" in status["scaler"]["error"]
        table = _run(root, env, "status").stdout
        assert "gateway status unreachable:" in table
        assert next(line for line in table.splitlines() if line.startswith("chat ")).split()[3:8] == ["2", "[2..3]", "2", "2", "0"]

        # logs: the API path (Deployment -> selector -> pods -> pods/log); kwok nodes serve no logs.
        logs = _run(root, env, "logs", "chat", "--replica", "1")
        assert logs.returncode == 1, logs.stdout + logs.stderr
        assert f"pod {namespace}/{pods[1]} (node kwok-cpu-0, Running): the Kubernetes API gave no logs" in logs.stderr, logs.stderr
        assert "node kwok-cpu-0 is simulated by kwok (k8s-local): its pods run no container" in logs.stderr
        gateway_logs = _run(root, env, "logs", "gateway")
        assert gateway_logs.returncode == 1 and f"pod {namespace}/gateway-" in gateway_logs.stderr, gateway_logs.stderr
        assert _run(root, env, "logs", "chat", "--replica", "5").returncode == 2

        # destroy: refused without a terminal, the volume named; then --yes.
        refused = _run(root, env, "destroy")
        assert refused.returncode == 2 and "stdin is not a terminal" in refused.stderr
        assert "cache-volume" in refused.stdout and "DELETED" in refused.stdout
        assert apps.read_namespaced_deployment("chat", namespace).spec.replicas == 2
        destroyed = _run(root, env, "destroy", "--yes")
        assert destroyed.returncode == 0, destroyed.stderr
        assert json.loads(_run(root, env, "status", "--json").stdout)["deployed"] is False
    finally:
        if (root / "state" / ".pulumi").exists():
            _run(root, env, "destroy", "--yes")
