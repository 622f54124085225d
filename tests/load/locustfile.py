"""Load on a stack's gateway: plain routes, chat completions, streamed chat completions.

Used by the benchmarks and the scaler's end-to-end test. Everything comes from the environment:

    SERVEFORM_LOAD_URL          base URL of a service route, e.g. https://chat.localhost:8443
                                (locust's --host wins when given)
    SERVEFORM_LOAD_GATEWAY_URL  base URL of the OpenAI endpoint; default: the service URL with its
                                first label replaced by `gateway` (https://gateway.localhost:8443)
    SERVEFORM_LOAD_TOKEN        bearer token (stack token)
    SERVEFORM_LOAD_MODEL        model name for chat completions (default chat-small)
    SERVEFORM_LOAD_CA           CA bundle to verify TLS with (e.g. the gateway's internal root);
                                "insecure" skips verification; default: the system store
    SERVEFORM_LOAD_RPS_PER_USER each user's request rate (locust constant_throughput); default: no pause
    SERVEFORM_LOAD_RESOLVE      "name=ip,..." connect overrides; `*.localhost` always goes to 127.0.0.1
                                (the client resolves these itself, never the system resolver)

User classes (pick with `locust -f tests/load/locustfile.py PlainUser ChatUser`):
PlainUser (GET /ping on the service route), ChatUser (POST /v1/chat/completions on the service
route), StreamUser (streamed chat completion through gateway.<domain>; the times to the first
token and to the stream's end are reported as their own entries, "TTFT" and "stream end").

Example::

    SERVEFORM_LOAD_URL=https://chat.localhost:8443 SERVEFORM_LOAD_TOKEN=... \\
    SERVEFORM_LOAD_CA=.serveform/local/dev/gateway/caddy/pki/authorities/local/root.crt \\
      locust -f tests/load/locustfile.py --headless -u 20 -r 5 -t 60s
"""

from __future__ import annotations

import json
import os
import socket
import time
from urllib.parse import urlsplit, urlunsplit

from locust import HttpUser, between, constant_throughput, events, task

_overrides = {}
for item in filter(None, os.environ.get("SERVEFORM_LOAD_RESOLVE", "").split(",")):
    name, _, ip = item.partition("=")
    _overrides[name.strip().lower()] = ip.strip()
_getaddrinfo = socket.getaddrinfo


def _resolve(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    name = host.decode() if isinstance(host, bytes) else host
    if isinstance(name, str):
        lowered = name.lower().rstrip(".")
        if lowered in _overrides:
            return _getaddrinfo(_overrides[lowered], *args, **kwargs)
        if lowered == "localhost" or lowered.endswith(".localhost"):
            return _getaddrinfo("127.0.0.1", *args, **kwargs)
    return _getaddrinfo(host, *args, **kwargs)


# Load clients connect by name (so Host and SNI are right) but to the address chosen here.
socket.getaddrinfo = _resolve

SERVICE_URL = os.environ.get("SERVEFORM_LOAD_URL", "https://chat.localhost:8443")
TOKEN = os.environ.get("SERVEFORM_LOAD_TOKEN", "")
MODEL = os.environ.get("SERVEFORM_LOAD_MODEL", "chat-small")
_CA = os.environ.get("SERVEFORM_LOAD_CA")
VERIFY: bool | str = False if _CA == "insecure" else (_CA or True)
_RPS = os.environ.get("SERVEFORM_LOAD_RPS_PER_USER")


def gateway_url(service_url: str) -> str:
    explicit = os.environ.get("SERVEFORM_LOAD_GATEWAY_URL")
    if explicit:
        return explicit.rstrip("/")
    parts = urlsplit(service_url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, "gateway." + host.split(".", 1)[-1] + port, "", "", "")).rstrip("/")


def _wait():  # type: ignore[no-untyped-def]
    return constant_throughput(float(_RPS)) if _RPS else between(0, 0)


class _GatewayUser(HttpUser):
    abstract = True
    host = SERVICE_URL
    wait_time = _wait()

    def on_start(self) -> None:
        self.client.verify = VERIFY
        self.client.headers["Authorization"] = f"Bearer {TOKEN}"

    def _chat_body(self, stream: bool) -> dict:
        return {"model": MODEL, "messages": [{"role": "user", "content": "load test message"}], "max_tokens": 8, "stream": stream}


class PlainUser(_GatewayUser):
    """A small GET on the service route."""

    @task
    def ping(self) -> None:
        self.client.get("/ping", name="GET /ping")


class ChatUser(_GatewayUser):
    """A non-streamed chat completion on the service route."""

    @task
    def chat(self) -> None:
        with self.client.post("/v1/chat/completions", json=self._chat_body(False), name="POST chat", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
            elif not response.json().get("choices"):
                response.failure("no choices in the answer")


class StreamUser(_GatewayUser):
    """A streamed chat completion through gateway.<domain>; reports TTFT separately."""

    @task
    def stream(self) -> None:
        url = gateway_url(self.host) + "/v1/chat/completions"
        started = time.perf_counter()
        first = None
        tokens = 0
        with self.client.post(url, json=self._chat_body(True), name="POST chat stream", stream=True, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
                return
            for line in response.iter_lines():
                if not line.startswith(b"data:") or line.strip() == b"data: [DONE]":
                    continue
                event = json.loads(line[5:])
                delta = (event.get("choices") or [{}])[0].get("delta", {})
                if delta.get("content"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
            if tokens == 0:
                response.failure("the stream carried no token")
        if first is not None:
            report_stream(events.request.fire, started, first, time.perf_counter(), tokens)


class StreamTimingError(Exception):
    """A stream's first token came after its end: the two clocks disagree, so neither entry can be trusted."""


def report_stream(fire, started: float, first: float, ended: float, tokens: int) -> None:  # type: ignore[no-untyped-def]
    """Report one stream as two entries: "TTFT" (to the first token) and "stream end" (to the last byte).

    Locust times a streamed request only to its headers, hence these. Both are fired for every
    stream that carried a token, so the two entries always count the same requests; a first token
    later than the end is recorded as a failure of "stream end" (a per-request check, which the
    rounded, clamped medians of the CSV cannot give).
    """
    error = None
    if first > ended:
        error = StreamTimingError(f"first token at {(first - started) * 1000:.3f} ms, after the end at {(ended - started) * 1000:.3f} ms")
    fire(request_type="SSE", name="TTFT", response_time=(first - started) * 1000, response_length=0, exception=None, context={})
    fire(request_type="SSE", name="stream end", response_time=(ended - started) * 1000, response_length=tokens, exception=error, context={})
