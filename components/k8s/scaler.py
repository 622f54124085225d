"""`Scaler` on Kubernetes: the autoscaler daemon as a Deployment with the rights a replica change needs.

The Deployment is the scaler package's own manifest (`serveform.scaler.kubernetes_deployment`:
one replica, `Recreate`, probes on its /healthz, state on an emptyDir); this component adds the
identity it runs as. The scaler reads the gateway's per-host request metrics, writes each
service's count and runs a scale `pulumi up` (the counts in its environment); the only
objects such an update changes are the services' Deployments. So its ServiceAccount may update
the stack's own Deployments by name (`resourceNames`: one per service), list and watch
Deployments, ReplicaSets, Pods and Events (what Pulumi's rollout wait reads; Kubernetes cannot
restrict a list by name) in the stack's namespace — nothing else, nothing cluster-wide.

The pod runs under the Pod Security "restricted" profile (`_security`), its /healthz on loopback
(exec probes), and the `scaler-network` NetworkPolicy admits no ingress at all.

Children (logical names `scaler-<role>`): ServiceAccount, Role, RoleBinding, the `scaler-project`
ConfigMap (the project's files, see `_scaler_project`), Deployment.

The image must hold serveform (and the Pulumi CLI). An init container copies the project files
from the ConfigMap into a writable `emptyDir` at PROJECT_DIR (Pulumi writes its workspace files
there), and the scaler runs with `--project-dir PROJECT_DIR` and its `--state` file
on the `state` volume. The Pulumi state backend URL and passphrase come from the Secret
`scaler-env` (`PULUMI_BACKEND_URL`, `PULUMI_CONFIG_PASSPHRASE`, the object store's `AWS_*`
credentials). When `environment` is given (the deploying `up` runs against a backend a pod can
reach), the component stores it there; otherwise the operator creates it
(`kubectl create secret generic scaler-env --from-literal=PULUMI_BACKEND_URL=... ...`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from . import _security
from ._pod import labels as _labels

__all__ = ["SCALER_TYPE", "SCALER_ENV_SECRET", "Scaler", "ScalerArgs", "pod_labels"]

SCALER_TYPE = "serveform:k8s:Scaler"
SCALER_ENV_SECRET = "scaler-env"
SERVICE_ACCOUNT = "scaler"
PROJECT_CONFIG_MAP = "scaler-project"
PROJECT_DIR = "/srv/serveform"
# The gateway Secret's key holding the bearer tokens (gateway.state.TOKENS_FILE's name).
METRICS_TOKEN_KEY = "tokens.json"
# Where the init container finds the ConfigMap's files.
PROJECT_SOURCE_DIR = "/etc/serveform/project"


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
    """An image with serveform and the Pulumi CLI (`serveform:k8s.image`)."""
    project_files: Mapping[str, str] = field(default_factory=dict)
    """Relative path → text of the project files the scaler needs (`_scaler_project.project_files`)."""
    deployments: tuple[str, ...] = ()
    """Names of the stack's service Deployments: the only ones the scaler may change."""
    metrics_token_secret: pulumi.Input[str] | None = None
    """The gateway's Secret whose `tokens.json` the scaler sends to its metrics listener (None: no auth)."""
    environment: pulumi.Input[Mapping[str, str]] | None = None
    """The scaler's environment (state backend URL and credentials, passphrase), a Pulumi secret:
    stored as the Secret `scaler-env`. None: the operator creates that Secret."""


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
                # Changes by name only: another team's Deployment in a shared namespace is out of reach.
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=["apps"], resources=["deployments"], resource_names=sorted(args.deployments),
                    verbs=["get", "patch", "update"],
                ),
                k8s.rbac.v1.PolicyRuleArgs(api_groups=["apps"], resources=["deployments"], verbs=["list", "watch"]),
                k8s.rbac.v1.PolicyRuleArgs(api_groups=["apps"], resources=["replicasets"], verbs=["get", "list", "watch"]),
                # What the provider's rollout wait watches; without persistentvolumeclaims its
                # watch never syncs and the scale `up` waits forever on the Deployment it changed.
                k8s.rbac.v1.PolicyRuleArgs(
                    api_groups=[""], resources=["events", "persistentvolumeclaims", "pods"], verbs=["get", "list", "watch"]
                ),
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
        if args.environment is not None:
            k8s.core.v1.Secret(
                f"{name}-env",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=SCALER_ENV_SECRET, namespace=args.namespace, labels=labels),
                type="Opaque",
                string_data=pulumi.Output.secret(args.environment),
                opts=child,
            )
        keys = _project_keys(args.project_files)
        project = k8s.core.v1.ConfigMap(
            f"{name}-project",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=PROJECT_CONFIG_MAP, namespace=args.namespace, labels=labels),
            data={key: args.project_files[path] for path, key in keys.items()},
            opts=child,
        )
        manifest = pulumi.Output.all(args.namespace, args.metrics_url, project.metadata.name, args.metrics_token_secret).apply(
            lambda values: _manifest(
                args, namespace=values[0], metrics_url=values[1], project=values[2], keys=keys, token_secret=values[3]
            )
        )
        k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=manifest.apply(lambda m: m["metadata"]),
            spec=manifest.apply(lambda m: m["spec"]),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[account])),
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-network",
            metadata=k8s.meta.v1.ObjectMetaArgs(name="scaler", namespace=args.namespace, labels=labels),
            spec=_security.scaler_network_policy_spec(pod_labels(args.stack)),
            opts=child,
        )
        self.service_account_name = account.metadata.name
        self.register_outputs({"service_account_name": self.service_account_name})


def pod_labels(stack: str) -> dict[str, str]:
    """The labels of the scaler's pods (the scaler package's manifest sets them)."""
    from serveform.scaler import kubernetes_deployment

    manifest = kubernetes_deployment(stack=stack, namespace="-", image="-", metrics_url="-")
    return dict(manifest["spec"]["template"]["metadata"]["labels"])


def _project_keys(files: Mapping[str, str]) -> dict[str, str]:
    """A ConfigMap key for each project path (keys cannot hold `/`; the volume's items restore the path)."""
    return {path: f"f{index}-{path.rsplit('/', 1)[-1]}" for index, path in enumerate(sorted(files))}


def _manifest(
    args: ScalerArgs, *, namespace: str, metrics_url: str, project: str, keys: Mapping[str, str], token_secret: str | None = None
) -> dict:
    from serveform.scaler import kubernetes_deployment

    manifest = kubernetes_deployment(
        stack=args.stack,
        namespace=namespace,
        image=args.image,
        metrics_url=metrics_url,
        env_secret=SCALER_ENV_SECRET,
        service_account=SERVICE_ACCOUNT,
        metrics_token_secret=(token_secret, METRICS_TOKEN_KEY) if token_secret else None,
    )
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    container["command"] = [*container["command"], "--project-dir", PROJECT_DIR]
    container["workingDir"] = PROJECT_DIR
    container["volumeMounts"].append({"name": "project", "mountPath": PROJECT_DIR})
    pod["initContainers"] = [
        {
            "name": "project",
            "image": args.image,
            # -L: the ConfigMap volume's files are symlinks; the glob skips its hidden `..data`.
            "command": ["sh", "-c", f"cp -RL {PROJECT_SOURCE_DIR}/* {PROJECT_DIR}/"],
            "volumeMounts": [
                {"name": "project-source", "mountPath": PROJECT_SOURCE_DIR, "readOnly": True},
                {"name": "project", "mountPath": PROJECT_DIR},
            ],
            "securityContext": _security.restricted_container_context(),
        }
    ]
    container["securityContext"] = _security.restricted_container_context()
    # The root filesystem is read-only: Pulumi's and Python's temporary files go to an emptyDir.
    container["env"] = [*container["env"], {"name": "HOME", "value": "/tmp"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}]
    container["volumeMounts"].append({"name": "tmp", "mountPath": "/tmp"})
    pod["securityContext"] = _security.restricted_pod_context()
    pod["volumes"] += [
        {"name": "project", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        {
            "name": "project-source",
            "configMap": {"name": project, "items": [{"key": key, "path": path} for path, key in keys.items()]},
        },
    ]
    # Our labels too, so every object of the stack is found by `serveform.dev/stack`.
    manifest["metadata"]["labels"] = {**_labels(args.stack, "scaler", "scaler"), **manifest["metadata"]["labels"]}
    return manifest
