"""What every cloud's serveform-fetch shares: retries, the digest check, the atomic write, the one console line.

Each cloud's fetcher (`aws_fetch.py`, `gcp_fetch.py`, `azure_fetch.py`) knows how to ask its cloud
for a credential and how to spell a request; this module does the rest, the same way on every
cloud. The gateway's and the replicas' user data write it beside the cloud's fetcher, as
/opt/serveform/bin/_fetch.py (the script's folder is first on `sys.path`), so it too uses
Python's standard library only.

A fetch that cannot succeed ends the boot with one line on the console:

    serveform: artifact caddy: sha256 mismatch (expected 3f…, got 9a…)
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "ATTEMPTS",
    "FetchError",
    "Transient",
    "console",
    "fetch_checked",
    "main",
    "open_url",
    "read_json",
    "retrying",
]

T = TypeVar("T")

TIMEOUT_SECONDS = 30
# A fresh instance's identity and network may lag its boot by tens of seconds (a role or an IAM
# grant not yet effective); a missing object or a wrong digest never gets better and fails at once.
ATTEMPTS = 30
RETRY_SECONDS = 5
CHUNK_BYTES = 1 << 20
CONSOLE = "/dev/console"


class FetchError(Exception):
    """A fetch that cannot succeed; its message is the console line."""


class Transient(Exception):
    """A failure worth retrying (connection, throttling, 5xx, a grant not yet effective)."""


def console(line: str) -> None:
    """Print the line on stderr and on the serial console (cloud-init's log is not where an operator looks first)."""
    print(line, file=sys.stderr, flush=True)
    try:
        with open(CONSOLE, "w") as out:
            out.write(line + "\n")
    except OSError:
        pass


def open_url(request: urllib.request.Request):
    """urlopen, with retryable failures as `Transient`; other HTTP errors are raised as they are."""
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 429) or exc.code >= 500:
            raise Transient(f"HTTP {exc.code} from {request.full_url.split('?')[0]}") from None
        raise
    except (urllib.error.URLError, OSError) as exc:
        raise Transient(f"{request.full_url.split('?')[0]}: {exc}") from None


def read_json(request: urllib.request.Request) -> Any:
    """The JSON body of a request (`open_url`'s failures)."""
    with open_url(request) as response:
        try:
            return json.loads(response.read())
        except ValueError as exc:
            raise Transient(f"{request.full_url.split('?')[0]}: not JSON ({exc})") from None


def retrying(what: str, call: Callable[[], T]) -> T:
    """``call()`` until it stops raising `Transient`, ATTEMPTS times at most; then one `FetchError` line."""
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except Transient as exc:
            if attempt == ATTEMPTS:
                raise FetchError(f"serveform: {what}: giving up after {ATTEMPTS} attempts ({exc})") from None
            time.sleep(RETRY_SECONDS)
    raise AssertionError("unreachable")


def fetch_checked(name: str, sha256: str, where: str, request: Callable[[], urllib.request.Request], dest: str) -> None:
    """Write what ``request()`` answers to DEST (0644, atomically) if and only if its digest is SHA256.

    ``request`` is called for every attempt (a fresh credential each time); ``where`` names the
    object in the messages (`gs://bucket/key`). Nothing is left at DEST, or beside it, on failure.
    """
    tmp = f"{dest}.fetch-{os.getpid()}"

    def attempt() -> str:
        digest = hashlib.sha256()
        try:
            response = open_url(request())
        except urllib.error.HTTPError as exc:
            raise FetchError(f"serveform: artifact {name}: not found at {where} (HTTP {exc.code})") from None
        with response, open(tmp, "wb") as out:
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
                    out.write(chunk)
            except OSError as exc:
                raise Transient(f"reading {where}: {exc}") from None
        return digest.hexdigest()

    try:
        got = retrying(f"artifact {name}", attempt)
        if got != sha256:
            raise FetchError(f"serveform: artifact {name}: sha256 mismatch (expected {sha256}, got {got})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def main(argv: list[str], commands: dict[str, tuple[int, Callable[..., str | None]]], usage: str) -> int:
    """Run ``argv[1]`` with the rest as its arguments: ``commands`` maps a name to (argument count,
    function); a function's text result is printed alone on stdout (a secret, for a pipe)."""
    try:
        if len(argv) >= 2 and argv[1] in commands and len(argv) - 2 == commands[argv[1]][0]:
            out = commands[argv[1]][1](*argv[2:])
            if out is not None:
                sys.stdout.write(out)
            return 0
    except FetchError as exc:
        console(str(exc))
        return 1
    print(usage, file=sys.stderr)
    return 2
