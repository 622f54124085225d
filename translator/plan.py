"""The deployment plan: what the translator hands to everything downstream.

A plan is small, frozen and cloud-agnostic. It carries no Pulumi, Caddy or scaler
types, round-trips through JSON (``ServicePlan.model_validate_json(plan.model_dump_json())``
keeps every non-secret field), and decides everything a component would otherwise have to:
components only wire what the plan says.

Secret values (``registry_auth.password``, env values taken from the deploying environment
or from stack secrets) are ``pydantic.SecretStr``: they print and serialise as ``**********``
and are read only with ``.get_secret_value()`` at the edge where a component wraps them in
``pulumi.Output.secret``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

__all__ = [
    "Backend",
    "CodeMountPlan",
    "CodePlan",
    "EnvValue",
    "FileMappingPlan",
    "GatewayRoutePlan",
    "ModelPlan",
    "OfferPlan",
    "ProbePlan",
    "RateLimitPlan",
    "RegistryAuthPlan",
    "ReplicaBounds",
    "ReplicaGroupPlan",
    "ResourcesPlan",
    "ScalingPlan",
    "ServicePlan",
    "VolumePlan",
]

Backend = Literal["local", "aws", "gcp", "azure", "k8s"]
"""The backends a stack can deploy to."""


class _Plan(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class EnvValue(_Plan):
    """One environment variable of a replica."""

    value: Annotated[
        str | SecretStr | None,
        Field(description="The value; a SecretStr when it came from the environment or a stack secret."),
    ]
    secret: Annotated[bool, Field(description="True when the value must reach Pulumi as a secret.")] = False
    source: Annotated[
        Literal["file", "environment", "stack"],
        Field(description="Where the value came from: the service file, the deploying environment, or a stack secret."),
    ] = "file"


class RegistryAuthPlan(_Plan):
    """Credentials for pulling a private image."""

    username: str
    password: SecretStr


class ResourcesPlan(_Plan):
    """Normalised resource requirements (sizes in GB, ranges as min/max, None = unbounded)."""

    cpu_min: int
    cpu_max: int | None = None
    memory_min_gb: float
    memory_max_gb: float | None = None
    shm_size_gb: float | None = None
    disk_min_gb: float
    disk_max_gb: float | None = None
    gpu_vendor: str | None = None
    gpu_names: tuple[str, ...] = ()
    gpu_count_min: int = 0
    gpu_count_max: int | None = 0
    gpu_memory_min_gb: float | None = None
    gpu_memory_max_gb: float | None = None
    gpu_total_memory_min_gb: float | None = None
    gpu_total_memory_max_gb: float | None = None
    gpu_compute_capability: str | None = None


class ReplicaGroupPlan(_Plan):
    """What every replica of a service runs."""

    image: Annotated[str, Field(description="The image to run: the service's `image`, or the base image for `python`/`nvcc`.")]
    image_from: Literal["image", "python"] = "python"
    python: str | None = None
    nvcc: bool = False
    registry_auth: RegistryAuthPlan | None = None
    entrypoint: str | None = None
    setup: tuple[str, ...] = ()
    commands: tuple[str, ...] = ()
    working_dir: str | None = None
    home_dir: str = "/root"
    privileged: bool = False
    env: dict[str, EnvValue] = {}
    container_port: Annotated[int, Field(ge=1, le=65535, description="The port the replica listens on.")]
    gpus_num: Annotated[int, Field(ge=0, description="DSTACK_GPUS_NUM: GPUs per replica (the range's minimum).")] = 0
    resources: ResourcesPlan


class OfferPlan(_Plan):
    """One instance type that satisfies `resources`, from the offer catalog."""

    backend: str
    region: str
    instance_type: str
    price_per_hour: float
    spot: bool
    cpus: int
    memory_gb: float
    gpu_vendor: str | None = None
    gpu_name: str | None = None
    gpu_count: int = 0
    gpu_memory_gb: float | None = None
    disk_gb: float | None = None
    zone: Annotated[str | None, Field(description="The zone within `region` when the catalog lists offers per zone (GCP).")] = None


class ReplicaBounds(_Plan):
    """Replica range and the count a fresh deployment starts with."""

    min: Annotated[int, Field(ge=0)]
    max: Annotated[int, Field(ge=0)]
    initial: Annotated[int, Field(ge=0, description="The count before the scaler or stack config says otherwise.")]


class ScalingPlan(_Plan):
    """The RPS autoscaling policy of a service (dstack `scaling`)."""

    metric: Literal["rps"] = "rps"
    target: Annotated[float, Field(gt=0, description="Requests per second per replica.")]
    scale_up_delay_seconds: Annotated[int, Field(ge=0)] = 300
    scale_down_delay_seconds: Annotated[int, Field(ge=0)] = 600
    window_seconds: Literal[30, 60, 300] = 60


class VolumePlan(_Plan):
    """A volume mount of every replica."""

    kind: Literal["network", "instance"]
    names: Annotated[
        tuple[str, ...],
        Field(description="Network volume name(s) (several = one per region/backend, first that exists); empty for instance volumes."),
    ] = ()
    instance_path: Annotated[str | None, Field(description="Host path, for instance volumes.")] = None
    path: Annotated[str, Field(description="Mount path inside the replica.")]
    optional: bool = False


class ModelPlan(_Plan):
    """The model mapping on the gateway's OpenAI-compatible endpoint."""

    name: str
    type: Literal["chat"] = "chat"
    format: Literal["openai", "tgi"] = "openai"
    prefix: str = "/v1"
    chat_template: str | None = None
    eos_token: str | None = None


class ProbePlan(_Plan):
    """An HTTP readiness probe, run by the gateway against every replica."""

    method: Literal["get", "post", "put", "delete", "patch", "head"] = "get"
    url: str = "/"
    headers: dict[str, str | SecretStr] = {}
    body: str | None = None
    timeout_seconds: int = 10
    interval_seconds: int = 15
    ready_after: int = 1


class RateLimitPlan(_Plan):
    """A request-rate limit on a path prefix (dstack `rate_limits`)."""

    prefix: str = "/"
    key: Literal["ip_address", "header"] = "ip_address"
    header: str | None = None
    rps: float
    burst: int = 0


class GatewayRoutePlan(_Plan):
    """How the gateway exposes the service: `<subdomain>.<domain>`."""

    subdomain: Annotated[str, Field(description="The service name; the route's host is `<subdomain>.<domain>`.")]
    auth: bool = True
    https: bool | Literal["auto"] = True
    gateway: str | bool | None = None
    strip_prefix: bool = True
    model: ModelPlan | None = None
    probes: tuple[ProbePlan, ...] = ()
    readiness_path: Annotated[str, Field(description="Path of the gateway's active health check.")] = "/"
    rate_limits: tuple[RateLimitPlan, ...] = ()


class FileMappingPlan(_Plan):
    """One `files` entry, resolved: what to copy from this machine and where it appears."""

    local_path: Annotated[str, Field(description="The absolute path of the file or folder on the deploying machine.")]
    path: Annotated[str, Field(description="The absolute path in the container (relative ones resolved under the working directory).")]


class CodeMountPlan(_Plan):
    """A part of the code archive that appears outside the repository folder (a `files` target elsewhere)."""

    member: Annotated[str, Field(description="The archive member (file or folder) unpacked there: `mounts/<n>`.")]
    path: Annotated[str, Field(description="The absolute container path it is mounted at.")]


class CodePlan(_Plan):
    """The service's code archive: its repository (and `files`), shipped to every replica.

    Built at deploy time by ``serveform.bundle`` (git-tracked and untracked-but-not-ignored files,
    minus `.dstackignore`), content-addressed: the same tree gives the same bytes and `sha256`, so
    an unchanged tree changes nothing and a changed one rolls the replicas.
    """

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="The archive's SHA-256, checked before every unpack.")]
    size_bytes: Annotated[int, Field(ge=0, description="The archive's size (gzip-compressed tar).")]
    archive: Annotated[str, Field(description="Where the deploy that built it wrote the archive (absolute path on that machine).")]
    repo_dir: Annotated[str, Field(description="Where the archive's `repo/` part is unpacked in the container (dstack: /workflow).")] = "/workflow"
    workdir: Annotated[str, Field(description="The container's working directory: `working_dir` resolved under `repo_dir`.")] = "/workflow"
    mounts: Annotated[tuple[CodeMountPlan, ...], Field(description="`files` targets outside `repo_dir`.")] = ()


class ServicePlan(_Plan):
    """Everything needed to deploy one service, decided by the translator."""

    file: Annotated[str, Field(description="The service file this plan was compiled from.")]
    name: str
    backend: Backend
    replica_group: ReplicaGroupPlan
    offers: tuple[OfferPlan, ...] = ()
    spot_policy: Literal["spot", "on-demand", "auto"] = "on-demand"
    max_price: float | None = None
    replicas: ReplicaBounds
    scaling: ScalingPlan | None = None
    volumes: tuple[VolumePlan, ...] = ()
    route: GatewayRoutePlan
    max_duration_seconds: int | None = None
    retry: dict[str, object] | None = None
    files: Annotated[tuple[FileMappingPlan, ...], Field(description="`files` mappings, shipped in the code archive.")] = ()
    code: Annotated[
        CodePlan | None,
        Field(description="The code archive, added at deploy time (`serveform.stacks.services`); None from the translator alone."),
    ] = None
