"""The `type: service` configuration of a `.dstack.yml` file, as a typed model.

One model per concept, every field documented (the descriptions become `serveform schema`),
defaults as named constants. Short syntaxes go through a documented ``parse`` classmethod
(:class:`~serveform.translator.ranges.IntRange`, :class:`~serveform.translator.gpu.GPUSpec`,
:class:`PortMapping`, :class:`CPUSpec`, :func:`parse_volume`, :func:`parse_env`).

The normalised shape (``ServiceSpec.model_dump(mode="json")``) is the one dstack 0.22's own
parser produces, so tooling written for dstack reads ours. Fields of older editions of the
reference (``retry_policy``, ``pool_name``, ``termination_policy`` ...) stay accepted.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_serializer,
    field_validator,
    model_validator,
)

from pydantic import GetJsonSchemaHandler, WithJsonSchema
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from .diagnostics import did_you_mean
from .gpu import GPUSpec
from .ranges import IntRange, MemoryRange, short_syntax_schema
from .sizes import DurationSeconds, MemoryGB, parse_off_duration

__all__ = [
    "BACKEND_TYPES",
    "CPUSpec",
    "DEFAULT_CPU_COUNT",
    "DEFAULT_DISK_SIZE_GB",
    "DEFAULT_MEMORY_GB",
    "DEFAULT_PROBE_INTERVAL_SECONDS",
    "DEFAULT_PROBE_TIMEOUT_SECONDS",
    "DEFAULT_SCALE_DOWN_DELAY_SECONDS",
    "DEFAULT_SCALE_UP_DELAY_SECONDS",
    "DEFAULT_SCALING_WINDOW_SECONDS",
    "DiskSpec",
    "EnvRef",
    "FieldError",
    "GatewayRef",
    "HTTPHeaderSpec",
    "InstanceMountSpec",
    "OpenAIModelSpec",
    "PYTHON_VERSIONS",
    "PortMapping",
    "ProbeSpec",
    "RateLimitSpec",
    "RegistryAuthSpec",
    "ResourcesSpec",
    "RetryPolicySpec",
    "RetrySpec",
    "SCALING_WINDOWS_SECONDS",
    "ScalingSpec",
    "ServiceSpec",
    "TGIModelSpec",
    "UNSUPPORTED_FIELDS",
    "VolumeMountSpec",
    "parse_env",
    "parse_volume",
]

# Defaults, as dstack 0.22.5 documents and applies them.
DEFAULT_CPU_COUNT = IntRange(min=2, max=None)
DEFAULT_MEMORY_GB = 8.0
DEFAULT_DISK_SIZE_GB = 100.0
DEFAULT_SCALE_UP_DELAY_SECONDS = 300
DEFAULT_SCALE_DOWN_DELAY_SECONDS = 600
SCALING_WINDOWS_SECONDS = (30, 60, 300)
DEFAULT_SCALING_WINDOW_SECONDS = 60
DEFAULT_PROBE_URL = "/"
DEFAULT_PROBE_METHOD = "get"
DEFAULT_PROBE_TIMEOUT_SECONDS = 10
DEFAULT_PROBE_INTERVAL_SECONDS = 15
DEFAULT_PROBE_READY_AFTER = 1
MIN_PROBE_TIMEOUT_SECONDS = 1
MIN_PROBE_INTERVAL_SECONDS = 1
MAX_PROBE_URL_LENGTH = 2048
MAX_PROBE_HEADERS = 16
MAX_INT64 = 2**63 - 1
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
_ENV_ENTRY_RE = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)(=.*)?$", re.DOTALL)
_TRUE_STRINGS = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_STRINGS = frozenset({"0", "off", "f", "false", "n", "no"})
_ENV_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")

UNSUPPORTED_FIELDS: dict[str, str] = {
    # Accepted (dstack accepts them) but with nothing to map to in serveform's deployment:
    # each produces a warning naming the field, so nothing is dropped silently.
    "user": "the container runs as the image's default user",
    "shell": "commands run with /bin/sh (image) or /bin/bash (base image)",
    "single_branch": "serveform does not clone repositories",
    "priority": "there is no run queue to order",
    "repos": "serveform does not clone repositories into replicas",
    "files": "serveform does not copy local files into replicas",
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
    "home_dir": "deprecated by dstack 0.18.31 and without effect",
    "setup": "deprecated by dstack 0.18.31 and without effect for services; put the commands in `commands`",
}


class FieldError(ValueError):
    """A validation error about a sub-field (list item, other field) of the value validated."""

    def __init__(self, path: tuple[str | int, ...], message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.hint = hint


class _MultiFieldError(ValueError):
    """Several problems found at once by one validator (all reported)."""

    def __init__(self, problems: list[FieldError]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def raise_all(problems: list[FieldError]) -> None:
    """Raise every problem found (one FieldError, or all of them together)."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise _MultiFieldError(problems)


class _Spec(BaseModel):
    # dstack's CoreModel: unknown keys are errors; YAML numbers reach str fields as strings.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return f"`{value}`"


# ---------------------------------------------------------------- port


class PortMapping(_Spec):
    """The port the service listens on, and the port the gateway exposes it on."""

    local_port: Annotated[int | None, Field(gt=0, le=65535, description="The exposed port (`80` unless mapped).")] = None
    container_port: Annotated[int, Field(gt=0, le=65535, description="The port the application listens on.")]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return short_syntax_schema(
            handler(core_schema), handler, [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string", "pattern": r"^\s*\d+\s*(:\s*\d+\s*)?$"}]
        )

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Parse a service port. Accepted forms:

        - ``8000``: the application listens on 8000, exposed as 80 (dstack 0.22's reading);
        - ``"8080:80"``: `LOCAL:CONTAINER`, exposed as 8080, application on 80;
        - ``{local_port: 8080, container_port: 80}``.
        """
        if isinstance(value, bool):
            raise ValueError(f"expected a port number or `LOCAL:CONTAINER`, got {_kind(value)}")
        if isinstance(value, int):
            return {"local_port": 80, "container_port": value}
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", value)
            if not match:
                raise ValueError(f"invalid port `{value}`: expected a number (`8000`) or `LOCAL:CONTAINER` (`8080:8000`)")
            if match.group(2) is None:
                return {"local_port": 80, "container_port": int(match.group(1))}
            return {"local_port": int(match.group(1)), "container_port": int(match.group(2))}
        if isinstance(value, float):
            raise ValueError(f"expected a port number, got `{value}`")
        return value

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return cls.parse(value)


# ---------------------------------------------------------------- model


class _ChatModelSpec(_Spec):
    type: Annotated[Literal["chat"], Field(description="The type of the model. Must be `chat`.")] = "chat"
    name: Annotated[str, Field(min_length=1, description="The name of the model, as clients pass it in `model`.")]


class OpenAIModelSpec(_ChatModelSpec):
    """A model served with an OpenAI-compatible API (vLLM, TGI ≥ 1.4, SGLang, ...)."""

    format: Annotated[Literal["openai"], Field(description="The serving format: `openai`.")]
    prefix: Annotated[
        str,
        Field(
            description="The `base_url` prefix (after the host) of the service's OpenAI API. Defaults to `/v1`.",
            # rendered into the gateway's Caddyfile route (gateway/templates): a plain path only
            pattern=r"^/[A-Za-z0-9._~/-]*$",
            max_length=256,
        ),
    ] = "/v1"


class TGIModelSpec(_ChatModelSpec):
    """A model served by Text Generation Inference's native API (older spelling)."""

    format: Annotated[Literal["tgi"], Field(description="The serving format: `tgi`.")]
    chat_template: Annotated[
        str | None,
        Field(description="A custom prompt template; by default the model repository's template is used."),
    ] = None
    eos_token: Annotated[str | None, Field(description="A custom end-of-sentence token.")] = None


def _model_format(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("format") if value.get("format") in ("openai", "tgi") else "openai-missing"
    return getattr(value, "format", None)


ModelSpec = Annotated[
    Union[Annotated[OpenAIModelSpec, Tag("openai")], Annotated[TGIModelSpec, Tag("tgi")]],
    Discriminator(_model_format),
]


# ---------------------------------------------------------------- scaling, probes, rate limits


class ScalingSpec(_Spec):
    """Autoscaling on requests per second."""

    metric: Annotated[Literal["rps"], Field(description="The metric to track. Only `rps` (requests per second).")]
    target: Annotated[
        float,
        Field(gt=0, description="The target requests per second per replica; replicas = ceil(rps / target)."),
    ]
    window: Annotated[
        DurationSeconds | None,
        Field(description="The time window the request rate is averaged over: `30s`, `1m` or `5m`. Defaults to `60s`."),
    ] = None
    scale_up_delay: Annotated[
        DurationSeconds,
        Field(ge=0, description="The minimum time between a scaling event and the next scale-up. Defaults to `300` (5 min)."),
    ] = DEFAULT_SCALE_UP_DELAY_SECONDS
    scale_down_delay: Annotated[
        DurationSeconds,
        Field(ge=0, description="The minimum time between a scaling event and the next scale-down. Defaults to `600` (10 min)."),
    ] = DEFAULT_SCALE_DOWN_DELAY_SECONDS

    @field_validator("window")
    @classmethod
    def _window(cls, value: int | None) -> int | None:
        if value is not None and value not in SCALING_WINDOWS_SECONDS:
            raise ValueError(f"the window must be one of 30s, 60s, 300s (got {value}s)")
        return value


class HTTPHeaderSpec(_Spec):
    """One HTTP header of a probe request."""

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$", description="The header name.")]
    value: Annotated[str, Field(min_length=1, max_length=2048, description="The header value.")]


class ProbeSpec(_Spec):
    """An HTTP readiness probe: the gateway sends replicas traffic only once it passes."""

    type: Annotated[Literal["http"], Field(description="The probe type. Must be `http`.")]
    url: Annotated[str | None, Field(description="The path to request. Defaults to `/`.")] = None
    method: Annotated[
        Literal["get", "post", "put", "delete", "patch", "head"] | None,
        Field(description="The HTTP method. Defaults to `get`."),
    ] = None
    headers: Annotated[
        list[HTTPHeaderSpec],
        Field(max_length=MAX_PROBE_HEADERS, description="HTTP headers to send with the probe request."),
    ] = []
    body: Annotated[str | None, Field(min_length=1, max_length=2048, description="The request body.")] = None
    timeout: Annotated[
        DurationSeconds | None,
        Field(description=f"The maximum time the request may take. Defaults to `{DEFAULT_PROBE_TIMEOUT_SECONDS}s`."),
    ] = None
    interval: Annotated[
        DurationSeconds | None,
        Field(description=f"The time between the end of one probe and the start of the next. Defaults to `{DEFAULT_PROBE_INTERVAL_SECONDS}s`."),
    ] = None
    ready_after: Annotated[
        int | None,
        Field(ge=1, description=f"Consecutive successes before a replica counts as ready. Defaults to `{DEFAULT_PROBE_READY_AFTER}`."),
    ] = None
    until_ready: Annotated[
        bool | None,
        Field(description="Stop probing once the replica is ready. Defaults to `false`."),
    ] = None

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: int | None) -> int | None:
        if value is not None and value < MIN_PROBE_TIMEOUT_SECONDS:
            raise ValueError(f"the probe timeout cannot be shorter than {MIN_PROBE_TIMEOUT_SECONDS}s")
        return value

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: int | None) -> int | None:
        if value is not None and value < MIN_PROBE_INTERVAL_SECONDS:
            raise ValueError(f"the probe interval cannot be shorter than {MIN_PROBE_INTERVAL_SECONDS}s")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        # The URL is rendered into the gateway's health-check config (gateway/templates).
        if value is None:
            return value
        if not value.startswith("/"):
            raise ValueError("the probe URL must be a path starting with `/`")
        if len(value) > MAX_PROBE_URL_LENGTH:
            raise ValueError(f"the probe URL cannot be longer than {MAX_PROBE_URL_LENGTH} characters")
        if not value.isprintable() or any(c.isspace() for c in value):
            raise ValueError("the probe URL cannot contain spaces or non-printable characters")
        return value

    @model_validator(mode="after")
    def _body_needs_method(self) -> "ProbeSpec":
        method = self.method or DEFAULT_PROBE_METHOD
        if self.body is not None and method in ("get", "head"):
            raise FieldError(("body",), f"a request body cannot be sent with the `{method}` method")
        return self


class IPAddressKeySpec(_Spec):
    """Rate limits apply per client IP address."""

    type: Annotated[Literal["ip_address"], Field(description="Partition by client IP address.")] = "ip_address"


class HeaderKeySpec(_Spec):
    """Rate limits apply per value of a request header (e.g. an API key)."""

    type: Annotated[Literal["header"], Field(description="Partition by a request header.")] = "header"
    header: Annotated[
        str,
        # rendered into the gateway's rate_limit key (gateway/templates): a bare token only
        Field(pattern=r"^[a-zA-Z0-9-_]+$", max_length=500, description="The header to partition by."),
    ]


def _key_type(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("type", "ip_address")
    return getattr(value, "type", None)


class RateLimitSpec(_Spec):
    """A request-rate limit on a path prefix."""

    prefix: Annotated[
        str,
        Field(
            max_length=4094,
            # rendered into the gateway's path matcher (gateway/templates): no spaces, braces or `\`
            pattern=r"^/[^\s\\{}]*$",
            description="The path prefix the limit applies to; the longest matching prefix wins. Defaults to `/`.",
        ),
    ] = "/"
    key: Annotated[
        Union[Annotated[IPAddressKeySpec, Tag("ip_address")], Annotated[HeaderKeySpec, Tag("header")]],
        Discriminator(_key_type),
        Field(description="What a limit is counted per: `{type: ip_address}` (default) or `{type: header, header: NAME}`."),
    ] = IPAddressKeySpec()
    rps: Annotated[
        float,
        Field(ge=1 / 60, le=MAX_INT64 // 60, description="The maximum requests per second (at least 1 per minute)."),
    ]
    burst: Annotated[int, Field(ge=0, le=MAX_INT64, description="Requests allowed ahead of the rate. Defaults to `0`.")] = 0


# ---------------------------------------------------------------- resources


class CPUSpec(_Spec):
    """CPU requirements."""

    arch: Annotated[Literal["x86", "arm"] | None, Field(description="The CPU architecture: `x86` or `arm`.")] = None
    count: Annotated[IntRange, Field(description="The number of CPU cores, a number or a range. Defaults to `2..`.")] = DEFAULT_CPU_COUNT

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        count_range = {
            "type": "object",
            "properties": {"min": {"type": ["integer", "null"]}, "max": {"type": ["integer", "null"]}},
            "additionalProperties": False,
        }
        return short_syntax_schema(handler(core_schema), handler, [{"type": "integer", "minimum": 0}, {"type": "string"}, count_range])

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Parse the short syntax: a count (``8``), a range (``4..16``), an architecture
        (``arm``) or both separated by `:` (``arm:8``), or a ``{min, max}`` mapping."""
        if isinstance(value, bool):
            raise ValueError(f"expected a CPU count or range, got {_kind(value)}")
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            spec: dict[str, Any] = {}
            for token in value.replace(" ", "").split(":"):
                if not token:
                    raise ValueError(f"invalid CPU spec `{value}`: empty token")
                if ".." in token or token.isdigit():
                    if "count" in spec:
                        raise ValueError(f"invalid CPU spec `{value}`: more than one count")
                    spec["count"] = token
                elif token.lower() in ("x86", "arm", "x86_64", "amd64", "arm64", "aarch64"):
                    if "arch" in spec:
                        raise ValueError(f"invalid CPU spec `{value}`: more than one architecture")
                    spec["arch"] = "arm" if token.lower() in ("arm", "arm64", "aarch64") else "x86"
                else:
                    raise ValueError(f"invalid CPU spec `{value}`: expected a count, a range or an architecture (x86, arm)")
            return spec
        if isinstance(value, dict) and value and set(value) <= {"min", "max"}:
            return {"count": value}
        return value

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return cls.parse(value)


class DiskSpec(_Spec):
    """Disk requirements."""

    size: Annotated[MemoryRange, Field(description="The disk size (`100GB`) or a range (`100GB..`).")]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return short_syntax_schema(handler(core_schema), handler, [{"type": "number", "minimum": 0}, {"type": "string"}])

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return {"size": value}
        return value


class ResourcesSpec(_Spec):
    """Resources of every replica. Sizes are in GB; ranges are `{min, max}`."""

    cpu: Annotated[CPUSpec, Field(description="The CPU requirements: cores (`2..`, `8`) and optionally the architecture (`arm:8`). Defaults to `2..`.")] = CPUSpec()
    memory: Annotated[MemoryRange, Field(description="The RAM size (`8GB`) or range (`8GB..64GB`). Defaults to `8GB..`.")] = MemoryRange(min=DEFAULT_MEMORY_GB, max=None)
    shm_size: Annotated[MemoryGB | None, Field(description="The size of shared memory (e.g. `16GB`), for processes that communicate through it (PyTorch dataloaders).")] = None
    gpu: Annotated[
        GPUSpec | None,
        Field(description="The GPU requirements: a count (`2`), a string (`A100`, `A10G,A100`, `A100:80GB`, `24GB..40GB:2`, `nvidia`, `L4:1..2`) or an object."),
    ] = GPUSpec(count=IntRange(min=0, max=None))
    disk: Annotated[DiskSpec | None, Field(description="The disk size (`200GB`) or range (`100GB..`). Defaults to `100GB..`.")] = DiskSpec(
        size=MemoryRange(min=DEFAULT_DISK_SIZE_GB, max=None)
    )


# ---------------------------------------------------------------- volumes


def _check_mount_path(value: str) -> str:
    if not value:
        raise ValueError("empty path")
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError(f"the path must be absolute, got `{value}`")
    if ".." in path.parts:
        raise ValueError(f"`..` is not allowed in a mount path: `{value}`")
    return str(path)


class VolumeMountSpec(_Spec):
    """A network volume mounted into every replica."""

    name: Annotated[
        str | list[str],
        Field(description="The network volume name, or a list of names (one is mounted: the first available in the replica's backend/region)."),
    ]
    path: Annotated[str, Field(description="The absolute path inside the container.")]

    _path = field_validator("path")(classmethod(lambda cls, v: _check_mount_path(v)))

    @field_validator("name")
    @classmethod
    def _names(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names:
            raise ValueError("at least one volume name is required")
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,40}", name):
                raise ValueError(f"invalid volume name `{name}`: lowercase letters, digits and `-`, starting with a letter, at most 41 characters")
        return value


class InstanceMountSpec(_Spec):
    """A directory of the instance (host) mounted into the replica."""

    instance_path: Annotated[str, Field(description="The absolute path on the instance.")]
    path: Annotated[str, Field(description="The absolute path inside the container.")]
    optional: Annotated[bool, Field(description="Run without the volume on backends that have no instance volumes.")] = False

    _instance_path = field_validator("instance_path")(classmethod(lambda cls, v: _check_mount_path(v)))
    _path = field_validator("path")(classmethod(lambda cls, v: _check_mount_path(v)))


def parse_volume(value: Any) -> Any:
    """Parse a volume entry. Accepted forms:

    - short, network volume: ``my-volume:/data`` (source without `/`);
    - short, instance volume: ``/mnt/cache:/root/.cache`` (source with `/`);
    - long: ``{name: my-volume, path: /data}`` or ``{instance_path: /mnt, path: /data, optional: true}``.
    """
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2:
            raise ValueError(f"invalid volume `{value}`: expected `NAME:/path` or `/instance/path:/path`")
        source, dest = parts
        if "/" in source:
            return {"instance_path": source, "path": dest}
        return {"name": source, "path": dest}
    if not isinstance(value, dict):
        raise ValueError(f"expected `NAME:/path`, `/instance/path:/path` or a mapping, got {_kind(value)}")
    return value


def _volume_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "instance" if "instance_path" in value else "network"
    return "instance" if isinstance(value, InstanceMountSpec) else "network"


VolumeSpec = Annotated[
    Union[Annotated[VolumeMountSpec, Tag("network")], Annotated[InstanceMountSpec, Tag("instance")]],
    Discriminator(_volume_kind),
]


# ---------------------------------------------------------------- env, auth, retry


class EnvRef(_Spec):
    """An environment variable without a value in the file: it comes from the deploying
    environment or from the stack's `serveform:secrets` (dstack's `EnvSentinel`)."""

    key: Annotated[str, Field(description="The variable's name.")]


def parse_env(value: Any) -> dict[str, str | EnvRef]:
    """Parse `env`. Accepted forms:

    - a list of ``NAME=value`` (value may be empty or contain `=`) and bare ``NAME`` entries;
    - a mapping ``NAME: value`` (numbers become strings).

    A bare ``NAME`` has no value in the file: it is taken at compile time from the deploying
    environment or the stack's secrets. Values are never echoed in errors.
    """
    result: dict[str, str | EnvRef] = {}
    problems: list[FieldError] = []
    if isinstance(value, list):
        for index, entry in enumerate(value):
            if isinstance(entry, (int, float)) and not isinstance(entry, bool):
                entry = str(entry)
            if not isinstance(entry, str):
                problems.append(FieldError((index,), f"expected `NAME=value` or `NAME`, got {_kind(entry)}"))
                continue
            match = _ENV_ENTRY_RE.match(entry)
            if match is None:
                name = entry.split("=", 1)[0]
                problems.append(
                    FieldError(
                        (index,),
                        f"invalid variable name `{name}`: expected `NAME=value` or `NAME`, the name made of letters, digits and `_`, not starting with a digit",
                    )
                )
                continue
            name = match.group(1)
            if name in result:
                problems.append(FieldError((index,), f"duplicate environment variable `{name}`"))
                continue
            result[name] = entry[len(name) + 1 :] if "=" in entry else EnvRef(key=name)
        raise_all(problems)
        return result
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                problems.append(FieldError((str(name),), f"the variable name must be a string, got {_kind(name)}"))
            elif not _ENV_NAME_RE.match(name):
                problems.append(FieldError((name,), f"invalid variable name `{name}`: letters, digits and `_`, not starting with a digit"))
            elif isinstance(item, EnvRef):
                result[name] = item
            elif isinstance(item, dict) and set(item) == {"key"} and isinstance(item["key"], str):
                result[name] = EnvRef(key=item["key"])  # dstack's dumped sentinel shape
            elif isinstance(item, str):
                result[name] = item
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                result[name] = str(item)
            else:
                kind = "a mapping" if isinstance(item, dict) else "a list" if isinstance(item, list) else "null" if item is None else "a boolean"
                problems.append(FieldError((name,), f"expected a string or number value, got {kind}"))
        raise_all(problems)
        return result
    raise ValueError(f"expected a list of `NAME=value` entries or a mapping, got {_kind(value)}")


class RegistryAuthSpec(_Spec):
    """Credentials for pulling a private image. The password stays secret everywhere."""

    username: Annotated[str, Field(description="The username.")]
    password: Annotated[SecretStr, Field(description="The password or access token. Kept secret in plans, output and errors.")]


class RetrySpec(_Spec):
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


class RetryPolicySpec(_Spec):
    """The older spelling of `retry` (dstack ≤ 0.18)."""

    retry: Annotated[bool, Field(description="Whether to retry.")] = False
    duration: Annotated[DurationSeconds | None, Field(description="How long to keep retrying.")] = None


class GatewayRef(_Spec):
    """A gateway by name, optionally of another project (`project/name`)."""

    project: Annotated[str | None, Field(description="The project; None for the current one.")] = None
    name: Annotated[str, Field(min_length=1, description="The gateway name.")]


class UtilizationPolicySpec(_Spec):
    """Stop a run whose GPUs stay below a utilisation for a time window (dstack 0.19+)."""

    min_gpu_utilization: Annotated[int, Field(ge=0, le=100, description="The minimum GPU utilisation, in percent.")]
    time_window: Annotated[DurationSeconds, Field(ge=300, description="The window utilisation is measured over (at least `5m`).")]


def _offable(value: Any) -> Any:
    return parse_off_duration(value)


OffableDuration = Annotated[
    Literal["off"] | int | None,
    Field(json_schema_extra={"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "boolean"}]}),
]


# ---------------------------------------------------------------- the service


class ServiceSpec(_Spec):
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
    working_dir: Annotated[str | None, Field(description="The working directory inside the container.")] = None
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
    files: Annotated[list[Any], Field(description="Local files to copy (not supported by serveform).")] = []
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
        if value is not None and not re.fullmatch(NAME_PATTERN, value):
            raise ValueError(
                f"invalid name `{value}`: the name is the DNS label of `<name>.<domain>`: "
                "2 to 41 characters, a lowercase letter first, then lowercase letters, digits and `-`, not ending with `-`"
            )
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
                    FieldError((index,), f"expected a shell command (a string), got {_kind(item)}")
                    for index, item in enumerate(value)
                    if isinstance(item, (dict, list, bool)) or item is None
                ]
            )
        return value

    @field_validator("env", mode="before", json_schema_input_type=list[Annotated[str, Field(pattern=_ENV_ENTRY_RE.pattern)]] | dict[Annotated[str, Field(pattern=_ENV_NAME_RE.pattern)], str | int | float])
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
            raise FieldError(("format",), f"unknown model format {_kind(value.get('format'))}: expected `openai` or `tgi`")
        return value

    @field_validator("gateway", mode="before", json_schema_input_type=bool | Annotated[str, Field(pattern=r"^[^/]+(/[^/]+)?$")] | int | GatewayRef | None)
    @classmethod
    def _gateway(cls, value: Any) -> Any:
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
        raise ValueError(f"expected `true`, `false` or `auto`, got {_kind(value)}")

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

    @field_validator("max_duration", "stop_duration", mode="before", json_schema_input_type=int | str | bool | None)
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
        from .sizes import Duration

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
            raise ValueError(f"expected a mapping with `type: service` at the top level, got {_kind(value) if not isinstance(value, list) else 'a list'}")
        if "type" not in value:
            raise FieldError(("type",), "`type` is required: this translator compiles `type: service` files")
        if value["type"] != "service":
            kind = value["type"]
            if isinstance(kind, str) and kind not in ("dev-environment", "task", "fleet", "volume", "gateway", "preset") and did_you_mean(kind, ["service"]):
                raise FieldError(("type",), f"unknown configuration type `{kind}`", hint="did you mean `service`?")
            raise FieldError(
                ("type",),
                f"only `type: service` files can be compiled, got {_kind(kind)}"
                + (" (dev environments, tasks, fleets, volumes and gateways are not deployed by serveform)" if isinstance(kind, str) else ""),
            )
        if value.get("groups") is not None:
            raise FieldError(("groups",), "replica groups are not supported by serveform; use `replicas` with `scaling`")
        return value

    @model_validator(mode="after")
    def _rules(self) -> "ServiceSpec":
        problems: list[FieldError] = []
        if self.image is not None and self.python is not None:
            problems.append(FieldError(("python",), "`image` and `python` are mutually exclusive"))
        if self.image is not None and self.nvcc:
            problems.append(FieldError(("nvcc",), "`image` and `nvcc` are mutually exclusive: `nvcc` selects a variant of dstack's base image"))
        if self.docker:
            for other in ("image", "python", "nvcc"):
                if getattr(self, other):
                    problems.append(FieldError(("docker",), f"`{other}` and `docker` are mutually exclusive"))
        if not self.commands and self.image is None:
            problems.append(FieldError(("commands",), "either `commands` or `image` must be set"))
        replicas = self.replicas
        if replicas is not None:
            if replicas.min != replicas.max and self.scaling is None:
                problems.append(FieldError(("replicas",), f"`replicas` is a range (`{replicas}`), so `scaling` is required"))
            if replicas.min == replicas.max and self.scaling is not None:
                problems.append(FieldError(("scaling",), f"`scaling` needs `replicas` to be a range (e.g. `1..4`), got `{replicas}`"))
        elif self.scaling is not None:
            problems.append(FieldError(("scaling",), "`scaling` needs `replicas` to be a range (e.g. `1..4`); `replicas` defaults to 1"))
        if self.retry is not None and self.retry_policy is not None:
            problems.append(FieldError(("retry_policy",), "`retry` and its older spelling `retry_policy` cannot both be set"))
        raise_all(problems)
        return self

    @field_serializer("registry_auth")
    def _dump_registry_auth(self, value: RegistryAuthSpec | None) -> dict[str, str] | None:
        # The password never leaves the model in clear: `compile --json` prints this dump.
        if value is None:
            return None
        return {"username": value.username, "password": "**********"}

