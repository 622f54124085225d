"""The Kubernetes backend: each service as a Deployment + headless Service, one Caddy gateway.

`deploy(settings, plans)` first checks everything that can be wrong without registering a
resource — the stack settings, every plan (env names, GPU vendor), the gateway's Caddyfile, and,
unless `serveform:k8s.check_capacity` is false, that some node can hold each service's GPUs
(a replica asking for more GPUs than any node has would otherwise stay Pending until the rollout
times out). Then it registers, through a provider configured from `serveform:k8s` (kubeconfig,
context, namespace):

- the namespace (unless `create_namespace` is false), labelled for Pod Security admission at the
  stack's level (`serveform:policy.pod_security`: baseline by default, privileged when the policy
  allows privileged pods or host paths and a service uses them; see `_security`);
- one `Volume` per network volume (a claim, static hostPath volume where configured);
- one `GpuInstanceGroup` per service (Deployment with GPU limits, tolerations, node selection,
  shm, secrets as Kubernetes Secrets, registry credentials as an image pull secret);
- the `Gateway` (serveform's gateway Deployment behind a LoadBalancer Service, upstreams from cluster DNS);
- the `Scaler` Deployment when a service autoscales (the project's files from a ConfigMap).

The gateway and the scaler run from `serveform:k8s.image` (or `scaler_image`), an image with
serveform and its Caddy build; unset, serveform's runtime image as this checkout builds it
(`serveform image build`, tag from its contents). The scaler's copy of the stack file names that
image explicitly and has no kubeconfig, so its in-cluster `up` keeps the image and talks to the
cluster through its ServiceAccount.

Exports: `services` (per service: url, model endpoint, group name, replica bounds and count),
`gateway_address`, `domain`, `namespace`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pulumi
import pulumi_kubernetes as k8s
from pydantic import SecretStr

from serveform.stacks.settings import StackConfigError, StackSettings
from serveform.translator.plan import ServicePlan

from . import _caddy, _capacity, _code, _pod, _security
from . import _scaler_project as _scaler
from .gateway import GATEWAY_TYPE, Gateway, GatewayArgs
from .gpu_instance_group import GPU_INSTANCE_GROUP_TYPE, PORT_NAME, GpuInstanceGroup, GpuInstanceGroupArgs
from .scaler import SCALER_TYPE, Scaler, ScalerArgs
from .scaler import pod_labels as scaler_pod_labels
from .volume import VOLUME_TYPE, Volume, VolumeArgs

__all__ = [
    "GATEWAY_TYPE",
    "GPU_INSTANCE_GROUP_TYPE",
    "SCALER_TYPE",
    "VOLUME_TYPE",
    "Gateway",
    "GatewayArgs",
    "GpuInstanceGroup",
    "GpuInstanceGroupArgs",
    "Scaler",
    "ScalerArgs",
    "Volume",
    "VolumeArgs",
    "deploy",
]

# `serveform:k8s.python_image: runtime`: services that name `python:` run in serveform's runtime image.
RUNTIME_IMAGE = "runtime"
_NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def deploy(settings: StackSettings, plans: Sequence[ServicePlan]) -> None:
    """Register the stack's Kubernetes objects for ``plans`` and export its endpoints."""
    from serveform.gateway.errors import GatewayConfigError

    from .. import _cloud

    cfg = settings.k8s
    problems: list[tuple[str, str]] = []
    _cloud.check_plans(settings, plans, "k8s", problems)
    # The namespace names every object and, in the gateway's Caddyfile, every upstream host.
    if not _NAMESPACE.match(cfg.namespace):
        problems.append(("serveform:k8s.namespace", f"{cfg.namespace!r} is not a Kubernetes namespace name (RFC 1123 label: a-z, 0-9, '-', at most 63)"))
    if problems:
        raise pulumi.RunError(str(StackConfigError(settings.stack, problems)))
    try:
        for plan in plans:
            _pod.split_env(plan)
            _pod.gpu_request(plan)
            _code.check_size(plan)
        # Service files by their path in the project: the scaler pod runs the same program from
        # another directory, and its `up` must render the same gateway.json.
        routed = [_project_relative(plan, settings.project_dir) for plan in plans]
        # As on the local backend, a stack without `serveform:tokens` still gets an authenticated
        # gateway: a token made once and kept, a secret, in the stack's state (`serveform
        # endpoints` prints it). It reaches the pod only through the Secret's tokens file.
        rendered = settings if settings.tokens else settings.model_copy(update={"tokens": [SecretStr(_GENERATED_TOKEN)]})
        caddyfile = _caddy.gateway_caddyfile(rendered, routed, cfg.namespace, PORT_NAME)
        gateway_config, gateway_secret_files = _caddy.gateway_files(rendered, routed, cfg.namespace, PORT_NAME)
    except (_pod.K8sPlanError, GatewayConfigError) as exc:
        raise pulumi.RunError(str(exc)) from None
    image = cfg.image or cfg.scaler_image
    runtime = ""
    if not image or cfg.python_image == RUNTIME_IMAGE:
        runtime = cfg.runtime_image or _runtime_image(settings, problems)
    image = image or runtime
    if problems:
        raise pulumi.RunError(str(StackConfigError(settings.stack, problems)))
    python_image = runtime if cfg.python_image == RUNTIME_IMAGE else cfg.python_image
    if cfg.python_image == RUNTIME_IMAGE:
        for plan in plans:
            python = plan.replica_group.python
            if plan.replica_group.image_from == "python" and python and python != _cloud.RUNTIME_PYTHON:
                problems.append(("serveform:k8s.python_image", f"runtime: the runtime image has Python {_cloud.RUNTIME_PYTHON}, "
                                 f"but {plan.file} asks for python: {python!r}"))
        if problems:
            raise pulumi.RunError(str(StackConfigError(settings.stack, problems)))
    scaler_files: dict[str, str] = {}
    if any(p.scaling for p in plans):
        try:
            scaler_files = _scaler.project_files(settings, images={"runtime_image": runtime or None})
        except _scaler.ProjectFileError as exc:
            raise pulumi.RunError(str(exc)) from None
    products = _preflight(settings, plans)

    provider = k8s.Provider(
        "k8s",
        kubeconfig=_kubeconfig_path(settings),
        context=cfg.context,
        namespace=cfg.namespace,
    )
    opts = pulumi.ResourceOptions(provider=provider)
    namespace: pulumi.Input[str] = cfg.namespace
    level = _security.pod_security_level(
        settings.policy.pod_security,
        needs_privileges=any(
            p.replica_group.privileged or any(v.kind == "instance" for v in p.volumes) for p in plans
        ),
    )
    if cfg.create_namespace:
        ns = k8s.core.v1.Namespace(
            "namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=cfg.namespace,
                labels={"app.kubernetes.io/part-of": "serveform", **_security.namespace_labels(level)},
            ),
            opts=opts,
        )
        namespace = ns.metadata.name

    volumes = {
        name: Volume(
            f"{name}-volume",
            VolumeArgs(
                volume_name=name,
                namespace=namespace,
                stack=settings.stack,
                size_gb=cfg.volume_size_gb,
                storage_class=cfg.storage_class,
                host_path=cfg.volume_host_path,
                retain=settings.retain_volumes,
            ),
            opts,
        )
        for name in _cloud.network_volumes(plans)
    }

    groups: dict[str, GpuInstanceGroup] = {}
    for plan in plans:
        in_runtime = cfg.python_image == RUNTIME_IMAGE and plan.replica_group.image_from == "python"
        groups[plan.name] = GpuInstanceGroup(
            plan.name,
            GpuInstanceGroupArgs(
                plan=_cloud.without_python_setup(plan) if in_runtime else plan,
                replicas=_cloud.desired_replicas(settings, plan),
                namespace=namespace,
                stack=settings.stack,
                volume_claims={
                    m.path: volumes[m.names[0]].claim_name for m in plan.volumes if m.kind == "network"
                },
                gpu_products=products.get(plan.name, ()),
                rollout_timeout_seconds=cfg.rollout_timeout_seconds,
                pod_security=level,
                image=python_image if plan.replica_group.image_from == "python" else None,
                cpu_request_fraction=cfg.cpu_request_fraction,
                code_image=image,
            ),
            opts,
        )

    secret_files = pulumi.Output.secret(gateway_secret_files)
    token = pulumi.Output.secret(settings.tokens[0].get_secret_value()) if settings.tokens else None
    if token is None:
        from ..local._token import PROVIDER_VERSION, Token

        token = pulumi.Output.secret(Token("gateway-token", {"provider_version": PROVIDER_VERSION}).value)
        stand_in = json.dumps([_GENERATED_TOKEN])
        secret_files = pulumi.Output.all(secret_files, token).apply(
            lambda values: {name: json.dumps([values[1]]) if text == stand_in else text for name, text in values[0].items()}
        )

    scales = any(p.scaling for p in plans)
    gateway = Gateway(
        "gateway",
        GatewayArgs(
            namespace=namespace,
            stack=settings.stack,
            config=gateway_config,
            secret_files=secret_files,
            image=image,
            caddyfile=caddyfile,
            http_port=settings.gateway.http_port or 80,
            https_port=settings.gateway.https_port or 443,
            service_type=cfg.gateway_service_type,
            rollout_timeout_seconds=cfg.rollout_timeout_seconds,
            scaler_pod_labels=scaler_pod_labels(settings.stack) if scales else None,
        ),
        opts,
    )
    if any(p.scaling for p in plans):
        Scaler(
            "scaler",
            ScalerArgs(
                namespace=namespace,
                stack=settings.stack,
                metrics_url=gateway.metrics_url,
                image=image,
                project_files=scaler_files,
                deployments=tuple(sorted(p.name for p in plans)),
                metrics_token_secret=gateway.secrets_name,
                environment=_scaler_environment(),
            ),
            opts,
        )

    _cloud.export_services(settings, plans, {name: group.deployment_name for name, group in groups.items()})
    pulumi.export("gateway_address", gateway.address)
    https = settings.gateway.tls != "off"
    port = (settings.gateway.https_port or 443) if https else (settings.gateway.http_port or 80)
    # The shape `serveform endpoints` reads (as the local backend exports it).
    pulumi.export(
        "gateway",
        {"address": gateway.address.apply(lambda a: f"{a}:{port}" if a else None), "ca_cert": None, "domain": settings.domain},
    )
    pulumi.export("namespace", namespace)
    # What `serveform endpoints` prints examples with (as the local backend exports them).
    pulumi.export("token", token)
    if https and any(p.route.model for p in plans):
        suffix = "" if port == 443 else f":{port}"
        pulumi.export("openai_base_url", f"https://gateway.{settings.domain}{suffix}/v1")


# What the in-cluster scaler's `up` needs from the deploying environment: the state backend, its
# credentials (an S3-compatible store) and the passphrase.
SCALER_ENV_NAMES = (
    "PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_ACCESS_TOKEN",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
)


def _scaler_environment() -> pulumi.Output | None:
    """The deploying environment's SCALER_ENV_NAMES as a secret, when its backend is reachable from a pod.

    A `file://` (or unset) backend lives on the deploying machine: the scaler pod could not share
    it, so the operator's own `scaler-env` Secret is left in charge.
    """
    import os

    backend = os.environ.get("PULUMI_BACKEND_URL", "")
    if not backend or backend.startswith("file://"):
        return None
    environment = {name: os.environ[name] for name in SCALER_ENV_NAMES if os.environ.get(name)}
    passphrase_file = os.environ.get("PULUMI_CONFIG_PASSPHRASE_FILE")
    if "PULUMI_CONFIG_PASSPHRASE" not in environment and passphrase_file:
        # The pod gets the passphrase itself: the deploying machine's file is not there.
        environment["PULUMI_CONFIG_PASSPHRASE"] = Path(passphrase_file).read_text().strip()
    return pulumi.Output.secret(environment)


# Stands in for the generated token while the gateway's files are rendered: only the tokens file
# holds it, and it is replaced there before anything leaves the program.
_GENERATED_TOKEN = "serveform-generated-token-stand-in-replaced-before-use"


def _project_relative(plan: ServicePlan, project_dir: str) -> ServicePlan:
    """The plan with its service file named relative to the project (as the stack file lists it)."""
    path = Path(plan.file)
    if not path.is_absolute() or not path.is_relative_to(project_dir):
        return plan
    return plan.model_copy(update={"file": str(path.relative_to(project_dir))})


def _runtime_image(settings: StackSettings, problems: list[tuple[str, str]]) -> str:
    """serveform's runtime image as the checkout serveform runs from builds it (`serveform image ref`)."""
    from serveform.image import ImageBuildError, image_ref

    try:
        return image_ref()
    except ImageBuildError as exc:
        problems.append(("serveform:k8s.image", f"not set, and serveform's runtime image cannot be named here: {exc}"))
        return ""


def _preflight(settings: StackSettings, plans: Sequence[ServicePlan]) -> dict[str, tuple[str, ...]]:
    """Check GPU capacity against the cluster's nodes; the accepted GPU products per service."""
    gpu_plans = [p for p in plans if _pod.gpu_request(p).resource is not None]
    if not gpu_plans:
        return {}
    if not settings.k8s.check_capacity:
        for plan in gpu_plans:
            if plan.replica_group.resources.gpu_names:
                pulumi.log.warn(
                    f"{plan.file}: resources.gpu: GPU models are not enforced with serveform:k8s.check_capacity "
                    "false; pods may land on any GPU node"
                )
        return {}
    try:
        nodes = _capacity.read_nodes(_kubeconfig_path(settings), settings.k8s.context)
    except _capacity.CapacityError as exc:
        raise pulumi.RunError(str(exc)) from None
    problems = _capacity.check(gpu_plans, nodes)
    if problems:
        raise pulumi.RunError("\n".join(problems))
    return {p.name: _capacity.matching_products(p, nodes) for p in gpu_plans}


def _kubeconfig_path(settings: StackSettings) -> str | None:
    """`serveform:k8s.kubeconfig` as an absolute path (relative ones are from the project root)."""
    configured = settings.k8s.kubeconfig
    if not configured:
        return None  # the provider's and client's default: $KUBECONFIG, else ~/.kube/config
    path = Path(configured).expanduser()
    return str(path if path.is_absolute() else Path(settings.project_dir) / path)
