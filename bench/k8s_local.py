"""k8s-local setup time and footprint: build check + start to Ready, and stop, measured in one run.

    .venv/bin/python bench/k8s_local.py

Prints the seconds `tools/k8s/build.sh all` takes with the binaries cached (the cold build's
durations are logged by build.sh as "<part> built in N s"), the seconds from `start` to two
Ready nodes, the resident memory of each process once ready, and the seconds `stop` takes.
Runs in its own directory, so it does not disturb a k8s-local the user has running.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROCESSES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "loadbalancer")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="k8s-local-bench-") as directory:
        env = {**os.environ, "K8S_LOCAL_DIR": directory, "PYTHON": sys.executable}
        t0 = time.monotonic()
        subprocess.run([str(ROOT / "tools" / "k8s" / "build.sh"), "all"], check=True, env=env)
        build_s = time.monotonic() - t0
        t0 = time.monotonic()
        started = subprocess.run([str(ROOT / "tools" / "k8s-local.sh"), "start"], env=env)
        start_s = time.monotonic() - t0
        try:
            if started.returncode != 0:
                print("k8s-local start failed", file=sys.stderr)
                return 1
            rss = {}
            for name in PROCESSES:
                pid = int((Path(directory) / "pids" / f"{name}.pid").read_text())
                rss[name] = _rss_mb(pid)
        finally:
            t0 = time.monotonic()
            subprocess.run([str(ROOT / "tools" / "k8s-local.sh"), "stop"], env=env, check=True)
            stop_s = time.monotonic() - t0
    print(f"build check (binaries cached): {build_s:.2f} s")
    print(f"start to Ready (cached binaries, includes the build check): {start_s:.1f} s")
    print(f"stop: {stop_s:.1f} s")
    for name, mb in rss.items():
        print(f"RSS {name}: {mb:.0f} MB")
    print(f"RSS total: {sum(rss.values()):.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
