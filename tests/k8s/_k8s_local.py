"""k8s-local helpers shared by the tests of this folder (the fixtures are in conftest.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["K8S_LOCAL", "PROCESSES", "K8sLocal", "alive", "pids", "poll"]

ROOT = Path(__file__).resolve().parents[2]
K8S_LOCAL = ROOT / "tools" / "k8s-local.sh"
PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "loadbalancer")


@dataclass(frozen=True)
class K8sLocal:
    """A running k8s-local cluster."""

    directory: Path
    kubeconfig: Path
    context: str = "k8s-local"


def pids(directory: Path) -> dict[str, int]:
    pids = {}
    for name in PROCESSES:
        path = directory / "pids" / f"{name}.pid"
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
