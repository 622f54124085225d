"""The gateway's Caddyfile on Kubernetes: the gateway package's render, with cluster-DNS upstreams.

`serveform.gateway.render_caddyfile` writes each service's upstreams as `dynamic srv` lookups of
`_<service>._tcp.replicas.serveform.internal` against the gateway supervisor's own DNS responder
on loopback. In a cluster, the headless Service of each group already is that DNS: the cluster
resolver answers `_http._tcp.<service>.<namespace>.svc.<cluster domain>` with one SRV record per
ready pod, and Caddy re-reads it every `refresh`, so replicas appear and leave as the Deployment
scales with no reload. `cluster_upstreams` rewrites exactly those lookups (and drops the
loopback resolver lines, so the pod's resolv.conf is used); and `metrics_on_pod` opens the
metrics listener on the pod's address so the scaler's pod can read it.

Both rewrites check that they found what they expect and raise otherwise, so a change in the
gateway's templates fails the tests instead of silently routing nowhere.
TODO(issue 7): a `GatewayRuntime` option in the gateway package would make these rewrites
unnecessary.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from serveform.stacks.settings import StackSettings
from serveform.translator.plan import ServicePlan

__all__ = ["CLUSTER_DOMAIN", "METRICS_PORT", "CaddyfileShapeError", "cluster_upstreams", "gateway_caddyfile", "gateway_settings", "metrics_on_pod"]

CLUSTER_DOMAIN = "cluster.local"
# The gateway's metrics listener (Caddy's /metrics for the scaler) inside the gateway pod.
METRICS_PORT = 9180
STATE_DIR = "/var/lib/serveform-gateway"

_SRV_BLOCK = re.compile(r"(?P<head>dynamic srv \{\n)(?P<body>.*?)(?P<tail>\n\s*\})", re.S)
_SERVICE_LINE = re.compile(r"^(?P<indent>\s*)service (?P<service>\S+)$", re.M)
_NAME_LINE = re.compile(r"^(?P<indent>\s*)name \S+$", re.M)
_LOOPBACK_RESOLVERS = re.compile(r"^\s*resolvers 127\.0\.0\.1:\d+\n", re.M)


class CaddyfileShapeError(RuntimeError):
    """The gateway package's Caddyfile no longer has the shape these rewrites expect."""


def gateway_settings(settings: StackSettings):
    """The gateway package's settings for this stack (ports default to 80/443 in a cluster)."""
    from serveform.gateway.settings import GatewaySettings

    gw = settings.gateway
    return GatewaySettings(
        domain=settings.domain,
        tls=gw.tls,
        dns_provider=gw.dns_provider,
        acme_email=gw.acme_email,
        http_port=gw.http_port or 80,
        https_port=gw.https_port or 443,
        body_limit_mb=gw.body_limit_mb,
        stream_timeout_seconds=gw.stream_timeout_seconds,
        replica_wait_seconds=gw.replica_wait_seconds,
        tokens=settings.tokens,
    )


def cluster_upstreams(caddyfile: str, services: Mapping[str, str], port_name: str) -> str:
    """Point every `dynamic srv` block at the headless Service of its service.

    ``services`` maps a service name to its Service's DNS name (`chat.serveform.svc.cluster.local`).
    """
    seen: set[str] = set()

    def rewrite(match: re.Match[str]) -> str:
        body = match.group("body")
        service_match = _SERVICE_LINE.search(body)
        if service_match is None or service_match.group("service") not in services:
            raise CaddyfileShapeError(f"a `dynamic srv` block names no known service: {body!r}")
        service = service_match.group("service")
        seen.add(service)
        indent = service_match.group("indent")
        body = _SERVICE_LINE.sub(lambda _m: f"{indent}service {port_name}", body, count=1)
        body, replaced = _NAME_LINE.subn(lambda m: f"{m.group('indent')}name {services[service]}", body, count=1)
        if not replaced:
            raise CaddyfileShapeError(f"the `dynamic srv` block of {service} has no `name` line")
        return match.group("head") + body + match.group("tail")

    text = _SRV_BLOCK.sub(rewrite, caddyfile)
    missing = sorted(set(services) - seen)
    if missing:
        raise CaddyfileShapeError(f"no `dynamic srv` block for service(s) {', '.join(missing)}")
    return _LOOPBACK_RESOLVERS.sub("", text)


def metrics_on_pod(caddyfile: str, port: int) -> str:
    """Serve the loopback metrics listener on every address of the pod (the scaler is another pod)."""
    site = f"http://127.0.0.1:{port} {{\n\tbind 127.0.0.1\n"
    server = f"servers 127.0.0.1:{port} {{"
    if site not in caddyfile or server not in caddyfile:
        raise CaddyfileShapeError(f"no loopback metrics listener on port {port}")
    return caddyfile.replace(site, f"http://:{port} {{\n").replace(server, f"servers :{port} {{")


def gateway_caddyfile(settings: StackSettings, plans: Sequence[ServicePlan], namespace: str, port_name: str) -> str:
    """The gateway's whole Caddyfile for a cluster; tokens appear only as `{env.*}` placeholders."""
    from serveform.gateway.render import render_caddyfile
    from serveform.gateway.settings import GatewayRuntime
    from pathlib import Path

    runtime = GatewayRuntime(state_dir=Path(STATE_DIR), metrics_port=METRICS_PORT)
    text = render_caddyfile(gateway_settings(settings), plans, runtime)
    services = {p.name: f"{p.name}.{namespace}.svc.{CLUSTER_DOMAIN}" for p in plans}
    return metrics_on_pod(cluster_upstreams(text, services, port_name), METRICS_PORT)
