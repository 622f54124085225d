"""Driving the Caddy binary: find it, adapt and validate a config, run it, reload it.

Every config Caddy runs has passed ``caddy validate`` (which provisions every module, as a real
load would) first; a config that fails is reported and the running one stays.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import socket
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from .errors import CaddyError

__all__ = ["adapt", "admin_post", "caddy_binary", "fill_secrets", "reload", "start", "validate"]

_MIN_VERSION = (2, 9)
"""The gateway's own modules are built against Caddy 2.11 (tools/caddy); older builds lack them."""


REQUIRED_MODULE = "http.handlers.serveform_gate"
"""Built from tools/caddy/serveform; routing, tokens and request counts depend on it."""


def caddy_binary() -> str:
    """The Caddy the project builds (tools/setup.sh links it next to the venv's python)."""
    candidates = [os.environ.get("SERVEFORM_CADDY"), str(Path(sys.executable).parent / "caddy"), shutil.which("caddy")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise CaddyError("no caddy binary found: run tools/setup.sh (it builds Caddy with the modules the gateway needs)")


def check_version(binary: str) -> str:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        major, minor = (int(x) for x in out.lstrip("v").split()[0].split(".")[:2])
    except (ValueError, IndexError):
        raise CaddyError(f"{binary}: cannot read its version", out) from None
    if (major, minor) < _MIN_VERSION:
        raise CaddyError(f"{binary} is {out.split()[0]}; the gateway needs the project's Caddy build: run tools/setup.sh")
    modules = subprocess.run([binary, "list-modules"], capture_output=True, text=True, timeout=30).stdout.split()
    if REQUIRED_MODULE not in modules:
        raise CaddyError(f"{binary} lacks the gateway's own modules ({REQUIRED_MODULE}): run tools/setup.sh to build the project's Caddy")
    return out


def _environment(state_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SERVEFORM_TOKEN_", "SERVEFORM_DNS_"))}
    # Caddy's default data/config locations would be the user's home: keep everything in the state dir.
    env["XDG_DATA_HOME"] = str(state_dir / "caddy-data")
    env["XDG_CONFIG_HOME"] = str(state_dir / "caddy-config")
    return env


def adapt(binary: str, caddyfile: Path) -> str:
    """The JSON config of a Caddyfile (placeholders still in it)."""
    result = subprocess.run(
        [binary, "adapt", "--config", str(caddyfile), "--adapter", "caddyfile"],
        capture_output=True, text=True, timeout=120, env=_environment(caddyfile.parent),
    )
    if result.returncode != 0:
        raise CaddyError(f"caddy adapt refused {caddyfile}", _last_error(result.stderr))
    return result.stdout


def fill_secrets(config_json: str, secrets: Mapping[str, str]) -> str:
    """Replace ``{env.NAME}`` placeholders of our secrets with their JSON-escaped values."""
    for name, value in secrets.items():
        config_json = config_json.replace("{env." + name + "}", json.dumps(value)[1:-1])
    return config_json


def validate(binary: str, config_path: Path) -> None:
    """``caddy validate``: loads and provisions every module without serving."""
    result = subprocess.run(
        [binary, "validate", "--config", str(config_path), "--adapter", ""],
        capture_output=True, text=True, timeout=120, env=_environment(config_path.parent.parent),
    )
    if result.returncode != 0:
        raise CaddyError(f"caddy validate refused the rendered config ({config_path})", _last_error(result.stderr))


def _last_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if '"level":"error"' in line or line.startswith("Error")]
    return "\n".join(lines[-3:]) or stderr.strip()[-2000:]


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If the supervisor is killed outright, the kernel sends Caddy SIGTERM: no orphan survives.
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start(binary: str, config_path: Path, state_dir: Path, log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``caddy run`` on a validated JSON config."""
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the child's lifetime
    try:
        return subprocess.Popen(
            [binary, "run", "--config", str(config_path), "--adapter", ""],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=_environment(state_dir),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
    finally:
        log.close()


def reload(binary: str, config_path: Path, admin_address: str, state_dir: Path) -> None:
    """Load a validated JSON config into the running Caddy through its admin endpoint."""
    result = subprocess.run(
        [binary, "reload", "--config", str(config_path), "--adapter", "", "--address", admin_address],
        capture_output=True, text=True, timeout=120, env=_environment(state_dir),
    )
    if result.returncode != 0:
        raise CaddyError("caddy reload failed; the previous config stays", _last_error(result.stderr))


ADMIN_TIMEOUT_SECONDS = 30.0


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def admin_post(admin_address: str, path: str) -> dict:
    """POST to Caddy's admin endpoint (``unix/<path>`` or ``host:port``); its JSON answer.

    Used for the gateway module's ``/serveform/reload``, which re-reads the routes and token
    files without a config reload."""
    if admin_address.startswith("unix/"):
        connection: http.client.HTTPConnection = _UnixConnection(admin_address[len("unix/"):], ADMIN_TIMEOUT_SECONDS)
    else:
        host, _, port = admin_address.rpartition(":")
        connection = http.client.HTTPConnection(host.strip("[]"), int(port), timeout=ADMIN_TIMEOUT_SECONDS)
    try:
        connection.request("POST", path, body=b"", headers={"Content-Length": "0"})
        response = connection.getresponse()
        body = response.read().decode(errors="replace")
    except OSError as exc:
        raise CaddyError(f"caddy's admin endpoint {admin_address} did not answer {path}: {exc}") from None
    finally:
        connection.close()
    if response.status != 200:
        raise CaddyError(f"caddy refused {path} ({response.status})", body.strip()[-2000:])
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        raise CaddyError(f"caddy answered {path} with something that is not JSON", body[-2000:]) from None
