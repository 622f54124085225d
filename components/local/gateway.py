"""`Gateway`: the stack's gateway as a process on this machine (Caddy + the OpenAI router).

The gateway package's supervisor (``python -m serveform.gateway run --state-dir DIR``) runs Caddy
and the router as one process tree; this component writes its config into ``DIR`` and keeps that
process running: `up` starts it, a changed config reaches it as a reload (SIGHUP), `refresh`
notices it died and the next `up` starts it again, `destroy` stops it and removes ``DIR``
(Caddy's storage with the internal CA included).

Locally the gateway listens on loopback only, on unprivileged ports (`serveform:gateway`
`http_port`/`https_port`, default 8080/8443), and TLS comes from Caddy's internal CA, whose root
certificate (`ca_cert`) clients trust explicitly. Replica addresses are not part of the config:
each `ReplicaGroup` publishes them, so the scaler's count changes never
reload Caddy; editing a service file does, since its plan is part of the config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pydantic import SecretStr

from serveform.gateway.settings import GatewaySettings
from serveform.gateway.state import config_files
from serveform.translator.plan import ServicePlan

from . import _daemon

__all__ = ["GATEWAY_TYPE", "Gateway", "GatewayArgs", "CA_CERT_RELATIVE_PATH"]

GATEWAY_TYPE = "serveform:local:Gateway"
CA_CERT_RELATIVE_PATH = Path("caddy") / "pki" / "authorities" / "local" / "root.crt"
"""Where Caddy's internal CA keeps its root certificate, under the gateway's storage."""
DEFAULT_READY_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True, kw_only=True)
class GatewayArgs:
    """Inputs of a `Gateway`."""

    settings: GatewaySettings
    """How the gateway serves: domain, TLS, ports, limits. Its `tokens` are ignored: see `tokens`."""
    plans: Sequence[ServicePlan]
    """The stack's services: their hosts, auth, models, probes and rate limits."""
    tokens: pulumi.Input[Sequence[str]]
    """Bearer tokens the gateway accepts; a Pulumi secret, written only to a 0600 file."""
    state_dir: str
    """The gateway's own directory (config, Caddy storage, published replicas, log)."""
    project_dir: str
    """Where the gateway process runs."""
    ready_timeout_seconds: float = DEFAULT_READY_TIMEOUT_SECONDS
    """How long `up` waits for the gateway's listener."""
    cleanup_root: str | None = None
    """The outermost directory that deleting the gateway may remove once it is empty."""


class Gateway(pulumi.ComponentResource):
    """The gateway process of a local stack."""

    address: pulumi.Output[str]
    """`127.0.0.1:PORT` of the listener clients use (HTTPS unless `tls: off`)."""
    ca_cert: pulumi.Output[str | None]
    """Path of the root certificate to trust, or None without TLS."""
    state_dir: pulumi.Output[str]
    """The gateway's directory; `ReplicaGroup`s publish replica addresses there."""
    instance: pulumi.Output[str]
    """Changes whenever a new gateway process starts, so publications can follow it."""

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GATEWAY_TYPE, name, None, opts)
        settings = args.settings
        port = settings.http_port if settings.tls == "off" else settings.https_port
        state_dir = Path(args.state_dir)
        # The gateway package's own writer decides what goes where (the layout
        # serveform.gateway.state documents): plain files hold no secret, while the tokens, DNS
        # options and secret probe headers go to secret files, which travel as a Pulumi secret
        # until the provider writes them 0600. The plain files are computed without the tokens,
        # which may be unknown until a generated one exists.
        files, _ = config_files(settings.model_copy(update={"tokens": ()}), args.plans)
        plans = tuple(args.plans)

        def secret_files(tokens: Sequence[str]) -> dict[str, str]:
            with_tokens = settings.model_copy(update={"tokens": tuple(SecretStr(t) for t in tokens)})
            return config_files(with_tokens, plans)[1]

        daemon = _daemon.Daemon(
            f"{name}-process",
            {
                "provider_version": _daemon.PROVIDER_VERSION,
                "name": name,
                "argv": [_daemon.PYTHON, "-m", "serveform.gateway", "run", "--state-dir", str(state_dir)],
                "cwd": args.project_dir,
                "env": {},
                "state_dir": str(state_dir),
                "log_path": str(state_dir / "gateway.log"),
                "files": files,
                "secret_files": pulumi.Output.secret(args.tokens).apply(secret_files),
                "ready_address": f"127.0.0.1:{port}",
                "ready_timeout_seconds": args.ready_timeout_seconds,
                "reload_signal": "SIGHUP",
                "extra_logs": ["caddy.log"],
                "cleanup_root": args.cleanup_root,
            },
            pulumi.ResourceOptions(parent=self),
        )
        self.address = daemon.id.apply(lambda _: f"127.0.0.1:{port}")
        ca = None if settings.tls == "off" else str(state_dir / CA_CERT_RELATIVE_PATH)
        self.ca_cert = daemon.id.apply(lambda _: ca)
        self.state_dir = daemon.state_dir
        self.instance = daemon.id
        self.register_outputs(
            {"address": self.address, "ca_cert": self.ca_cert, "state_dir": self.state_dir, "instance": self.instance}
        )
