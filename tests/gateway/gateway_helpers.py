"""Helpers for the gateway's tests: replicas, gateways and loopback clients.

Everything listens on loopback. Names like `chat.localhost` are resolved to 127.0.0.1 by the
clients themselves (Host header + TLS SNI), never by the system resolver.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from serveform.gateway import GatewaySettings, read_status, write_config
from serveform.gateway.caddy import caddy_binary
from serveform.gateway.errors import CaddyError
from serveform.translator.plan import (
    GatewayRoutePlan,
    ReplicaBounds,
    ReplicaGroupPlan,
    ResourcesPlan,
    ServicePlan,
)

ROOT = Path(__file__).resolve().parents[2]
CHAT_SERVER = ROOT / "stacks" / "examples" / "chat_server.py"
TOKENS = ("tok-alpha-0123456789abcdef0123456789abcdef", "tok-beta-0123456789abcdef0123456789abcdef")
DEADLINE_SECONDS = 30.0


def wait_for(predicate: Callable[[], Any], timeout: float = DEADLINE_SECONDS, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def ensure_caddy() -> str:
    """The project's Caddy; built and linked by tools/setup.sh when missing."""
    try:
        return caddy_binary()
    except CaddyError:
        subprocess.run([str(ROOT / "tools" / "setup.sh")], check=True)
        return caddy_binary()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_plan(name: str, *, file: str | None = None, **route: Any) -> ServicePlan:
    """A ServicePlan as the translator would produce it, with only the route varying."""
    return ServicePlan(
        file=file or f"services/{name}.dstack.yml",
        name=name,
        backend="local",
        replica_group=ReplicaGroupPlan(
            image="python:3.11", container_port=8000, commands=("python stacks/examples/chat_server.py",),
            resources=ResourcesPlan(cpu_min=1, memory_min_gb=0.5, disk_min_gb=1),
        ),
        replicas=ReplicaBounds(min=0, max=3, initial=1),
        route=GatewayRoutePlan(subdomain=name, **route),
    )


# --- replicas -----------------------------------------------------------------------------------


@dataclass
class Replica:
    port: int
    ident: str
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"http://{self.address}/_stats", timeout=5).json()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- clients ------------------------------------------------------------------------------------


def _to_loopback(request: httpx.Request) -> None:
    host = request.url.host
    if host == "localhost" or host.endswith(".localhost"):
        # Connect to 127.0.0.1 but keep Host (set when the request was built) and SNI.
        request.extensions = {**request.extensions, "sni_hostname": host}
        request.url = request.url.copy_with(host="127.0.0.1")


class LoopbackTransport(httpx.HTTPTransport):
    """Sends `*.localhost` requests to 127.0.0.1 with the right Host header and SNI."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        _to_loopback(request)
        return super().handle_request(request)


class AsyncLoopbackTransport(httpx.AsyncHTTPTransport):
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        _to_loopback(request)
        return await super().handle_async_request(request)


# --- the gateway ----------------------------------------------------------------------------------


@dataclass
class Gateway:
    state_dir: Path
    settings: GatewaySettings
    process: subprocess.Popen[bytes]
    log_path: Path
    children: list[int] = field(default_factory=list)
    replicas: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> dict[str, Any]:
        status = read_status(self.state_dir)
        assert status is not None, "gateway not running"
        return status

    @property
    def ca_path(self) -> Path:
        return self.state_dir / "caddy" / "pki" / "authorities" / "local" / "root.crt"

    def url(self, service: str, path: str = "/") -> str:
        if self.settings.tls == "off":
            return f"http://{service}.{self.settings.domain}:{self.settings.http_port}{path}"
        return f"https://{service}.{self.settings.domain}:{self.settings.https_port}{path}"

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.settings.tls == "off":
            return False
        context = ssl.create_default_context(cafile=str(self.ca_path))
        return context

    def client(self, **kwargs: Any) -> httpx.Client:
        verify = self.ssl_context()
        return httpx.Client(transport=LoopbackTransport(verify=verify), timeout=kwargs.pop("timeout", 60), **kwargs)

    def async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        verify = self.ssl_context()
        return httpx.AsyncClient(
            transport=AsyncLoopbackTransport(verify=verify, limits=httpx.Limits(max_connections=200)), timeout=kwargs.pop("timeout", 60), **kwargs
        )

    def auth(self, token: str = TOKENS[0]) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def publish(self, service: str, replicas: list[Replica]) -> None:
        from serveform.gateway import publish_replicas

        publish_replicas(self.state_dir, service, [r.address for r in replicas])

    def wait_ready(self, service: str, count: int, timeout: float = DEADLINE_SECONDS) -> None:
        def ready() -> bool:
            status = read_status(self.state_dir) or {}
            return len(((status.get("services") or {}).get(service) or {}).get("ready", [])) == count
        wait_for(ready, timeout, what=f"{count} ready replicas of {service}")

    def metrics(self) -> str:
        return httpx.get(self.status["metrics_url"], timeout=5).text

    def log(self) -> str:
        text = self.log_path.read_text(errors="replace")
        caddy_log = self.state_dir / "caddy.log"
        if caddy_log.exists():
            text += "\n--- caddy.log ---\n" + caddy_log.read_text(errors="replace")[-4000:]
        return text

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_gateway(state_dir: Path, plans: list[ServicePlan], **overrides: Any) -> Gateway:
    values: dict[str, Any] = {
        "domain": "localhost",
        "tls": "internal",
        "http_port": free_port(),
        "https_port": free_port(),
        "bind": ("127.0.0.1",),
        "replica_wait_seconds": 20,
        "tokens": tuple(SecretStr(t) for t in TOKENS),
    }
    values.update(overrides)
    settings = GatewaySettings(**values)
    write_config(state_dir, settings, plans)
    log_path = state_dir.parent / f"{state_dir.name}-gateway.log"
    log = open(log_path, "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "serveform.gateway", "run", "--state-dir", str(state_dir)], stdout=log, stderr=log, cwd=ROOT
    )
    log.close()
    gateway = Gateway(state_dir=state_dir, settings=settings, process=process, log_path=log_path)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"gateway exited with {process.returncode}:\n{gateway.log()}")
        status = read_status(state_dir)
        return bool(status and status.get("caddy_pid"))

    wait_for(up, 60, what="the gateway to start")
    gateway.children.append(gateway.status["caddy_pid"])
    return gateway


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON events of a server-sent-events body (`data: {...}` lines)."""
    out = []
    for line in text.splitlines():
        if line.startswith("data:") and line[5:].strip() != "[DONE]":
            out.append(json.loads(line[5:]))
    return out
