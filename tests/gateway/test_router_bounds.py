"""A gateway that never stalls and whose metrics stay bounded (issue 15): hostile bodies, runaway
chat templates, clients that leave, and floods of unknown Host headers, against the real gateway."""

from __future__ import annotations

import asyncio
import json
import os
import random
import socket
import string
import struct
import threading
import time

import httpx
import pytest
from aiohttp import web

from serveform.gateway.dns import srv_name
from serveform.translator.plan import ModelPlan, ProbePlan

from gateway_helpers import make_plan, wait_for  # type: ignore[import-not-found]

FAST_PROBE = (ProbePlan(url="/health", interval_seconds=1, timeout_seconds=2),)
# Nested loops that write nothing (only a deadline stops them) and ones that write without end
# (the output bound stops them): a chat template comes from a service file, not from a client,
# but it must not be able to hold the gateway either.
SILENT_LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}"
LOUD_LOOPS = "{% for a in range(100000) %}{% for b in range(100000) %}xxxxxxxxxx{% endfor %}{% endfor %}"


def _error_shape(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.fixture
def models(gateway_factory, replicas):
    plans = [
        make_plan("chat", model=ModelPlan(name="chat-small"), probes=FAST_PROBE),
        make_plan("silent", model=ModelPlan(name="silent", format="tgi", chat_template=SILENT_LOOPS), probes=FAST_PROBE),
        make_plan("loud", model=ModelPlan(name="loud", format="tgi", chat_template=LOUD_LOOPS), probes=FAST_PROBE),
    ]
    gateway = gateway_factory(plans)
    chat = replicas("chat")
    gateway.publish("chat", [chat])
    gateway.wait_ready("chat", 1)
    return gateway


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000, id="100000-open-brackets"),
        pytest.param(b'{"model": "chat-small", "messages": [], "n": ' + b"7" * 5000 + b"}", id="5000-digit-integer"),
        pytest.param(b'{"model": "chat-small", "messages": [], "max_tokens": 1e5000}', id="overflowing-float"),
        pytest.param(b'{"model": "chat-small", "messages": [], "temperature": NaN}', id="NaN"),
        pytest.param(b'{"model": "chat-small", "messages": [], "temperature": -Infinity}', id="Infinity"),
        pytest.param(b'{"model": "chat-small", "messages": [', id="truncated"),
        pytest.param(b'{"model": "chat-\xff"}', id="not-utf-8"),
        pytest.param(b'"just a string"', id="not-an-object"),
    ],
)
def test_malformed_or_absurd_json_is_a_400_in_openai_shape(models, body):
    with models.client() as client:
        response = client.post(
            models.url("gateway", "/v1/chat/completions"), content=body, headers={**models.auth(), "Content-Type": "application/json"}
        )
    assert _error_shape(response, 400)["code"] == "invalid_json"


@pytest.mark.parametrize("model", ["silent", "loud"])
def test_a_runaway_chat_template_is_cut_off(models, model):
    started = time.monotonic()
    with models.client() as client:
        response = client.post(
            models.url("gateway", "/v1/chat/completions"), headers=models.auth(),
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
    error = _error_shape(response, 400)
    assert error["param"] == "messages" and "chat_template" in error["message"]
    assert time.monotonic() - started < 15
    # The gateway still answers at once.
    with models.client() as client:
        assert client.get(models.url("gateway", "/v1/models"), headers=models.auth(), timeout=5).status_code == 200


def _dns_rtt(port: int) -> float:
    question = struct.pack("!6H", 7, 0x0100, 1, 0, 0, 0)
    for label in srv_name("chat").split("."):
        question += bytes([len(label)]) + label.encode()
    question += b"\x00" + struct.pack("!HH", 33, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        started = time.monotonic()
        sock.sendto(question, ("127.0.0.1", port))
        sock.recv(4096)
        return time.monotonic() - started


def test_a_20_mb_request_stalls_no_other_request_probe_or_dns_answer(models):
    # 20 MB of numbers: each one is work for the parser, which used to run on the event loop
    # that also answers the DNS responder and runs the prober (a ~1-2 s stall).
    pad = b"[" + b"0," * (10 * 1024 * 1024 - 1) + b"0]"
    body = b'{"model": "chat-small", "messages": [{"role": "user", "content": "big"}], "pad": ' + pad + b"}"
    assert len(body) > 20 * 1024 * 1024
    result: dict = {}

    def send() -> None:
        with models.client(timeout=120) as client:
            result["response"] = client.post(
                models.url("gateway", "/v1/chat/completions"), content=body, headers={**models.auth(), "Content-Type": "application/json"}
            )

    dns_port = models.status["dns_port"]
    sender = threading.Thread(target=send)
    worst = {"router": 0.0, "service": 0.0, "dns": 0.0}
    with models.client(timeout=30) as client:
        sender.start()
        while sender.is_alive():
            started = time.monotonic()
            assert client.get(models.url("gateway", "/v1/models"), headers=models.auth()).status_code == 200
            worst["router"] = max(worst["router"], time.monotonic() - started)
            started = time.monotonic()
            assert client.get(models.url("chat", "/ping"), headers=models.auth()).status_code == 200
            worst["service"] = max(worst["service"], time.monotonic() - started)
            worst["dns"] = max(worst["dns"], _dns_rtt(dns_port))
            time.sleep(0.02)
    sender.join()
    assert result["response"].status_code in (200, 400), result["response"].text[:300]
    # Bounded by the machine's load, not by the big body's parse.
    assert max(worst.values()) < 0.75, worst
    # The replica stayed ready throughout: the prober never missed its deadline.
    assert len(models.status["services"]["chat"]["ready"]) == 1


class _SlowReplica:
    """A replica whose answers take 30 s; it records when a request's handler was cancelled."""

    def __init__(self) -> None:
        self.started: list[float] = []
        self.cancelled: list[float] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    async def _slow(self, request: web.Request) -> web.Response:
        self.started.append(time.monotonic())
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.append(time.monotonic())
            raise
        return web.json_response({})

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_route("*", "/{tail:.*}", self._slow)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> _SlowReplica:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


@pytest.mark.parametrize("path", ["router", "service"])
def test_a_client_that_leaves_cancels_the_upstream_request_within_a_second(gateway_factory, path):
    gateway = gateway_factory([make_plan("slow", model=ModelPlan(name="slow-model"), probes=FAST_PROBE)])
    with _SlowReplica() as replica:
        from serveform.gateway import publish_replicas

        publish_replicas(gateway.state_dir, "slow", [f"127.0.0.1:{replica.port}"])
        gateway.wait_ready("slow", 1)
        url = gateway.url("gateway" if path == "router" else "slow", "/v1/chat/completions")
        with gateway.client(timeout=httpx.Timeout(30, read=1.0)) as client:
            with pytest.raises(httpx.ReadTimeout):
                client.post(url, headers=gateway.auth(), json={"model": "slow-model", "messages": [{"role": "user", "content": "x"}]})
        left = time.monotonic()
        wait_for(lambda: replica.cancelled, 5, what="the replica's request to be cancelled")
        assert replica.started and replica.cancelled[0] - left < 1.0, (replica.cancelled[0] - left)


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))


def test_random_host_headers_create_no_series_and_no_memory(models):
    def flood(count: int) -> None:
        with httpx.Client(timeout=10) as client:
            for _ in range(count):
                host = "".join(random.choices(string.ascii_lowercase, k=12)) + random.choice([".localhost", ".example.com", ""])
                port = random.choice([models.settings.http_port, models.settings.https_port])
                scheme = "http" if port == models.settings.http_port else "https"
                try:
                    response = client.get(f"{scheme}://127.0.0.1:{port}/x", headers={"Host": host})
                    assert response.status_code in (404, 308), response.status_code
                except httpx.ConnectError:
                    assert scheme == "https"  # no certificate for an unknown name: the handshake fails

    flood(300)  # warm up: pools, buffers, the TLS handshake paths
    caddy = models.status["caddy_pid"]
    before_text, before_rss = models.metrics(), _rss_kib(caddy)
    flood(3000)
    after_text, after_rss = models.metrics(), _rss_kib(caddy)
    assert len(after_text) == len(before_text), (len(before_text), len(after_text))
    assert after_text.count("\n") == before_text.count("\n")
    assert "serveform_requests_total" in after_text and "localhost" in after_text
    assert after_rss - before_rss < 8 * 1024, (before_rss, after_rss)  # KiB
