"""The OpenAI-compatible endpoint on `gateway.<domain>`: one URL for every model on the stack.

Caddy cannot route on a field of a JSON body, so this small asyncio proxy sits behind Caddy:
it reads `model` from the body and forwards the request, byte for byte (fields it does not know
pass through unchanged), to that service through Caddy's internal loopback server — the same
replicas, readiness, waiting for a replica, retries and request metrics as `<service>.<domain>`.
`format: tgi` models are translated to TGI's `/generate(_stream)` and back (see tgi.py).

Caddy checks the bearer token before a request reaches the router; the router checks it again,
in constant time, so it never serves an unauthenticated request even if reached directly.
Streams are copied chunk by chunk as they arrive.

`GET /serveform/v1/status` (same token) answers the gateway's readiness view, every service's
published and ready replicas, so `serveform status` can read it from a gateway it cannot log in
to (a VM, a pod).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from . import tgi
from .body import INLINE_PARSE_LIMIT_BYTES, BodyError, WorkerError, model_of, run_isolated, work_timeout_seconds
from .routes import ServiceRoute

__all__ = ["ModelRoute", "Router", "RouterConfig", "STATUS_PATH", "router_config"]

STATUS_PATH = "/serveform/v1/status"

_HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "TE", "Trailer",
        "Transfer-Encoding", "Upgrade", "Host", "Content-Length", "Authorization", "X-Serveform-Gateway-Secret",
    )
)
GATEWAY_SECRET_HEADER = "X-Serveform-Gateway-Secret"
"""Caddy's internal listener serves only requests carrying the gateway's secret (tools/caddy/serveform)."""
_CORS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, OpenAI-Organization, OpenAI-Project, X-Stainless-*, *",
    "Access-Control-Max-Age": "86400",
}


@dataclass(frozen=True)
class ModelRoute:
    """Where one model is served."""

    name: str
    service: str
    host: str
    prefix: str
    format: str
    chat_template: str | None
    eos_token: str | None


@dataclass(frozen=True)
class RouterConfig:
    tokens: tuple[str, ...]
    models: dict[str, ModelRoute]
    upstream: str
    """Base URL of Caddy's internal server, e.g. http://127.0.0.1:8079."""
    stream_timeout_seconds: float
    body_limit_bytes: int
    gateway_secret: str = ""
    """Presented to Caddy's internal listener, which serves the router only."""


def router_config(
    routes: tuple[ServiceRoute, ...], tokens: tuple[str, ...], upstream: str, stream_timeout_seconds: float, body_limit_bytes: int, gateway_secret: str = ""
) -> RouterConfig:
    models = {
        r.model.name: ModelRoute(
            name=r.model.name,
            service=r.name,
            host=r.host,
            prefix=r.model.prefix.rstrip("/"),
            format=r.model.format,
            chat_template=r.model.chat_template,
            eos_token=r.model.eos_token,
        )
        for r in routes
        if r.model is not None
    }
    return RouterConfig(
        tokens=tokens, models=models, upstream=upstream, stream_timeout_seconds=stream_timeout_seconds,
        body_limit_bytes=body_limit_bytes, gateway_secret=gateway_secret,
    )


def _error(status: int, message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}}, status=status, headers=_CORS)


class Router:
    """The aiohttp application; ``update`` swaps the config without dropping requests in flight."""

    def __init__(self, config: RouterConfig, status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.config = config
        self._status = status
        self._created = int(time.time())
        self._session: aiohttp.ClientSession | None = None
        self.app = web.Application(middlewares=[self._middleware], client_max_size=config.body_limit_bytes)
        self.app.router.add_route("OPTIONS", "/{tail:.*}", self._preflight)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/completions", self._completions)
        if status is not None:
            self.app.router.add_get(STATUS_PATH, self._status_handler)
        self.app.router.add_route("*", "/{tail:.*}", self._not_found)
        self.app.on_startup.append(self._open)
        self.app.on_cleanup.append(self._close)

    def update(self, config: RouterConfig) -> None:
        self.config = config

    async def _open(self, _app: web.Application) -> None:
        # No pool limit (Caddy bounds concurrency), no decompression: bytes pass through unchanged.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )

    async def _close(self, _app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    # --- request pipeline -------------------------------------------------------------------

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        headers = request.headers.getall("Authorization", [])
        # Exactly one Authorization header, as Caddy's gate demands (tools/caddy/serveform/auth.go).
        if request.method != "OPTIONS" and not (len(headers) == 1 and self._authorized(headers[0])):
            response = _error(401, "Missing or invalid bearer token. Pass 'Authorization: Bearer <token>'.", code="invalid_api_key")
            response.headers["WWW-Authenticate"] = 'Bearer realm="serveform"'
            return response
        return await handler(request)

    def _authorized(self, header: str) -> bool:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip(" \t"):
            return False
        presented = token.strip(" \t").encode()
        # Compare against every token so the time taken says nothing about which one matched.
        matched = False
        for candidate in self.config.tokens:
            matched |= hmac.compare_digest(presented, candidate.encode())
        return matched

    async def _preflight(self, request: web.Request) -> web.Response:
        return web.Response(status=204, headers=_CORS)

    async def _not_found(self, request: web.Request) -> web.Response:
        return _error(404, f"Unknown path {request.path}: this endpoint serves /v1/models, /v1/chat/completions and /v1/completions.", code="unknown_url")

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": name, "object": "model", "created": self._created, "owned_by": model.service}
            for name, model in sorted(self.config.models.items())
        ]
        return web.json_response({"object": "list", "data": data}, headers=_CORS)

    async def _status_handler(self, request: web.Request) -> web.Response:
        assert self._status is not None
        return web.json_response(self._status())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._forward(request, "chat")

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._forward(request, "completion")

    async def _forward(self, request: web.Request, kind: str) -> web.StreamResponse:
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "Request body too large.", code="request_too_large")
        try:
            # A large body is parsed in a child process, so that other services' requests, the
            # prober and the DNS responder (on this event loop) keep going meanwhile.
            if len(raw) > INLINE_PARSE_LIMIT_BYTES:
                name = await asyncio.to_thread(run_isolated, model_of, (raw,), work_timeout_seconds(len(raw)))
            else:
                name = model_of(raw)
        except (BodyError, WorkerError) as exc:
            return _error(400, f"We could not parse the JSON body of your request: {exc}.", code="invalid_json")
        if not isinstance(name, str) or not name:
            return _error(400, "You must provide a model parameter.", code="missing_model", param="model")
        model = self.config.models.get(name)
        if model is None:
            return _error(404, f"The model `{name}` does not exist or you do not have access to it.", code="model_not_found", param="model")
        if model.format == "tgi":
            return await self._forward_tgi(request, kind, model, raw)
        path = model.prefix + ("/chat/completions" if kind == "chat" else "/completions")
        return await self._proxy(request, model, path, raw)

    def _upstream_headers(self, request: web.Request, model: ModelRoute) -> dict[str, str]:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        headers["Host"] = model.host
        headers[GATEWAY_SECRET_HEADER] = self.config.gateway_secret
        # Caddy set X-Forwarded-For to the client; its internal server trusts loopback, so rate
        # limits and logs keep seeing the real client.
        headers.setdefault("X-Forwarded-For", request.remote or "127.0.0.1")
        return headers

    async def _proxy(self, request: web.Request, model: ModelRoute, path: str, raw: bytes) -> web.StreamResponse:
        assert self._session is not None
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.config.stream_timeout_seconds)
        try:
            async with self._session.post(
                self.config.upstream + path, data=raw, headers=self._upstream_headers(request, model), timeout=timeout
            ) as upstream:
                response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
                for key, value in upstream.headers.items():
                    if key.lower() not in _HOP_BY_HOP:
                        response.headers.add(key, value)
                response.headers.update(_CORS)
                await response.prepare(request)
                try:
                    async for chunk in upstream.content.iter_any():
                        await response.write(chunk)
                    await response.write_eof()
                except ConnectionResetError:
                    pass  # the client left mid-stream; leaving the block closes the upstream request too
                return response
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if request.transport is None or request.transport.is_closing():
                raise asyncio.CancelledError from exc  # the client left; nothing to answer
            return _error(502, f"The service behind model `{model.name}` could not be reached.", kind="service_unavailable", code="upstream_error")

    # --- format: tgi ------------------------------------------------------------------------

    async def _forward_tgi(self, request: web.Request, kind: str, model: ModelRoute, raw: bytes) -> web.StreamResponse:
        assert self._session is not None
        # Parsing and the chat template (from the service file, so possibly nested loops) run in
        # a child process with a deadline and an output bound.
        limit = max(tgi.PROMPT_MIN_LIMIT_CHARS, 4 * len(raw))
        try:
            payload, stream, include_usage = await asyncio.to_thread(
                run_isolated, tgi.prepare_generate, (raw, kind, model.chat_template, model.eos_token, limit), work_timeout_seconds(len(raw))
            )
        except BodyError as exc:
            return _error(400, f"We could not parse the JSON body of your request: {exc}.", code="invalid_json")
        except (tgi.ChatTemplateError, WorkerError) as exc:
            param = "messages" if kind == "chat" else "prompt"
            return _error(400, str(exc) if isinstance(exc, tgi.ChatTemplateError) else f"chat_template {exc}", param=param)
        headers = self._upstream_headers(request, model)
        headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.config.stream_timeout_seconds)
        url = self.config.upstream + ("/generate_stream" if stream else "/generate")
        try:
            async with self._session.post(url, data=payload, headers=headers, timeout=timeout) as upstream:
                if upstream.status != 200:
                    return await self._tgi_error(upstream)
                if not stream:
                    answer = json.loads(await upstream.read())
                    prefill = len((answer.get("details") or {}).get("prefill") or [])
                    return web.json_response(tgi.openai_response(kind, model.name, answer, model.eos_token, prefill), headers=_CORS)
                try:
                    return await self._tgi_stream(request, upstream, kind, model, include_usage)
                except ConnectionResetError:
                    raise asyncio.CancelledError from None  # the client left mid-stream
        except (aiohttp.ClientError, asyncio.TimeoutError, json.JSONDecodeError) as exc:
            if request.transport is None or request.transport.is_closing():
                raise asyncio.CancelledError from exc
            return _error(502, f"The service behind model `{model.name}` could not be reached.", kind="service_unavailable", code="upstream_error")

    async def _tgi_error(self, upstream: aiohttp.ClientResponse) -> web.Response:
        raw = await upstream.read()
        try:
            document = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            document = None
        if isinstance(document, dict) and isinstance(document.get("error"), dict):
            # Already OpenAI-shaped (e.g. Caddy's 503 while no replica is ready).
            return web.json_response(document, status=upstream.status, headers=_CORS)
        message = document.get("error") if isinstance(document, dict) else None
        kind = document.get("error_type", "upstream_error") if isinstance(document, dict) else "upstream_error"
        return _error(upstream.status, str(message or f"upstream answered {upstream.status}"), kind=str(kind))

    async def _tgi_stream(self, request: web.Request, upstream: aiohttp.ClientResponse, kind: str, model: ModelRoute, include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **_CORS})
        await response.prepare(request)
        ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        if kind == "chat":
            await response.write(tgi.openai_chunk(kind, ident, model.name, created, "", None, role=True))
        finish = None
        generated = 0
        async for line in upstream.content:
            text_line = line.decode("utf-8", "replace").strip()
            if not text_line.startswith("data:"):
                continue
            try:
                event = json.loads(text_line[5:])
            except json.JSONDecodeError:
                continue
            if "error" in event and "token" not in event:
                finish = "error"
                break
            text, finish = tgi.translate_event(event, model.eos_token)
            if event.get("token") and not event["token"].get("special"):
                generated += 1
            if text:
                await response.write(tgi.openai_chunk(kind, ident, model.name, created, text, None))
            if finish is not None:
                break
        last = tgi.openai_chunk(kind, ident, model.name, created, None if kind == "chat" else "", finish or "stop")
        if include_usage:
            event = json.loads(last[6:])
            event["usage"] = {"prompt_tokens": 0, "completion_tokens": generated, "total_tokens": generated}
            last = b"data: " + json.dumps(event).encode() + b"\n\n"
        await response.write(last)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
