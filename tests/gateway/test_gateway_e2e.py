"""The gateway end to end: the real Caddy, real chat-server replicas, real clients, on loopback."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest

from serveform.gateway import publish_replicas, read_status
from serveform.scaler.constants import DEFAULT_IN_FLIGHT_SELECTOR, DEFAULT_REQUEST_SELECTOR
from serveform.scaler.metrics import HostMap, Selector, read_scrape
from serveform.translator.plan import ModelPlan, ProbePlan, RateLimitPlan

from gateway_helpers import TOKENS, json_lines, make_plan, wait_for  # type: ignore[import-not-found]

FAST_PROBE = (ProbePlan(url="/health", interval_seconds=1, timeout_seconds=2),)


def _scrape(metrics: str, host: str):
    """What the scaler reads from a scrape, with its default selectors (the gateway's contract)."""
    hosts = HostMap.of({host: "svc"})
    return read_scrape(metrics, hosts, requests=Selector.parse(DEFAULT_REQUEST_SELECTOR), in_flight=Selector.parse(DEFAULT_IN_FLIGHT_SELECTOR))


def service_requests(metrics: str, host: str) -> float:
    """The scaler's reading (see serveform.gateway's docstring): requests handed to `host`'s service."""
    return sum(_scrape(metrics, host).requests.get("svc", {}).values())


def in_flight(metrics: str, host: str) -> float:
    return _scrape(metrics, host).in_flight.get("svc", 0.0)


def test_host_routing_auth_and_token_stripping(gateway_factory, replicas):
    chat_a, web_a = replicas("chat-a"), replicas("web-a")
    gateway = gateway_factory([make_plan("chat", probes=FAST_PROBE), make_plan("web", auth=False, probes=FAST_PROBE)])
    gateway.publish("chat", [chat_a])
    gateway.publish("web", [web_a])
    gateway.wait_ready("chat", 1)
    gateway.wait_ready("web", 1)
    with gateway.client() as client:
        # Each host reaches its own service.
        for _ in range(3):
            assert client.get(gateway.url("chat"), headers=gateway.auth()).headers["x-replica"] == "test/chat-a"
            assert client.get(gateway.url("web")).headers["x-replica"] == "test/web-a"
        # Both stack tokens are accepted, and the bearer scheme is case-insensitive.
        assert client.get(gateway.url("chat"), headers=gateway.auth(TOKENS[1])).status_code == 200
        assert client.get(gateway.url("chat"), headers={"Authorization": f"bearer {TOKENS[0]}"}).status_code == 200
        seen_before = chat_a.stats()["requests"].get("/", 0)
        refusals = [
            client.get(gateway.url("chat")),
            client.get(gateway.url("chat"), headers={"Authorization": "Bearer wrong"}),
            client.get(gateway.url("chat"), headers={"Authorization": f"Bearer {TOKENS[0]}x"}),
            client.get(gateway.url("chat"), headers={"Authorization": TOKENS[0]}),
            client.post(gateway.url("chat", "/v1/chat/completions"), json={"model": "x"}),
        ]
        for response in refusals:
            assert response.status_code == 401
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.json()["error"]["code"] == "invalid_api_key"
        # 401s never reach a replica, and the stack's token is not forwarded to one.
        stats = chat_a.stats()
        assert stats["requests"].get("/", 0) == seen_before
        assert stats["requests"].get("/v1/chat/completions", 0) == 0
        client.get(gateway.url("chat", "/ping"), headers=gateway.auth())
        assert "Authorization" not in chat_a.stats()["last_headers"]
        # auth: false passes the client's own Authorization header through untouched.
        client.get(gateway.url("web", "/ping"), headers={"Authorization": "Bearer app-own"})
        assert web_a.stats()["last_headers"]["Authorization"] == "Bearer app-own"
        # An unknown host under the domain is not routed to any service.
        unknown = client.get(gateway.url("nosuch"), headers=gateway.auth())
        assert "x-replica" not in unknown.headers


def test_tls_certificate_from_internal_ca(gateway_factory, replicas):
    gateway = gateway_factory([make_plan("chat", probes=FAST_PROBE)])
    context = ssl.create_default_context(cafile=str(gateway.ca_path))
    with socket.create_connection(("127.0.0.1", gateway.settings.https_port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="chat.localhost") as tls:
            cert = tls.getpeercert()
            assert tls.version() in {"TLSv1.2", "TLSv1.3"}
    names = {value for kind, value in cert["subjectAltName"] if kind == "DNS"}
    assert "chat.localhost" in names
    issuer = dict(pair[0] for pair in cert["issuer"])
    assert "Caddy Local Authority" in issuer["commonName"]
    # A client that does not trust the local CA is refused.
    with socket.create_connection(("127.0.0.1", gateway.settings.https_port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="chat.localhost")


def test_failing_readiness_drops_replica_and_traffic_continues(gateway_factory, replicas):
    a, b = replicas("a"), replicas("b")
    gateway = gateway_factory([make_plan("chat", probes=FAST_PROBE)])
    gateway.publish("chat", [a, b])
    gateway.wait_ready("chat", 2)
    with gateway.client() as client:
        served = {client.get(gateway.url("chat", "/ping"), headers=gateway.auth()).headers["x-replica"] for _ in range(20)}
        assert served == {"test/a", "test/b"}
        a.process.send_signal(signal.SIGUSR1)  # /health answers 503 from now on
        gateway.wait_ready("chat", 1)
        # status.json reports the ready sets Caddy serves: from now on, not one request goes to a.
        assert read_status(gateway.state_dir)["services"]["chat"]["ready"] == [b.address]
        responses = [client.get(gateway.url("chat", "/ping"), headers=gateway.auth()) for _ in range(30)]
        assert all(r.status_code == 200 for r in responses)
        assert {r.headers["x-replica"] for r in responses} == {"test/b"}
        a.process.send_signal(signal.SIGUSR2)  # recovered: it comes back
        gateway.wait_ready("chat", 2)
        served = {client.get(gateway.url("chat", "/ping"), headers=gateway.auth()).headers["x-replica"] for _ in range(30)}
        assert served == {"test/a", "test/b"}


def test_request_waits_for_first_replica(gateway_factory, replicas):
    gateway = gateway_factory([make_plan("chat", model=ModelPlan(name="chat-small"), probes=FAST_PROBE)])
    result: dict[str, object] = {}

    def send() -> None:
        with gateway.client() as client:
            started = time.monotonic()
            response = client.post(
                gateway.url("chat", "/v1/chat/completions"),
                headers=gateway.auth(),
                json={"model": "chat-small", "messages": [{"role": "user", "content": "cold start"}]},
            )
            result["elapsed"] = time.monotonic() - started
            result["response"] = response

    sender = threading.Thread(target=send)
    sender.start()
    # The request is held by Caddy while the service has no replica.
    wait_for(lambda: in_flight(gateway.metrics(), "chat.localhost") > 0, what="the request to be held")
    time.sleep(1.0)
    assert "response" not in result
    replica = replicas("late")
    gateway.publish("chat", [replica])
    sender.join(30)
    response = result["response"]
    assert isinstance(response, httpx.Response)
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Echo: cold start"
    assert result["elapsed"] >= 1.0
    # The held request counts towards the service's rate once answered.
    wait_for(lambda: service_requests(gateway.metrics(), "chat.localhost") == 1, what="the request in the metrics")


def test_no_replica_in_time_is_503_and_counted(gateway_factory):
    gateway = gateway_factory([make_plan("chat", probes=FAST_PROBE)], replica_wait_seconds=1)
    with gateway.client() as client:
        response = client.get(gateway.url("chat"), headers=gateway.auth())
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "no_ready_replica"
        assert client.get(gateway.url("chat")).status_code == 401
    metrics = gateway.metrics()
    # The scaler sees the 503 (scale from zero) and not the 401.
    assert service_requests(metrics, "chat.localhost") == 1


def test_rate_limits_answer_429_and_do_not_count(gateway_factory, replicas):
    replica = replicas("r")
    plan = make_plan("chat", probes=FAST_PROBE, rate_limits=(RateLimitPlan(prefix="/limited", rps=1, burst=1),))
    gateway = gateway_factory([plan])
    gateway.publish("chat", [replica])
    gateway.wait_ready("chat", 1)
    with gateway.client() as client:
        codes = [client.get(gateway.url("chat", "/limited/x"), headers=gateway.auth()).status_code for _ in range(6)]
        assert codes.count(429) >= 3 and codes[0] != 429, codes
        limited = client.get(gateway.url("chat", "/limited/x"), headers=gateway.auth())
        if limited.status_code == 429:
            assert limited.json()["error"]["code"] == "rate_limit_exceeded"
        # Other prefixes are not limited.
        assert all(client.get(gateway.url("chat", "/ping"), headers=gateway.auth()).status_code == 200 for _ in range(6))
    metrics = gateway.metrics()
    answered = sum(1 for c in codes if c != 429) + (1 if limited.status_code != 429 else 0) + 6
    assert service_requests(metrics, "chat.localhost") == answered


def test_body_limit(gateway_factory, replicas):
    replica = replicas("r")
    gateway = gateway_factory([make_plan("chat", probes=FAST_PROBE)], body_limit_mb=1)
    gateway.publish("chat", [replica])
    gateway.wait_ready("chat", 1)
    with gateway.client() as client:
        big = client.post(gateway.url("chat", "/v1/completions"), headers=gateway.auth(), content=b"x" * (2 * 1024 * 1024))
        assert big.status_code == 413
        ok = client.post(gateway.url("chat", "/v1/completions"), headers=gateway.auth(), json={"model": "chat-small", "prompt": "a"})
        assert ok.status_code == 200


class _Load:
    """Eight clients (GET, POST, streamed POST) looping on one route until stopped."""

    def __init__(self, gateway, router: bool = False) -> None:
        self.gateway = gateway
        self.router = router
        self.failures: list[str] = []
        self.failed_at: list[float] = []
        self.seen: set[str] = set()
        self.done = 0
        self.stop = asyncio.Event()

    async def worker(self, client: httpx.AsyncClient, n: int) -> None:
        gateway = self.gateway
        while not self.stop.is_set():
            try:
                if n % 2:
                    r = await client.get(gateway.url("chat", "/ping"), headers=gateway.auth())
                else:
                    # With `router`, half the POSTs go through the OpenAI router (gateway.<domain>).
                    host = "gateway" if self.router and n % 4 == 2 else "chat"
                    r = await client.post(
                        gateway.url(host, "/v1/chat/completions"), headers=gateway.auth(),
                        json={"model": "chat-small", "messages": [{"role": "user", "content": "x y"}], "stream": n % 4 == 0},
                    )
                if r.status_code != 200:
                    self.failures.append(f"{r.status_code} {r.text[:200]}")
                else:
                    self.seen.add(r.headers.get("x-replica", "?"))
                self.done += 1
            except httpx.HTTPError as exc:
                self.failures.append(repr(exc))
                self.failed_at.append(time.monotonic())

    async def run(self, client: httpx.AsyncClient, changes) -> None:
        tasks = [asyncio.create_task(self.worker(client, n)) for n in range(8)]
        try:
            await changes(asyncio.get_running_loop())
        finally:
            self.stop.set()
            await asyncio.gather(*tasks)


def test_replica_changes_under_load_fail_no_request(gateway_factory, replicas):
    first = replicas("first")
    gateway = gateway_factory([make_plan("chat", model=ModelPlan(name="chat-small"), probes=FAST_PROBE)])
    gateway.publish("chat", [first])
    gateway.wait_ready("chat", 1)
    load = _Load(gateway)

    async def changes(loop) -> None:
        # Scale 1 -> 2 -> 3, then replace the first two, then down to one: publish first,
        # stop a removed replica only after publish_replicas returns. No Caddy reload happens,
        # so even keep-alive connections see no failure.
        second = await loop.run_in_executor(None, lambda: replicas("second"))
        await loop.run_in_executor(None, gateway.publish, "chat", [first, second])
        await asyncio.sleep(1)
        third = await loop.run_in_executor(None, lambda: replicas("third"))
        await loop.run_in_executor(None, gateway.publish, "chat", [first, second, third])
        await asyncio.sleep(1)
        await loop.run_in_executor(None, gateway.publish, "chat", [third])
        await loop.run_in_executor(None, first.stop)
        await loop.run_in_executor(None, second.stop)
        await asyncio.sleep(1)

    async def drive() -> None:
        async with gateway.async_client() as client:
            await load.run(client, changes)

    asyncio.run(asyncio.wait_for(drive(), 120))
    assert not load.failures, load.failures[:5]
    assert load.done > 100
    assert {"test/first", "test/second", "test/third"} <= load.seen


def test_route_changes_under_load_fail_no_request(gateway_factory, replicas):
    """Adding a service, changing one, adding a token and removing a service, all under load on
    the service host and through the router: no request fails. Routes live in the gateway's
    routes file, which its Caddy module re-reads; Caddy's config is never reloaded, so no
    keep-alive connection is closed under a client (a config reload did that: issue 15)."""
    first = replicas("first")
    gateway = gateway_factory([make_plan("chat", model=ModelPlan(name="chat-small"), probes=FAST_PROBE)])
    gateway.publish("chat", [first])
    gateway.wait_ready("chat", 1)
    load = _Load(gateway, router=True)
    config_path = gateway.state_dir / "gateway.json"
    tokens_path = gateway.state_dir / "secrets" / "tokens.json"
    caddy_log = gateway.state_dir / "caddy.log"
    loads_before = caddy_log.read_text().count('"msg":"server running"')

    def apply(edit) -> None:
        document = json.loads(config_path.read_text())
        edit(document)
        config_path.write_text(json.dumps(document))
        before = gateway.status.get("routes_generation", 0)
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: gateway.status.get("routes_generation", 0) > before, what="the change to be live")

    def add_extra(document) -> None:
        extra = json.loads(json.dumps(document["plans"][0]))
        extra["name"] = extra["route"]["subdomain"] = "extra"
        extra["route"]["model"]["name"] = "extra-model"
        document["plans"].append(extra)

    def limit_chat(document) -> None:
        document["plans"][0]["route"]["rate_limits"] = [{"prefix": "/limited", "key": "ip_address", "rps": 1, "burst": 1}]

    def remove_extra(document) -> None:
        document["plans"] = [p for p in document["plans"] if p["name"] != "extra"]

    async def changes(loop) -> None:
        await asyncio.sleep(1)
        await loop.run_in_executor(None, apply, add_extra)
        assert "extra" in gateway.status["hosts"]
        await asyncio.sleep(1)
        await loop.run_in_executor(None, apply, limit_chat)
        await asyncio.sleep(1)
        tokens_path.write_text(json.dumps([*TOKENS, "tok-gamma-" + "g" * 32]))
        await loop.run_in_executor(None, apply, lambda document: None)
        await asyncio.sleep(1)
        await loop.run_in_executor(None, apply, remove_extra)
        assert "extra" not in gateway.status["hosts"]
        await asyncio.sleep(1)

    async def drive() -> None:
        async with gateway.async_client() as client:
            await load.run(client, changes)

    asyncio.run(asyncio.wait_for(drive(), 120))
    assert load.done > 100
    assert not load.failures, load.failures[:5]
    # The changes took effect without a config reload.
    assert caddy_log.read_text().count('"msg":"server running"') == loads_before
    with gateway.client() as client:
        assert client.get(gateway.url("extra", "/ping"), headers=gateway.auth()).status_code == 404
        assert client.get(gateway.url("chat", "/ping"), headers={"Authorization": "Bearer tok-gamma-" + "g" * 32}).status_code == 200
        codes = [client.get(gateway.url("chat", "/limited"), headers=gateway.auth()).status_code for _ in range(6)]
        assert 429 in codes


def test_bad_reload_keeps_serving_and_good_reload_applies(gateway_factory, replicas):
    replica = replicas("r")
    gateway = gateway_factory([make_plan("chat", probes=FAST_PROBE)])
    gateway.publish("chat", [replica])
    gateway.wait_ready("chat", 1)
    config_path = gateway.state_dir / "gateway.json"
    document = json.loads(config_path.read_text())
    good = json.dumps(document)
    document["plans"][0]["route"]["readiness_path"] = '/"\n}\nhttp://evil {'
    config_path.write_text(json.dumps(document))
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "config not applied" in gateway.log(), what="the refusal in the log")
    assert "readiness_probe" in gateway.log()
    with gateway.client() as client:
        assert client.get(gateway.url("chat", "/ping"), headers=gateway.auth()).status_code == 200
        # A good config with a second service applies without a restart.
        document = json.loads(good)
        document["plans"].append(json.loads(json.dumps(document["plans"][0]).replace('"chat"', '"other"')))
        config_path.write_text(json.dumps(document))
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "other" in gateway.status["hosts"], what="the reload")
        gateway.publish("other", [replica])
        gateway.wait_ready("other", 1)
        wait_for(lambda: client.get(gateway.url("other", "/ping"), headers=gateway.auth()).status_code == 200, what="other to serve")
        assert client.get(gateway.url("chat", "/ping"), headers=gateway.auth()).status_code == 200


def test_sigterm_leaves_no_child(gateway_factory):
    gateway = gateway_factory([make_plan("chat")])
    status = gateway.status
    assert gateway.stop() == 0
    from gateway_helpers import pid_alive  # type: ignore[import-not-found]

    wait_for(lambda: not pid_alive(status["caddy_pid"]), 10, what="caddy to exit")
    assert not Path(status["router_socket"]).exists()
    assert read_status(gateway.state_dir) is None


def test_a_state_dir_too_deep_for_a_unix_socket_serves_and_reloads(gateway_factory, replicas, tmp_path):
    """Socket paths over 107 bytes fail to bind; the sockets live in a short private directory."""
    from serveform.gateway import write_config

    name = "d" * 120
    assert len(str(tmp_path / name / "caddy-admin.sock").encode()) > 107
    replica = replicas("a")
    plans = [make_plan("chat", model=ModelPlan(name="chat-small"), probes=FAST_PROBE)]
    gateway = gateway_factory(plans, name=name)
    status = gateway.status
    socket_dir = Path(status["socket_dir"])
    assert Path(status["router_socket"]).parent == socket_dir and status["admin"] == f"unix/{socket_dir}/caddy-admin.sock"
    assert len(str(socket_dir / "caddy-admin.sock").encode()) <= 107
    assert socket_dir.stat().st_mode & 0o777 == 0o700 and socket_dir.parent.stat().st_mode & 0o777 == 0o700
    gateway.publish("chat", [replica])
    gateway.wait_ready("chat", 1)
    with gateway.client() as client:
        assert client.get(gateway.url("chat", "/ping"), headers=gateway.auth()).status_code == 200
        # The router's socket: the OpenAI endpoint answers.
        models = client.get(gateway.url("gateway", "/v1/models"), headers=gateway.auth())
        assert models.status_code == 200 and [m["id"] for m in models.json()["data"]] == ["chat-small"]
        # The admin socket: a route change reloads Caddy.
        write_config(gateway.state_dir, gateway.settings, [*plans, make_plan("other")])
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "other" in gateway.status["hosts"], what="the reload")
        assert client.get(gateway.url("chat", "/ping"), headers=gateway.auth()).status_code == 200
    assert gateway.stop() == 0
    assert not socket_dir.exists() and socket_dir.parent.stat().st_mode & 0o777 == 0o700


def test_bad_config_exits_before_starting_anything(tmp_path, caddy):
    import subprocess
    import sys

    state = tmp_path / "gw"
    state.mkdir()
    (state / "gateway.json").write_text(json.dumps({"settings": {"domain": "Bad Domain!"}, "plans": []}))
    result = subprocess.run([sys.executable, "-m", "serveform.gateway", "run", "--state-dir", str(state)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "gateway.json" in result.stderr and "settings.domain" in result.stderr
    assert not (state / "status.json").exists()


def test_publish_rejects_bad_addresses_before_writing(tmp_path):
    with pytest.raises(ValueError, match="expected IP:PORT"):
        publish_replicas(tmp_path, "chat", ["127.0.0.1:8000", "not-an-ip:80"])
    assert not (tmp_path / "replicas" / "chat.json").exists()
    with pytest.raises(ValueError):
        publish_replicas(tmp_path, "../etc", ["127.0.0.1:8000"])


def test_plain_http_when_tls_is_off(gateway_factory, replicas):
    replica = replicas("r")
    gateway = gateway_factory([make_plan("chat", model=ModelPlan(name="chat-small"), probes=FAST_PROBE)], tls="off")
    gateway.publish("chat", [replica])
    gateway.wait_ready("chat", 1)
    assert gateway.url("chat").startswith("http://")
    with gateway.client() as client:
        assert client.get(gateway.url("chat", "/ping"), headers=gateway.auth()).text == "ok"
        assert client.get(gateway.url("chat", "/ping")).status_code == 401
        answer = client.post(
            gateway.url("gateway", "/v1/chat/completions"), headers=gateway.auth(),
            json={"model": "chat-small", "messages": [{"role": "user", "content": "plain"}]},
        )
        assert answer.json()["choices"][0]["message"]["content"] == "Echo: plain"
    assert service_requests(gateway.metrics(), "chat.localhost") == 2


def test_on_demand_tls_asks_only_for_known_hosts(gateway_factory):
    # Nothing here contacts an ACME server: on-demand certificates are requested only at a handshake.
    gateway = gateway_factory([make_plan("chat")], tls="on_demand", domain="example.com", acme_email="ops@example.com")
    internal = gateway.status["internal_url"]
    assert httpx.get(f"{internal}/_serveform/ask", params={"domain": "chat.example.com"}).status_code == 200
    assert httpx.get(f"{internal}/_serveform/ask", params={"domain": "gateway.example.com"}).status_code == 200
    assert httpx.get(f"{internal}/_serveform/ask", params={"domain": "evil.example.com"}).status_code == 404
    assert httpx.get(f"{internal}/_serveform/ask").status_code == 404


def test_port_in_use_fails_with_caddys_reason(tmp_path, caddy):
    import subprocess
    import sys

    from gateway_helpers import free_port, start_gateway  # type: ignore[import-not-found]

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(AssertionError) as caught:
            start_gateway(tmp_path / "gw", [make_plan("chat")], tls="off", http_port=port, https_port=free_port())
    assert "address already in use" in str(caught.value)


def test_render_command_prints_the_caddyfile(tmp_path):
    import subprocess
    import sys

    from serveform.gateway import GatewaySettings, write_config

    write_config(tmp_path, GatewaySettings(tls="off", bind=("127.0.0.1",)), [make_plan("chat")])
    result = subprocess.run([sys.executable, "-m", "serveform.gateway", "render", "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    # Services are served from the routes file, so the Caddyfile names none of them.
    assert result.returncode == 0 and "http://:80 {" in result.stdout and "chat.localhost" not in result.stdout
