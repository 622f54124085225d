"""The `type: service` configuration of a `.dstack.yml` file, as a typed model.

One model per concept, every field documented (the descriptions become `serveform schema`),
defaults as named constants. The parts live beside this module — :mod:`.port`, :mod:`.env`,
:mod:`.resources` with :mod:`.gpu`, :mod:`.volumes`, :mod:`.serving` (model, scaling, probes,
rate limits) — and short syntaxes go through a documented ``parse`` classmethod or function
(:class:`~.ranges.IntRange`, :class:`~.gpu.GPUSpec`, :class:`~.port.PortMapping`,
:class:`~.resources.CPUSpec`, :func:`~.volumes.parse_volume`, :func:`~.env.parse_env`).

The normalised shape (``ServiceSpec.model_dump(mode="json")``) is the one dstack 0.22's own
parser produces, so tooling written for dstack reads ours. Fields of older editions of the
reference (``retry_policy``, ``pool_name``, ``termination_policy`` ...) stay accepted.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, Field, SecretStr, field_serializer, field_validator, model_validator

from ._base import FieldError, Spec, kind, raise_all
from .diagnostics import did_you_mean
from .files import FileMappingSpec, parse_file_mapping
from .env import ENV_ENTRY_RE, ENV_NAME_RE, EnvRef, parse_env
from .port import PortMapping
from .ranges import IntRange
from .resources import ResourcesSpec
from .serving import (
    ModelSpec,
    OpenAIModelSpec,
    ProbeSpec,
    RateLimitSpec,
    ScalingSpec,
    TGIModelSpec,
)
from .sizes import Duration, DurationSeconds, parse_off_duration
from .volumes import InstanceMountSpec, VolumeMountSpec, VolumeSpec, parse_volume

__all__ = [
    "BACKEND_TYPES",
    "GatewayRef",
    "NAME_PATTERN",
    "PYTHON_VERSIONS",
    "RegistryAuthSpec",
    "RetryPolicySpec",
    "RetrySpec",
    "ServiceSpec",
    "DEPRECATED_FIELDS",
    "UNSUPPORTED_FIELDS",
    "UtilizationPolicySpec",
    "cross_field_problems",
]

PYTHON_VERSIONS = ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15")
BACKEND_TYPES = (
    "amddevcloud", "aws", "azure", "cloudrift", "crusoe", "cudo", "datacrunch", "daytona",
    "digitalocean", "dstack", "gcp", "hotaisle", "jarvislabs", "kubernetes", "lambda", "lium",
    "remote", "nebius", "oci", "runpod", "seeweb", "tensordock", "vastai", "verda", "vultr", "slurm",
)  # fmt: skip
# The service name becomes the DNS label of `<name>.<domain>` (gateway/templates render it into
# the Caddyfile's site address), so it must be a valid label: dstack's run-name rule
# `^[a-z][a-z0-9-]{1,40}$`, plus no trailing `-` (RFC 1123), checked here rather than at deploy time.
NAME_PATTERN = r"^[a-z][a-z0-9-]{0,39}[a-z0-9]$"
RESERVED_NAME = "gateway"  # gateway.<domain> is the OpenAI-compatible endpoint (dstack's too)
_TRUE_STRINGS = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_STRINGS = frozenset({"0", "off", "f", "false", "n", "no"})

UNSUPPORTED_FIELDS: dict[str, str] = {
    # Accepted (dstack accepts them) but with nothing to map to in serveform's deployment:
    # each produces a warning naming the field, so nothing is dropped silently.
    "user": "the container runs as the image's default user",
    "shell": "commands run with /bin/sh (image) or /bin/bash (base image)",
    "single_branch": "serveform does not clone repositories",
    "priority": "there is no run queue to order",
    "repos": "serveform ships the service file's own repository to /workflow, and clones no other",
    "dstack": "there is no dstack server to expose",
    "availability_zones": "offers are matched per region",
    "reservation": "capacity reservations are not used",
    "stop_duration": "replicas are stopped by Pulumi",
    "creation_policy": "serveform has no fleets to reuse",
    "idle_duration": "serveform has no fleets to keep idle",
    "utilization_policy": "GPU utilisation is not monitored",
    "startup_order": "services run one job per replica",
    "stop_criteria": "services run one job per replica",
    "schedule": "services run continuously",
    "fleets": "serveform has no fleets to reuse",
    "instances": "serveform has no fleets to reuse",
    "tags": "resource tags come from the stack config",
    "backend_options": "backend options come from the stack config",
    "pool_name": "removed from dstack (pools became fleets)",
    "instance_name": "removed from dstack (pools became fleets)",
    "termination_policy": "removed from dstack (pools became fleets)",
    "termination_idle_time": "removed from dstack (pools became fleets)",
}

DEPRECATED_FIELDS: dict[str, str] = {
    # Honoured by serveform, but files that rely on them behave differently under dstack 0.22.
    "home_dir": "deprecated since dstack 0.18.31, where it has no effect; serveform still sets HOME from it",
    "setup": "deprecated since dstack 0.18.31, where it has no effect for services; serveform runs it before `commands` (move it there)",
    "retry_policy": "the older spelling of `retry` (dstack 0.22 rejects it)",
}


class RegistryAuthSpec(Spec):
    """Credentials for pulling a private image. The password stays secret everywhere."""

    username: Annotated[str, Field(description="The username.")]
    password: Annotated[SecretStr, Field(description="The password or access token. Kept secret in plans, output and errors.")]


class RetrySpec(Spec):
    """When to resubmit a replica that failed."""

    on_events: Annotated[
        list[Literal["no-capacity", "interruption", "error"]] | None,
        Field(description="The events to retry on: `no-capacity`, `interruption`, `error`. Omit for all."),
    ] = None
    duration: Annotated[DurationSeconds | None, Field(description="How long to keep retrying (e.g. `4h`).")] = None

    @field_validator("on_events")
    @classmethod
    def _events(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError("`on_events` cannot be empty")
        return value


class RetryPolicySpec(Spec):
    """The older spelling of `retry` (dstack ≤ 0.18)."""

    retry: Annotated[bool, Field(description="Whether to retry.")] = False
    duration: Annotated[DurationSeconds | None, Field(description="How long to keep retrying.")] = None


class GatewayRef(Spec):
    """A gateway by name, optionally of another project (`project/name`)."""

    project: Annotated[str | None, Field(description="The project; None for the current one.")] = None
    name: Annotated[str, Field(min_length=1, description="The gateway name.")]


class UtilizationPolicySpec(Spec):
    """Stop a run whose GPUs stay below a utilisation for a time window (dstack 0.19+)."""

    min_gpu_utilization: Annotated[int, Field(ge=0, le=100, description="The minimum GPU utilisation, in percent.")]
    time_window: Annotated[DurationSeconds, Field(ge=300, description="The window utilisation is measured over (at least `5m`).")]


OffableDuration = Literal["off"] | int | None
"""A duration that can be switched off: `off`/`false` → "off", `true`/absent → None, else seconds."""


# ---------------------------------------------------------------- the service


class ServiceSpec(Spec):
    """A `type: service` configuration: a web application or model deployed as replicas
    behind the gateway at `https://<name>.<domain>`."""

    type: Annotated[Literal["service"], Field(description="The configuration type. Must be `service`.")] = "service"
    name: Annotated[
        str | None,
        Field(
            description="The service name; the endpoint is `<name>.<domain>`. A DNS label: a lowercase letter first, "
            "then lowercase letters, digits and `-`, at most 41 characters. Defaults to the file name."
        ),
    ] = None

    # -- what runs
    port: Annotated[PortMapping, Field(description="The port the application listens on (`8000`), or a mapping `LOCAL:CONTAINER` (`8080:8000`).")]
    image: Annotated[str | None, Field(description="The Docker image to run. Mutually exclusive with `python`, `nvcc` and `docker`.")] = None
    python: Annotated[
        Literal["3.9", "3.10", "3.11", "3.12", "3.13", "3.14", "3.15"] | None,
        Field(description="The Python version of dstack's base image. Mutually exclusive with `image`."),
    ] = None
    nvcc: Annotated[bool | None, Field(description="Use the base image variant with the CUDA compiler (nvcc). Mutually exclusive with `image`.")] = None
    docker: Annotated[bool | None, Field(description="Use Docker inside the container (docker-in-docker, privileged).")] = None
    registry_auth: Annotated[RegistryAuthSpec | None, Field(description="Credentials for pulling a private image.")] = None
    entrypoint: Annotated[str | None, Field(description="The Docker entrypoint.")] = None
    commands: Annotated[list[str], Field(description="The shell commands to run.")] = []
    setup: Annotated[list[str], Field(description="Deprecated (dstack 0.18.31): commands run before `commands`.")] = []
    working_dir: Annotated[
        str | None,
        Field(description="The working directory inside the container: relative to the repository folder `/workflow`, where the service file's repository is unpacked. Defaults to `.`."),
    ] = None
    home_dir: Annotated[str, Field(description="Deprecated: the home directory. Defaults to `/root`.")] = "/root"
    user: Annotated[str | None, Field(description="The user inside the container (`name[:group]`).")] = None
    shell: Annotated[str | None, Field(description="The shell for commands: `sh`, `bash` or an absolute path.")] = None
    privileged: Annotated[bool, Field(description="Run the container in privileged mode.")] = False
    env: Annotated[
        dict[str, str | EnvRef],
        Field(description="Environment variables: a list of `NAME=value` / `NAME` or a mapping. A bare `NAME` takes its value from the deploying environment or the stack's secrets."),
    ] = {}
    resources: Annotated[ResourcesSpec, Field(description="The resources of every replica.")] = ResourcesSpec()
    volumes: Annotated[
        list[Annotated[VolumeSpec, BeforeValidator(parse_volume, json_schema_input_type=Union[Annotated[str, Field(pattern=r"^[^:]+:[^:]+$")], VolumeMountSpec, InstanceMountSpec])]],
        Field(description="Volumes: `NAME:/path` (network) or `/instance/path:/path` (instance), or the long form."),
    ] = []

    # -- replicas and traffic
    replicas: Annotated[
        IntRange | None,
        Field(description="The number of replicas (`2`) or a range (`0..4`); a range requires `scaling`. Defaults to `1`."),
    ] = None
    scaling: Annotated[ScalingSpec | None, Field(description="Autoscaling rules. Required when `replicas` is a range.")] = None
    groups: Annotated[
        None,
        Field(description="Replica groups (dstack 0.20+, heterogeneous services): not supported by serveform, always null."),
    ] = None
    model: Annotated[
        ModelSpec | None,
        Field(description="The model on the gateway's OpenAI-compatible endpoint: a name (served at `/v1`) or an object."),
    ] = None
    gateway: Annotated[
        bool | GatewayRef | None,
        Field(description="The gateway: a name, `true` for the default, `false` for none. Omit for the default."),
    ] = None
    https: Annotated[bool | Literal["auto"] | None, Field(description="Serve over HTTPS through the gateway. Defaults to `true`.")] = None
    auth: Annotated[bool, Field(description="Require `Authorization: Bearer <token>`. Defaults to `true`.")] = True
    strip_prefix: Annotated[
        bool,
        Field(description="Strip the `/proxy/services/<project>/<run>/` prefix when running without a gateway. Defaults to `true`."),
    ] = True
    probes: Annotated[
        list[ProbeSpec] | None,
        Field(description="HTTP readiness probes. With `model` set and no probes, a `/v1/chat/completions` probe is used."),
    ] = None
    rate_limits: Annotated[list[RateLimitSpec], Field(description="Request-rate limits per path prefix.")] = []

    # -- where it runs (dstack's profile parameters)
    backends: Annotated[list[Literal[BACKEND_TYPES]] | None, Field(description="The backends to consider (e.g. `[aws, gcp]`).")] = None  # type: ignore[valid-type]
    regions: Annotated[list[str] | None, Field(description="The regions to consider (e.g. `[eu-west-1, us-west4]`).")] = None
    availability_zones: Annotated[list[str] | None, Field(description="The availability zones to consider.")] = None
    instance_types: Annotated[list[str] | None, Field(description="The instance types to consider (e.g. `[p3.8xlarge, n1-standard-4]`).")] = None
    reservation: Annotated[str | None, Field(description="A capacity reservation to use.")] = None
    spot_policy: Annotated[
        Literal["spot", "on-demand", "auto"] | None,
        Field(description="`spot`, `on-demand` or `auto` (cheapest of both). Defaults to `on-demand`."),
    ] = None
    retry: Annotated[RetrySpec | bool | None, Field(description="Resubmit failed replicas: `true` or `{on_events, duration}`. Defaults to `false`.")] = None
    max_duration: Annotated[OffableDuration, Field(description="The maximum run time (`2h`, `1d`) or `off`. Defaults to `off`.")] = None
    stop_duration: Annotated[OffableDuration, Field(description="The maximum graceful stop time, or `off`.")] = None
    max_price: Annotated[float | None, Field(gt=0, description="The maximum price per hour per instance, in dollars.")] = None
    creation_policy: Annotated[Literal["reuse", "reuse-or-create"] | None, Field(description="Whether to reuse fleet instances.")] = None
    idle_duration: Annotated[int | Literal["off"] | None, Field(description="Time before an idle instance is terminated.")] = None
    utilization_policy: Annotated[UtilizationPolicySpec | None, Field(description="Stop the run on low GPU utilisation (not supported by serveform).")] = None
    startup_order: Annotated[Literal["any", "master-first", "workers-first"] | None, Field(description="Job start order (tasks).")] = None
    stop_criteria: Annotated[Literal["all-done", "master-done"] | None, Field(description="When a multi-node run is done (tasks).")] = None
    schedule: Annotated[dict[str, Any] | None, Field(description="A cron schedule (not supported by serveform).")] = None
    fleets: Annotated[list[GatewayRef] | None, Field(description="Fleets to reuse, `name` or `project/name` (not supported by serveform).")] = None
    instances: Annotated[list[Any] | None, Field(description="Fleet instances to reuse (not supported by serveform).")] = None
    tags: Annotated[dict[str, str] | None, Field(description="Resource tags.")] = None
    backend_options: Annotated[list[dict[str, Any]] | None, Field(description="Backend-specific options.")] = None
    repos: Annotated[list[Any], Field(description="Git repos to clone (not supported by serveform).")] = []
    files: Annotated[
        list[Annotated[FileMappingSpec, BeforeValidator(parse_file_mapping, json_schema_input_type=Union[str, FileMappingSpec])]],
        Field(description="Local files and folders copied into every replica: `LOCAL:PATH`, `LOCAL`, or `{local_path, path}`; relative PATHs are under the working directory."),
    ] = []
    single_branch: Annotated[bool | None, Field(description="Clone only the current branch.")] = None
    priority: Annotated[int | None, Field(ge=0, le=100, description="The run priority, 0..100.")] = None
    dstack: Annotated[bool, Field(description="Make the dstack server reachable from the run.")] = False

    # -- older editions of the reference (dstack ≤ 0.18), accepted for existing files
    retry_policy: Annotated[RetryPolicySpec | None, Field(description="Deprecated spelling of `retry`.")] = None
    pool_name: Annotated[str | None, Field(description="Removed from dstack: the instance pool.")] = None
    instance_name: Annotated[str | None, Field(description="Removed from dstack: the pool instance.")] = None
    termination_policy: Annotated[Literal["dont-destroy", "destroy-after-idle"] | None, Field(description="Removed from dstack.")] = None
    termination_idle_time: Annotated[DurationSeconds | None, Field(description="Removed from dstack.")] = None

    # ------------------------------------------------------------ field validators

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value == RESERVED_NAME:
            raise ValueError(f"`{RESERVED_NAME}` is reserved: the gateway serves its OpenAI-compatible endpoint at `{RESERVED_NAME}.<domain>`")
        if value is not None and not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(
                f"invalid name `{value}`: the name is the DNS label of `<name>.<domain>`: "
                "2 to 41 characters, a lowercase letter first, then lowercase letters, digits and `-`, not ending with `-`"
            )
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        # The image reaches `docker run` in the replica templates (components/templates/replica):
        # a reference is one word; Docker itself refuses anything with spaces or control characters.
        if value is not None and (not value or not value.isprintable() or any(c.isspace() for c in value)):
            raise ValueError(f"invalid image reference {value!r}: one word such as `ghcr.io/org/app:1.0`, without spaces")
        return value

    @field_validator("working_dir")
    @classmethod
    def _working_dir(cls, value: str | None) -> str | None:
        # Reaches run.sh (sh_quote), `docker --workdir` and a pod's workingDir: one plain path.
        if value is None:
            return None
        if any(c in value for c in "\n\r\0") or not value.strip():
            raise ValueError("expected a path on one line")
        if ".." in value.split("/"):
            raise ValueError(f"`..` is not allowed: the working directory stays inside the repository folder (`{value}`)")
        return value

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> Any:
        return PortMapping.parse(value)

    @field_validator("python", mode="before", json_schema_input_type=Literal[PYTHON_VERSIONS + (3.9, 3.1, 3.11, 3.12, 3.13, 3.14, 3.15)] | None)  # type: ignore[valid-type]
    @classmethod
    def _python(cls, value: Any) -> Any:
        # `python: 3.10` is the YAML float 3.1; dstack reads it as 3.10, and so do we.
        if isinstance(value, float):
            value = "3.10" if str(value) == "3.1" else str(value)
        if isinstance(value, str) and value not in PYTHON_VERSIONS:
            raise ValueError(f"unsupported Python version `{value}`: expected one of {', '.join(PYTHON_VERSIONS)} (quote it: \"3.10\")")
        return value

    @field_validator("commands", "setup", mode="before")
    @classmethod
    def _commands(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise_all(
                [
                    FieldError((index,), f"expected a shell command (a string), got {kind(item)}")
                    for index, item in enumerate(value)
                    if isinstance(item, (dict, list, bool)) or item is None
                ]
            )
        return value

    @field_validator("env", mode="before", json_schema_input_type=list[Annotated[str, Field(pattern=ENV_ENTRY_RE.pattern)]] | dict[Annotated[str, Field(pattern=ENV_NAME_RE.pattern)], str | int | float])
    @classmethod
    def _env(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("expected a list of `NAME=value` entries or a mapping, got null")
        return parse_env(value)

    @field_validator("model", mode="before", json_schema_input_type=Annotated[str, Field(min_length=1)] | OpenAIModelSpec | TGIModelSpec | None)
    @classmethod
    def _model(cls, value: Any) -> Any:
        if isinstance(value, str):
            return {"type": "chat", "name": value, "format": "openai"}
        if isinstance(value, dict) and "format" not in value:
            raise FieldError(("format",), "`format` is required: `openai` or `tgi`")
        if isinstance(value, dict) and value.get("format") not in ("openai", "tgi"):
            raise FieldError(("format",), f"unknown model format {kind(value.get('format'))}: expected `openai` or `tgi`")
        return value

    @field_validator("gateway", mode="before", json_schema_input_type=bool | Annotated[str, Field(pattern=r"^[^/]+(/[^/]+)?$")] | int | GatewayRef | None)
    @classmethod
    def _gateway(cls, value: Any) -> Any:
        # dstack 0.22 tries `bool` first, with pydantic's lax booleans: `gateway: "no"` is false.
        if isinstance(value, str) and value.lower() in _TRUE_STRINGS | _FALSE_STRINGS:
            return value.lower() in _TRUE_STRINGS
        if isinstance(value, str):
            parts = value.split("/")
            if any(not p for p in parts) or len(parts) > 2:
                raise ValueError("invalid gateway reference: expected `<name>` or `<project>/<name>`")
            return {"project": parts[0], "name": parts[1]} if len(parts) == 2 else {"project": None, "name": parts[0]}
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return {"project": None, "name": str(value)}  # dstack coerces numbers to names
        return value

    @field_validator("https", mode="before", json_schema_input_type=bool | Literal["auto", "true", "false", "yes", "no", "on", "off", "1", "0"] | None)
    @classmethod
    def _https(cls, value: Any) -> Any:
        if value is None or isinstance(value, bool) or value == "auto":
            return value
        # pydantic's lax booleans, as dstack 0.22 reads `https: "yes"`
        if isinstance(value, str) and value.lower() in _TRUE_STRINGS | _FALSE_STRINGS:
            return value.lower() in _TRUE_STRINGS
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ValueError(f"expected `true`, `false` or `auto`, got {kind(value)}")

    @field_validator("rate_limits")
    @classmethod
    def _rate_limits(cls, value: list[RateLimitSpec]) -> list[RateLimitSpec]:
        seen: set[str] = set()
        problems = []
        for index, limit in enumerate(value):
            if limit.prefix in seen:
                problems.append(FieldError((index, "prefix"), f"the prefix `{limit.prefix}` is used by an earlier rate limit; each needs its own prefix"))
            seen.add(limit.prefix)
        raise_all(problems)
        return value

    @field_validator("probes")
    @classmethod
    def _probes(cls, value: list[ProbeSpec] | None) -> list[ProbeSpec] | None:
        if value is not None:
            seen: list[ProbeSpec] = []
            for index, probe in enumerate(value):
                if probe in seen:
                    raise FieldError((index,), "duplicate probe: probes must be unique")
                seen.append(probe)
        return value

    @field_validator("max_duration", "stop_duration", mode="before", json_schema_input_type=float | str | bool | None)
    @classmethod
    def _off_duration(cls, value: Any) -> Any:
        return parse_off_duration(value)

    @field_validator("idle_duration", mode="before", json_schema_input_type=int | str | bool | None)
    @classmethod
    def _idle_duration(cls, value: Any) -> Any:
        if value == "off" or value is False or value == -1:
            return -1
        if value is True or value is None:
            return None

        return int(Duration.parse(value))

    @field_validator("fleets", mode="before", json_schema_input_type=list[str | GatewayRef] | None)
    @classmethod
    def _fleets(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [cls._gateway(item) if isinstance(item, (str, int, float)) and not isinstance(item, bool) else item for item in value]
        return value

    @field_validator("shell")
    @classmethod
    def _shell(cls, value: str | None) -> str | None:
        if value is None or value in ("sh", "bash") or value.startswith("/"):
            return value
        raise ValueError("expected `sh`, `bash` or an absolute path")

    @field_validator("tags", mode="before")
    @classmethod
    def _tags(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v) for k, v in value.items()}
        return value

    @field_validator("replicas", mode="before")
    @classmethod
    def _replicas_list(cls, value: Any) -> Any:
        if isinstance(value, list):
            raise ValueError("replica groups (a list of `replicas`, or `groups`) are not supported by serveform; use a number or a range")
        return value

    @field_validator("replicas")
    @classmethod
    def _replicas(cls, value: IntRange | None) -> IntRange | None:
        if value is None:
            return None
        if value.max is None:
            raise ValueError("the maximum number of replicas is required (e.g. `1..4`, not `1..`)")
        low = value.min if value.min is not None else 0
        if low < 0:
            raise ValueError("the minimum number of replicas cannot be negative")
        return IntRange(min=low, max=value.max)

    # ------------------------------------------------------------ cross-field rules

    @model_validator(mode="before")
    @classmethod
    def _document(cls, value: Any) -> Any:
        if value is None:
            raise ValueError("the file is empty: expected a mapping with `type: service`")
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping with `type: service` at the top level, got {kind(value) if not isinstance(value, list) else 'a list'}")
        if "type" not in value:
            raise FieldError(("type",), "`type` is required: this translator compiles `type: service` files")
        if value["type"] != "service":
            given = value["type"]
            if isinstance(given, str) and given not in ("dev-environment", "task", "fleet", "volume", "gateway", "preset") and did_you_mean(given, ["service"]):
                raise FieldError(("type",), f"unknown configuration type `{given}`", hint="did you mean `service`?")
            raise FieldError(
                ("type",),
                f"only `type: service` files can be compiled, got {kind(given)}"
                + (" (dev environments, tasks, fleets, volumes and gateways are not deployed by serveform)" if isinstance(given, str) else ""),
            )
        if value.get("groups") is not None:
            raise FieldError(("groups",), "replica groups are not supported by serveform; use `replicas` with `scaling`")
        return value

    @model_validator(mode="after")
    def _rules(self) -> ServiceSpec:
        raise_all(cross_field_problems({name: getattr(self, name) for name in _CROSS_FIELDS}))
        return self

    @field_serializer("registry_auth")
    def _dump_registry_auth(self, value: RegistryAuthSpec | None) -> dict[str, str] | None:
        # The password never leaves the model in clear: `compile --json` prints this dump.
        if value is None:
            return None
        return {"username": value.username, "password": "**********"}


# Fields the rules between fields look at (also on a file whose other fields are invalid).
_CROSS_FIELDS = {"image", "python", "nvcc", "docker", "commands", "replicas", "scaling", "retry", "retry_policy"}


def cross_field_problems(values: dict[str, Any]) -> list[FieldError]:
    """The rules between fields, on validated values or on a file's raw mapping.

    pydantic runs an after-validator only when every field is valid; the compiler calls this on
    the raw mapping too, so a file with field errors also learns that `image` excludes `python`.
    Raw values are only read where their meaning is unambiguous (a range that does not parse is
    left to its own error).
    """
    problems: list[FieldError] = []
    image, python, nvcc, docker = (values.get(k) for k in ("image", "python", "nvcc", "docker"))
    if image is not None and python is not None:
        problems.append(FieldError(("python",), "`image` and `python` are mutually exclusive"))
    if image is not None and nvcc is True:
        problems.append(FieldError(("nvcc",), "`image` and `nvcc` are mutually exclusive: `nvcc` selects a variant of dstack's base image"))
    if docker is True:
        for other in ("image", "python", "nvcc"):
            if values.get(other) not in (None, False):
                problems.append(FieldError(("docker",), f"`{other}` and `docker` are mutually exclusive"))
    if not values.get("commands") and image is None:
        problems.append(FieldError(("commands",), "either `commands` or `image` must be set"))
    replicas, scaling = values.get("replicas"), values.get("scaling")
    if replicas is not None and not isinstance(replicas, IntRange):
        try:
            replicas = IntRange.model_validate(replicas)
        except (ValueError, TypeError):
            replicas = _UNKNOWN
    if replicas is None:
        if scaling is not None:
            problems.append(FieldError(("scaling",), "`scaling` needs `replicas` to be a range (e.g. `1..4`); `replicas` defaults to 1"))
    elif isinstance(replicas, IntRange):
        if replicas.min != replicas.max and scaling is None:
            problems.append(FieldError(("replicas",), f"`replicas` is a range (`{replicas}`), so `scaling` is required"))
        if replicas.min == replicas.max and scaling is not None:
            problems.append(FieldError(("scaling",), f"`scaling` needs `replicas` to be a range (e.g. `1..4`), got `{replicas}`"))
    if values.get("retry") is not None and values.get("retry_policy") is not None:
        problems.append(FieldError(("retry_policy",), "`retry` and its older spelling `retry_policy` cannot both be set"))
    return problems


_UNKNOWN = object()
