"""The gateway's configuration on Kubernetes: the gateway package's own files, with a cluster runtime.

In a cluster the gateway pod runs `python -m serveform.gateway run` (Caddy, the OpenAI router and
the prober under one supervisor), but its replicas are not published to it: the headless Service
of each group already is the replica list. `cluster_runtime` therefore tells the gateway package
to look each service's upstreams up in the cluster's DNS (`_<port name>._tcp.<service>.<namespace>
.svc.<cluster domain>`, one SRV record per ready pod, re-read every refresh, so the Deployment
scales with no reload) and to serve Caddy's metrics on the pod's address for the scaler's pod.
`gateway_files` are the files of its state directory: `gateway.json` (no secret; it carries that
runtime) and the secret files (tokens, DNS-provider options, secret probe headers), which the pod
reads from a Secret mounted at `SECRETS_DIR`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from serveform.stacks.settings import StackSettings
from serveform.translator.plan import ServicePlan

__all__ = [
    "CLUSTER_DOMAIN",
    "CONFIG_FILE",
    "METRICS_PORT",
    "SECRETS_DIR",
    "STATE_DIR",
    "VOLUME_DIR",
    "CONFIG_SOURCE_DIR",
    "cluster_runtime",
    "gateway_caddyfile",
    "gateway_files",
    "gateway_settings",
]

CLUSTER_DOMAIN = "cluster.local"
# The gateway's metrics listener (Caddy's /metrics for the scaler) inside the gateway pod.
METRICS_PORT = 9180
# The pod's emptyDir, and the gateway's state directory inside it: the gateway creates that
# directory itself (it must own it to make it 0700; the emptyDir's root belongs to root).
VOLUME_DIR = "/var/lib/serveform-gateway"
STATE_DIR = f"{VOLUME_DIR}/state"
# Where the pod mounts the ConfigMap with gateway.json; the command copies it into STATE_DIR.
CONFIG_SOURCE_DIR = "/etc/serveform-gateway/config"
# Where the pod mounts the Secret holding the gateway's secret files (0400, never in a ConfigMap).
SECRETS_DIR = "/etc/serveform-gateway/secrets"
CONFIG_FILE = "gateway.json"


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
        allow_plain_http=gw.allow_plain_http,
        tokens=settings.tokens,
    )


def cluster_runtime(plans: Sequence[ServicePlan], namespace: str, port_name: str, *, metrics_auth: bool = False):
    """The gateway runtime of a pod: cluster-DNS upstreams, metrics on the pod's address.

    Other pods can reach that address (a NetworkPolicy admits only the scaler's), so with bearer
    tokens configured the metrics listener requires one too (`metrics_auth`); the scaler sends it.
    """
    from serveform.gateway.settings import GatewayRuntime, SrvLookup

    return GatewayRuntime(
        state_dir=Path(STATE_DIR),
        metrics_port=METRICS_PORT,
        replica_dns="system",
        srv_lookups={
            p.name: SrvLookup(service=port_name, name=f"{p.name}.{namespace}.svc.{CLUSTER_DOMAIN}") for p in plans
        },
        metrics_address="0.0.0.0",
        metrics_auth=metrics_auth,
    )


def gateway_caddyfile(settings: StackSettings, plans: Sequence[ServicePlan], namespace: str, port_name: str) -> str:
    """The Caddyfile the pod's gateway renders; tokens appear only as `{env.*}` placeholders."""
    from serveform.gateway.render import render_caddyfile

    runtime = cluster_runtime(plans, namespace, port_name, metrics_auth=bool(settings.tokens))
    return render_caddyfile(gateway_settings(settings), plans, runtime)


def gateway_files(
    settings: StackSettings, plans: Sequence[ServicePlan], namespace: str, port_name: str
) -> tuple[str, dict[str, str]]:
    """``(gateway.json, {secret file name: text})`` for the pod's state directory and its Secret.

    `gateway.json` names the secret files by their absolute path under SECRETS_DIR and carries the
    cluster runtime (the supervisor's "runtime" object); the Secret's keys are the file names.
    """
    from serveform.gateway.state import config_files

    plain, secret = config_files(gateway_settings(settings), plans)
    document = json.loads(plain[CONFIG_FILE])
    files: dict[str, str] = {}
    for key in ("tokens_file", "dns_options_file", "probe_headers_file"):
        relative = document[key]
        name = Path(relative).name
        files[name] = secret[relative]
        document[key] = f"{SECRETS_DIR}/{name}"
    runtime = cluster_runtime(plans, namespace, port_name, metrics_auth=bool(settings.tokens))
    document["runtime"] = {
        "metrics_auth": runtime.metrics_auth,
        "replica_dns": runtime.replica_dns,
        "srv_lookups": {k: v.model_dump(mode="json") for k, v in runtime.srv_lookups.items()},
        "metrics_address": runtime.metrics_address,
        "metrics_port": runtime.metrics_port,
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n", files
