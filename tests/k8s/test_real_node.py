"""k8s-local's real node on its own: start, run a pod, stop, and nothing is left on the host.

A cluster of its own (its own directory, so it coexists with the session's cluster the other
tests use, which is a check in itself: the two nodes have their own namespaces, subnets and
loopback addresses). A pod of the runtime image runs on the real node (never pulled: imported)
and, from inside the cluster, resolves a Service through CoreDNS and reaches the API server
through the `kubernetes` Service (kube-proxy's rules). Then `stop` must leave no process, mount,
network namespace, veth, cgroup, route or iptables rule, and the host's iptables rules are
exactly what they were before `start`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from _k8s_local import K8S_LOCAL, NODE_PROCESSES, PROCESSES, alive, pids, poll
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

pytestmark = pytest.mark.timeout(1800)

START_TIMEOUT_SECONDS = 45 * 60
POD_TIMEOUT_SECONDS = 120


def _host_state() -> dict[str, str]:
    run = lambda *argv: subprocess.run(argv, capture_output=True, text=True).stdout  # noqa: E731
    return {
        "iptables": "\n".join(line for line in run("iptables-save").splitlines() if not line.startswith("#") and not line.startswith(":")),
        "netns": run("ip", "netns", "list"),
        "routes": run("ip", "route"),
    }


def test_a_pod_runs_on_the_real_node_and_stop_leaves_nothing(tmp_path: Path) -> None:
    from serveform.image import image_ref

    directory = tmp_path / "k8s-local"
    env = {**os.environ, "K8S_LOCAL_DIR": str(directory), "PYTHON": sys.executable}
    before = _host_state()
    started = subprocess.run([str(K8S_LOCAL), "start"], env=env, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS)
    started_pids = pids(directory)
    try:
        assert started.returncode == 0, started.stderr[-4000:]
        assert set(started_pids) == set(PROCESSES) | set(NODE_PROCESSES), started_pids
        kube = k8s_config.new_client_from_config(config_file=str(directory / "kubeconfig"), context="k8s-local")
        core = k8s_client.CoreV1Api(kube)
        node = core.read_node("k8s-local-node")
        assert node.status.node_info.kubelet_version == "v1.37.2"
        assert node.status.node_info.container_runtime_version.startswith("containerd://1.6")
        # The runtime image is on the node without any pull.
        assert any(f"docker.io/library/{image_ref()}" in (image.names or []) for image in node.status.images)

        core.create_namespaced_service("default", {
            "metadata": {"name": "probe-target"},
            "spec": {"clusterIP": "None", "selector": {"app": "nothing"}, "ports": [{"port": 80}]},
        })
        script = (
            "import socket, ssl, urllib.request\n"
            "print('dns', socket.gethostbyname('kubernetes.default.svc.cluster.local'))\n"
            "ctx = ssl.create_default_context(cafile='/var/run/secrets/kubernetes.io/serviceaccount/ca.crt')\n"
            "token = open('/var/run/secrets/kubernetes.io/serviceaccount/token').read()\n"
            "req = urllib.request.Request('https://kubernetes.default.svc/version', headers={'Authorization': 'Bearer ' + token})\n"
            "print('api', urllib.request.urlopen(req, context=ctx, timeout=10).status)\n"
        )
        core.create_namespaced_pod("default", {
            "metadata": {"name": "probe"},
            "spec": {
                "restartPolicy": "Never",
                "containers": [{"name": "probe", "image": image_ref(), "imagePullPolicy": "Never",
                                "command": ["python", "-c", script]}],
            },
        })

        def finished():
            pod = core.read_namespaced_pod("probe", "default")
            return pod.status.phase in ("Succeeded", "Failed") and pod

        pod = poll(finished, timeout_seconds=POD_TIMEOUT_SECONDS, what="the probe pod to finish")
        logs = core.read_namespaced_pod_log("probe", "default")  # through the kubelet: logs work
        assert pod.status.phase == "Succeeded", logs
        assert pod.spec.node_name == "k8s-local-node"
        assert "dns 10.96.0.1" in logs and "api 200" in logs, logs
    finally:
        stopped = subprocess.run([str(K8S_LOCAL), "stop"], env=env, capture_output=True, text=True, timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    left = {name: pid for name, pid in started_pids.items() if alive(pid)}
    assert not left, f"stop left processes: {left}"
    remaining = subprocess.run([str(K8S_LOCAL), "resources"], env=env, capture_output=True, text=True, timeout=60)
    assert remaining.returncode == 0 and not remaining.stdout.strip(), remaining.stdout
    mounts = Path("/proc/self/mounts").read_text()
    assert str(directory) not in mounts
    after = _host_state()
    # Other clusters (the session's) may come and go meanwhile; this cluster's traces may not stay.
    for line in after["iptables"].splitlines():
        assert line in before["iptables"] or "10.250." not in line, line
    assert "KUBE-" not in after["iptables"] or "KUBE-" in before["iptables"]
