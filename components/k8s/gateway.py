"""`Gateway` on Kubernetes: Caddy as a Deployment behind a LoadBalancer Service.

Children (logical names `gateway-<role>`):

- `gateway-config` ConfigMap: the Caddyfile (no secrets in it: bearer tokens are
  `{env.SERVEFORM_TOKEN_<i>}` placeholders);
- `gateway-tokens` Secret: `SERVEFORM_TOKEN_<i>` = each bearer token, a Pulumi secret, read by the
  container through `envFrom`;
- `gateway-deployment` Deployment: Caddy with the Caddyfile; its state (certificates, admin
  socket) on an `emptyDir`. A changed Caddyfile rolls the pod (a checksum of the config, which
  holds no secret, is a pod annotation);
- `gateway-service` Service (`type` from `serveform:k8s.gateway_service_type`, LoadBalancer by
  default): ports 80 and 443 to the world; its address is the stack's gateway address;
- `gateway-metrics` Service: Caddy's per-host request metrics for the scaler, inside the cluster.

Replica addresses come from the cluster's DNS: every service's upstreams are the SRV records of
its headless Service (see `_caddy`), so nothing here changes when a Deployment scales.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from ._caddy import METRICS_PORT, STATE_DIR
from ._pod import labels as _labels

__all__ = ["GATEWAY_TYPE", "CADDY_IMAGE", "Gateway", "GatewayArgs"]

GATEWAY_TYPE = "serveform:k8s:Gateway"
# Caddy's official image at the version of our own build (tools/caddy). It carries the standard
# modules; `tls: acme_dns` needs a build with the DNS module, given as `image`.
CADDY_IMAGE = "caddy:2.11.9"
CONFIG_DIR = "/etc/serveform"


@dataclass(frozen=True, kw_only=True)
class GatewayArgs:
    """Inputs of a Kubernetes `Gateway`."""

    namespace: pulumi.Input[str]
    """The namespace of every object."""
    stack: str
    """The stack name, part of the labels."""
    caddyfile: str
    """The whole Caddyfile, from `serveform.gateway.render_caddyfile` with cluster-DNS upstreams."""
    tokens: pulumi.Input[dict[str, str]] | None = None
    """`SERVEFORM_TOKEN_<i>` → bearer token, already a Pulumi secret; None when the stack has no token."""
    http_port: int = 80
    """The Service's plain-HTTP port, and Caddy's."""
    https_port: int = 443
    """The Service's HTTPS port, and Caddy's."""
    service_type: str = "LoadBalancer"
    """`LoadBalancer` (clouds, k8s-local's loopback balancer), `NodePort` or `ClusterIP`."""
    image: str = CADDY_IMAGE
    """The Caddy image."""
    rollout_timeout_seconds: int = 600
    """How long `up` waits for the Deployment and the load balancer's address."""


class Gateway(pulumi.ComponentResource):
    """The stack's gateway in the cluster."""

    address: pulumi.Output[str]
    """The load balancer's IP or host name (the Service's cluster IP for other types)."""
    metrics_url: pulumi.Output[str]
    """Where the scaler reads Caddy's metrics, inside the cluster."""

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GATEWAY_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = _labels(args.stack, "gateway", "gateway")
        timeout = f"{args.rollout_timeout_seconds}s"
        waited = pulumi.ResourceOptions.merge(
            child, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout))
        )

        config = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=k8s.meta.v1.ObjectMetaArgs(namespace=args.namespace, labels=labels),
            data={"Caddyfile": args.caddyfile},
            # A new ConfigMap for a new Caddyfile: the pods roll onto it, the old one goes after.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(replace_on_changes=["data"])),
        )
        env_from = None
        if args.tokens is not None:
            tokens = k8s.core.v1.Secret(
                f"{name}-tokens",
                metadata=k8s.meta.v1.ObjectMetaArgs(namespace=args.namespace, labels=labels),
                type="Opaque",
                string_data=pulumi.Output.secret(args.tokens),
                opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(replace_on_changes=["stringData", "data"])),
            )
            env_from = [k8s.core.v1.EnvFromSourceArgs(secret_ref=k8s.core.v1.SecretEnvSourceArgs(name=tokens.metadata.name))]

        container = k8s.core.v1.ContainerArgs(
            name="caddy",
            image=args.image,
            command=["caddy", "run", "--config", f"{CONFIG_DIR}/Caddyfile", "--adapter", "caddyfile"],
            env_from=env_from,
            ports=[
                k8s.core.v1.ContainerPortArgs(name="http", container_port=args.http_port),
                k8s.core.v1.ContainerPortArgs(name="https", container_port=args.https_port),
                k8s.core.v1.ContainerPortArgs(name="metrics", container_port=METRICS_PORT),
            ],
            readiness_probe=k8s.core.v1.ProbeArgs(
                tcp_socket=k8s.core.v1.TCPSocketActionArgs(port="metrics"), period_seconds=5
            ),
            resources=k8s.core.v1.ResourceRequirementsArgs(requests={"cpu": "100m", "memory": "128Mi"}),
            volume_mounts=[
                k8s.core.v1.VolumeMountArgs(name="config", mount_path=CONFIG_DIR, read_only=True),
                k8s.core.v1.VolumeMountArgs(name="state", mount_path=STATE_DIR),
            ],
        )
        checksum = hashlib.sha256(args.caddyfile.encode()).hexdigest()[:16]
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="gateway", namespace=args.namespace, labels=labels),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels, annotations={"serveform.dev/caddyfile": checksum}),
                    spec=k8s.core.v1.PodSpecArgs(
                        containers=[container],
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="config",
                                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config.metadata.name),
                            ),
                            k8s.core.v1.VolumeArgs(name="state", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs()),
                        ],
                    ),
                ),
            ),
            opts=waited,
        )
        public = k8s.core.v1.Service(
            f"{name}-service",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="gateway", namespace=args.namespace, labels=labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                type=args.service_type,
                selector=labels,
                ports=[
                    k8s.core.v1.ServicePortArgs(name="http", port=args.http_port, target_port="http"),
                    k8s.core.v1.ServicePortArgs(name="https", port=args.https_port, target_port="https"),
                ],
            ),
            opts=pulumi.ResourceOptions.merge(waited, pulumi.ResourceOptions(depends_on=[deployment])),
        )
        metrics = k8s.core.v1.Service(
            f"{name}-metrics",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="gateway-metrics", namespace=args.namespace, labels=labels),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="ClusterIP",
                selector=labels,
                ports=[k8s.core.v1.ServicePortArgs(name="metrics", port=METRICS_PORT, target_port="metrics")],
            ),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[deployment])),
        )
        self.address = public.status.apply(_address).apply(lambda a: a or "")
        if args.service_type != "LoadBalancer":
            self.address = public.spec.cluster_ip
        self.metrics_url = pulumi.Output.concat(
            "http://", metrics.metadata.name, ".", metrics.metadata.namespace, f".svc:{METRICS_PORT}/metrics"
        )
        self.register_outputs({"address": self.address, "metrics_url": self.metrics_url})


def _address(status) -> str | None:
    ingress = (status.load_balancer.ingress if status and status.load_balancer else None) or []
    for entry in ingress:
        if entry.ip or entry.hostname:
            return entry.ip or entry.hostname
    return None
