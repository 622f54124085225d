"""Small JSON/XML HTTP calls with urllib (the gateway host has no cloud SDK)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

TIMEOUT_SECONDS = 10.0


def request(method: str, url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> bytes:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        # The body of a cloud API error names the problem (permission, throttling); no secrets in it.
        detail = exc.read()[:500].decode("utf-8", "replace")
        raise OSError(f"{method} {url.split('?')[0]}: HTTP {exc.code}: {detail}") from None


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    return json.loads(request("GET", url, headers))
