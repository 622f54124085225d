"""Request bodies of the OpenAI endpoint: strict JSON parsing, and the work that may take long
(parsing a large body, rendering a chat template) done in a child process that is killed when
it runs out of time, so the router's event loop, shared with the prober and the DNS responder,
never stalls and no request can hold the gateway.
"""

from __future__ import annotations

import json
import math
import multiprocessing
from collections.abc import Callable
from typing import Any

__all__ = [
    "BodyError",
    "INLINE_PARSE_LIMIT_BYTES",
    "WorkerError",
    "model_of",
    "parse_body",
    "run_isolated",
    "work_timeout_seconds",
]

INLINE_PARSE_LIMIT_BYTES = 256 * 1024
"""Bodies up to this size are parsed on the event loop (well under a millisecond); larger ones in a thread."""
INTEGER_DIGITS_MAX = 100
"""Longest integer literal accepted: no OpenAI parameter needs more, and converting a
5000-digit literal is quadratic work (Python refuses above 4300 digits with a ValueError)."""


class BodyError(ValueError):
    """A request body that is not JSON, or JSON no client means: says what is wrong."""


def _reject_constant(name: str) -> Any:
    raise BodyError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyError(f"the number {text[:32]}{'...' if len(text) > 32 else ''} is out of range")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > INTEGER_DIGITS_MAX:
        raise BodyError(f"an integer has more than {INTEGER_DIGITS_MAX} digits")
    return int(text)


def parse_body(raw: bytes) -> Any:
    """The JSON document of a request body, strict: no NaN or Infinity (Python's json accepts them,
    OpenAI does not), no float that overflows to infinity (``1e5000``), no integer of more than
    INTEGER_DIGITS_MAX digits, nesting only as deep as the parser's recursion allows.
    Raises BodyError saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BodyError("the body is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except BodyError:
        raise
    except RecursionError:
        raise BodyError("arrays or objects are nested too deeply") from None
    except json.JSONDecodeError as exc:
        raise BodyError(f"{exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:  # e.g. an integer over Python's digit limit
        raise BodyError(str(exc)[:200]) from None


BASE_WORK_TIMEOUT_SECONDS = 2.0
"""Longest a child may work on one request body (parse and chat template), plus PARSE_BYTES_PER_SECOND."""
PARSE_BYTES_PER_SECOND = 20 * 1024 * 1024
"""Parse rate allowed for on top of the base time (Python's json parses ~50-100 MB/s here)."""


class WorkerError(RuntimeError):
    """The child ran out of time or died (memory): the request is refused, the gateway goes on."""


def work_timeout_seconds(body_bytes: int) -> float:
    return BASE_WORK_TIMEOUT_SECONDS + body_bytes / PARSE_BYTES_PER_SECOND


def model_of(raw: bytes) -> Any:
    """The `model` field of a request body (None if absent); BodyError when it is not a JSON object."""
    body = parse_body(raw)
    if not isinstance(body, dict):
        raise BodyError("the request body must be a JSON object")
    return body.get("model")


def _child_main(connection: Any, function: Callable[..., Any], args: tuple[Any, ...]) -> None:  # pragma: no cover - child
    try:
        result = (True, function(*args))
    except Exception as exc:  # noqa: BLE001 - sent back to the parent, which re-raises it
        result = (False, exc)
    try:
        connection.send(result)
    except Exception as exc:  # noqa: BLE001 - an unpicklable result or exception
        connection.send((False, WorkerError(f"{type(exc).__name__}: {exc}")))
    connection.close()


def run_isolated(function: Callable[..., Any], args: tuple[Any, ...], timeout_seconds: float) -> Any:
    """``function(*args)`` in a child process (blocking: call it from a thread). The child is
    killed when it takes longer than ``timeout_seconds``; its exceptions are re-raised here."""
    # forkserver: the gateway has threads, which a plain fork would copy half-way.
    context = multiprocessing.get_context("forkserver")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(child, function, args), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(timeout_seconds):
            raise WorkerError(f"took longer than {timeout_seconds:.1f} s")
        ok, value = parent.recv()
    except EOFError:
        raise WorkerError("the worker process died (out of memory?)") from None
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        parent.close()
    if ok:
        return value
    raise value
