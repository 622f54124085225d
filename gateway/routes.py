"""From service plans to the gateway's routes: every value a template or the router will use, checked.

A plan comes from the translator, but the gateway is in the data path of every request and its
Caddyfile is a language with quotes, braces and `{$ENV}` substitution: anything that reaches
a template is matched against a narrow pattern here, and every problem is reported at once.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from serveform.translator.plan import ModelPlan, ServicePlan

from .errors import GatewayConfigError, Problem
from .settings import GatewaySettings

__all__ = ["ProbeCheck", "RateLimitZone", "ServiceRoute", "routes_from_plans", "ROUTER_SUBDOMAIN"]

ROUTER_SUBDOMAIN = "gateway"
"""`gateway.<domain>` serves the OpenAI-compatible endpoint, so no service may take that name."""

# service.caddy.j2: a host label.
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
# service.caddy.j2 (rate-limit path matchers) and the prober's URLs: an absolute path with an
# optional query, without quotes, braces, backslashes, backticks, whitespace or `*`.
_PATH = re.compile(r"^/[A-Za-z0-9\-._~!$&'()+,;=:@%/?]*$")
# service.caddy.j2 (rate-limit keys): an HTTP header name (RFC 9110 token, letters/digits/-).
_HEADER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")
_HEADER_VALUE = re.compile(r"^[\x20-\x7e\t]*$")

DEFAULT_PROBE_MESSAGE = "hi"
"""dstack's default probe for a `format: openai` model is a one-token chat completion."""


@dataclass(frozen=True)
class ProbeCheck:
    """One HTTP readiness check the gateway's prober runs against every replica."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes | None
    timeout_seconds: float
    interval_seconds: float
    ready_after: int


@dataclass(frozen=True)
class RateLimitZone:
    """A rate limit as caddy-ratelimit counts it: `events` per sliding `window_seconds`."""

    zone: str
    prefix: str
    key: str
    events: int
    window_seconds: int


@dataclass(frozen=True)
class ServiceRoute:
    """One service as the gateway serves it."""

    name: str
    file: str
    host: str
    auth: bool
    https: bool
    model: ModelPlan | None
    probes: tuple[ProbeCheck, ...]
    rate_limits: tuple[RateLimitZone, ...] = field(default=())


def _rate_limit_zone(service: str, index: int, prefix: str, key: str, rps: float, burst: int) -> RateLimitZone:
    # caddy-ratelimit counts events in a sliding window; an average rate `rps` with a
    # `burst` allowance becomes `rps*window + burst` events per window (window >= 1 s so
    # that fractional rates like 0.5 rps still admit whole requests).
    window = max(1, math.ceil(1 / rps)) if rps < 1 else 1
    events = max(1, round(rps * window)) + max(burst, 0)
    return RateLimitZone(zone=f"{service}_{index}", prefix=prefix, key=key, events=events, window_seconds=window)


def _default_probe(plan: ServicePlan) -> ProbeCheck:
    model = plan.route.model
    if model is not None and model.format == "openai":
        body = {"model": model.name, "messages": [{"role": "user", "content": DEFAULT_PROBE_MESSAGE}], "max_tokens": 1}
        return ProbeCheck(
            method="POST",
            path=model.prefix.rstrip("/") + "/chat/completions",
            headers=(("Content-Type", "application/json"),),
            body=json.dumps(body).encode(),
            timeout_seconds=10,
            interval_seconds=15,
            ready_after=1,
        )
    return ProbeCheck(method="GET", path=plan.route.readiness_path, headers=(), body=None, timeout_seconds=10, interval_seconds=15, ready_after=1)


def _check_plan(plan: ServicePlan, problems: list[Problem]) -> None:
    def bad(field_path: str, message: str) -> None:
        problems.append(Problem(plan.file, field_path, message))

    route = plan.route
    if not _LABEL.match(route.subdomain):
        bad("name", f"{route.subdomain!r} is not a DNS label (lower-case letters, digits and inner '-', at most 63)")
    elif route.subdomain == ROUTER_SUBDOMAIN:
        bad("name", f"`{ROUTER_SUBDOMAIN}` is reserved for the OpenAI-compatible endpoint gateway.<domain>")
    if not _PATH.match(route.readiness_path):
        bad("readiness_probe", f"{route.readiness_path!r} is not an absolute URL path without quotes, braces or spaces")
    for i, probe in enumerate(route.probes):
        if not _PATH.match(probe.url):
            bad(f"probes[{i}].url", f"{probe.url!r} is not an absolute URL path without quotes, braces or spaces")
        for name, value in probe.headers.items():
            text = value.get_secret_value() if hasattr(value, "get_secret_value") else value
            if not _HEADER_NAME.match(name):
                bad(f"probes[{i}].headers", f"{name!r} is not an HTTP header name")
            elif not _HEADER_VALUE.match(text):
                bad(f"probes[{i}].headers.{name}", "the value must be printable ASCII on one line")
    for i, limit in enumerate(route.rate_limits):
        if not _PATH.match(limit.prefix) or "?" in limit.prefix:
            bad(f"rate_limits[{i}].prefix", f"{limit.prefix!r} is not an absolute URL path without quotes, braces or spaces")
        if limit.key == "header" and (limit.header is None or not _HEADER_NAME.match(limit.header)):
            bad(f"rate_limits[{i}].key.header", f"{limit.header!r} is not an HTTP header name")
        if not limit.rps > 0 or not math.isfinite(limit.rps):
            bad(f"rate_limits[{i}].rps", "must be a positive number")
    if route.model is not None and not _PATH.match(route.model.prefix):
        bad("model.prefix", f"{route.model.prefix!r} is not an absolute URL path")


def routes_from_plans(settings: GatewaySettings, plans: Sequence[ServicePlan]) -> tuple[ServiceRoute, ...]:
    """The routes of every service on the stack; raises GatewayConfigError listing every problem."""
    problems: list[Problem] = []
    seen_hosts: dict[str, str] = {}
    seen_models: dict[str, str] = {}
    routes: list[ServiceRoute] = []
    for plan in plans:
        if plan.route.gateway is False:
            continue  # `gateway: false`: the service is not published through the gateway.
        before = len(problems)
        _check_plan(plan, problems)
        host = settings.service_host(plan.route.subdomain)
        if host in seen_hosts:
            problems.append(Problem(plan.file, "name", f"{plan.route.subdomain!r} is already served by {seen_hosts[host]}"))
        seen_hosts.setdefault(host, plan.file)
        model = plan.route.model
        if model is not None:
            if model.name in seen_models:
                problems.append(Problem(plan.file, "model.name", f"model {model.name!r} is already mapped by {seen_models[model.name]}"))
            seen_models.setdefault(model.name, plan.file)
        if len(problems) > before:
            continue
        probes = tuple(
            ProbeCheck(
                method=p.method.upper(),
                path=p.url,
                headers=tuple((k, v.get_secret_value() if hasattr(v, "get_secret_value") else v) for k, v in p.headers.items()),
                body=p.body.encode() if p.body is not None else None,
                timeout_seconds=float(p.timeout_seconds),
                interval_seconds=float(p.interval_seconds),
                ready_after=max(1, p.ready_after),
            )
            for p in plan.route.probes
        ) or (_default_probe(plan),)
        limits = tuple(
            _rate_limit_zone(
                plan.route.subdomain.replace("-", "_"),
                i,
                limit.prefix,
                "{http.request.header." + limit.header + "}" if limit.key == "header" and limit.header else "{client_ip}",
                limit.rps,
                limit.burst,
            )
            for i, limit in enumerate(plan.route.rate_limits)
        )
        https = settings.tls != "off" and plan.route.https is not False
        if plan.route.https is False and plan.route.auth and settings.tls != "off" and not settings.loopback_only and not settings.allow_plain_http:
            problems.append(
                Problem(
                    plan.file, "https",
                    "`https: false` on a gateway that listens beyond loopback sends the stack's bearer token in clear; "
                    "remove it, set `auth: false`, or set the stack's gateway.allow_plain_http: true to accept that",
                )
            )
            continue
        routes.append(
            ServiceRoute(
                name=plan.route.subdomain,
                file=plan.file,
                host=host,
                auth=plan.route.auth,
                https=https,
                model=model,
                probes=probes,
                rate_limits=limits,
            )
        )
    if problems:
        raise GatewayConfigError(problems)
    return tuple(routes)
