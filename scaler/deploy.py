"""How the scaler runs where users run it: a systemd unit on gateway hosts, a Kubernetes
Deployment, a background process of the local stack. All three start the same command,
`python -m serveform.scaler run --stack STACK ...` (`scaler_argv`).

One scaler per stack: two writers of the counts would undo each other's decisions, so
the Deployment has one replica with the `Recreate` strategy and the unit is a single service.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2

from .constants import DEFAULT_INTERVAL_SECONDS, DEFAULT_LISTEN_ADDRESS

__all__ = [
    "GATEWAY_HOST_PROJECT_DIR",
    "kubernetes_deployment",
    "render_unit",
    "scaler_argv",
    "spawn_local",
    "systemd_name",
    "systemd_path",
    "systemd_quote",
]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
# Where a gateway host keeps serveform (install.sh of the VM backends) and the stack's project.
GATEWAY_HOST_PYTHON = "/opt/serveform/venv/bin/python"
GATEWAY_HOST_PROJECT_DIR = "/opt/serveform/project"
GATEWAY_HOST_STATE_DIR = "/var/lib/serveform-scaler"
GATEWAY_HOST_GATEWAY_STATE_DIR = "/var/lib/serveform-gateway"
GATEWAY_HOST_ENV_FILE = "/etc/serveform/scaler.env"
# Long enough for an `up` in flight to finish after SIGTERM (the daemon waits for it).
STOP_TIMEOUT_SECONDS = 660


def systemd_quote(value: object) -> str:
    """One double-quoted word of a systemd unit line.

    systemd expands `%` specifiers and `$VAR` in Exec lines, so both are doubled; backslashes
    and quotes are escaped; a line break cannot be expressed in a unit line and is refused.
    """
    text = str(value)
    if "\n" in text or "\r" in text or "\0" in text:
        raise ValueError(f"{text!r}: a systemd unit value cannot contain line breaks or NUL")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


_PATH_RE = re.compile(r"/[A-Za-z0-9/._+@:-]*")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")


def systemd_path(value: object) -> str:
    """An absolute path for directives that take no quoting (WorkingDirectory=, ReadWritePaths=)."""
    text = str(value)
    if not _PATH_RE.fullmatch(text):
        raise ValueError(f"{text!r}: expected an absolute path of letters, digits and /._+@:- only (systemd unit)")
    return text


def systemd_name(value: object) -> str:
    """A user or stack name for directives that take no quoting (User=, Description=)."""
    text = str(value)
    if not _NAME_RE.fullmatch(text):
        raise ValueError(f"{text!r}: expected letters, digits and ._- only (systemd unit)")
    return text


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES_DIR)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # systemd units, not HTML: every value passes systemd_quote instead
        keep_trailing_newline=True,
    )
    env.filters["systemd_quote"] = systemd_quote
    env.filters["systemd_path"] = systemd_path
    env.filters["systemd_name"] = systemd_name
    return env


def scaler_argv(
    stack: str,
    *,
    python: str = sys.executable,
    metrics_url: str | None = None,
    gateway_state_dir: str | os.PathLike[str] | None = None,
    state_path: str | os.PathLike[str] | None = None,
    listen: str | None = DEFAULT_LISTEN_ADDRESS,
    interval_seconds: float | None = None,
    access_log: str | os.PathLike[str] | None = None,
    dry_run: bool = False,
    metrics_token_file: str | os.PathLike[str] | None = None,
    aws_groups: str | os.PathLike[str] | None = None,
    gateway_config: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The scaler's command line."""
    argv = [python, "-m", "serveform.scaler", "run", "--stack", stack]
    if aws_groups:
        argv += ["--aws-groups", str(aws_groups)]
    if gateway_config:
        argv += ["--gateway-config", str(gateway_config)]
    if metrics_url:
        argv += ["--metrics-url", metrics_url]
    if metrics_token_file:
        argv += ["--metrics-token-file", str(metrics_token_file)]
    if gateway_state_dir:
        argv += ["--gateway-state-dir", str(gateway_state_dir)]
    if state_path:
        argv += ["--state", str(state_path)]
    argv += ["--listen", listen or "off"]
    if interval_seconds is not None and interval_seconds != DEFAULT_INTERVAL_SECONDS:
        argv += ["--interval", f"{interval_seconds:g}"]
    if access_log:
        argv += ["--access-log", str(access_log)]
    if dry_run:
        argv.append("--dry-run")
    return argv


def render_unit(
    *,
    stack: str,
    python: str = GATEWAY_HOST_PYTHON,
    project_dir: str = GATEWAY_HOST_PROJECT_DIR,
    state_dir: str = GATEWAY_HOST_STATE_DIR,
    gateway_state_dir: str = GATEWAY_HOST_GATEWAY_STATE_DIR,
    metrics_url: str | None = None,
    env_file: str = GATEWAY_HOST_ENV_FILE,
    user: str = "serveform",
    listen: str = DEFAULT_LISTEN_ADDRESS,
    environment: Mapping[str, str] | None = None,
    aws_groups: str | None = None,
    gateway_config: str | None = None,
) -> str:
    """`serveform-scaler.service` for a gateway host (installed by the VM backends' gateway).

    ``environment``: more variables for the scaler and its `up` (plain values, never secrets).

    With ``aws_groups`` (the AWS gateway's discovery.json) and ``gateway_config`` (its
    gateway.json) the scaler sets its groups' desired capacity with the instance role: the unit
    has no project, no Pulumi and no environment file. Otherwise (GCP, Azure) the host must hold
    the stack's project (Pulumi.yaml, `stacks/Pulumi.<stack>.yaml`, the service files) in
    `project_dir`, and the stack's backend URL and passphrase in `env_file`.
    """
    argv = scaler_argv(
        stack,
        python=python,
        metrics_url=metrics_url,
        gateway_state_dir=None if metrics_url else gateway_state_dir,
        state_path=f"{state_dir}/{stack}.json",
        listen=listen,
        aws_groups=aws_groups,
        gateway_config=gateway_config,
    )
    pulumi = aws_groups is None
    return _environment().get_template("serveform-scaler.service.j2").render(
        stack=stack,
        user=user,
        project_dir=project_dir if pulumi else None,
        state_dir=state_dir,
        env_file=env_file if pulumi else None,
        argv=argv,
        stop_timeout_seconds=STOP_TIMEOUT_SECONDS,
        environment=dict(environment or {}),
    )


# Where a scaler pod finds the gateway's tokens (a Secret volume), for a metrics listener that requires one.
METRICS_TOKEN_DIR = "/etc/serveform/metrics-token"


def kubernetes_deployment(
    *,
    stack: str,
    namespace: str,
    image: str,
    metrics_url: str,
    command: Sequence[str] | None = None,
    project_dir: str = "/srv/serveform",
    env_secret: str = "scaler-env",
    service_account: str = "scaler",
    name: str = "scaler",
    state_volume_claim: str | None = None,
    metrics_token_secret: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A Deployment manifest (as a dict) that runs the stack's scaler in the cluster.

    `command` replaces the container's default command (for an image that installs serveform
    first); by default the image must have serveform and the project at `project_dir`. The
    backend URL and passphrase come from the Secret `env_secret` (optional, so a cluster with
    workload identity needs none). Without `state_volume_claim` the state lives in an emptyDir:
    it survives container restarts but not a rescheduled pod. `metrics_token_secret` (Secret name,
    key) is mounted read-only and sent as the bearer token of a metrics listener that requires one.
    """
    labels = {"app.kubernetes.io/name": "serveform-scaler", "app.kubernetes.io/instance": stack}
    state_dir = "/var/lib/serveform-scaler"
    port = int(DEFAULT_LISTEN_ADDRESS.rpartition(":")[2])
    argv = list(command) if command else scaler_argv(
        stack,
        python="python",
        metrics_url=metrics_url,
        state_path=f"{state_dir}/{stack}.json",
        # Loopback only: nothing outside the pod needs the scaler, and its probes run inside it.
        listen=f"127.0.0.1:{port}",
        metrics_token_file=f"{METRICS_TOKEN_DIR}/{metrics_token_secret[1]}" if metrics_token_secret else None,
    )
    volume: dict[str, Any] = (
        {"name": "state", "persistentVolumeClaim": {"claimName": state_volume_claim}}
        if state_volume_claim
        else {"name": "state", "emptyDir": {}}
    )
    # An exec probe: the kubelet cannot reach a loopback listener from outside the pod.
    healthz = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/healthz', timeout=5)"
    probe = {
        "exec": {"command": ["python", "-c", healthz]},
        "periodSeconds": 15,
        "timeoutSeconds": 10,
        "failureThreshold": 8,
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            # Never two scalers of one stack at once, not even during a rollout.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": service_account,
                    # SIGTERM lets an `up` in flight finish.
                    "terminationGracePeriodSeconds": STOP_TIMEOUT_SECONDS,
                    "containers": [
                        {
                            "name": "scaler",
                            "image": image,
                            "command": argv,
                            "workingDir": project_dir,
                            "env": [
                                {"name": "SERVEFORM_PROJECT_DIR", "value": project_dir},
                                {"name": "PULUMI_SKIP_UPDATE_CHECK", "value": "1"},
                                {"name": "PULUMI_HOME", "value": f"{state_dir}/pulumi-home"},
                            ],
                            "envFrom": [{"secretRef": {"name": env_secret, "optional": True}}],
                            "livenessProbe": probe,
                            "readinessProbe": {**probe, "failureThreshold": 3},
                            "volumeMounts": [{"name": "state", "mountPath": state_dir}]
                            + ([{"name": "metrics-token", "mountPath": METRICS_TOKEN_DIR, "readOnly": True}] if metrics_token_secret else []),
                            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                            "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 10001},
                        }
                    ],
                    "volumes": [volume]
                    + (
                        [{"name": "metrics-token", "secret": {"secretName": metrics_token_secret[0], "items": [{"key": metrics_token_secret[1], "path": metrics_token_secret[1]}], "defaultMode": 0o440}}]
                        if metrics_token_secret
                        else []
                    ),
                },
            },
        },
    }


def spawn_local(
    stack: str,
    project_dir: str | os.PathLike[str],
    *,
    metrics_url: str | None = None,
    gateway_state_dir: str | os.PathLike[str] | None = None,
    state_path: str | os.PathLike[str] | None = None,
    listen: str | None = DEFAULT_LISTEN_ADDRESS,
    interval_seconds: float | None = None,
    log_path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    dry_run: bool = False,
) -> subprocess.Popen[bytes]:
    """Start the scaler of a local stack in the background (its own session, so it outlives the caller).

    Its log goes to `log_path` (default `<project>/.serveform/scaler/<stack>/scaler.log`); the
    caller owns the returned process (stop it with SIGTERM to let an `up` in flight finish).
    """
    project = Path(project_dir)
    log_file = Path(log_path) if log_path else project / ".serveform" / "scaler" / stack / "scaler.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    argv = scaler_argv(
        stack,
        metrics_url=metrics_url,
        gateway_state_dir=gateway_state_dir,
        state_path=state_path,
        listen=listen,
        interval_seconds=interval_seconds,
        dry_run=dry_run,
    )
    child_env = {**os.environ, **(env or {}), "SERVEFORM_PROJECT_DIR": str(project)}
    with open(log_file, "ab") as out:
        return subprocess.Popen(
            argv,
            cwd=project,
            env=child_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
