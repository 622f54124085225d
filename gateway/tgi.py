"""`format: tgi` models: OpenAI requests to text-generation-inference and its answers back.

The chat template comes from the service file (dstack's `model.chat_template`) and runs in
Jinja's immutable sandbox, the way Hugging Face renders chat templates: a template is user
input and must not reach Python internals. Its context is `messages`, `eos_token`,
`add_generation_prompt` and `raise_exception`; `bos_token` is empty (dstack documents the
same limitation: write the token into the template instead).
"""

from __future__ import annotations

import json
import time
import uuid
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "ChatTemplateError",
    "chat_prompt",
    "chat_prompt_bounded",
    "completion_prompt",
    "generate_request",
    "openai_chunk",
    "openai_response",
    "prepare_generate",
]

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)
"""Used when a `format: tgi` model names no chat_template (dstack would ask the Hugging Face Hub)."""


class ChatTemplateError(ValueError):
    """The chat template refused the conversation (raise_exception) or failed to render."""


def _raise(message: str) -> None:
    raise ChatTemplateError(message)


@lru_cache(maxsize=64)
def _template(source: str) -> Any:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = lambda value, indent=None: json.dumps(value, indent=indent, ensure_ascii=False)
    return env.from_string(source)


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type", "text") == "text")
    return "" if content is None else str(content)


def chat_prompt(messages: Any, chat_template: str | None, eos_token: str | None) -> str:
    """The model's prompt for an OpenAI `messages` list."""
    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError("`messages` must be a non-empty list")
    plain = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatTemplateError("every message needs a `role` and `content`")
        plain.append({"role": message["role"], "content": _text(message.get("content"))})
    try:
        return _template(chat_template or DEFAULT_CHAT_TEMPLATE).render(
            messages=plain, eos_token=eos_token or "", bos_token="", add_generation_prompt=True
        )
    except ChatTemplateError:
        raise
    except (TemplateError, TypeError, ValueError, AttributeError, IndexError, KeyError) as exc:
        raise ChatTemplateError(f"chat_template failed: {exc}") from None


def chat_prompt_bounded(messages: Any, chat_template: str | None, eos_token: str | None, limit_chars: int) -> str:
    """`chat_prompt` with its output bounded: a template that writes more than ``limit_chars``
    (nested loops) is stopped as soon as it passes the bound. Runs in the router's template
    worker process, which the router kills when it takes too long (a loop that writes nothing)."""
    if not isinstance(messages, list) or not messages:
        raise ChatTemplateError("`messages` must be a non-empty list")
    plain = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ChatTemplateError("every message needs a `role` and `content`")
        plain.append({"role": message["role"], "content": _text(message.get("content"))})
    pieces: list[str] = []
    size = 0
    try:
        for piece in _template(chat_template or DEFAULT_CHAT_TEMPLATE).generate(
            messages=plain, eos_token=eos_token or "", bos_token="", add_generation_prompt=True
        ):
            size += len(piece)
            if size > limit_chars:
                raise ChatTemplateError(f"chat_template wrote more than {limit_chars} characters")
            pieces.append(piece)
    except ChatTemplateError:
        raise
    except RecursionError:
        raise ChatTemplateError("chat_template recursed too deeply") from None
    except (TemplateError, TypeError, ValueError, AttributeError, IndexError, KeyError, OverflowError, MemoryError) as exc:
        raise ChatTemplateError(f"chat_template failed: {exc}") from None
    return "".join(pieces)


PROMPT_MIN_LIMIT_CHARS = 1024 * 1024
"""A rendered prompt may be this long, or 4x the request body if that is more."""


def prepare_generate(raw: bytes, kind: str, chat_template: str | None, eos_token: str | None, limit_chars: int) -> tuple[bytes, bool, bool]:
    """TGI's `/generate` body for an OpenAI request body: ``(payload, stream, include_usage)``.
    Runs in the router's child process (serveform.gateway.body.run_isolated)."""
    from .body import BodyError, parse_body

    body = parse_body(raw)
    if not isinstance(body, dict):
        raise BodyError("the request body must be a JSON object")
    if kind == "chat":
        prompt = chat_prompt_bounded(body.get("messages"), chat_template, eos_token, limit_chars)
    else:
        prompt = completion_prompt(body.get("prompt"))
    options = body.get("stream_options")
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return json.dumps(generate_request(body, prompt, eos_token)).encode(), bool(body.get("stream")), include_usage


def completion_prompt(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    raise ChatTemplateError("`prompt` must be a string (token arrays and batches are not supported for format: tgi)")


def generate_request(body: dict[str, Any], prompt: str, eos_token: str | None) -> dict[str, Any]:
    """TGI's `/generate` body for an OpenAI request body."""
    params: dict[str, Any] = {"details": True}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(max_tokens, int) and max_tokens > 0:
        params["max_new_tokens"] = max_tokens
    temperature = body.get("temperature")
    # TGI refuses temperature 0 and top_p 1: both mean "no sampling change", so leave them out.
    if isinstance(temperature, (int, float)) and temperature > 0:
        params["temperature"] = temperature
        params["do_sample"] = True
    top_p = body.get("top_p")
    if isinstance(top_p, (int, float)) and 0 < top_p < 1:
        params["top_p"] = top_p
    if isinstance(body.get("seed"), int):
        params["seed"] = body["seed"]
    if isinstance(body.get("frequency_penalty"), (int, float)) and body["frequency_penalty"]:
        params["repetition_penalty"] = 1.0 + float(body["frequency_penalty"])
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else [s for s in stop if isinstance(s, str)] if isinstance(stop, list) else []
    if eos_token:
        stops.append(eos_token)
    if stops:
        params["stop"] = stops
    return {"inputs": prompt, "parameters": params}


_FINISH = {"length": "length", "eos_token": "stop", "stop_sequence": "stop"}


def _strip_eos(text: str, eos_token: str | None) -> str:
    if eos_token and text.endswith(eos_token):
        return text[: -len(eos_token)]
    return text


def openai_response(kind: str, model: str, tgi: dict[str, Any], eos_token: str | None, prompt_tokens: int) -> dict[str, Any]:
    """An OpenAI (chat) completion from TGI's `/generate` answer."""
    details = tgi.get("details") or {}
    text = _strip_eos(str(tgi.get("generated_text", "")), eos_token)
    finish = _FINISH.get(details.get("finish_reason"), "stop")
    completion_tokens = int(details.get("generated_tokens") or 0)
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens}
    created = int(time.time())
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": finish}
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": created, "model": model, "choices": [choice], "usage": usage}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": created, "model": model, "choices": [choice], "usage": usage}


def openai_chunk(kind: str, ident: str, model: str, created: int, text: str | None, finish: str | None, *, role: bool = False) -> bytes:
    """One server-sent event of an OpenAI stream."""
    if kind == "chat":
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        obj = "text_completion"
    event = {"id": ident, "object": obj, "created": created, "model": model, "choices": [choice]}
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def translate_event(event: dict[str, Any], eos_token: str | None) -> tuple[str | None, str | None]:
    """(text to emit, OpenAI finish reason or None) for one TGI stream event."""
    token = event.get("token") or {}
    text = None if token.get("special") else token.get("text")
    if text is not None and eos_token and text == eos_token:
        text = None
    details = event.get("details")
    finish = _FINISH.get((details or {}).get("finish_reason"), "stop") if details else None
    return text, finish
