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

How a request flows: `https://<service>.<domain>` → Caddy → `serveform_gate` (our Caddy module,
tools/caddy/serveform: Host → service from the routes file, token check, the service's rate
limits, request counting) → `reverse_proxy` to the service's ready replicas, which the module's
upstream source (`dynamic serveform`) takes from an in-memory table: no lookup per request.
`https://gateway.<domain>/v1/...` → Caddy (token check) → the router on a unix socket → Caddy's
internal loopback server (which serves only requests carrying the per-gateway secret the router
holds) with `Host: <service>.<domain>` → the same gate and `reverse_proxy`. Readiness is decided
by the gateway's prober (the service's probes, or dstack's default one-token chat completion for
`format: openai` models); every change of a ready set is written to the ready file and handed to
Caddy (`POST /serveform/ready`) before status.json reports it, so once status shows a replica gone
Caddy sends it no new request. (The loopback DNS responder answers the same ready sets; a gateway
in a Kubernetes pod uses `dynamic srv` against the cluster's DNS instead.) Neither replica changes nor
route changes (a service added, removed or changed, tokens rotated) reload Caddy: services and
token digests live in files the module re-reads on `POST /serveform/reload` (admin endpoint), so
no connection is cut. Only a change of the gateway's own settings (ports, TLS, limits) reloads
Caddy's config.

Metrics contract for the scaler (the module's Prometheus text endpoint, loopback unless the
runtime opens it; its URL is `metrics_url` in `<state_dir>/status.json`):

* Request rate of a service: ``serveform_requests_total{service, host}``, a counter of the
  requests handed to the service. Requests refused for auth (401) or by a rate limit (429) are
  answered by the module and never counted; requests answered 503 because no replica became
  ready in time DO count. The public listeners and the router's path (the internal listener)
  both count, each request exactly once: requests to ``gateway.<domain>`` are counted under the
  model's service host on the internal listener only. Match the ``host`` label, lower-cased and
  stripped of a ``:port`` suffix, against ``<service>.<domain>``.
* Requests being handled right now (held ones included, e.g. while a service is at zero
  replicas): ``serveform_requests_in_flight{service, host}``. A request held for a replica is
  in flight for up to `replica_wait_seconds` before it is counted.
* There is one series per served service and nothing else: requests to unknown hosts create no
  series. Counters keep counting across route changes and config reloads; they restart at zero
  only when Caddy restarts: treat a decrease as a reset.
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
