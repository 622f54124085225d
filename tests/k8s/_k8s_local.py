"""k8s-local helpers shared by the tests of this folder (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["K8S_LOCAL", "NODE_PROCESSES", "PROCESSES", "K8sLocal", "alive", "pids", "poll"]

ROOT = Path(__file__).resolve().parents[2]
K8S_LOCAL = ROOT / "tools" / "k8s-local.sh"
PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "loadbalancer", "objectstore")
# The real node's daemons (tools/k8s/node.sh), under node/pids; `holder` keeps its mount namespace.
NODE_PROCESSES = ("holder", "containerd", "kubelet", "kube-proxy", "coredns")


@dataclass(frozen=True)
class K8sLocal:
    """A running k8s-local cluster."""

    directory: Path
    kubeconfig: Path
    context: str = "k8s-local"

    def ports(self) -> dict[str, str]:
        """ports.env: API_HOST, APISERVER_PORT, STATE_PORT, NODE_* (the node's addresses)."""
        pairs = (line.split("=", 1) for line in (self.directory / "ports.env").read_text().splitlines() if "=" in line)
        return {key: value for key, value in pairs}

    def state_env(self) -> dict[str, str]:
        """The environment of a Pulumi `s3://` backend on k8s-local's object store (`k8s-local.sh env`)."""
        import shlex
        import subprocess

        printed = subprocess.run(
            [str(K8S_LOCAL), "env"], env={**os.environ, "K8S_LOCAL_DIR": str(self.directory)},
            check=True, capture_output=True, text=True,
        ).stdout
        return dict(shlex.split(line)[0].split("=", 1) for line in printed.splitlines() if line)


def pids(directory: Path) -> dict[str, int]:
    pids = {}
    for folder, names in ((directory / "pids", PROCESSES), (directory / "node" / "pids", NODE_PROCESSES)):
        for name in names:
            path = folder / f"{name}.pid"
            if path.exists():
                pids[name] = int(path.read_text())
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def poll(check: Callable[[], object], *, timeout_seconds: float, what: str, interval_seconds: float = 0.25):
    """Call ``check`` until it returns something truthy; fail naming ``what`` after the deadline."""
    deadline = time.monotonic() + timeout_seconds
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval_seconds)
    raise AssertionError(f"{what}: not reached within {timeout_seconds} s (last: {last!r})")
