"""How a service is served: the `model` mapping, `scaling`, readiness `probes` and `rate_limits`.

Values that reach the gateway's Caddyfile (gateway/templates) are constrained here: the model
`prefix`, probe URLs and headers, rate-limit prefixes and header names.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from ._base import FieldError, Spec
from .sizes import DurationSeconds

__all__ = [
    "DEFAULT_PROBE_INTERVAL_SECONDS",
    "DEFAULT_PROBE_METHOD",
    "DEFAULT_PROBE_READY_AFTER",
    "DEFAULT_PROBE_TIMEOUT_SECONDS",
    "DEFAULT_PROBE_URL",
    "DEFAULT_SCALE_DOWN_DELAY_SECONDS",
    "DEFAULT_SCALE_UP_DELAY_SECONDS",
    "DEFAULT_SCALING_WINDOW_SECONDS",
    "HTTPHeaderSpec",
    "HeaderKeySpec",
    "IPAddressKeySpec",
    "ModelSpec",
    "OpenAIModelSpec",
    "ProbeSpec",
    "RateLimitSpec",
    "SCALING_WINDOWS_SECONDS",
    "ScalingSpec",
    "TGIModelSpec",
]

# Defaults, as dstack 0.22.5 documents and applies them.
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
# Values the gateway renders (gateway/templates/service.caddy.j2) or sends (gateway/prober.py):
# gateway/routes.py refuses anything else at deploy time, so the same rules apply here, where the
# problem can be shown at its line. A path: absolute, with an optional query, no quotes, braces,
# backslashes, backticks, whitespace or `*`.
URL_PATH_RE = re.compile(r"^/[A-Za-z0-9\-._~!$&'()+,;=:@%/?]*$")
URL_PATH_CHARACTERS = "letters, digits and -._~!$&'()+,;=:@%/?"
MODEL_PREFIX_RE = re.compile(r"^/[A-Za-z0-9._~/-]*$")
HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,127}$")
HEADER_VALUE_RE = re.compile(r"^[\x20-\x7e\t]*$")


class _ChatModelSpec(Spec):
    type: Annotated[Literal["chat"], Field(description="The type of the model. Must be `chat`.")] = "chat"
    name: Annotated[str, Field(min_length=1, description="The name of the model, as clients pass it in `model`.")]


class OpenAIModelSpec(_ChatModelSpec):
    """A model served with an OpenAI-compatible API (vLLM, TGI ≥ 1.4, SGLang, ...)."""

    format: Annotated[Literal["openai"], Field(description="The serving format: `openai`.")]
    prefix: Annotated[
        str,
        Field(
            description="The `base_url` prefix (after the host) of the service's OpenAI API. Defaults to `/v1`.",
            max_length=256,
            json_schema_extra={"pattern": MODEL_PREFIX_RE.pattern},
        ),
    ] = "/v1"

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        # the router joins it to the replica's address (gateway/router.py): a plain path only
        if not MODEL_PREFIX_RE.match(value):
            raise ValueError(f"invalid prefix `{value}`: a path starting with `/`, of letters, digits and `._~/-`")
        return value


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


class ScalingSpec(Spec):
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


class HTTPHeaderSpec(Spec):
    """One HTTP header of a probe request."""

    name: Annotated[
        str, Field(min_length=1, max_length=128, description="The header name: letters, digits and `-`.", json_schema_extra={"pattern": HEADER_NAME_RE.pattern})
    ]
    value: Annotated[str, Field(min_length=1, max_length=2048, description="The header value: printable ASCII on one line.")]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_header_name(value)

    @field_validator("value")
    @classmethod
    def _value(cls, value: str) -> str:
        if not HEADER_VALUE_RE.match(value):
            raise ValueError("a header value must be printable ASCII on one line")  # never echoed: may be a token
        return value


def check_header_name(value: str) -> str:
    if not HEADER_NAME_RE.match(value):
        raise ValueError(f"invalid header name `{value}`: letters, digits and `-`, starting with a letter or digit")
    return value


def check_url_path(value: str, what: str) -> str:
    if not URL_PATH_RE.match(value):
        raise ValueError(f"invalid {what} `{value}`: an absolute path (`/...`) of {URL_PATH_CHARACTERS}")
    return value


class ProbeSpec(Spec):
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
        # The gateway's prober requests it as is (gateway/prober.py).
        if value is None:
            return value
        if not value.startswith("/"):
            raise ValueError("the probe URL must be a path starting with `/`")
        if len(value) > MAX_PROBE_URL_LENGTH:
            raise ValueError(f"the probe URL cannot be longer than {MAX_PROBE_URL_LENGTH} characters")
        return check_url_path(value, "probe URL")

    @model_validator(mode="after")
    def _body_needs_method(self) -> "ProbeSpec":
        method = self.method or DEFAULT_PROBE_METHOD
        if self.body is not None and method in ("get", "head"):
            raise FieldError(("body",), f"a request body cannot be sent with the `{method}` method")
        return self


class IPAddressKeySpec(Spec):
    """Rate limits apply per client IP address."""

    type: Annotated[Literal["ip_address"], Field(description="Partition by client IP address.")] = "ip_address"


class HeaderKeySpec(Spec):
    """Rate limits apply per value of a request header (e.g. an API key)."""

    type: Annotated[Literal["header"], Field(description="Partition by a request header.")] = "header"
    header: Annotated[
        str,
        # rendered into the gateway's rate_limit key (gateway/templates/service.caddy.j2)
        Field(max_length=128, description="The header to partition by: letters, digits and `-`.", json_schema_extra={"pattern": HEADER_NAME_RE.pattern}),
    ]

    _header = field_validator("header")(classmethod(lambda cls, value: check_header_name(value)))


def _key_type(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("type", "ip_address")
    return getattr(value, "type", None)


class RateLimitSpec(Spec):
    """A request-rate limit on a path prefix."""

    prefix: Annotated[
        str,
        Field(
            max_length=4094,
            description="The path prefix the limit applies to; the longest matching prefix wins. Defaults to `/`.",
            json_schema_extra={"pattern": r"^/[A-Za-z0-9\-._~!$&'()+,;=:@%/]*$"},
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

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        # rendered into the gateway's path matcher (gateway/templates/service.caddy.j2)
        if "?" in value:
            raise ValueError(f"invalid prefix `{value}`: a path without a query")
        return check_url_path(value, "prefix")
