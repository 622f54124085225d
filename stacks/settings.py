"""The `serveform:*` stack config of one environment, validated.

Stack config lives in `stacks/Pulumi.<stack>.yaml` (Pulumi's `stackConfigDir`). Every key sits
under the `serveform:` namespace; objects are YAML mappings there and reach the program as JSON
strings, which `StackSettings.from_config` accepts too. Every key is reviewed in the repository;
nothing writes the file but people. Replica counts are not stack config: they live in the
stack's outputs (`serveform.stacks.replicas`), so no `up` of the reviewed file reverts the scaler.

A bad value raises `StackConfigError`, which names the stack file and the key, before the
program registers any resource.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

from serveform.bundle import DEFAULT_MAX_BYTES

__all__ = [
    "AwsSettings",
    "AzureSettings",
    "GatewayConfig",
    "GcpSettings",
    "K8sSettings",
    "LocalSettings",
    "PolicySettings",
    "StackConfigError",
    "StackSettings",
    "CONFIG_NAMESPACE",
    "policy_problems",
]

CONFIG_NAMESPACE = "serveform"
DEFAULT_BODY_LIMIT_MB = 64
DEFAULT_STREAM_TIMEOUT_SECONDS = 3600
DEFAULT_REPLICA_WAIT_SECONDS = 120
DEFAULT_CODE_MAX_BYTES = DEFAULT_MAX_BYTES  # serveform.bundle's cap, restated for the config's docs
# Plain-HTTP and HTTPS ports of a local gateway: unprivileged, so `make up` needs no root.
LOCAL_HTTP_PORT = 8080
LOCAL_HTTPS_PORT = 8443

# A domain becomes `<service>.<domain>` host names and a `*.<domain>` certificate: DNS labels only.
_DOMAIN_PATTERN = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"


_REPLICAS_MOVED = (
    "replica counts are no longer stack config: they are kept in the stack's outputs and changed by the "
    "scaler or `serveform scale SERVICE N --stack STACK`; remove this key (the count it held is not applied)"
)


class StackConfigError(ValueError):
    """The stack config is invalid; `problems` lists `(key, message)` pairs."""

    def __init__(self, stack: str, problems: list[tuple[str, str]]) -> None:
        self.stack = stack
        self.problems = problems
        lines = [f"stacks/Pulumi.{stack}.yaml: error: {key}: {message}" for key, message in problems]
        super().__init__("\n".join(lines))


class _Settings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class GatewayConfig(_Settings):
    """`serveform:gateway`: how the stack's gateway serves and secures traffic."""

    tls: Annotated[
        Literal["internal", "acme_dns", "on_demand", "off"],
        Field(description="internal: Caddy's own CA; acme_dns: wildcard certificate via the DNS challenge; "
              "on_demand: per-host ACME certificates for known service hosts; off: plain HTTP."),
    ] = "internal"
    dns_provider: Annotated[
        Literal["route53", "cloudflare", "googleclouddns", "azure"] | None,
        Field(description="DNS provider for the ACME DNS challenge (tls: acme_dns)."),
    ] = None
    acme_email: Annotated[str | None, Field(description="Contact address for the ACME account.")] = None
    http_port: Annotated[int | None, Field(ge=1, le=65535, description="Plain-HTTP port; 80 on clouds, 8080 locally.")] = None
    https_port: Annotated[int | None, Field(ge=1, le=65535, description="HTTPS port; 443 on clouds, 8443 locally.")] = None
    body_limit_mb: Annotated[int, Field(ge=1, le=1024 * 1024, description="Largest request body, in MiB.")] = DEFAULT_BODY_LIMIT_MB
    stream_timeout_seconds: Annotated[
        int, Field(ge=1, description="Read timeout towards replicas; long, for slow token streams.")
    ] = DEFAULT_STREAM_TIMEOUT_SECONDS
    replica_wait_seconds: Annotated[
        int, Field(ge=0, description="How long a request waits for a ready replica (scale from zero) before 503.")
    ] = DEFAULT_REPLICA_WAIT_SECONDS
    instance_type: Annotated[str | None, Field(description="Instance type of the gateway VM (cloud backends).")] = None
    allow_plain_http: Annotated[
        bool,
        Field(
            description="Let bearer tokens travel over plain HTTP on a gateway reachable beyond loopback "
            "(`tls: off`, or a service with `https: false`). Off by default: anyone on the path could read the token."
        ),
    ] = False

    @model_validator(mode="after")
    def _dns_challenge_needs_provider(self) -> "GatewayConfig":
        if self.tls == "acme_dns" and self.dns_provider is None:
            raise ValueError("tls: acme_dns needs dns_provider (route53, cloudflare, googleclouddns or azure)")
        return self


class CodeSettings(_Settings):
    """`serveform:code`: the services' code archives (their repository and `files`, see serveform.bundle)."""

    max_bytes: Annotated[
        int,
        Field(ge=1, description=f"Largest total size of a service's files before compression, in bytes (default {DEFAULT_CODE_MAX_BYTES})."),
    ] = DEFAULT_CODE_MAX_BYTES
    dir: Annotated[
        str | None, Field(description="Where archives are written (relative to the project); default .serveform/code.")
    ] = None


class LocalSettings(_Settings):
    """`serveform:local`: the local backend (processes on this machine)."""

    state_dir: Annotated[
        str | None, Field(description="Where replica logs, volumes and gateway state live; default .serveform/local/<stack>.")
    ] = None
    ready_timeout_seconds: Annotated[int, Field(ge=1, description="How long `up` waits for a replica's port.")] = 120


class AwsSettings(_Settings):
    """`serveform:aws`."""

    region: str | None = None
    vpc_id: str | None = None
    subnet_ids: tuple[str, ...] = ()
    zone_id: Annotated[str | None, Field(description="Route 53 hosted zone of the domain, for `*.<domain>`.")] = None
    ami: Annotated[str | None, Field(description="GPU machine image; default: the region's Deep Learning Base AMI.")] = None
    key_name: str | None = None
    python_image: Annotated[
        str | None,
        Field(description="Image for services that give `python:` instead of an `image:` (dstack's base image when "
              "unset). `runtime`: serveform's runtime image (`runtime_image`), which has Python 3.11 and the "
              "gateway's dependencies, so a CPU service such as the chat example runs its `commands` as written "
              "(a fresh venv on dstack's base image lacks aiohttp)."),
    ] = None
    runtime_image: Annotated[
        str | None,
        Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/:@-]*$",
              description="serveform's runtime image as the replica VMs pull it, best by digest "
              "(`REGISTRY/serveform@sha256:...`; `serveform image push REGISTRY` copies it there). Required "
              "with `python_image: runtime`: a VM has no checkout to build it from."),
    ] = None


class GcpSettings(_Settings):
    """`serveform:gcp`."""

    project: str | None = None
    region: str | None = None
    zone: str | None = None
    network: Annotated[
        str | None,
        Field(description="An existing VPC network to use; unset: the stack creates its own (custom subnet, Cloud "
              "NAT, no rule but serveform's). An existing network must give replicas egress itself (Cloud NAT): "
              "they have no external address."),
    ] = None
    subnetwork: Annotated[str | None, Field(description="The subnet of `network` to use (with `network` only).")] = None
    subnet_cidr: Annotated[
        str, Field(pattern=r"^\d{1,3}(\.\d{1,3}){3}/\d{1,2}$", description="The stack network's subnet range.")
    ] = "10.64.0.0/20"
    dns_zone: Annotated[str | None, Field(description="Cloud DNS managed zone name of the domain.")] = None
    image: str | None = None


class AzureSettings(_Settings):
    """`serveform:azure`."""

    location: str | None = None
    resource_group: str | None = None
    dns_zone: str | None = None
    dns_resource_group: str | None = None
    image: str | None = None
    ssh_public_key: Annotated[
        str | None, Field(description="Admin SSH public key of the VMs (Azure requires one; no SSH port is opened).")
    ] = None


class K8sSettings(_Settings):
    """`serveform:k8s`: the cluster to deploy to."""

    kubeconfig: Annotated[str | None, Field(description="Path to a kubeconfig file (default: the provider's default).")] = None
    context: Annotated[str | None, Field(description="kubeconfig context to use.")] = None
    namespace: str = "serveform"
    gateway_service_type: Literal["LoadBalancer", "NodePort", "ClusterIP"] = "LoadBalancer"
    storage_class: str | None = None
    create_namespace: Annotated[
        bool, Field(description="Create (and on destroy delete) the namespace; false to deploy into an existing one.")
    ] = True
    check_capacity: Annotated[
        bool,
        Field(description="Before registering anything, fail when no node can hold a replica's GPUs; "
              "false for clusters whose autoscaler adds GPU nodes on demand."),
    ] = True
    rollout_timeout_seconds: Annotated[
        int, Field(ge=1, description="How long `up` waits for a Deployment's rollout before failing.")
    ] = 600
    volume_host_path: Annotated[
        str | None,
        Field(description="Back each volume by a static hostPath PersistentVolume under this node directory "
              "(single-node and test clusters); unset: claims use `storage_class`."),
    ] = None
    volume_size_gb: Annotated[int, Field(ge=1, description="Size of each volume's claim, in GB.")] = 100
    image: Annotated[
        str | None,
        Field(description="Image with serveform and its Caddy build (tools/setup.sh) that runs the gateway and the "
              "scaler in the cluster; the scaler gets this project's files from a ConfigMap. Falls back to "
              "`scaler_image`."),
    ] = None
    scaler_image: Annotated[
        str | None,
        Field(description="Image with serveform and this project (at /srv/serveform) that runs the scaler in the "
              "cluster; unset: no in-cluster scaler (run `serveform scaler run` where the project lives)."),
    ] = None
    cpu_request_fraction: Annotated[
        float,
        Field(gt=0, le=1, description="Fraction of a service's minimum CPU count that its pods request from the "
              "scheduler (1: all of it). Lower it on small single-node clusters (k8s-local's real node has "
              "the machine's cores) to overcommit CPU; limits are unchanged."),
    ] = 1.0
    runtime_image: Annotated[
        str | None,
        Field(description="serveform's runtime image, where `image` is unset or `python_image` is `runtime`. "
              "Unset: the image the running serveform checkout builds (`serveform image ref`). The scaler "
              "pod's copy of the stack file sets it, since the pod has no checkout."),
    ] = None
    python_image: Annotated[
        str | None,
        Field(description="Image for services that give `python:` instead of an `image:` (dstack's base image when "
              "unset). `runtime`: serveform's runtime image (`serveform image build`), which has Python "
              "3.11 and this project at its working directory, so a CPU service such as the chat example "
              "runs its `commands` as written."),
    ] = None


class PolicySettings(_Settings):
    """`serveform:policy`: what the stack lets its service files ask of the machines they run on.

    Each `allow_*` key left unset takes the backend's default: forbidden on Kubernetes (a shared
    cluster, where a privileged pod or a hostPath of `/` owns the node and every tenant on it),
    allowed on the cloud backends (each replica is the only workload of its own VM, as in
    dstack) and on the local backend (replicas are processes of the deploying user anyway).
    """

    allow_privileged: Annotated[
        bool | None, Field(description="Services may ask for `privileged: true` (or `docker: true`).")
    ] = None
    allow_host_paths: Annotated[
        bool | None, Field(description="Services may mount instance (host) paths: `volumes: [{instance_path: ...}]`.")
    ] = None
    allow_host_network: Annotated[
        bool | None,
        Field(description="Services may share the host's network namespace. No service field asks for it today; "
              "the key exists so a future one is forbidden by default."),
    ] = None
    pod_security: Annotated[
        Literal["restricted", "baseline", "privileged"] | None,
        Field(description="Kubernetes: the Pod Security level enforced on the namespace serveform creates. Default: "
              "`baseline` (no privileged pods, host paths or host networking), `privileged` when the policy allows "
              "any of those. `restricted` also runs every replica as a non-root user with no capabilities: only "
              "for images that work so."),
    ] = None

    def allows(self, key: Literal["privileged", "host_paths", "host_network"], backend: str) -> bool:
        """Whether `allow_<key>` holds on `backend` (the explicit value, else the backend's default)."""
        explicit = getattr(self, f"allow_{key}")
        return explicit if explicit is not None else backend != "k8s"


MIN_TOKEN_LENGTH = 32
"""Shortest bearer token accepted: 32 hex digits are 128 bits; generated tokens have 256
(components/local/_token.py). The gateway checks the same (serveform.gateway.settings)."""


class StackSettings(_Settings):
    """Everything the program reads from one stack's config."""

    stack: str
    project_dir: Annotated[str, Field(description="Directory holding Pulumi.yaml; service paths are relative to it.")]
    backend: Literal["local", "aws", "gcp", "azure", "k8s"]
    services: Annotated[tuple[str, ...], Field(min_length=1, description="Service files deployed on this stack.")]
    domain: Annotated[str, Field(pattern=_DOMAIN_PATTERN, max_length=253)] = "localhost"
    regions: tuple[str, ...] = ()
    tokens: Annotated[
        tuple[SecretStr, ...],
        Field(description=f"Bearer tokens the gateway accepts; each at least {MIN_TOKEN_LENGTH} characters."),
    ] = ()
    secrets: Annotated[
        dict[str, SecretStr], Field(description="Values for bare env names and registry passwords.")
    ] = {}
    replicas: Annotated[
        dict[str, Annotated[int, Field(ge=0)]],
        Field(
            description="Each service's count for this run, resolved by the program from the last deployment "
            "(serveform.stacks.replicas); never read from the stack file."
        ),
    ] = {}
    gateway: GatewayConfig = GatewayConfig()
    retain_volumes: Annotated[
        bool,
        Field(
            alias="retainVolumes",
            description="Keep volumes when their service or the stack is destroyed. Default: true on clouds and "
            "Kubernetes (data outlives deployments); false on the local backend, whose `destroy` leaves nothing behind.",
        ),
    ] = True
    offers_catalog: Annotated[str | None, Field(alias="offersCatalog")] = None
    code: CodeSettings = CodeSettings()
    local: LocalSettings = LocalSettings()
    aws: AwsSettings = AwsSettings()
    gcp: GcpSettings = GcpSettings()
    azure: AzureSettings = AzureSettings()
    k8s: K8sSettings = K8sSettings()
    policy: PolicySettings = PolicySettings()

    @field_validator("tokens")
    @classmethod
    def _tokens_are_long_enough(cls, tokens: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        for index, token in enumerate(tokens):
            # The message never shows the token: it is a secret.
            if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
                raise ValueError(
                    f"serveform:tokens[{index}] is {len(token.get_secret_value())} characters; a bearer token needs at least "
                    f"{MIN_TOKEN_LENGTH} (128 bits of randomness or more, e.g. `openssl rand -hex 32`), or leave "
                    "serveform:tokens unset on the local backend to have one generated"
                )
        return tokens

    @model_validator(mode="before")
    @classmethod
    def _volume_retention_by_backend(cls, data: Any) -> Any:
        if isinstance(data, dict) and "retainVolumes" not in data and "retain_volumes" not in data:
            data = {**data, "retain_volumes": data.get("backend") != "local"}
        return data

    @property
    def service_paths(self) -> tuple[Path, ...]:
        root = Path(self.project_dir)
        return tuple(p if p.is_absolute() else root / p for p in map(Path, self.services))

    @property
    def code_dir(self) -> Path:
        """Where the services' code archives are written (`<sha256>.tar.gz` + manifest)."""
        path = Path(self.code.dir) if self.code.dir else Path(".serveform") / "code"
        return path if path.is_absolute() else Path(self.project_dir) / path

    @property
    def state_dir(self) -> Path:
        """Per-stack directory for the local backend's processes, logs and volumes."""
        configured = self.local.state_dir
        path = Path(configured) if configured else Path(".serveform") / "local" / self.stack
        return path if path.is_absolute() else Path(self.project_dir) / path

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, stack: str, project_dir: str | Path) -> "StackSettings":
        """Validate stack config given as `{key: value}`; keys with or without `serveform:`.

        Values may be native (from YAML) or JSON strings (as the Pulumi program receives them).
        """
        data: dict[str, Any] = {}
        for key, value in config.items():
            namespace, _, name = key.rpartition(":")
            if namespace and namespace != CONFIG_NAMESPACE:
                continue  # other providers' keys (aws:region, kubernetes:context, ...)
            if name == "replicas":
                # Counts in a reviewed file would be reverted by, or revert, the scaler.
                raise StackConfigError(stack, [(f"{CONFIG_NAMESPACE}:replicas", _REPLICAS_MOVED)])
            data[name] = _decode(value)
        data["stack"] = stack
        data["project_dir"] = str(project_dir)
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise StackConfigError(stack, _problems(exc)) from None


def _decode(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text[:1] in "[{" or text in ("true", "false") or _is_number(text):
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                return value
    return value


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _problems(exc: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        path = [str(p) for p in error["loc"]]
        key = f"{CONFIG_NAMESPACE}:{path[0]}" if path else CONFIG_NAMESPACE
        if len(path) > 1:
            key += "." + ".".join(path[1:])
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif error["type"] == "missing":
            message = "required, but not set"
        problems.append((key, message))
    return problems


def policy_problems(settings: StackSettings, plans: Any) -> list[tuple[str, str]]:
    """`(policy key, message)` for every service that asks what `serveform:policy` forbids.

    `plans` are the translator's `ServicePlan`s (duck-typed: this module imports no translator).
    Each message names the service file and its field, and how to allow it.
    """
    backend = settings.backend
    why = "forbidden by default on the k8s backend (a shared cluster: it would give the pod the node)" if backend == "k8s" else "forbidden by this stack"
    problems: list[tuple[str, str]] = []
    for plan in plans:
        group = plan.replica_group
        if group.privileged and not settings.policy.allows("privileged", backend):
            problems.append((
                "serveform:policy.allow_privileged",
                f"{plan.file}: privileged: the service asks for a privileged container (`privileged: true` or "
                f"`docker: true`), {why}; set serveform:policy.allow_privileged: true to allow it",
            ))
        for index, volume in enumerate(plan.volumes):
            if volume.kind == "instance" and not settings.policy.allows("host_paths", backend):
                problems.append((
                    "serveform:policy.allow_host_paths",
                    f"{plan.file}: volumes[{index}].instance_path: the service mounts the host path "
                    f"{volume.instance_path!r}, {why}; set serveform:policy.allow_host_paths: true to allow it",
                ))
        if getattr(group, "host_network", False) and not settings.policy.allows("host_network", backend):
            problems.append((
                "serveform:policy.allow_host_network",
                f"{plan.file}: the service asks for the host's network, {why}; "
                "set serveform:policy.allow_host_network: true to allow it",
            ))
    return problems
