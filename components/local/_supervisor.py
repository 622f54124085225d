"""Keeps one local replica's command running, as systemd's ``Restart=always`` does on the VMs.

Run as a script (``python _supervisor.py --port PORT --restarts FILE``, the command as a JSON list
in ``SERVEFORM_SUPERVISED_ARGV``); it imports nothing but the standard library, so each replica
costs one small interpreter more, not a copy of Pulumi. The command is not in this process's own
argv, so tools that look for the service's command line find the replica once, not twice.

Lifecycle:

* starting: the command runs; once it accepts connections on ``127.0.0.1:PORT`` it has started
  (``"started": true`` in FILE, which the provider's ``create`` waits for).
  If it exits before that, the supervisor exits with the same status and restarts nothing, so
  the replica's ``create`` fails with the log tail exactly as without a supervisor (and can try
  another port when the first was taken);
* started: whenever the command exits (any status, as ``Restart=always``), it is started again
  after a backoff of RESTART_DELAY_INITIAL_SECONDS, doubling up to RESTART_DELAY_MAX_SECONDS;
  a run that lasted STABLE_RUN_SECONDS resets the delay. Each restart is counted in FILE
  (JSON, beside the replica's log) and noted in the log. The gateway's prober sees the port
  refuse meanwhile and routes around the replica; it comes back on the same address;
* SIGTERM / SIGINT / SIGHUP: the command gets SIGTERM, the supervisor waits for it and exits 0,
  removing FILE. The provider's ``stop`` signals the whole process group (the supervisor is
  its leader) and SIGKILLs what is left after its grace period.

The command carries PR_SET_PDEATHSIG, so a supervisor killed outright takes its direct child
along; anything else left in the group is stopped by the next ``create`` of the same slot.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time

__all__ = ["ARGV_ENV", "RESTART_DELAY_INITIAL_SECONDS", "RESTART_DELAY_MAX_SECONDS", "STABLE_RUN_SECONDS", "main"]

ARGV_ENV = "SERVEFORM_SUPERVISED_ARGV"
RESTART_DELAY_INITIAL_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
STABLE_RUN_SECONDS = 60.0
_POLL_SECONDS = 0.1
_CONNECT_TIMEOUT_SECONDS = 0.5


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=_CONNECT_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


def _note(message: str) -> None:
    # Our stderr is the replica's log: the reason for a gap in it is written right there.
    sys.stderr.write(f"[serveform supervisor {time.strftime('%Y-%m-%dT%H:%M:%S%z')}] {message}\n")
    sys.stderr.flush()


def _write_record(path: str, record: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(record, handle, sort_keys=True)
    os.replace(tmp, path)


def _status(code: int) -> str:
    return f"signal {-code}" if code < 0 else f"status {code}"


class _Supervisor:
    def __init__(self, argv: list[str], port: int, record_path: str) -> None:
        self.argv = argv
        self.port = port
        self.record_path = record_path
        self.env = {k: v for k, v in os.environ.items() if k != ARGV_ENV}
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None
        self.record = {"supervisor_pid": os.getpid(), "child_pid": None, "started": False, "restarts": 0, "last_exit": None, "last_restart_at": None}

    def _start(self) -> float:
        self.child = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.record["child_pid"] = self.child.pid
        _write_record(self.record_path, self.record)
        return time.monotonic()

    def _stop(self, _signum: int, _frame: object) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            try:
                self.child.terminate()
            except ProcessLookupError:
                pass

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(_POLL_SECONDS, max(0.0, deadline - time.monotonic())))

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._stop)
        started_at = self._start()
        assert self.child is not None
        # Starting: the first run must listen before anything is restarted.
        while not _accepts(self.port):
            code = self.child.poll()
            if code is not None or self.stopping:
                code = self.child.wait()
                self._remove_record()
                return 0 if self.stopping else (128 - code if code < 0 else code)
            time.sleep(_POLL_SECONDS)
        # The provider's `create` returns only once it reads this, so a command that dies right
        # after `create` returned is restarted, never taken for a failed start.
        self.record["started"] = True
        _write_record(self.record_path, self.record)
        delay = RESTART_DELAY_INITIAL_SECONDS
        while True:
            code = self.child.wait()
            if self.stopping:
                self._remove_record()
                return 0
            ran = time.monotonic() - started_at
            if ran >= STABLE_RUN_SECONDS:
                delay = RESTART_DELAY_INITIAL_SECONDS
            self.record["last_exit"] = code
            _note(f"the replica's command exited with {_status(code)} after {ran:.1f} s; restarting in {delay:g} s")
            _write_record(self.record_path, self.record)
            self._sleep(delay)
            if self.stopping:
                self._remove_record()
                return 0
            delay = min(delay * 2, RESTART_DELAY_MAX_SECONDS)
            self.record["restarts"] += 1
            self.record["last_restart_at"] = time.time()
            started_at = self._start()
            _note(f"restart {self.record['restarts']}: started again as pid {self.child.pid}")

    def _remove_record(self) -> None:
        try:
            os.unlink(self.record_path)
        except FileNotFoundError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="the loopback port the command listens on")
    parser.add_argument("--restarts", required=True, help="JSON file recording the restarts")
    args = parser.parse_args(argv)
    command = json.loads(os.environ[ARGV_ENV])
    return _Supervisor(command, args.port, args.restarts).run()


if __name__ == "__main__":
    sys.exit(main())
