"""The gateway's parts on their own: DNS responder, prober, TGI translation, state files."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct

import pytest
from aiohttp import web
from hypothesis import given, strategies as st
from pydantic import SecretStr

from serveform.gateway import GatewayConfigError, GatewaySettings, read_config, write_config
from serveform.gateway.dns import DnsResponder, _encode_name, address_name, srv_name
from serveform.gateway.prober import Prober
from serveform.gateway.routes import ProbeCheck
from serveform.gateway import tgi

from gateway_helpers import make_plan  # type: ignore[import-not-found]


def _query(name: str, qtype: int, ident: int = 7) -> bytes:
    return struct.pack("!6H", ident, 0x0100, 1, 0, 0, 0) + _encode_name(name) + struct.pack("!HH", qtype, 1)


def _udp(port: int, packet: bytes) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(packet, ("127.0.0.1", port))
        return sock.recv(65535)


async def test_dns_answers_srv_a_aaaa_and_refuses_the_rest():
    table = {"chat": [("127.0.0.1", 8001), ("::1", 8002)]}
    responder = DnsResponder(lambda s: table.get(s, []))
    await responder.start()
    try:
        loop = asyncio.get_running_loop()
        srv = await loop.run_in_executor(None, _udp, responder.port, _query(srv_name("chat"), 33))
        ident, flags, _qd, ancount, _ns, _ar = struct.unpack("!6H", srv[:12])
        assert ident == 7 and flags & 0x8000 and flags & 0xF == 0 and ancount == 2
        assert address_name("127.0.0.1").encode().split(b".")[0] in srv and struct.pack("!H", 8001) in srv
        a = await loop.run_in_executor(None, _udp, responder.port, _query(address_name("127.0.0.1"), 1))
        assert a.endswith(socket.inet_aton("127.0.0.1"))
        aaaa = await loop.run_in_executor(None, _udp, responder.port, _query(address_name("::1"), 28))
        assert aaaa.endswith(socket.inet_pton(socket.AF_INET6, "::1"))
        nx = await loop.run_in_executor(None, _udp, responder.port, _query(srv_name("none"), 33))
        assert struct.unpack("!H", nx[2:4])[0] & 0xF == 3  # NXDOMAIN: no ready replica
        refused = await loop.run_in_executor(None, _udp, responder.port, _query("example.com", 1))
        assert struct.unpack("!H", refused[2:4])[0] & 0xF == 5
        garbage = await loop.run_in_executor(None, _udp, responder.port, b"\x01\x02\xff\xff\xff")
        assert struct.unpack("!H", garbage[2:4])[0] & 0xF == 1  # FORMERR, and it keeps serving
        # Too many replicas for a plain UDP answer: truncated, then complete over TCP.
        table["chat"] = [("127.0.0.1", 9000 + i) for i in range(40)]
        truncated = await loop.run_in_executor(None, _udp, responder.port, _query(srv_name("chat"), 33))
        assert struct.unpack("!H", truncated[2:4])[0] & 0x0200
        reader, writer = await asyncio.open_connection("127.0.0.1", responder.port)
        packet = _query(srv_name("chat"), 33)
        writer.write(struct.pack("!H", len(packet)) + packet)
        size = struct.unpack("!H", await reader.readexactly(2))[0]
        full = await reader.readexactly(size)
        assert struct.unpack("!6H", full[:12])[3] == 40
        writer.close()
    finally:
        await responder.close()


@given(st.binary(max_size=300))
def test_dns_never_crashes_on_garbage(packet):
    responder = DnsResponder(lambda s: [("127.0.0.1", 1)])
    reply = responder.answer(packet, udp=True)
    assert reply is None or len(reply) >= 12


async def test_prober_ready_after_and_drop_on_failure():
    healthy = {"ok": True}
    calls = {"n": 0}

    async def health(request: web.Request) -> web.Response:
        calls["n"] += 1
        assert request.method == "POST" and await request.text() == '{"p": 1}' and request.headers["X-Probe"] == "yes"
        return web.Response(status=200 if healthy["ok"] else 503)

    app = web.Application()
    app.router.add_post("/ready", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    changes: list[str] = []
    prober = Prober(changes.append)
    await prober.start()
    try:
        check = ProbeCheck(method="POST", path="/ready", headers=(("X-Probe", "yes"),), body=b'{"p": 1}', timeout_seconds=2, interval_seconds=0.05, ready_after=3)
        prober.set_checks({"svc": (check,)})
        prober.set_published("svc", [("127.0.0.1", port)])
        assert prober.ready("svc") == []
        for _ in range(200):
            if prober.ready("svc"):
                break
            await asyncio.sleep(0.02)
        assert prober.ready("svc") == [("127.0.0.1", port)] and calls["n"] >= 3
        healthy["ok"] = False
        for _ in range(200):
            if not prober.ready("svc"):
                break
            await asyncio.sleep(0.02)
        assert prober.ready("svc") == []
        prober.set_published("svc", [])
        assert prober.snapshot()["svc"] == {"published": [], "ready": []}
        assert changes.count("svc") >= 2
    finally:
        await prober.close()
        await runner.cleanup()


def test_chat_template_runs_sandboxed():
    assert tgi.chat_prompt([{"role": "user", "content": "hi"}], None, None) == "user: hi\nassistant:"
    escape = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(tgi.ChatTemplateError):
        tgi.chat_prompt([{"role": "user", "content": "x"}], escape, None)
    with pytest.raises(tgi.ChatTemplateError, match="nope"):
        tgi.chat_prompt([{"role": "user", "content": "x"}], "{{ raise_exception('nope') }}", None)
    parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
    assert tgi.chat_prompt(parts, "{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}", "</s>") == "ab</s>"


def test_generate_request_maps_openai_parameters():
    body = {"max_tokens": 5, "temperature": 0, "top_p": 1, "stop": "END", "seed": 3, "unknown": True}
    assert tgi.generate_request(body, "P", "</s>") == {
        "inputs": "P",
        "parameters": {"details": True, "max_new_tokens": 5, "seed": 3, "stop": ["END", "</s>"]},
    }
    sampled = tgi.generate_request({"temperature": 0.7, "top_p": 0.9}, "P", None)["parameters"]
    assert sampled["temperature"] == 0.7 and sampled["do_sample"] and sampled["top_p"] == 0.9
    answer = tgi.openai_response("chat", "m", {"generated_text": "hi</s>", "details": {"finish_reason": "eos_token", "generated_tokens": 2}}, "</s>", 4)
    assert answer["choices"][0]["message"]["content"] == "hi" and answer["usage"]["total_tokens"] == 6


def test_config_round_trip_keeps_secrets_in_0600_files(tmp_path):
    t1, t2 = "t-1-0123456789abcdef0123456789abcdef", "t-2-0123456789abcdef0123456789abcdef"
    settings = GatewaySettings(domain="example.com", tls="off", bind=("127.0.0.1",), tokens=(SecretStr(t1), SecretStr(t2)))
    write_config(tmp_path, settings, [make_plan("chat")])
    assert "t-1" not in (tmp_path / "gateway.json").read_text()
    for name in ("gateway.json", "secrets/tokens.json", "secrets/dns.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o600
    config = read_config(tmp_path)
    assert [t.get_secret_value() for t in config.settings.tokens] == [t1, t2]
    assert config.plans[0].name == "chat"


def test_read_config_names_file_and_field(tmp_path):
    (tmp_path / "gateway.json").write_text(json.dumps({"settings": {"http_port": 0}, "plans": [{"name": 1}]}))
    with pytest.raises(GatewayConfigError) as caught:
        read_config(tmp_path)
    text = str(caught.value)
    assert f"{tmp_path}/gateway.json: error: settings.http_port:" in text
    assert "plans[0]." in text
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "tokens.json").write_text('["leaky-secret"')
    (tmp_path / "gateway.json").write_text(json.dumps({"settings": {}, "plans": [], "tokens_file": "secrets/tokens.json"}))
    with pytest.raises(GatewayConfigError) as caught:
        read_config(tmp_path)
    assert "tokens_file" in str(caught.value) and "leaky-secret" not in str(caught.value)


def test_secret_probe_headers_stay_out_of_gateway_json(tmp_path):
    from serveform.translator.plan import ProbePlan

    plan = make_plan("chat", probes=(ProbePlan(url="/health", headers={"X-Key": SecretStr("hidden-value"), "X-Plain": "v"}),))
    write_config(tmp_path, GatewaySettings(), [plan])
    assert "hidden-value" not in (tmp_path / "gateway.json").read_text()
    headers = read_config(tmp_path).plans[0].route.probes[0].headers
    assert headers["X-Key"].get_secret_value() == "hidden-value" and headers["X-Plain"] == "v"
