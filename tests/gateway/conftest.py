"""Fixtures for the gateway's tests: the real Caddy, real chat-server replicas, real gateways.

Helpers live in gateway_helpers.py (importable from the tests: this folder is put on sys.path).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_helpers import (  # noqa: E402
    CHAT_SERVER,
    ROOT,
    Gateway,
    TOKENS,
    Replica,
    ensure_caddy,
    free_port,
    pid_alive,
    start_gateway,
    wait_for,
)
from serveform.translator.plan import ServicePlan  # noqa: E402

@pytest.fixture(scope="session")
def caddy() -> str:
    """The project's Caddy; built by tools/setup.sh when missing."""
    return ensure_caddy()


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start chat-server replicas: ``start(ident, fmt="openai", model="chat-small", wait=True)``."""
    started: list[Replica] = []

    def start(ident: str, *, fmt: str = "openai", model: str = "chat-small", wait: bool = True, eos: str | None = None, delay_ms: float = 2, prefix: str = "/v1") -> Replica:
        port = free_port()
        argv = [sys.executable, str(CHAT_SERVER), "--host", "127.0.0.1", "--port", str(port), "--model", model, "--format", fmt, "--token-delay-ms", str(delay_ms), "--prefix", prefix]
        if eos:
            argv += ["--eos-token", eos]
        env = {**os.environ, "DSTACK_RUN_NAME": "test", "SERVEFORM_REPLICA_ID": ident}
        log = open(tmp_path / f"replica-{ident}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(argv, env=env, stdout=log, stderr=log, cwd=ROOT)
        log.close()
        replica = Replica(port=port, ident=f"test/{ident}", process=process)
        started.append(replica)
        if wait:
            def up() -> bool:
                try:
                    return httpx.get(f"http://{replica.address}/health", timeout=1).status_code == 200
                except httpx.HTTPError:
                    assert process.poll() is None, f"replica {ident} exited; see {tmp_path}/replica-{ident}.log"
                    return False
            wait_for(up, what=f"replica {ident}")
        return replica

    yield start
    for replica in started:
        replica.stop()


@pytest.fixture
def gateway_factory(tmp_path: Path, caddy: str) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def factory(plans: list[ServicePlan], name: str = "gw", **overrides: Any) -> Gateway:
        gateway = start_gateway(tmp_path / name, plans, **overrides)
        started.append(gateway)
        return gateway

    yield factory
    for gateway in started:
        code = gateway.stop()
        assert code == 0, f"gateway exited with {code}:\n{gateway.log()}"
        # No log of the gateway or of Caddy ever shows a bearer token.
        logs = gateway.log_path.read_text(errors="replace") + (gateway.state_dir / "caddy.log").read_text(errors="replace")
        assert not [t for t in TOKENS if t in logs], "a token leaked into the logs"
        for pid in gateway.children:
            wait_for(lambda: not pid_alive(pid), 10, what=f"caddy {pid} to exit")
