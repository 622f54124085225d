"""`Gateway`: the stack's gateway as a process on this machine (Caddy + the OpenAI router).

The gateway package's supervisor (``python -m serveform.gateway run --state-dir DIR``) runs Caddy
and the router as one process tree; this component writes its config into ``DIR`` and keeps that
process running: `up` starts it, a changed config reaches it as a reload (SIGHUP), `refresh`
notices it died and the next `up` starts it again, `destroy` stops it and removes ``DIR``
(Caddy's storage with the internal CA included).

Locally the gateway listens on loopback only, on unprivileged ports (`serveform:gateway`
`http_port`/`https_port`, default 8080/8443), and TLS comes from Caddy's internal CA, whose root
certificate (`ca_cert`) clients trust explicitly. Replica addresses are not part of the config:
each `ReplicaGroup` publishes them, so the scaler's count changes (`serveform:replicas`) never
reload Caddy; editing a service file does, since its plan is part of the config.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pulumi

from serveform.gateway.settings import GatewaySettings
from serveform.gateway.state import CONFIG_FILE, DNS_OPTIONS_FILE, TOKENS_FILE
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
        # The layout serveform.gateway.state documents (what `write_config` writes on a VM), but
        # written by the provider so that the tokens travel as Pulumi secrets until they land in
        # 0600 files: the settings without secrets, the plans, and where the secrets are.
        document = {
            "settings": settings.model_dump(mode="json", exclude={"tokens", "dns_options"}),
            "plans": [json.loads(plan.model_dump_json()) for plan in args.plans],
            "tokens_file": TOKENS_FILE,
            "dns_options_file": DNS_OPTIONS_FILE,
        }
        dns_options = {k: v.get_secret_value() for k, v in settings.dns_options.items()}
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
                "files": {CONFIG_FILE: json.dumps(document, indent=2, sort_keys=True) + "\n"},
                "secret_files": pulumi.Output.secret(args.tokens).apply(
                    lambda tokens: {TOKENS_FILE: json.dumps(list(tokens)), DNS_OPTIONS_FILE: json.dumps(dns_options)}
                ),
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
