"""`Scaler` on Kubernetes: the autoscaler daemon as a Deployment with the rights a replica change needs.

The Deployment is the scaler package's own manifest (`serveform.scaler.kubernetes_deployment`:
one replica, `Recreate`, probes on its /healthz, state on an emptyDir); this component adds the
identity it runs as. The scaler reads the gateway's per-host request metrics, writes each
service's count to the stack config (`serveform:replicas`) and runs `pulumi up`; the only
objects such an update changes are the services' Deployments. So its ServiceAccount may read and
update Deployments (and watch the ReplicaSets, Pods and Events that Pulumi's rollout wait reads)
in the stack's namespace — nothing else, nothing cluster-wide.

Children (logical names `scaler-<role>`): ServiceAccount, Role, RoleBinding, Deployment.

The image must hold serveform and the stack's project (at `/srv/serveform`, the manifest's
default); the Pulumi state backend URL and passphrase come from the Secret `scaler-env` when it
exists, which serveform does not create: they are credentials of the deploying environment.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from ._pod import labels as _labels

__all__ = ["SCALER_TYPE", "SCALER_ENV_SECRET", "Scaler", "ScalerArgs"]

SCALER_TYPE = "serveform:k8s:Scaler"
SCALER_ENV_SECRET = "scaler-env"
SERVICE_ACCOUNT = "scaler"


@dataclass(frozen=True, kw_only=True)
class ScalerArgs:
    """Inputs of a Kubernetes `Scaler`."""

    namespace: pulumi.Input[str]
    """The stack's namespace."""
    stack: str
    """The stack the scaler updates."""
    metrics_url: pulumi.Input[str]
    """The gateway's metrics endpoint inside the cluster."""
    image: str
    """An image with serveform and the stack's project (`serveform:k8s.scaler_image`)."""


class Scaler(pulumi.ComponentResource):
    """The stack's autoscaler in the cluster."""

    service_account_name: pulumi.Output[str]
    """The scaler's ServiceAccount."""

    def __init__(self, name: str, args: ScalerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(SCALER_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = _labels(args.stack, "scaler", "scaler")
        meta = k8s.meta.v1.ObjectMetaArgs(name=SERVICE_ACCOUNT, namespace=args.namespace, labels=labels)
        account = k8s.core.v1.ServiceAccount(f"{name}-account", metadata=meta, opts=child)
        role = k8s.rbac.v1.Role(
            f"{name}-role",
            metadata=meta,
            rules=[
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=["apps"], resources=["deployments"], verbs=["get", "list", "watch", "patch", "update"]
                ),
                k8s.rbac.v1.PolicyRuleArgs(api_groups=["apps"], resources=["replicasets"], verbs=["get", "list", "watch"]),
                k8s.rbac.v1.PolicyRuleArgs(api_groups=[""], resources=["pods", "events"], verbs=["get", "list", "watch"]),
            ],
            opts=child,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-binding",
            metadata=meta,
            role_ref=k8s.rbac.v1.RoleRefArgs(api_group="rbac.authorization.k8s.io", kind="Role", name=role.metadata.name),
            subjects=[
                k8s.rbac.v1.SubjectArgs(kind="ServiceAccount", name=account.metadata.name, namespace=args.namespace)
            ],
            opts=child,
        )
        manifest = pulumi.Output.all(args.namespace, args.metrics_url).apply(
            lambda values: _manifest(args, namespace=values[0], metrics_url=values[1])
        )
        k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=manifest.apply(lambda m: m["metadata"]),
            spec=manifest.apply(lambda m: m["spec"]),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[account])),
        )
        self.service_account_name = account.metadata.name
        self.register_outputs({"service_account_name": self.service_account_name})


def _manifest(args: ScalerArgs, *, namespace: str, metrics_url: str) -> dict:
    from serveform.scaler import kubernetes_deployment

    manifest = kubernetes_deployment(
        stack=args.stack,
        namespace=namespace,
        image=args.image,
        metrics_url=metrics_url,
        env_secret=SCALER_ENV_SECRET,
        service_account=SERVICE_ACCOUNT,
    )
    # Our labels too, so every object of the stack is found by `serveform.dev/stack`.
    manifest["metadata"]["labels"] = {**_labels(args.stack, "scaler", "scaler"), **manifest["metadata"]["labels"]}
    return manifest
