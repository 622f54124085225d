"""`Scaler` on Kubernetes: the autoscaler daemon as a Deployment with the rights a replica change needs.

The scaler reads the gateway's per-host request metrics, decides each service's replica count,
writes it to the stack config (`serveform:replicas`) and runs `pulumi up`; the only objects such
an update changes are the services' Deployments. So its ServiceAccount may read and update
Deployments (and watch the ReplicaSets, Pods and Events that Pulumi's rollout wait reads) in
the stack's namespace — nothing else, nothing cluster-wide.

Children (logical names `scaler-<role>`): ServiceAccount, Role, RoleBinding, Deployment.

The Pulumi state backend and passphrase of the stack are the operator's to provide: the pod reads
them from the Secret `scaler-env` when it exists (`PULUMI_BACKEND_URL`, `PULUMI_CONFIG_PASSPHRASE`,
...), which serveform does not create, because they are credentials of the deploying
environment, not of the stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from ._pod import labels as _labels

__all__ = ["SCALER_TYPE", "SCALER_ENV_SECRET", "Scaler", "ScalerArgs", "scaler_command"]

SCALER_TYPE = "serveform:k8s:Scaler"
# The scaler runs serveform itself, installed from the package index at the deploying version
# (as the VM backends' gateway hosts do); no serveform image is published.
PYTHON_IMAGE = "python:3.11-slim"
SCALER_ENV_SECRET = "scaler-env"


def scaler_command(package_spec: str, stack: str, metrics_url: str) -> list[str]:
    """The container's command: install serveform, then run the scaler for the stack."""
    import shlex

    install = f"pip install --no-cache-dir {shlex.quote(package_spec)}"
    run = f"exec python -m serveform.scaler run --stack {shlex.quote(stack)} --metrics-url {shlex.quote(metrics_url)}"
    return ["/bin/sh", "-c", f"{install} && {run}"]


@dataclass(frozen=True, kw_only=True)
class ScalerArgs:
    """Inputs of a Kubernetes `Scaler`."""

    namespace: pulumi.Input[str]
    """The stack's namespace."""
    stack: str
    """The stack the scaler updates."""
    metrics_url: pulumi.Input[str]
    """The gateway's metrics endpoint inside the cluster."""
    package_spec: str
    """What `pip install` installs (`serveform[k8s]==<version>`)."""
    image: str = PYTHON_IMAGE
    """The image the scaler runs in."""


class Scaler(pulumi.ComponentResource):
    """The stack's autoscaler in the cluster."""

    service_account_name: pulumi.Output[str]
    """The scaler's ServiceAccount."""

    def __init__(self, name: str, args: ScalerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(SCALER_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = _labels(args.stack, "scaler", "scaler")
        meta = k8s.meta.v1.ObjectMetaArgs(name="scaler", namespace=args.namespace, labels=labels)
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
        command = pulumi.Output.from_input(args.metrics_url).apply(
            lambda url: scaler_command(args.package_spec, args.stack, url)
        )
        k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta,
            spec=k8s.apps.v1.DeploymentSpecArgs(
                replicas=1,
                # One scaler per stack: never two writers of serveform:replicas at once.
                strategy=k8s.apps.v1.DeploymentStrategyArgs(type="Recreate"),
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=labels),
                template=k8s.core.v1.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=k8s.core.v1.PodSpecArgs(
                        service_account_name=account.metadata.name,
                        containers=[
                            k8s.core.v1.ContainerArgs(
                                name="scaler",
                                image=args.image,
                                command=command,
                                env_from=[
                                    k8s.core.v1.EnvFromSourceArgs(
                                        secret_ref=k8s.core.v1.SecretEnvSourceArgs(name=SCALER_ENV_SECRET, optional=True)
                                    )
                                ],
                                resources=k8s.core.v1.ResourceRequirementsArgs(
                                    requests={"cpu": "100m", "memory": "256Mi"}
                                ),
                            )
                        ],
                    ),
                ),
            ),
            opts=child,
        )
        self.service_account_name = account.metadata.name
        self.register_outputs({"service_account_name": self.service_account_name})
