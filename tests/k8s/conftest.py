"""k8s-local for the tests: a real control plane on loopback, started once per session.

`k8s_local` runs `tools/k8s-local.sh start` (which builds or reuses the pinned binaries through
tools/k8s/build.sh) in a session temporary directory and `stop` at the end, then checks that no
process it started is left. `kube` is a kubernetes client for that cluster: tests assert through
the Kubernetes API, never through Pulumi's outputs alone.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _k8s_local import K8S_LOCAL, NODE_PROCESSES, PROCESSES, K8sLocal, alive, pids  # noqa: E402

# A cold start builds ~25 minutes of Go on two cores; a cached one takes seconds.
START_TIMEOUT_SECONDS = 45 * 60

@contextlib.contextmanager
def _cluster(directory: Path, *, real_node: bool) -> Iterator[K8sLocal]:
    """`tools/k8s-local.sh start` in DIRECTORY, then `stop`, checking nothing it started is left."""
    env = {**os.environ, "K8S_LOCAL_DIR": str(directory), "PYTHON": sys.executable,
           "K8S_LOCAL_REAL_NODE": "1" if real_node else "0"}
    started = subprocess.run(
        [str(K8S_LOCAL), "start"], env=env, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS
    )
    started_pids = pids(directory)
    cluster = K8sLocal(directory=directory, kubeconfig=directory / "kubeconfig")
    pod_cidr = None
    try:
        assert started.returncode == 0, f"k8s-local start failed:\n{started.stderr[-4000:]}"
        expected = set(PROCESSES) | set(NODE_PROCESSES) if real_node else set(PROCESSES) - {"objectstore"}
        assert set(started_pids) == expected, started_pids
        pod_cidr = cluster.ports().get("NODE_POD_CIDR")
        yield cluster
    finally:
        stopped = subprocess.run([str(K8S_LOCAL), "stop"], env=env, capture_output=True, text=True, timeout=180)
        assert stopped.returncode == 0, stopped.stderr
        left = {name: pid for name, pid in started_pids.items() if alive(pid)}
        assert not left, f"k8s-local stop left processes running: {left}"
        # The node's network namespace, veth, mounts and cgroups: `resources` lists what is left.
        remaining = subprocess.run([str(K8S_LOCAL), "resources"], env=env, capture_output=True, text=True, timeout=60)
        assert remaining.returncode == 0 and not remaining.stdout.strip(), f"k8s-local stop left:\n{remaining.stdout}"
        if pod_cidr:
            # kube-proxy's rules lived in the node's namespace: the host's tables never name the pods.
            rules = subprocess.run(["iptables-save"], capture_output=True, text=True).stdout
            assert pod_cidr not in rules, "iptables rules of the node are left on the host"
            routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
            assert pod_cidr not in routes, routes


@pytest.fixture(scope="session")
def k8s_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sLocal]:
    """k8s-local with kwok nodes only (a fake CPU node and a GPU node): pods are scheduled, none runs."""
    with _cluster(tmp_path_factory.mktemp("k8s-local"), real_node=False) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def k8s_local_real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[K8sLocal]:
    """k8s-local with its real node (containers run) and object store; its own directory."""
    with _cluster(tmp_path_factory.mktemp("k8s-local-real"), real_node=True) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kube(k8s_local: K8sLocal):
    """A kubernetes ApiClient for k8s-local (admin)."""
    from kubernetes import config

    client = config.new_client_from_config(config_file=str(k8s_local.kubeconfig), context=k8s_local.context)
    yield client
    client.close()
