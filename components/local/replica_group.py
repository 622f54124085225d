"""`ReplicaGroup`: the replicas of one service as processes on this machine.

Each replica is its own dynamic resource (`_replica.Replica`, logical name
``<service>-replica-<n>``), so a changed count creates or deletes only the replicas at the end and
never restarts the others. The group's addresses are published to the gateway by one more child
(``<service>-route``), which Pulumi orders after new replicas accept connections and before removed
ones are stopped.

Volumes cannot be mounted by a process, so each mount reaches the replicas as an environment
variable holding the directory: ``SERVEFORM_VOLUME_<PATH>`` (the mount path in upper case, runs of
other characters as ``_``: ``/data`` → ``SERVEFORM_VOLUME_DATA``), and the whole map as JSON in
``SERVEFORM_VOLUMES``. The translator warns about every volume of a local service, so a command
that reads ``/data`` directly is noticed at `preview`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pulumi
from pydantic import SecretStr

from serveform.translator.plan import ServicePlan

from . import _code, _publication, _replica

__all__ = ["REPLICA_GROUP_TYPE", "ReplicaGroup", "ReplicaGroupArgs", "volume_env_name"]

REPLICA_GROUP_TYPE = "serveform:local:ReplicaGroup"
DEFAULT_READY_TIMEOUT_SECONDS = 120.0


@dataclass(frozen=True, kw_only=True)
class ReplicaGroupArgs:
    """Inputs of a `ReplicaGroup`."""

    plan: ServicePlan
    """The compiled service: what every replica runs, with which env, on which port."""
    replicas: int
    """How many replicas run; the caller has clamped it to the plan's bounds."""
    project_dir: str
    """The project root; replicas run their commands there (plus the plan's `working_dir`)."""
    state_dir: str
    """The stack's state directory; logs go to `<state_dir>/replicas/<service>-<n>.log`."""
    gateway_state_dir: pulumi.Input[str]
    """The running gateway's state directory, where the replicas' addresses are published."""
    gateway_instance: pulumi.Input[str] | None = None
    """The gateway process's identity: a new one gets the addresses published again."""
    volume_dirs: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Mount path → directory on this machine, one per volume of the plan."""
    ready_timeout_seconds: float = DEFAULT_READY_TIMEOUT_SECONDS
    """How long creating a replica waits for its port to accept connections."""
    cleanup_root: str | None = None
    """The outermost directory that deleting the last replica may remove once it is empty."""
    code_root: str | None = None
    """Where the plan's code archive is unpacked (`<code_root>/<service>-<sha256 prefix>`); default `<state_dir>/code`."""


def volume_env_name(mount_path: str) -> str:
    """The variable a replica finds a mount's directory in: `/data` → `SERVEFORM_VOLUME_DATA`."""
    return "SERVEFORM_VOLUME_" + (re.sub(r"[^A-Za-z0-9]+", "_", mount_path).strip("_").upper() or "ROOT")


class ReplicaGroup(pulumi.ComponentResource):
    """The replica processes of one service and their publication to the gateway."""

    addresses: pulumi.Output[list[str]]
    """`127.0.0.1:PORT` of every replica, in replica order."""
    log_paths: pulumi.Output[list[str]]
    """The log file of every replica."""
    replica_count: int
    """How many replicas this group runs."""

    def __init__(self, name: str, args: ReplicaGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(REPLICA_GROUP_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        plan = args.plan
        group = plan.replica_group
        plain_env: dict[str, str] = {}
        secret_env: dict[str, str] = {}
        for key, env in group.env.items():
            if env.value is None:
                continue
            value = env.value.get_secret_value() if isinstance(env.value, SecretStr) else env.value
            (secret_env if env.secret or isinstance(env.value, SecretStr) else plain_env)[key] = value
        env = pulumi.Output.all(**dict(args.volume_dirs)).apply(lambda dirs: _with_volumes(plain_env, dirs))
        # With a code archive, replicas run in its unpacked `repo/` (dstack's /workflow) at the
        # plan's working directory; without one (a plan from the translator alone), in the project.
        run_dir: pulumi.Input[str] = args.project_dir
        working_dir = group.working_dir
        if plan.code is not None:
            code = plan.code
            unpacked = _code.Code(
                f"{name}-code",
                {
                    "provider_version": _code.PROVIDER_VERSION,
                    "archive": code.archive,
                    "sha256": code.sha256,
                    "path": str(Path(args.code_root or Path(args.state_dir) / "code") / f"{plan.name}-{code.sha256[:16]}"),
                    "cleanup_root": args.cleanup_root,
                },
                child,
            )
            run_dir = unpacked.path.apply(lambda path: str(Path(path) / "repo"))
            working_dir = _relative_workdir(code.workdir, code.repo_dir)
        replicas = [
            _replica.Replica(
                f"{name}-replica-{index}",
                {
                    "provider_version": _replica.PROVIDER_VERSION,
                    "service": plan.name,
                    "replica": index,
                    "project_dir": run_dir,
                    "working_dir": working_dir,
                    "log_path": str(Path(args.state_dir) / "replicas" / f"{plan.name}-{index}.log"),
                    "setup": list(group.setup),
                    "commands": list(group.commands),
                    "env": env,
                    "secret_env": pulumi.Output.secret(secret_env),
                    "container_port": group.container_port,
                    "gpus_num": group.gpus_num,
                    "ready_timeout_seconds": args.ready_timeout_seconds,
                    "cleanup_root": args.cleanup_root,
                },
                child,
            )
            for index in range(args.replicas)
        ]
        self.replica_count = args.replicas
        self.addresses = pulumi.Output.all(*(r.address for r in replicas)).apply(list)
        self.log_paths = pulumi.Output.all(*(r.log_path for r in replicas)).apply(list)
        _publication.Publication(
            f"{name}-route",
            {
                "provider_version": _publication.PROVIDER_VERSION,
                "gateway_state_dir": args.gateway_state_dir,
                "gateway_instance": args.gateway_instance,
                "service": plan.name,
                "addresses": self.addresses,
            },
            child,
        )
        self.register_outputs({"addresses": self.addresses, "log_paths": self.log_paths})


def _relative_workdir(workdir: str, repo_dir: str) -> str | None:
    """The working directory relative to the unpacked repository, or absolute when it lies outside it."""
    path, repo = PurePosixPath(workdir), PurePosixPath(repo_dir)
    if path == repo:
        return None
    if repo in path.parents:
        return str(path.relative_to(repo))
    return workdir


def _with_volumes(env: dict[str, str], dirs: Mapping[str, str]) -> dict[str, str]:
    if not dirs:
        return dict(env)
    return {
        **env,
        **{volume_env_name(path): directory for path, directory in dirs.items()},
        "SERVEFORM_VOLUMES": json.dumps(dict(dirs), sort_keys=True),
    }
