"""`Scaler`: the stack's autoscaler as a background process of a local stack.

It runs the scaler package's daemon (`python -m serveform.scaler run --stack STACK`, built by
`serveform.scaler.deploy.scaler_argv`): it reads the gateway's request metrics (the metrics URL
is in the gateway's `status.json`), decides each service's replica count and applies it by
running a scale `up` of this same stack (`serveform.scaler.applier`). Its `/metrics` and
`/healthz` listen on a loopback port chosen when it starts (output `address`); its decisions
survive restarts in `<state_dir>/scaler-state.json`.

The Pulumi backend URL, passphrase and home it needs for that `up`, and the env values services
take from the deploying environment (bare `- NAME` entries, which its `up` compiles again), are
passed from the deploying environment when it starts, never stored in the state: the same stack
deployed from another shell does not see a change, and the scaler's own `up` neither replaces
the scaler nor changes a replica's environment.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi

from serveform.scaler.constants import STATE_FILE_NAME
from serveform.scaler.deploy import scaler_argv

from . import _daemon

__all__ = ["SCALER_TYPE", "Scaler", "ScalerArgs"]

SCALER_TYPE = "serveform:local:Scaler"
DEFAULT_READY_TIMEOUT_SECONDS = 60.0
# What the scaler's `up` needs from the deploying environment (serveform.stacks.engine).
_PULUMI_ENV = (
    "PULUMI_BACKEND_URL",
    "PULUMI_CONFIG_PASSPHRASE",
    "PULUMI_CONFIG_PASSPHRASE_FILE",
    "PULUMI_HOME",
    "PULUMI_PYTHON_CMD",
    "PULUMI_SKIP_UPDATE_CHECK",
)


@dataclass(frozen=True, kw_only=True)
class ScalerArgs:
    """Inputs of a `Scaler`."""

    stack: str
    """The stack the scaler changes (the one being deployed)."""
    project_dir: str
    """The project directory: where `stacks/Pulumi.<stack>.yaml` and the service files are."""
    state_dir: str
    """The scaler's own directory (its saved decisions and log)."""
    gateway_state_dir: str
    """The gateway's state directory, whose `status.json` names the metrics endpoint."""
    environment_names: tuple[str, ...] = ()
    """Env names the services take from the deploying environment (bare `- NAME` entries): the
    scaler's `up` compiles the same service files, so it gets the same values when it starts."""
    ready_timeout_seconds: float = DEFAULT_READY_TIMEOUT_SECONDS
    """How long `up` waits for the scaler's `/healthz` listener."""
    cleanup_root: str | None = None
    """The outermost directory that deleting the scaler may remove once it is empty."""


class Scaler(pulumi.ComponentResource):
    """The scaler daemon of a local stack."""

    address: pulumi.Output[str]
    """`127.0.0.1:PORT` of the scaler's `/metrics` and `/healthz`."""

    def __init__(self, name: str, args: ScalerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(SCALER_TYPE, name, None, opts)
        state_dir = Path(args.state_dir)
        argv = scaler_argv(
            args.stack,
            python=_daemon.PYTHON,
            gateway_state_dir=args.gateway_state_dir,
            state_path=state_dir / STATE_FILE_NAME,
            listen=f"127.0.0.1:{_daemon.PORT}",
        )
        daemon = _daemon.Daemon(
            f"{name}-process",
            {
                "provider_version": _daemon.PROVIDER_VERSION,
                "name": name,
                "argv": [*argv, "--project-dir", args.project_dir],
                "cwd": args.project_dir,
                "env": {"SERVEFORM_PROJECT_DIR": args.project_dir},
                "inherit_env": [*_PULUMI_ENV, *sorted(set(args.environment_names))],
                "state_dir": str(state_dir),
                "log_path": str(state_dir / "scaler.log"),
                "ready_address": f"127.0.0.1:{_daemon.PORT}",
                "ready_timeout_seconds": args.ready_timeout_seconds,
                "cleanup_root": args.cleanup_root,
            },
            pulumi.ResourceOptions(parent=self),
        )
        self.address = daemon.port.apply(lambda port: f"127.0.0.1:{port}")
        self.register_outputs({"address": self.address})
