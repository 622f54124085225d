"""`Gateway` on Kubernetes: serveform's gateway (Caddy + OpenAI router) as a Deployment behind a LoadBalancer Service.

The pod runs `python -m serveform.gateway run --state-dir STATE_DIR` from an image with serveform
and our Caddy build (`serveform:k8s.image`): the same supervisor as a VM gateway, which renders
and validates Caddy's config itself, serves `gateway.<domain>/v1` through its router, and (from
the "runtime" object of its `gateway.json`, see `_caddy`) looks replicas up in the cluster's DNS.

Children (logical names `gateway-<role>`):

- `gateway-config` ConfigMap: `gateway.json` (settings, plans, runtime; no secret) mounted into
  the state directory, and the `Caddyfile` it yields, for reviewers;
- `gateway-secrets` Secret: the gateway's secret files (bearer tokens, DNS-provider options,
  secret probe headers), Pulumi secrets, mounted read-only at `SECRETS_DIR`;
- `gateway-deployment` Deployment: the gateway; its state (certificates, sockets) on an
  `emptyDir`. A changed config rolls the pod (a checksum of `gateway.json`, which holds no
  secret, is a pod annotation);
- `gateway-service` Service (`type` from `serveform:k8s.gateway_service_type`, LoadBalancer by
  default): the HTTP and HTTPS ports to the world; its address is the stack's gateway address;
- `gateway-metrics` Service: Caddy's per-host request metrics for the scaler, inside the cluster;
- `gateway-network` NetworkPolicy: the public ports from anywhere, the metrics port from the
  stack's scaler pods only.

The pod runs under the Pod Security "restricted" profile (`_security`): uid 10001, a read-only
root filesystem with emptyDirs for its state and `/tmp` (the supervisor's sockets), no
capabilities — ports 80/443 through the namespaced unprivileged-port sysctl instead.

Replica addresses come from the cluster's DNS: every service's upstreams are the SRV records of
its headless Service, so nothing here changes when a Deployment scales.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from . import _security
from ._caddy import CONFIG_FILE, CONFIG_SOURCE_DIR, METRICS_PORT, SECRETS_DIR, STATE_DIR, VOLUME_DIR
from ._pod import labels as _labels

__all__ = ["GATEWAY_TYPE", "Gateway", "GatewayArgs", "gateway_command"]

GATEWAY_TYPE = "serveform:k8s:Gateway"


def gateway_command() -> list[str]:
    """The gateway container's command: gateway.json into a state directory of its own, then the gateway.

    The image runs as a non-root user and the emptyDir's root belongs to root, so the gateway
    could not make it 0700: its state directory is one it creates inside the emptyDir.
    """
    import shlex

    state, source = shlex.quote(STATE_DIR), shlex.quote(f"{CONFIG_SOURCE_DIR}/{CONFIG_FILE}")
    return ["sh", "-c", f"mkdir -p -m 0700 {state} && cp {source} {state}/{CONFIG_FILE} && "
            f"exec python -m serveform.gateway run --state-dir {state}"]


@dataclass(frozen=True, kw_only=True)
class GatewayArgs:
    """Inputs of a Kubernetes `Gateway`."""

    namespace: pulumi.Input[str]
    """The namespace of every object."""
    stack: str
    """The stack name, part of the labels."""
    config: str
    """`gateway.json` for the pod (`_caddy.gateway_files`); holds no secret."""
    secret_files: pulumi.Input[dict[str, str]]
    """File name under SECRETS_DIR → text (tokens, DNS options, probe headers), already a Pulumi secret."""
    image: str
    """An image with serveform and its Caddy build (`serveform:k8s.image`)."""
    caddyfile: str | None = None
    """The Caddyfile the config yields, kept beside it for reviewers (the pod renders its own)."""
    http_port: int = 80
    """The Service's plain-HTTP port, and Caddy's."""
    https_port: int = 443
    """The Service's HTTPS port, and Caddy's."""
    service_type: str = "LoadBalancer"
    """`LoadBalancer` (clouds, k8s-local's loopback balancer), `NodePort` or `ClusterIP`."""
    rollout_timeout_seconds: int = 600
    """How long `up` waits for the Deployment and the load balancer's address."""
    scaler_pod_labels: dict[str, str] | None = None
    """Labels of the stack's scaler pods, the only pods that may read the metrics port (None: no scaler)."""


class Gateway(pulumi.ComponentResource):
    """The stack's gateway in the cluster."""

    address: pulumi.Output[str]
    """The load balancer's IP or host name (the Service's cluster IP for other types)."""
    metrics_url: pulumi.Output[str]
    """Where the scaler reads Caddy's metrics, inside the cluster."""
    secrets_name: pulumi.Output[str]
    """The Secret with the gateway's secret files (`tokens.json`: the metrics listener's tokens too)."""

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GATEWAY_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = _labels(args.stack, "gateway", "gateway")
        timeout = f"{args.rollout_timeout_seconds}s"
        waited = pulumi.ResourceOptions.merge(
            child, pulumi.ResourceOptions(custom_timeouts=pulumi.CustomTimeouts(create=timeout, update=timeout))
        )

        data = {CONFIG_FILE: args.config}
        if args.caddyfile is not None:
            data["Caddyfile"] = args.caddyfile
        config = k8s.core.v1.ConfigMap(
            f"{name}-config",
            metadata=k8s.meta.v1.ObjectMetaArgs(namespace=args.namespace, labels=labels),
            data=data,
            # A new ConfigMap for a new config: the pods roll onto it, the old one goes after.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(replace_on_changes=["data"])),
        )
        secrets = k8s.core.v1.Secret(
            f"{name}-secrets",
            metadata=k8s.meta.v1.ObjectMetaArgs(namespace=args.namespace, labels=labels),
            type="Opaque",
            string_data=pulumi.Output.secret(args.secret_files),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(replace_on_changes=["stringData", "data"])),
        )

        container = k8s.core.v1.ContainerArgs(
            name="gateway",
            image=args.image,
            command=gateway_command(),
            ports=[
                k8s.core.v1.ContainerPortArgs(name="http", container_port=args.http_port),
                k8s.core.v1.ContainerPortArgs(name="https", container_port=args.https_port),
                k8s.core.v1.ContainerPortArgs(name="metrics", container_port=METRICS_PORT),
            ],
            # The supervisor opens the metrics listener once Caddy runs a validated config.
            readiness_probe=k8s.core.v1.ProbeArgs(
                tcp_socket=k8s.core.v1.TCPSocketActionArgs(port="metrics"), period_seconds=5
            ),
            resources=k8s.core.v1.ResourceRequirementsArgs(requests={"cpu": "100m", "memory": "192Mi"}),
            security_context=_security.restricted_container_context(),
            env=[
                # The root filesystem is read-only: home, caches and bytecode stay off it.
                k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp"),
                k8s.core.v1.EnvVarArgs(name="PYTHONDONTWRITEBYTECODE", value="1"),
            ],
            volume_mounts=[
                k8s.core.v1.VolumeMountArgs(name="state", mount_path=VOLUME_DIR),
                k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
                k8s.core.v1.VolumeMountArgs(name="config", mount_path=CONFIG_SOURCE_DIR, read_only=True),
                k8s.core.v1.VolumeMountArgs(name="secrets", mount_path=SECRETS_DIR, read_only=True),
            ],
        )
        checksum = hashlib.sha256(args.config.encode()).hexdigest()[:16]
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="gateway", namespace=args.namespace, labels=labels),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels, annotations={"serveform.dev/gateway-config": checksum}),
                    spec=k8s.core.v1.PodSpecArgs(
                        containers=[container],
                        security_context=_security.restricted_pod_context(
                            bind_low_ports=min(args.http_port, args.https_port) < 1024
                        ),
                        automount_service_account_token=False,
                        volumes=[
                            k8s.core.v1.VolumeArgs(
                                name="config",
                                config_map=k8s.core.v1.ConfigMapVolumeSourceArgs(name=config.metadata.name),
                            ),
                            k8s.core.v1.VolumeArgs(
                                name="secrets",
                                secret=k8s.core.v1.SecretVolumeSourceArgs(
                                    secret_name=secrets.metadata.name, default_mode=0o400
                                ),
                            ),
                            k8s.core.v1.VolumeArgs(name="state", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs()),
                            k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs()),
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
        k8s.networking.v1.NetworkPolicy(
            f"{name}-network",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="gateway", namespace=args.namespace, labels=labels),
            spec=_security.gateway_network_policy_spec(
                labels, args.scaler_pod_labels or {"serveform.dev/no-scaler": "true"}, ["http", "https"], "metrics"
            ),
            opts=child,
        )
        self.address = public.status.apply(_address).apply(lambda a: a or "")
        if args.service_type != "LoadBalancer":
            self.address = public.spec.cluster_ip
        self.metrics_url = pulumi.Output.concat(
            "http://", metrics.metadata.name, ".", metrics.metadata.namespace, f".svc:{METRICS_PORT}/metrics"
        )
        self.secrets_name = secrets.metadata.name
        self.register_outputs({"address": self.address, "metrics_url": self.metrics_url, "secrets_name": self.secrets_name})


def _address(status) -> str | None:
    ingress = (status.load_balancer.ingress if status and status.load_balancer else None) or []
    for entry in ingress:
        if entry.ip or entry.hostname:
            return entry.ip or entry.hostname
    return None
