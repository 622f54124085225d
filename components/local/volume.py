"""`Volume`: a network volume of the local backend — a directory owned by the stack.

The directory is `<state_dir>/volumes/<volume name>`; every service that names the volume shares
it. It survives every `up` and is removed by `destroy` (or when no service names the volume any
more), unless the stack sets `serveform:retainVolumes`, in which case Pulumi forgets it and the
data stays. Instance volumes (`/host/path:/mount`) need no resource: the host path is used as is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi

from . import _directory

__all__ = ["VOLUME_TYPE", "Volume", "VolumeArgs"]

VOLUME_TYPE = "serveform:local:Volume"


@dataclass(frozen=True, kw_only=True)
class VolumeArgs:
    """Inputs of a `Volume`."""

    volume_name: str
    """The network volume's name, as the service files spell it."""
    state_dir: str
    """The stack's state directory; the volume is `<state_dir>/volumes/<volume_name>`."""
    retain_on_destroy: bool = False
    """Keep the directory (and its data) when the stack is destroyed."""
    cleanup_root: str | None = None
    """The outermost directory that deleting the volume may remove once it is empty."""


class Volume(pulumi.ComponentResource):
    """A directory that replicas of any service can use."""

    path: pulumi.Output[str]
    """The directory on this machine."""

    def __init__(self, name: str, args: VolumeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(VOLUME_TYPE, name, None, opts)
        directory = _directory.Directory(
            f"{name}-directory",
            {
                "provider_version": _directory.PROVIDER_VERSION,
                "path": str(Path(args.state_dir) / "volumes" / args.volume_name),
                "cleanup_root": args.cleanup_root,
            },
            pulumi.ResourceOptions(parent=self, retain_on_delete=args.retain_on_destroy),
        )
        self.path = directory.path
        self.register_outputs({"path": self.path})
