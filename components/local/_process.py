"""Detached processes on this machine: spawn, identify, wait for, and stop them.

The local backend's resources are processes that must outlive the Pulumi engine (the engine
kills its plugins' process groups when it finishes), so every process starts in a session of
its own. A pid alone does not identify a process for long — pids are reused — so a process is
known by ``(pid, start time)``: the start time is field 22 of ``/proc/<pid>/stat``, in clock
ticks since boot, and a reused pid gets a different one.

`ProcessProvider` is what the local backend's dynamic providers (daemons, replicas) share: a
diff against the inputs model's defaults, and a `read` that keeps a resource only while its very
process runs.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pulumi.dynamic as dynamic
from pydantic import BaseModel

__all__ = [
    "LOOPBACK_HOST",
    "NotListeningError",
    "ProcessProvider",
    "ProcessRef",
    "ProcessStartError",
    "await_listening",
    "free_port",
    "log_tail",
    "process_env",
    "remove_empty_dirs",
    "port_accepts",
    "spawn",
    "stop",
    "wait_until",
]

LOOPBACK_HOST = "127.0.0.1"
# How long `stop` waits after SIGTERM before SIGKILL, and after SIGKILL before giving up.
STOP_GRACE_SECONDS = 10.0
KILL_WAIT_SECONDS = 5.0
_POLL_INTERVAL_SECONDS = 0.05
_LOG_TAIL_LINES = 30
_LOG_TAIL_BYTES = 16 * 1024

Clock = Callable[[], float]


class ProcessStartError(RuntimeError):
    """A process died, or never became ready, while a resource was being created."""


class NotListeningError(ProcessStartError):
    """`await_listening` gave up on a process (now stopped); the message says why."""

    def __init__(self, *, died: bool, timeout_seconds: float) -> None:
        super().__init__("exited" if died else f"did not accept connections within {timeout_seconds:g}s")
        self.died = died
        """True when the process exited; False when it ran but never listened in time."""


@dataclass(frozen=True)
class ProcessRef:
    """A process known by pid and start time; its process group is the pid (session leader)."""

    pid: int
    start_time: int

    @classmethod
    def of(cls, pid: int) -> "ProcessRef | None":
        """The reference of a live process, or None when there is none with this pid."""
        stat = _stat(pid)
        if stat is None:
            return None
        return cls(pid=pid, start_time=stat[1])

    def alive(self) -> bool:
        """True while this very process runs (not a zombie, not a reused pid)."""
        stat = _stat(self.pid)
        return stat is not None and stat[1] == self.start_time and stat[0] not in ("Z", "X")

    def group_alive(self) -> bool:
        """True while any non-zombie process of this process's group runs."""
        return bool(_group_members(self.pid))


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, start time, process group) of a pid, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is parenthesised and may itself contain spaces or ')'.
    fields = text[text.rindex(")") + 2 :].split()
    return fields[0], int(fields[19]), int(fields[2])


def _group_members(pgid: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[2] == pgid and stat[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def spawn(
    argv: Sequence[str],
    *,
    cwd: str | os.PathLike[str],
    env: Mapping[str, str],
    log_path: str | os.PathLike[str],
) -> ProcessRef:
    """Start ``argv`` detached: new session, stdin from /dev/null, stdout+stderr appended to the log.

    No descriptor of the caller leaks into the child, so an engine that waits for its plugin's
    pipes to close is never held open by a replica.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        os.chmod(log_path, 0o600)
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    ref = ProcessRef.of(process.pid)
    if ref is None:  # exited (and was reaped) before we looked: report it like any early death
        process.wait()
        raise ProcessStartError(f"process exited at once with status {process.returncode}")
    _CHILDREN[process.pid] = process
    return ref


# Popen objects of processes this interpreter started, so their exit status gets reaped
# (a dead child of ours is a zombie until then, and would look alive to `kill(pid, 0)`).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _reap() -> None:
    for pid, process in list(_CHILDREN.items()):
        if process.poll() is not None:
            del _CHILDREN[pid]


def stop(ref: ProcessRef, *, grace_seconds: float = STOP_GRACE_SECONDS, clock: Clock = time.monotonic) -> None:
    """Stop the process and everything in its process group; return once none of them runs.

    SIGTERM first, SIGKILL for what is left after ``grace_seconds``. A pid that now belongs to
    another process (different start time) is left alone.
    """
    # Linux never hands out a pid that is still some group's id, so a group named after our
    # dead leader is still ours; a live process with our pid but another start time is not.
    current = ProcessRef.of(ref.pid)
    ours = ref.alive() or (current is None or current.start_time == ref.start_time) and ref.group_alive()
    if not ours:
        _reap()
        return
    _signal_group(ref.pid, signal.SIGTERM)
    def gone() -> bool:
        _reap()  # our own dead children would otherwise linger as zombies of this group
        return not ref.group_alive()

    if not wait_until(gone, grace_seconds, clock=clock):
        _signal_group(ref.pid, signal.SIGKILL)
        if not wait_until(gone, KILL_WAIT_SECONDS, clock=clock):
            raise RuntimeError(f"process group {ref.pid} survived SIGKILL")


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:  # pragma: no cover - someone else's group: never ours to kill
        if exc.errno != errno.EPERM:
            raise


def wait_until(predicate: Callable[[], bool], timeout_seconds: float, *, clock: Clock = time.monotonic) -> bool:
    """Poll ``predicate`` until it is true (True) or the deadline passes (False)."""
    deadline = clock() + timeout_seconds
    while True:
        if predicate():
            return True
        if clock() >= deadline:
            return False
        time.sleep(_POLL_INTERVAL_SECONDS)


def await_listening(ref: ProcessRef, host: str, port: int, timeout_seconds: float) -> None:
    """Return once ``ref`` accepts TCP connections on host:port.

    Raises `NotListeningError` when the process exits first or the deadline passes, after
    stopping it: a process that failed to start leaves nothing running.
    """
    ready = wait_until(lambda: not ref.alive() or port_accepts(host, port), timeout_seconds)
    if ready and ref.alive():
        return
    died = not ref.alive()
    stop(ref)
    raise NotListeningError(died=died, timeout_seconds=timeout_seconds)


def process_env(inherited: Iterable[str], env: Mapping[str, str], secret_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a stack process: the ``inherited`` variables of the deploying
    environment that are set, then ``env`` and ``secret_env``.

    The project's Python environment (the interpreter running the provider) comes first on PATH,
    so `python` in a process's commands finds the project's packages.
    """
    result = {k: os.environ[k] for k in inherited if k in os.environ}
    result["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), result.get("PATH", "")) if p)
    result.update(env)
    result.update(secret_env)
    return result


def port_accepts(host: str, port: int, timeout_seconds: float = 0.5) -> bool:
    """True when a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout_seconds):
            return True
    except OSError:
        return False


def free_port(host: str = LOOPBACK_HOST) -> int:
    """A TCP port nobody listens on right now (the kernel's choice for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(log_path: str | os.PathLike[str], lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a log file (empty when it does not exist)."""
    try:
        with open(log_path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - _LOG_TAIL_BYTES))
            data = log.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def remove_empty_dirs(start: str | os.PathLike[str], root: str | os.PathLike[str] | None) -> None:
    """Remove ``start`` and its parents while they are empty, never going above ``root``.

    The stack's directories (replicas/, volumes/, the state directory, `.serveform/`) are made
    on demand, so the last resource to leave takes them along; a directory that still holds
    anything (another stack, the Pulumi state backend) stops the walk.
    """
    if root is None:
        return
    stop = Path(root)
    for directory in (Path(start), *Path(start).parents):
        if directory != stop and stop not in directory.parents:
            return
        try:
            directory.rmdir()
        except OSError:
            return
        if directory == stop:
            return


class ProcessProvider(dynamic.ResourceProvider):
    """The part of a dynamic provider for one detached process that daemons and replicas share.

    A subclass names its pydantic models (the state one holds ``pid`` and ``start_time``), the
    inputs whose change replaces the process and those updated in place.
    """

    inputs_model: ClassVar[type[BaseModel]]
    state_model: ClassVar[type[BaseModel]]
    replace_keys: ClassVar[tuple[str, ...]]
    update_keys: ClassVar[tuple[str, ...]]
    delete_before_replace: ClassVar[bool]
    """True when two copies of the resource must never run at once."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        # A key absent from one side means its default (an input added in a later version).
        def differs(key: str) -> bool:
            default = self.inputs_model.model_fields[key].get_default(call_default_factory=True)
            return olds.get(key, default) != news.get(key, default)

        replaces = [k for k in self.replace_keys if differs(k)]
        changed = replaces or [k for k in self.update_keys if differs(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=self.delete_before_replace)

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        state = self.state_model.model_validate(props)
        if not ProcessRef(state.pid, state.start_time).alive():
            # Gone: an empty id drops the resource from the state, so the next `up` creates it again.
            return dynamic.ReadResult("", {})
        return dynamic.ReadResult(id_, state.model_dump())
