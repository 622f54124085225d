"""A small OpenAI-compatible (or TGI-compatible) chat server for examples, tests and benchmarks.

It needs no GPU and downloads nothing: every reply is derived deterministically from the
request, so a test can predict the exact text a client must receive through the gateway.

Run it from the project root (this folder is not a package, so it is run by path)::

    python stacks/examples/chat_server.py --port 8000 --model chat-small
    python stacks/examples/chat_server.py --format tgi --port 8001 --eos-token '</s>'

Endpoints (``--format openai``, the default)::

    GET  /v1/models             the one model this replica serves (`--prefix` moves /v1)
    POST /v1/chat/completions   reply "Echo: <last user message>", cut at max_tokens
    POST /v1/completions        reply "Echo: <prompt>", cut at max_tokens

Endpoints (``--format tgi``, text-generation-inference 2.x shapes)::

    GET  /info
    POST /generate              {"inputs": ..., "parameters": {...}} -> {"generated_text": ...}
    POST /generate_stream       server-sent events of {"token": {...}, ...}

Both formats also serve ``GET /`` (a short text naming the replica), ``GET /ping`` (``ok``,
for throughput benchmarks), ``GET /health`` (200 while healthy) and ``GET /_stats`` (request
counts, headers and body of the last other request, so tests can see what reached a replica).

Every response carries ``X-Replica: <run name>/<replica id>`` taken from ``DSTACK_RUN_NAME``
and ``DSTACK_REPLICA_NUM`` (or ``SERVEFORM_REPLICA_ID``), falling back to ``pid<pid>``, so that
tests can count distinct replicas behind a route. ``SIGUSR1`` makes the replica unhealthy
(``/health`` and ``/`` answer 503, the other endpoints keep serving) and ``SIGUSR2`` makes it
healthy again: a way for tests to fail a readiness check without touching the network.

Streams are real server-sent events: each token is written and flushed on its own, with
``--token-delay-ms`` between tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import time
from collections import Counter
from typing import Any

from aiohttp import web

DEFAULT_PORT = 8000
DEFAULT_MODEL = "chat-small"
DEFAULT_TOKEN_DELAY_MS = 5.0
DEFAULT_MAX_TOKENS = 64
REPLY_PREFIX = "Echo:"

_STATE = web.AppKey("state", dict)


def _replica_identity() -> str:
    run = os.environ.get("DSTACK_RUN_NAME", "chat")
    replica = os.environ.get("DSTACK_REPLICA_NUM") or os.environ.get("SERVEFORM_REPLICA_ID") or f"pid{os.getpid()}"
    return f"{run}/{replica}"


def reply_tokens(text: str, max_tokens: int | None) -> tuple[list[str], str]:
    """The tokens of the reply to ``text`` and the OpenAI finish reason.

    The reply is ``Echo:`` followed by the words of ``text``; each word is one token, and every
    token but the first carries its leading space, so joining the tokens gives the text.
    """
    words = [REPLY_PREFIX, *text.split()]
    limit = DEFAULT_MAX_TOKENS if max_tokens is None else max(int(max_tokens), 0)
    cut = words[:limit]
    tokens = [w if i == 0 else " " + w for i, w in enumerate(cut)]
    return tokens, ("length" if len(words) > limit else "stop")


def _content_text(content: Any) -> str:
    # OpenAI lets `content` be a string or a list of parts ({"type": "text", "text": ...}).
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _error(status: int, message: str, kind: str = "invalid_request_error") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": None}}, status=status)


async def _read_json(request: web.Request) -> dict[str, Any] | web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "request body must be a JSON object")
    return body


@web.middleware
async def _bookkeeping(request: web.Request, handler: Any) -> web.StreamResponse:
    state = request.app[_STATE]
    if request.path != "/_stats":  # reading the stats must not change them
        state["requests"][request.path] += 1
        state["last_headers"] = {k: v for k, v in request.headers.items()}
        if request.can_read_body:
            state["last_body"] = (await request.read())[:4096].decode("utf-8", "replace")
    return await handler(request)


async def _on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["X-Replica"] = request.app[_STATE]["replica"]


# --- endpoints shared by both formats ---------------------------------------------------------


async def root(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    if not state["healthy"]:
        return web.Response(status=503, text="unhealthy\n")
    return web.Response(text=f"chat server {state['replica']} serving {state['model']}\n")


async def ping(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def health(request: web.Request) -> web.Response:
    if not request.app[_STATE]["healthy"]:
        return web.json_response({"status": "unhealthy"}, status=503)
    return web.json_response({"status": "ok"})


async def stats(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    return web.json_response(
        {
            "replica": state["replica"],
            "requests": dict(state["requests"]),
            "last_headers": state["last_headers"],
            "last_body": state["last_body"],
            "healthy": state["healthy"],
        }
    )


# --- OpenAI format ----------------------------------------------------------------------------


async def models(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    created = int(state["started"])
    return web.json_response(
        {"object": "list", "data": [{"id": state["model"], "object": "model", "created": created, "owned_by": "serveform"}]}
    )


async def _openai(request: web.Request, kind: str) -> web.StreamResponse:
    state = request.app[_STATE]
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    model = body.get("model")
    if model != state["model"]:
        return _error(404, f"The model `{model}` does not exist.", "model_not_found")
    if kind == "chat":
        text = _last_user_text(body.get("messages"))
        prompt_words = sum(len(_content_text(m.get("content")).split()) for m in body.get("messages") or [] if isinstance(m, dict))
    else:
        prompt = body.get("prompt", "")
        text = prompt if isinstance(prompt, str) else " ".join(str(p) for p in prompt) if isinstance(prompt, list) else ""
        prompt_words = len(text.split())
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    tokens, finish = reply_tokens(text, max_tokens)
    usage = {"prompt_tokens": prompt_words, "completion_tokens": len(tokens), "total_tokens": prompt_words + len(tokens)}
    ident = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{state['replica'].replace('/', '-')}-{next(state['ids'])}"
    created = int(time.time())
    obj = "chat.completion" if kind == "chat" else "text_completion"
    if not body.get("stream"):
        if kind == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": "".join(tokens), "logprobs": None, "finish_reason": finish}
        return web.json_response({"id": ident, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage})

    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    chunk_obj = "chat.completion.chunk" if kind == "chat" else "text_completion"

    async def send(choice: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
        event = {"id": ident, "object": chunk_obj, "created": created, "model": model, "choices": [choice], **(extra or {})}
        await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")

    if kind == "chat":
        await send({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None})
    for token in tokens:
        await asyncio.sleep(state["token_delay_s"])
        if kind == "chat":
            await send({"index": 0, "delta": {"content": token}, "logprobs": None, "finish_reason": None})
        else:
            await send({"index": 0, "text": token, "logprobs": None, "finish_reason": None})
    last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": finish} if kind == "chat" else {"index": 0, "text": "", "logprobs": None, "finish_reason": finish}
    include_usage = isinstance(body.get("stream_options"), dict) and body["stream_options"].get("include_usage")
    await send(last, {"usage": usage} if include_usage else None)
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, "completion")


# --- TGI format -------------------------------------------------------------------------------


async def tgi_info(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    return web.json_response({"model_id": state["model"], "max_input_tokens": 4096, "max_total_tokens": 8192, "version": "2.4.1"})


def _tgi_reply(state: dict[str, Any], body: dict[str, Any]) -> tuple[list[str], str, bool]:
    """Tokens, TGI finish reason, and whether the EOS token ends the reply."""
    inputs = body.get("inputs", "")
    params = body.get("parameters") or {}
    # The prompt a chat template renders ends with the last user turn; echo its words after
    # the last template marker so that replies stay short and predictable.
    text = str(inputs).rsplit("[INST]", 1)[-1].replace("[/INST]", " ")
    tokens, finish = reply_tokens(text, params.get("max_new_tokens", 20))
    stops = [s for s in params.get("stop") or [] if isinstance(s, str) and s]
    eos = state["eos_token"]
    if finish == "stop":
        return tokens, ("eos_token" if eos else "stop_sequence" if stops else "eos_token"), bool(eos)
    return tokens, "length", False


async def tgi_generate(request: web.Request) -> web.Response:
    state = request.app[_STATE]
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("inputs"), str):
        return web.json_response({"error": "Input validation error: `inputs` must be a string", "error_type": "validation"}, status=422)
    tokens, finish, _ = _tgi_reply(state, body)
    details = {"finish_reason": finish, "generated_tokens": len(tokens), "seed": None, "prefill": [], "tokens": []}
    return web.json_response({"generated_text": "".join(tokens), "details": details})


async def tgi_generate_stream(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    body = await _read_json(request)
    if isinstance(body, web.Response):
        return body
    if not isinstance(body.get("inputs"), str):
        return web.json_response({"error": "Input validation error: `inputs` must be a string", "error_type": "validation"}, status=422)
    tokens, finish, with_eos = _tgi_reply(state, body)
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await response.prepare(request)
    stream = [(t, False) for t in tokens] + ([(state["eos_token"], True)] if with_eos else [])
    for index, (text, special) in enumerate(stream):
        await asyncio.sleep(state["token_delay_s"])
        last = index == len(stream) - 1
        event = {
            "index": index,
            "token": {"id": 1000 + index, "text": text, "logprob": 0.0, "special": special},
            "generated_text": "".join(tokens) if last else None,
            "details": {"finish_reason": finish, "generated_tokens": len(stream), "seed": None} if last else None,
        }
        await response.write(b"data:" + json.dumps(event).encode() + b"\n\n")
    await response.write_eof()
    return response


# --- process ----------------------------------------------------------------------------------


def build_app(*, model: str, fmt: str, token_delay_ms: float, eos_token: str | None, prefix: str = "/v1") -> web.Application:
    """The aiohttp application; exposed for in-process use by tests."""
    app = web.Application(middlewares=[_bookkeeping], client_max_size=64 * 1024 * 1024)

    def counter() -> Any:
        n = 0
        while True:
            n += 1
            yield n

    app[_STATE] = {
        "model": model,
        "replica": _replica_identity(),
        "healthy": True,
        "token_delay_s": token_delay_ms / 1000.0,
        "eos_token": eos_token,
        "requests": Counter(),
        "last_headers": {},
        "last_body": None,
        "ids": counter(),
        "started": time.time(),
    }
    app.on_response_prepare.append(_on_prepare)
    app.router.add_get("/", root)
    app.router.add_get("/ping", ping)
    app.router.add_get("/health", health)
    app.router.add_get("/_stats", stats)
    if fmt == "openai":
        base = "/" + prefix.strip("/") if prefix.strip("/") else ""
        app.router.add_get(f"{base}/models", models)
        app.router.add_post(f"{base}/chat/completions", chat_completions)
        app.router.add_post(f"{base}/completions", completions)
    else:
        app.router.add_get("/info", tgi_info)
        app.router.add_post("/generate", tgi_generate)
        app.router.add_post("/generate_stream", tgi_generate_stream)
    return app


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"), help="bind address (default $HOST or 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", DEFAULT_PORT)), help="port (default $PORT or 8000)")
    parser.add_argument("--model", default=os.environ.get("MODEL_NAME", DEFAULT_MODEL), help="model name (default $MODEL_NAME)")
    parser.add_argument("--format", dest="fmt", choices=("openai", "tgi"), default=os.environ.get("CHAT_FORMAT", "openai"))
    parser.add_argument(
        "--token-delay-ms",
        type=float,
        default=float(os.environ.get("CHAT_TOKEN_DELAY_MS", DEFAULT_TOKEN_DELAY_MS)),
        help="pause before each streamed token, in milliseconds",
    )
    parser.add_argument("--prefix", default=os.environ.get("CHAT_PREFIX", "/v1"), help="OpenAI path prefix (default /v1)")
    parser.add_argument("--eos-token", default=os.environ.get("CHAT_EOS_TOKEN") or None, help="TGI: end the stream with this special token")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    app = build_app(model=args.model, fmt=args.fmt, token_delay_ms=args.token_delay_ms, eos_token=args.eos_token, prefix=args.prefix)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port, reuse_address=True)
    await site.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    state = app[_STATE]
    loop.add_signal_handler(signal.SIGUSR1, lambda: state.__setitem__("healthy", False))
    loop.add_signal_handler(signal.SIGUSR2, lambda: state.__setitem__("healthy", True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"chat server {state['replica']} ({args.fmt}) serving {args.model} on {args.host}:{args.port}", flush=True)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    asyncio.run(_serve(_parse_args(argv)))


if __name__ == "__main__":
    main()
