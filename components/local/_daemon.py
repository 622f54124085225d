"""A long-running helper process of the stack (a Pulumi dynamic resource): the gateway, the scaler.

The daemon owns a state directory. `create` writes the daemon's files into it (secret files with
mode 0600, everything else 0644), starts the process detached (its own session, so it outlives
the engine) and waits until it accepts connections on ``ready_address`` when one is given.
`update` rewrites changed files and sends ``reload_signal`` (or, without one, restarts the
process), so a config change reaches a running daemon; a change of the command, environment or address replaces the daemon.
`read` drops a daemon whose process (same pid and start time) is gone, so the next `up` starts it
again. `delete` stops the process group and removes the state directory.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
from pydantic import BaseModel, ConfigDict

from ._process import (
    NotListeningError,
    ProcessProvider,
    ProcessRef,
    ProcessStartError,
    await_listening,
    free_port,
    log_tail,
    process_env,
    remove_empty_dirs,
    spawn,
    stop,
)

__all__ = ["Daemon", "DaemonProvider", "PORT", "PROVIDER_VERSION", "PYTHON"]

PROVIDER_VERSION = "1"
"""Bump when the provider's behaviour changes, so `pulumi preview` shows the change."""
PYTHON = "{python}"
"""An ``argv[0]`` that stands for the interpreter running the provider (the project's Python)."""
PORT = "{port}"
"""Stands, in ``argv`` and ``ready_address``, for a free loopback port chosen when the daemon is
created and kept for its life (output ``port``)."""

_REPLACE_KEYS = ("name", "argv", "cwd", "env", "secret_env", "inherit_env", "state_dir", "log_path", "ready_address")
_FILE_KEYS = ("files", "secret_files")
_UPDATE_KEYS = (*_FILE_KEYS, "provider_version", "ready_timeout_seconds", "reload_signal", "cleanup_root", "extra_logs")
_INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ")
_REDACTED = "[secret]"


class DaemonInputs(BaseModel):
    """The JSON inputs of a daemon."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider_version: str
    name: str
    argv: list[str]
    cwd: str
    env: dict[str, str] = {}
    secret_env: dict[str, str] = {}
    inherit_env: list[str] = []
    state_dir: str
    log_path: str
    files: dict[str, str] = {}
    secret_files: dict[str, str] = {}
    ready_address: str | None = None
    ready_timeout_seconds: float = 60.0
    reload_signal: str | None = None
    extra_logs: list[str] = []
    """Logs of the daemon's children (relative to `state_dir`) quoted too when it fails to start."""
    cleanup_root: str | None = None


class DaemonState(DaemonInputs):
    """Inputs plus the running process."""

    pid: int
    start_time: int
    port: int | None = None


def _write_files(inputs: DaemonInputs) -> None:
    root = Path(inputs.state_dir)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o700)
    for files, mode in ((inputs.files, 0o644), (inputs.secret_files, 0o600)):
        for relative, content in files.items():
            path = root / relative
            if root.resolve() not in path.resolve().parents:
                raise ValueError(f"{inputs.name}: file {relative!r} is outside {root}")
            path.parent.mkdir(parents=True, exist_ok=True)
            # Write beside and rename, with the final mode from the start: a reader never sees
            # half a file, and a secret is never readable by others, not even for a moment.
            temporary = path.with_name(f".{path.name}.tmp")
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "w") as handle:
                handle.write(content)
            os.chmod(temporary, mode)
            temporary.replace(path)


def _argv(inputs: DaemonInputs, port: int | None) -> list[str]:
    argv = [sys.executable if part == PYTHON else part for part in inputs.argv]
    return [part.replace(PORT, str(port)) for part in argv] if port is not None else argv


def _wants_port(inputs: DaemonInputs) -> bool:
    return any(PORT in part for part in inputs.argv) or PORT in (inputs.ready_address or "")


def _env(inputs: DaemonInputs) -> dict[str, str]:
    # `inherit_env` passes the deploying environment's values at start time without putting
    # them into the state (a backend URL or passphrase there would diff on another machine).
    return process_env((*_INHERITED_ENV, *inputs.inherit_env), inputs.env, inputs.secret_env)


def _redact(text: str, secrets: dict[str, str]) -> str:
    for value in secrets.values():
        for line in value.splitlines():
            if len(line.strip()) >= 8:
                text = text.replace(line.strip(), _REDACTED)
    return text


def _start(inputs: DaemonInputs, port: int | None) -> ProcessRef:
    ref = spawn(_argv(inputs, port), cwd=inputs.cwd, env=_env(inputs), log_path=inputs.log_path)
    if inputs.ready_address is None:
        return ref
    address = inputs.ready_address.replace(PORT, str(port))
    host, _, ready_port = address.rpartition(":")
    try:
        await_listening(ref, host, int(ready_port), inputs.ready_timeout_seconds)
    except NotListeningError as exc:
        # The state directory goes with a failed create, so the logs are quoted here, redacted.
        secrets = {**inputs.secret_files, **inputs.secret_env}
        quoted = []
        for log in (inputs.log_path, *(str(Path(inputs.state_dir) / extra) for extra in inputs.extra_logs)):
            tail = _redact(log_tail(log), secrets)
            if tail:
                quoted.append(f"Last lines of {log}:\n{tail}")
        raise ProcessStartError(f"{inputs.name} {exc} before listening on {address}.\n" + "\n".join(quoted)) from None
    return ref


class DaemonProvider(ProcessProvider):
    """Starts, reloads and stops a daemon process. Holds no state of its own."""

    inputs_model = DaemonInputs
    state_model = DaemonState
    replace_keys = _REPLACE_KEYS
    update_keys = _UPDATE_KEYS
    # Two copies of one daemon would fight over its state directory and address.
    delete_before_replace = True

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        inputs = DaemonInputs.model_validate(props)
        root = Path(inputs.state_dir)
        fresh = not root.exists()
        port = free_port() if _wants_port(inputs) else None
        try:
            _write_files(inputs)
            ref = _start(inputs, port)
        except BaseException:
            if fresh:  # a failed create leaves nothing behind (the log tail is in the error)
                shutil.rmtree(root, ignore_errors=True)
                remove_empty_dirs(root.parent, inputs.cleanup_root)
            raise
        state = DaemonState(**inputs.model_dump(), pid=ref.pid, start_time=ref.start_time, port=port)
        return dynamic.CreateResult(f"{inputs.name}-{ref.pid}", state.model_dump())

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        old = DaemonState.model_validate(olds)
        inputs = DaemonInputs.model_validate(news)
        ref = ProcessRef(old.pid, old.start_time)
        _write_files(inputs)
        if (inputs.files, inputs.secret_files) != (old.files, old.secret_files):
            if not ref.alive():
                ref = _start(inputs, old.port)
            elif inputs.reload_signal:
                os.kill(ref.pid, signal.Signals[inputs.reload_signal])
            else:  # a daemon that cannot reload reads its files again by starting over
                stop(ref)
                ref = _start(inputs, old.port)
        state = DaemonState(**inputs.model_dump(), pid=ref.pid, start_time=ref.start_time, port=old.port)
        return dynamic.UpdateResult(state.model_dump())

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        state = DaemonState.model_validate(props)
        stop(ProcessRef(state.pid, state.start_time))
        root = Path(state.state_dir)
        shutil.rmtree(root, ignore_errors=True)
        if root.exists():
            raise RuntimeError(f"{state.name}: could not remove {root}")
        log_path = Path(state.log_path)
        if root not in log_path.parents:
            log_path.unlink(missing_ok=True)
        remove_empty_dirs(root.parent, state.cleanup_root)


class Daemon(dynamic.Resource, module="serveform-local", name="Daemon"):
    """A detached helper process with its own state directory."""

    pid: pulumi.Output[int]
    port: pulumi.Output[int | None]
    state_dir: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            DaemonProvider(),
            name,
            {**props, "pid": None, "start_time": None, "port": None},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["secret_files", "secret_env"])),
        )
