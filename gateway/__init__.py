"""serveform.gateway: Caddy in front of every service, with auth, TLS and an OpenAI-compatible endpoint.

Public surface::

    GatewaySettings                      stack-wide settings (domain, tls, ports, limits, tokens)
    GatewayRuntime, SrvLookup            where one running gateway's parts meet (ports, sockets,
                                         where replicas are looked up, metrics listener)
    render_caddyfile(settings, plans, runtime=None) -> str
    write_config(state_dir, settings, plans)          gateway.json + 0600 secrets files
    config_files(settings, plans) -> (files, secret_files)   the same as path -> text, for a
                                                      caller that writes files itself (Pulumi)
    read_config(state_dir) -> GatewayConfig
    publish_replicas(state_dir, service, ["IP:PORT", ...], wait=True)
    read_status(state_dir) -> dict | None             status.json of a running gateway
    GatewayConfigError, CaddyError, Problem
    python -m serveform.gateway run --state-dir DIR

How a request flows: `https://<service>.<domain>` → Caddy (token check → rate limits →
`reverse_proxy` to the service's ready replicas, found through `dynamic srv` lookups against the
gateway's loopback DNS responder). `https://gateway.<domain>/v1/...` → Caddy (token check) → the
router on a unix socket → Caddy's internal loopback server with `Host: <service>.<domain>` → the
same `reverse_proxy`. Readiness is decided by the gateway's prober (the service's probes, or
dstack's default one-token chat completion for `format: openai` models) and published through
the DNS responder, so replica changes never reload Caddy. Route changes (a service added or
removed, tokens rotated, settings changed) do reload it through the admin endpoint: requests in
flight to a replica finish on the old config, but requests held waiting for a replica are answered
503 at once (Caddy cancels the old handlers' wait) — so a deploy that changes routes should not
coincide with a scale from zero.

Metrics contract for the scaler (Caddy's Prometheus endpoint, loopback only; its URL is
`metrics_url` in `<state_dir>/status.json`):

* Request rate of a service: ``caddy_http_request_duration_seconds_count`` (a counter, one
  sample per finished request) with labels ``server``, ``handler``, ``host``, ``method``,
  ``code``. Sum over every series whose ``host`` label, lower-cased and stripped of a
  ``:port`` suffix, equals ``<service>.<domain>``, EXCEPT ``code="401"`` (refused for auth) and
  ``code="429"`` (refused by a rate limit). Both the public servers (``server="public"`` /
  ``"public_http"``) and the router's path (``server="internal"``) count, and each request is
  counted exactly once: requests to ``gateway.<domain>`` appear under that host on the public
  server (ignore them) and under the model's service host on the internal server.
  Requests answered 503 because no replica became ready in time DO count (``code="503"``).
* Requests waiting right now (e.g. held while a service is at zero replicas):
  ``caddy_http_requests_in_flight{host=...}`` (same host normalisation). A request held for a
  replica is in flight for up to `replica_wait_seconds` before it is counted as finished.
* Counters restart at zero when Caddy restarts or reloads its config (a route change): treat a
  decrease as a reset.
"""

from .errors import CaddyError, GatewayConfigError, Problem
from .render import render_caddyfile
from .settings import GatewayRuntime, GatewaySettings, SrvLookup
from .state import GatewayConfig, config_files, publish_replicas, read_config, read_status, write_config

__all__ = [
    "CaddyError",
    "GatewayConfig",
    "GatewayConfigError",
    "GatewayRuntime",
    "config_files",
    "GatewaySettings",
    "Problem",
    "SrvLookup",
    "publish_replicas",
    "read_config",
    "read_status",
    "render_caddyfile",
    "write_config",
]
