"""How a gateway serves: the stack-wide settings and the run-time wiring of one gateway process.

``GatewaySettings`` mirrors the stack's ``serveform:gateway`` object plus the stack's domain and
tokens; every value that reaches a Caddyfile template is constrained here, and each pattern says
which template it protects.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

__all__ = [
    "DEFAULT_BODY_LIMIT_MB",
    "DEFAULT_REPLICA_WAIT_SECONDS",
    "DEFAULT_STREAM_TIMEOUT_SECONDS",
    "MIN_TOKEN_LENGTH",
    "DnsProvider",
    "GatewayRuntime",
    "GatewaySettings",
    "SrvLookup",
    "TlsMode",
]

# The same defaults as the stack settings (serveform.stacks.settings), which feed these.
DEFAULT_BODY_LIMIT_MB = 64
DEFAULT_STREAM_TIMEOUT_SECONDS = 3600
DEFAULT_REPLICA_WAIT_SECONDS = 120
MIN_TOKEN_LENGTH = 32
"""Shortest bearer token accepted (32 hex digits are 128 bits); the same as serveform.stacks.settings."""

TlsMode = Literal["internal", "acme_dns", "on_demand", "off"]
"""internal: Caddy's own CA; acme_dns: a `*.<domain>` certificate through the DNS challenge;
on_demand: per-host ACME certificates for known hosts only; off: plain HTTP."""

DnsProvider = Literal["route53", "cloudflare", "googleclouddns", "azure"]
"""The `dns.providers.*` modules our Caddy build carries (tools/caddy/main.go)."""

# global.caddy.j2 / site.caddy.j2: host names are DNS labels only.
DOMAIN_PATTERN = r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
# RFC 6750 b64token: a token never carries a quote, brace, space or newline (it travels in a header).
TOKEN_PATTERN = r"^[A-Za-z0-9\-._~+/]+=*$"
# tls.caddy.j2: DNS-provider option names become `{env.SERVEFORM_DNS_<NAME>}` placeholders.
_DNS_OPTION_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
# global.caddy.j2: an e-mail address in a quoted token.
_EMAIL_PATTERN = r"^[^\s\"'`{}\\]+@[^\s\"'`{}\\]+$"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class GatewaySettings(_Frozen):
    """Stack-wide settings of the gateway (from `serveform:domain`, `serveform:tokens`, `serveform:gateway`)."""

    domain: Annotated[
        str,
        Field(pattern=DOMAIN_PATTERN, max_length=200, description="Services are served on `<service>.<domain>`, models on `gateway.<domain>`."),
    ] = "localhost"
    tls: Annotated[TlsMode, Field(description="How certificates are obtained.")] = "internal"
    dns_provider: Annotated[DnsProvider | None, Field(description="DNS provider for `tls: acme_dns`.")] = None
    dns_options: Annotated[
        dict[str, SecretStr],
        Field(
            description="Options of the DNS provider module (e.g. cloudflare `api_token`, azure `tenant_id`); "
            "passed to Caddy through its environment, never written to the Caddyfile."
        ),
    ] = {}
    acme_email: Annotated[str | None, Field(pattern=_EMAIL_PATTERN, description="ACME account contact.")] = None
    acme_ca: Annotated[
        str | None,
        Field(pattern=r"^https://[^\s\"'`{}\\]+$", description="ACME directory URL (default: Let's Encrypt production)."),
    ] = None
    http_port: Annotated[int, Field(ge=1, le=65535, description="Plain-HTTP port (redirects to HTTPS unless tls is off).")] = 80
    https_port: Annotated[int, Field(ge=1, le=65535, description="HTTPS port.")] = 443
    bind: Annotated[
        tuple[str, ...],
        Field(description="Addresses the public listeners bind to; empty = every interface."),
    ] = ()
    admin: Annotated[
        str,
        Field(description="Caddy's admin endpoint: `unix` (a 0600 socket in the gateway's socket directory) or a loopback `host:port`."),
    ] = "unix"
    body_limit_mb: Annotated[int, Field(ge=1, le=1024 * 1024, description="Largest request body, in MiB.")] = DEFAULT_BODY_LIMIT_MB
    stream_timeout_seconds: Annotated[
        int, Field(ge=1, le=7 * 24 * 3600, description="Read timeout towards replicas; long, for slow token streams.")
    ] = DEFAULT_STREAM_TIMEOUT_SECONDS
    replica_wait_seconds: Annotated[
        int, Field(ge=0, le=24 * 3600, description="How long a request waits for a ready replica before 503.")
    ] = DEFAULT_REPLICA_WAIT_SECONDS
    tokens: Annotated[tuple[SecretStr, ...], Field(description="Bearer tokens the gateway accepts (stack secrets).")] = ()
    allow_plain_http: Annotated[
        bool,
        Field(
            description="Let bearer tokens travel over plain HTTP on a gateway that listens beyond loopback "
            "(`tls: off`, or a service with `https: false`); refused unless set."
        ),
    ] = False

    @field_validator("tokens")
    @classmethod
    def _tokens_are_b64token(cls, tokens: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        import re

        for index, token in enumerate(tokens):
            # The message never shows the token: it is a secret.
            if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
                raise ValueError(f"token #{index + 1} is shorter than {MIN_TOKEN_LENGTH} characters (128 bits)")
            if not re.fullmatch(TOKEN_PATTERN, token.get_secret_value()):
                raise ValueError(
                    f"token #{index + 1} is not a bearer token (RFC 6750: letters, digits and -._~+/ then optional =)"
                )
        return tokens

    @field_validator("dns_options")
    @classmethod
    def _dns_option_names(cls, options: dict[str, SecretStr]) -> dict[str, SecretStr]:
        import re

        for name in options:
            if not re.fullmatch(_DNS_OPTION_PATTERN, name):
                raise ValueError(f"dns option {name!r}: expected a lower-case name like api_token")
        return options

    @field_validator("bind")
    @classmethod
    def _bind_are_ips(cls, addresses: tuple[str, ...]) -> tuple[str, ...]:
        for address in addresses:
            ipaddress.ip_address(address)  # raises ValueError naming the bad value
        return addresses

    @field_validator("admin")
    @classmethod
    def _admin_is_local(cls, admin: str) -> str:
        # The admin API can rewrite every route: it must never be reachable from the network.
        if admin == "unix":
            return admin
        host, _, port = admin.rpartition(":")
        host = host.strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"admin {admin!r}: expected `unix` or a loopback address like 127.0.0.1:2019")
        return admin

    @model_validator(mode="after")
    def _dns_challenge_needs_provider(self) -> GatewaySettings:
        if self.tls == "acme_dns" and self.dns_provider is None:
            raise ValueError("tls: acme_dns needs dns_provider (route53, cloudflare, googleclouddns or azure)")
        return self

    @model_validator(mode="after")
    def _no_token_in_clear(self) -> GatewaySettings:
        if self.tls == "off" and not self.loopback_only and not self.allow_plain_http:
            raise ValueError(
                "tls: off on a gateway that listens beyond loopback sends the bearer token in clear; "
                "use TLS, bind to loopback, or set gateway.allow_plain_http: true to accept that"
            )
        return self

    @property
    def loopback_only(self) -> bool:
        """Whether every public listener is on a loopback address (no one else can see its traffic)."""
        return bool(self.bind) and all(ipaddress.ip_address(a).is_loopback for a in self.bind)

    @property
    def router_host(self) -> str:
        """The host of the OpenAI-compatible endpoint."""
        return f"gateway.{self.domain}"

    def service_host(self, service: str) -> str:
        return f"{service}.{self.domain}"


class SrvLookup(_Frozen):
    """Where Caddy looks a service's replicas up: the SRV name `_<service>._<proto>.<name>`."""

    # proxy.caddy.j2: bare DNS labels and names.
    service: Annotated[str, Field(pattern=r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$", description="The SRV service label, e.g. a Kubernetes port name.")]
    proto: Literal["tcp"] = "tcp"
    name: Annotated[str, Field(pattern=DOMAIN_PATTERN, max_length=253, description="The domain, e.g. `chat.ns.svc.cluster.local`.")]


class GatewayRuntime(_Frozen):
    """Where the parts of one running gateway meet; chosen by the supervisor at start.

    The defaults describe `python -m serveform.gateway run`: replicas come from its own DNS
    responder on loopback and metrics are served on loopback only. A deployment that runs Caddy
    elsewhere (a Kubernetes pod) can point the lookups at another DNS (`replica_dns="system"`
    with `srv_lookups` per service) and open the metrics listener to its network.
    """

    state_dir: Annotated[Path, Field(description="The gateway's state directory (Caddy storage, sockets, replica files).")] = Path(
        "/var/lib/serveform-gateway"
    )
    dns_port: Annotated[int, Field(ge=1, le=65535, description="Loopback port of the replica DNS responder.")] = 5353
    internal_port: Annotated[
        int, Field(ge=1, le=65535, description="Loopback port of Caddy's internal server, through which the router reaches replicas.")
    ] = 8079
    metrics_port: Annotated[int, Field(ge=1, le=65535, description="Loopback port serving Caddy's /metrics to the scaler.")] = 9180
    socket_dir: Annotated[
        Path | None,
        Field(description="Where the unix sockets live (Caddy's admin API, the router); default the state directory."),
    ] = None
    router_socket: Annotated[Path | None, Field(description="Unix socket of the OpenAI router; default <socket_dir>/router.sock.")] = None
    replica_dns: Annotated[
        Literal["responder", "system"],
        Field(
            description="responder: the gateway's own prober decides (its ready sets reach Caddy through the ready "
            "file; its DNS responder on 127.0.0.1:dns_port answers the same sets); system: SRV lookups in the "
            "host's resolver (`srv_lookups`)."
        ),
    ] = "responder"
    srv_lookups: Annotated[
        dict[str, SrvLookup],
        Field(description="Per service, the SRV name of its replicas; default `_<service>._tcp.replicas.serveform.internal`."),
    ] = {}
    metrics_address: Annotated[
        Literal["127.0.0.1", "0.0.0.0"],
        Field(description="Address of the metrics listener: loopback, or every address (the scaler runs elsewhere)."),
    ] = "127.0.0.1"

    metrics_auth: Annotated[
        bool,
        Field(
            description="Whether /metrics demands one of the stack's bearer tokens. Set it when the listener "
            "is not on loopback and the scaler sends the token; otherwise keep the listener pod-local."
        ),
    ] = False

    @property
    def router_socket_path(self) -> Path:
        return self.router_socket or (self.socket_dir or self.state_dir) / "router.sock"

    @property
    def admin_socket_path(self) -> Path:
        return (self.socket_dir or self.state_dir) / "caddy-admin.sock"

    @property
    def routes_file(self) -> Path:
        """The routes file the gateway's Caddy modules read (services, token and secret paths)."""
        return self.state_dir / "routes.json"

    @property
    def ready_file(self) -> Path:
        """Each service's ready replicas as the prober sees them, what Caddy's `serveform` upstream source serves."""
        return self.state_dir / "ready.json"

    @property
    def token_hashes_file(self) -> Path:
        """SHA-256 digests of the bearer tokens (0600), what Caddy compares: it never sees a token."""
        return self.state_dir / "secrets" / "token_hashes.json"

    @property
    def secret_hash_file(self) -> Path:
        """SHA-256 digest of the per-gateway secret that only the router holds (0600)."""
        return self.state_dir / "secrets" / "gateway_secret.sha256"

    @property
    def caddy_storage(self) -> Path:
        return self.state_dir / "caddy"
