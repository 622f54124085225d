"""How long a crashed local replica stays down, and what its supervisor costs.

Creates one replica of the example chat server through the local backend's replica provider
(the code `up` runs), then kills the server ROUNDS times and measures each time from the kill
until its port accepts connections again, with nobody running `refresh` or `up`. Prints the
median and worst downtime, each as a ratio to the supervisor's first backoff delay
(RESTART_DELAY_INITIAL_SECONDS: the part that is deliberate), and the supervisor's resident
memory. The rounds follow one another within STABLE_RUN_SECONDS, so the backoff doubles each
round; the backoff column says which delay applied. Usage: `python bench/local_restart.py`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 3
TIMEOUT_SECONDS = 120.0


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def main() -> int:
    from serveform.components.local import _replica, _supervisor

    base = Path(tempfile.mkdtemp(prefix="sf-restart-"))
    log = base / "replicas" / "chat-0.log"
    props = {
        "provider_version": _replica.PROVIDER_VERSION, "service": "chat", "replica": 0, "project_dir": str(ROOT),
        "log_path": str(log), "commands": [f"{sys.executable} stacks/examples/chat_server.py --port 8000"],
        "env": {"MODEL_NAME": "chat-small"}, "container_port": 8000, "ready_timeout_seconds": 60, "cleanup_root": str(base),
    }
    provider = _replica.ReplicaProvider()
    outs = provider.create(props).outs
    rows = []
    try:
        rss_kib = int(next(line.split()[1] for line in Path(f"/proc/{outs['pid']}/status").read_text().splitlines() if line.startswith("VmRSS:")))
        for round_ in range(ROUNDS):
            record = _replica.read_restarts(log)
            os.kill(record["child_pid"], signal.SIGKILL)
            killed = time.monotonic()
            while _accepts(outs["port"]):  # the kernel closes the socket as the process dies
                time.sleep(0.001)
            while not _accepts(outs["port"]):
                if time.monotonic() - killed > TIMEOUT_SECONDS:
                    raise SystemExit(f"round {round_}: not back within {TIMEOUT_SECONDS:g} s")
                time.sleep(0.005)
            rows.append((time.monotonic() - killed, _supervisor.RESTART_DELAY_INITIAL_SECONDS * 2**round_))
        restarts = _replica.read_restarts(log)["restarts"]
    finally:
        provider.delete("", outs)
    first = _supervisor.RESTART_DELAY_INITIAL_SECONDS
    print(f"{'round':>5}  {'backoff s':>9}  {'down s':>7}  {'down / backoff':>14}")
    for index, (down, delay) in enumerate(rows):
        print(f"{index:>5}  {delay:>9.1f}  {down:>7.2f}  {down / delay:>14.2f}")
    downs = [d for d, _ in rows]
    print(f"restarts counted: {restarts} of {ROUNDS}")
    print(f"first restart: down {rows[0][0]:.2f} s = {rows[0][0] / first:.2f}x the first backoff ({first:g} s); "
          f"median over rounds {statistics.median(downs):.2f} s")
    print(f"supervisor resident memory: {rss_kib / 1024:.1f} MiB per replica")
    return 0 if restarts == ROUNDS else 1


if __name__ == "__main__":
    sys.exit(main())
