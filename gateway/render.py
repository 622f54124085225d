"""Render the gateway's Caddyfile from `gateway/templates/*.j2`.

One environment factory: StrictUndefined (a missing value is an error, never an empty string),
autoescape off (the output is a Caddyfile, not HTML), and quoting filters named for the target
syntax. Every interpolated string goes through one of them:

* ``caddy_quote`` — a Caddyfile token in backticks (or double quotes if it holds a backtick);
  refuses control characters and ``{$`` (Caddy substitutes environment variables into the whole
  file before parsing, quoted or not) and any ``{`` at all, which Caddy may read as a placeholder;
* ``caddy_quote_placeholder`` — the same, for values whose braces are all Caddy placeholders
  such as ``{client_ip}`` or ``Bearer {env.SERVEFORM_TOKEN_0}``;
* ``caddy_name`` — a bare host name, label or zone name (letters, digits, ``.-_*``);
* ``comment`` — text after ``#`` on one line;
* ``json`` — a JSON document (for bodies).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import jinja2

from serveform.translator.plan import ServicePlan

from .dns import srv_name
from .routes import ServiceRoute, routes_from_plans
from .settings import GatewayRuntime, GatewaySettings

__all__ = ["DNS_ENV_PREFIX", "SRV_REFRESH_MS", "render_caddyfile", "routes_document", "template_environment"]

SRV_REFRESH_MS = 500
"""With `replica_dns="system"`: how long Caddy caches a service's SRV answer; bounds how late it sees a replica change."""

DNS_ENV_PREFIX = "SERVEFORM_DNS_"
"""DNS-provider options reach Caddy as `{env.SERVEFORM_DNS_<NAME>}`; the supervisor sets them."""


_NAME = re.compile(r"^[A-Za-z0-9._*-]+$")
_PLACEHOLDER = re.compile(r"\{[A-Za-z0-9_.-]+\}")


class TemplateValueError(ValueError):
    """A value that no quoting can make safe reached a template (the models should have refused it)."""


def _check_token(text: str) -> None:
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise TemplateValueError(f"control character in Caddyfile value {text!r}")
    if "`" in text and '"' in text:
        raise TemplateValueError(f"Caddyfile value {text!r} holds both kinds of quotes")


def _wrap(text: str) -> str:
    if "`" not in text:
        return f"`{text}`"
    if text.endswith("\\"):
        raise TemplateValueError(f"Caddyfile value {text!r} ends in a backslash")
    return '"' + text.replace('"', '\\"') + '"'


def caddy_quote(value: Any) -> str:
    """Quote a literal value as one Caddyfile token."""
    text = str(value)
    _check_token(text)
    if "{" in text or "}" in text:
        raise TemplateValueError(f"brace in Caddyfile value {text!r}: Caddy would read it as a placeholder")
    return _wrap(text)


def caddy_quote_placeholder(value: Any) -> str:
    """Quote a value whose every brace belongs to a Caddy placeholder, e.g. ``Bearer {env.T}``."""
    text = str(value)
    _check_token(text)
    rest = _PLACEHOLDER.sub("", text)
    if "{" in rest or "}" in rest or "$" in text:
        raise TemplateValueError(f"{text!r} has braces that are not Caddy placeholders")
    return _wrap(text)


def caddy_name(value: Any) -> str:
    """A bare host name or label, checked."""
    text = str(value)
    if not _NAME.match(text):
        raise TemplateValueError(f"{text!r} is not a host name or label")
    return text


def comment(value: Any) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", " ", str(value))


@lru_cache(maxsize=1)
def template_environment() -> jinja2.Environment:
    """The one Jinja environment of the gateway's templates."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("serveform.gateway", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        caddy_quote=caddy_quote,
        caddy_quote_placeholder=caddy_quote_placeholder,
        caddy_name=caddy_name,
        comment=comment,
        json=lambda value: json.dumps(value, sort_keys=True),
    )
    return env


def render_routes(settings: GatewaySettings, routes: Sequence[ServiceRoute], runtime: GatewayRuntime) -> str:
    """The Caddyfile of a gateway. It depends on the settings and the runtime only: ``routes``
    are checked by the caller and served from the routes file (see `routes_document`)."""
    del routes  # served from the routes file, never from the Caddyfile
    template = template_environment().get_template("Caddyfile.j2")
    return template.render(
        settings=settings,
        runtime=runtime,
        routes_file=str(runtime.routes_file),
        dns_env_prefix=DNS_ENV_PREFIX,
        srv_refresh_ms=SRV_REFRESH_MS,
    )


def routes_document(
    settings: GatewaySettings, routes: Sequence[ServiceRoute], runtime: GatewayRuntime, *, generation: int
) -> dict[str, Any]:
    """The routes file the gateway's Caddy modules read (tools/caddy/serveform/state.go): every
    service's host and settings, the paths of the files with the digests of the tokens and of
    the gateway secret, and (when the gateway's prober decides readiness) of the ready file.
    It holds no secret itself."""
    services = []
    own_readiness = runtime.replica_dns == "responder"
    for route in routes:
        lookup = runtime.srv_lookups.get(route.name)
        if own_readiness:
            srv = ""  # the `serveform` upstream source serves the ready file; no lookup
        else:
            srv = f"_{lookup.service}._{lookup.proto}.{lookup.name}" if lookup else srv_name(route.name)
        services.append(
            {
                "name": route.name,
                "host": route.host,
                "auth": route.auth,
                "https": route.https,
                "srv": srv,
                "rate_limits": [
                    {
                        "zone": zone.zone,
                        "prefix": zone.prefix.rstrip("/"),
                        "key": zone.key,
                        "events": zone.events,
                        "window_seconds": zone.window_seconds,
                    }
                    for zone in route.rate_limits
                ],
            }
        )
    return {
        "generation": generation,
        "router_host": settings.router_host,
        "https_port": settings.https_port,
        "tls_off": settings.tls == "off",
        "token_hashes_file": str(runtime.token_hashes_file),
        "secret_hash_file": str(runtime.secret_hash_file),
        "ready_file": str(runtime.ready_file) if own_readiness else "",
        "services": services,
    }


def render_caddyfile(
    settings: GatewaySettings, plans: Sequence[ServicePlan], runtime: GatewayRuntime | None = None
) -> str:
    """The gateway's Caddyfile for a stack.

    Raises GatewayConfigError (listing every problem with its file and field) when a plan
    cannot be served. The text holds no secret: bearer tokens are read by the gateway's Caddy
    modules from a 0600 file and DNS credentials appear as `{env.*}` placeholders that the
    supervisor fills from Caddy's environment.
    """
    return render_routes(settings, routes_from_plans(settings, plans), runtime or GatewayRuntime())
