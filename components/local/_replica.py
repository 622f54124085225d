"""One replica of a service as a Pulumi dynamic resource: a detached process on loopback.

One resource per replica, so scaling by one creates or deletes exactly one resource and leaves
the other replicas' processes alone.

Ports. A service file names the port its server listens on inside a container (``port: 8000``).
Processes on one machine cannot share it, so every replica gets its own free loopback port in
``$PORT`` (and ``HOST=127.0.0.1``); a command that spells the service port out as a number of its
own (``--port 8000``, ``http.server 8000``, ``0.0.0.0:8000``) has that number replaced by the
replica's port, so dstack examples run unchanged. ``create`` returns once the port accepts
connections, and fails with the tail of the replica's log when the process dies first or the
deadline passes (the process is stopped then: a failed create leaves nothing running).

Identity. ``read`` (``pulumi refresh``) keeps the replica only while its process — same pid and
same start time — runs; otherwise the resource leaves the state and the next ``up`` creates it.

Claims. An ``up`` killed between starting a replica's process and recording it in the state (the
scaler's own update, interrupted) would leave that process running untracked, and the next ``up``
would start a second one for the same replica. Every process started for a replica slot is
written to ``<service>-<n>.claims.json`` at once; ``diff``, which the engine runs for every tracked
replica on each update, confirms the tracked one; ``create`` stops any live, unconfirmed claim of
its slot first — an orphan — and leaves a confirmed one alone (create-before-delete replacement).

Restarts. The replica's command runs under a small supervisor (`_supervisor`, the process the
state records): once the command has listened, it is started again whenever it exits, with
backoff, as systemd's ``Restart=always`` does on the VMs, so a crashed replica comes back without
a `refresh`. The count is kept in ``<service>-<n>.restarts.json`` beside the log (`read_restarts`);
`serveform status` shows it. A supervisor that is itself gone is what `read` notices, as before.

Logs. ``<state dir>/replicas/<service>-<n>.log``; a new process of the same replica moves the old
log to ``<service>-<n>.previous.log`` first, so the reason a replica died survives its healing.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
from pydantic import BaseModel, ConfigDict

from . import _supervisor
from ._process import (
    LOOPBACK_HOST,
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
    wait_until,
)

__all__ = ["PROVIDER_VERSION", "Replica", "ReplicaProvider", "read_restarts", "replica_script", "restarts_path", "substitute_port"]

PROVIDER_VERSION = "2"  # 2: commands run under the restarting supervisor
"""Bump when the provider's behaviour changes, so `pulumi preview` shows the change."""

# Inputs whose change needs a new process; anything else updates in place.
_REPLACE_KEYS = (
    "service",
    "replica",
    "project_dir",
    "working_dir",
    "log_path",
    "setup",
    "commands",
    "env",
    "secret_env",
    "container_port",
    "gpus_num",
)
_UPDATE_KEYS = ("provider_version", "ready_timeout_seconds", "cleanup_root")
# Variables of the deploying environment a replica inherits; the rest of it (engine settings,
# passphrases, cloud credentials) is none of a replica's business.
_INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "TZ", "TERM")
_REDACTED = "[secret]"
_SUPERVISOR = Path(_supervisor.__file__).resolve()
SUPERVISOR_ACK_TIMEOUT_SECONDS = 10.0
"""How long `create` waits, after the port accepts, for the supervisor to have seen it too."""
_PORT_ATTEMPTS = 3
_LOG_SCAN_BYTES = 64 * 1024
_ADDRESS_IN_USE = re.compile(r"address already in use|EADDRINUSE|\[Errno 98\]", re.IGNORECASE)


class ReplicaInputs(BaseModel):
    """The JSON inputs of a replica (what the component passes)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider_version: str
    service: str
    replica: int
    project_dir: str
    working_dir: str | None = None
    log_path: str
    setup: list[str] = []
    commands: list[str]
    env: dict[str, str] = {}
    secret_env: dict[str, str] = {}
    container_port: int
    gpus_num: int = 0
    ready_timeout_seconds: float = 120.0
    cleanup_root: str | None = None


class ReplicaState(ReplicaInputs):
    """Inputs plus what `create` learned: the process and its address."""

    pid: int
    start_time: int
    port: int
    address: str
    log_inode: int


def substitute_port(command: str, container_port: int, port: int) -> str:
    """Replace the service port written as a number of its own in ``command`` by ``port``.

    ``--port 8000``, ``--port=8000``, ``0.0.0.0:8000`` and ``http.server 8000`` change;
    ``18000``, ``8000.5``, ``v8000`` and ``8000ms`` do not.
    """
    pattern = rf"(?<![\w.]){container_port}(?![\w]|\.\d)"
    return re.sub(pattern, str(port), command)


def replica_script(setup: list[str], commands: list[str], container_port: int, port: int) -> str:
    """The bash script of a replica: `setup`, then `commands`, stopping at the first failure."""
    lines = ["set -e", *setup, *(substitute_port(c, container_port, port) for c in commands)]
    return "\n".join(lines) + "\n"


def _replica_env(inputs: ReplicaInputs, port: int) -> dict[str, str]:
    env = process_env(_INHERITED_ENV, inputs.env, inputs.secret_env)
    env.update(
        {
            "DSTACK_RUN_NAME": inputs.service,
            "DSTACK_GPUS_NUM": str(inputs.gpus_num),
            "DSTACK_REPLICA_NUM": str(inputs.replica),
            "SERVEFORM_REPLICA_ID": f"{inputs.service}-{inputs.replica}",
            "PORT": str(port),
            "HOST": LOOPBACK_HOST,
        }
    )
    return env


def _redact(text: str, secrets: dict[str, str]) -> str:
    for value in sorted(secrets.values(), key=len, reverse=True):
        if value:
            text = text.replace(value, _REDACTED)
    return text


def _lost_port_race(log_path: Path, offset: int) -> bool:
    """True when what the replica logged since ``offset`` says its port was taken."""
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read(_LOG_SCAN_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return False
    return _ADDRESS_IN_USE.search(text) is not None


def _previous_log(log_path: Path) -> Path:
    return log_path.with_name(log_path.name.removesuffix(".log") + ".previous.log")


def _claims_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name.removesuffix(".log") + ".claims.json")


def restarts_path(log_path: str | os.PathLike[str]) -> Path:
    """The supervisor's record of a replica's restarts, beside its log."""
    path = Path(log_path)
    return path.with_name(path.name.removesuffix(".log") + ".restarts.json")


def read_restarts(log_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """``{"restarts", "last_exit", "last_restart_at", "child_pid", "supervisor_pid"}`` of a running
    replica's supervisor, or None when there is no (readable) record."""
    try:
        record = json.loads(restarts_path(log_path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _supervised(script: str, port: int, log_path: Path) -> tuple[list[str], dict[str, str]]:
    """The supervisor's argv and the extra environment that hands it the replica's command."""
    # -I: the script's folder (components/local) must not shadow the standard library.
    argv = [sys.executable, "-I", str(_SUPERVISOR), "--port", str(port), "--restarts", str(restarts_path(log_path))]
    return argv, {_supervisor.ARGV_ENV: json.dumps(["bash", "--noprofile", "--norc", "-c", script])}


def _await_supervisor(ref: ProcessRef, log_path: Path) -> None:
    """Return once the supervisor has seen the command listen (from then on it restarts it).

    Raises `NotListeningError` (died) after stopping the group when the supervisor exits first:
    the command died before the supervisor saw it serve, a failed start like any other.
    """
    def started() -> bool:
        record = read_restarts(log_path) or {}
        return record.get("supervisor_pid") == ref.pid and bool(record.get("started"))

    if wait_until(lambda: started() or not ref.alive(), SUPERVISOR_ACK_TIMEOUT_SECONDS) and started():
        return
    died = not ref.alive()
    stop(ref)
    raise NotListeningError(died=died, timeout_seconds=SUPERVISOR_ACK_TIMEOUT_SECONDS)


def _read_claims(path: Path) -> dict[str, dict[str, Any]]:
    try:
        claims = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def _write_claims(path: Path, claims: dict[str, dict[str, Any]]) -> None:
    if not claims:
        path.unlink(missing_ok=True)
        return
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(claims, sort_keys=True))
    os.replace(staging, path)


def _stop_orphans(path: Path) -> dict[str, dict[str, Any]]:
    """Stop the live, unconfirmed processes claimed for a slot; returns the claims left."""
    kept = {}
    for pid, claim in _read_claims(path).items():
        ref = ProcessRef(int(pid), int(claim["start_time"]))
        if not ref.alive():
            # A supervisor killed outright may leave the command's descendants in its group
            # (its direct child dies with it): they still hold the slot's port, so they go too.
            # `stop` leaves a group alone whose id now names another process.
            if ref.group_alive():
                stop(ref)
            continue
        if not claim.get("confirmed"):
            stop(ref)
            continue
        kept[pid] = claim
    _write_claims(path, kept)
    return kept


class ReplicaProvider(ProcessProvider):
    """Creates, reads, updates and deletes replica processes. Holds no state of its own."""

    inputs_model = ReplicaInputs
    state_model = ReplicaState
    replace_keys = _REPLACE_KEYS
    update_keys = _UPDATE_KEYS
    delete_before_replace = False

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        inputs = ReplicaInputs.model_validate(props)
        label = f"replica {inputs.service}-{inputs.replica}"
        log_path = Path(inputs.log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if log_path.exists():
            log_path.replace(_previous_log(log_path))
        cwd = Path(inputs.project_dir) / (inputs.working_dir or "")
        if not cwd.is_dir():
            raise ProcessStartError(f"{label}: working directory {cwd} does not exist")
        claims_path = _claims_path(log_path)
        claims = _stop_orphans(claims_path)
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            port = free_port()
            script = replica_script(inputs.setup, inputs.commands, inputs.container_port, port)
            logged = log_path.stat().st_size if log_path.exists() else 0
            argv, extra_env = _supervised(script, port, log_path)
            ref = spawn(argv, cwd=cwd, env={**_replica_env(inputs, port), **extra_env}, log_path=log_path)
            _write_claims(claims_path, {**claims, str(ref.pid): {"start_time": ref.start_time, "confirmed": False}})
            try:
                await_listening(ref, LOOPBACK_HOST, port, inputs.ready_timeout_seconds)
                _await_supervisor(ref, log_path)
                break
            except NotListeningError as exc:
                _write_claims(claims_path, claims)  # await_listening stopped it
                # Another process may take the free port between our probe and the replica's bind
                # (a busy machine, parallel tests): that alone is worth another port.
                if exc.died and attempt < _PORT_ATTEMPTS and _lost_port_race(log_path, logged):
                    continue
                hint = (
                    f" Locally every replica listens on its own port, given in $PORT (the service's port "
                    f"{inputs.container_port} is replaced when it appears as a number in `commands`)."
                )
                tail = _redact(log_tail(log_path), inputs.secret_env)
                # A failed create leaves nothing: the tail is in the message, the file goes.
                log_path.unlink(missing_ok=True)
                remove_empty_dirs(log_path.parent, inputs.cleanup_root)
                raise ProcessStartError(
                    f"{label} {exc} before listening on {LOOPBACK_HOST}:{port}.{'' if exc.died else hint}\n"
                    f"Last lines of {log_path}:\n{tail}"
                ) from None
        state = ReplicaState(
            **inputs.model_dump(),
            pid=ref.pid,
            start_time=ref.start_time,
            port=port,
            address=f"{LOOPBACK_HOST}:{port}",
            log_inode=log_path.stat().st_ino,
        )
        return dynamic.CreateResult(f"{inputs.service}-{inputs.replica}-{ref.pid}", state.model_dump())

    def diff(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        self._confirm(olds)
        return super().diff(id_, olds, news)

    @staticmethod
    def _confirm(olds: dict[str, Any]) -> None:
        """The process in the state is this slot's tracked one: never an orphan."""
        try:
            state = ReplicaState.model_validate(olds)
        except ValueError:
            return
        path = _claims_path(Path(state.log_path))
        claims = _read_claims(path)
        if claims.get(str(state.pid), {}).get("confirmed"):
            return
        claims[str(state.pid)] = {"start_time": state.start_time, "confirmed": True}
        _write_claims(path, claims)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        state = ReplicaState.model_validate(olds)
        inputs = ReplicaInputs.model_validate(news)
        return dynamic.UpdateResult(
            state.model_copy(
                update={k: getattr(inputs, k) for k in _UPDATE_KEYS}
            ).model_dump()
        )

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        state = ReplicaState.model_validate(props)
        stop(ProcessRef(state.pid, state.start_time))
        log_path = Path(state.log_path)
        claims_path = _claims_path(log_path)
        claims = _read_claims(claims_path)
        claims.pop(str(state.pid), None)
        _write_claims(claims_path, claims)
        record = read_restarts(log_path)
        if record is None or record.get("supervisor_pid") == state.pid:  # never a newer process's record
            restarts_path(log_path).unlink(missing_ok=True)
        try:
            if log_path.stat().st_ino == state.log_inode:
                log_path.unlink()
        except FileNotFoundError:
            pass
        if not log_path.exists():  # the slot is empty now: its history goes too
            _previous_log(log_path).unlink(missing_ok=True)
        remove_empty_dirs(log_path.parent, state.cleanup_root)


class Replica(dynamic.Resource, module="serveform-local", name="Replica"):
    """A replica process (see the module docstring)."""

    pid: pulumi.Output[int]
    port: pulumi.Output[int]
    address: pulumi.Output[str]
    log_path: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        outputs = {"pid": None, "start_time": None, "port": None, "address": None, "log_inode": None}
        super().__init__(
            ReplicaProvider(),
            name,
            {**props, **outputs},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["secret_env"])),
        )
