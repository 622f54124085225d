"""`Volume`: a persistent disk for a service's network volume mount."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

__all__ = ["VOLUME_TYPE", "Volume", "VolumeArgs"]

VOLUME_TYPE = "serveform:gcp:Volume"


@dataclass(frozen=True, kw_only=True)
class VolumeArgs:
    """Inputs of a `Volume`."""

    disk_name: str
    """The disk's name in GCP (`serveform-<stack>-<volume>`)."""
    size_gb: int
    """Size of a new disk in GB."""
    zone: str
    """The replicas' zone (persistent disks are zonal)."""
    retain: bool = True
    """Keep the disk in GCP when it leaves the program (`serveform:retainVolumes`)."""
    labels: dict[str, str] | None = None
    """Extra labels."""


class Volume(pulumi.ComponentResource):
    """A balanced persistent disk, kept on delete unless the stack says otherwise."""

    self_link: pulumi.Output[str]
    """The disk's URL; the replica's boot script attaches it by this link."""
    disk_name: pulumi.Output[str]
    """The disk's name."""

    def __init__(self, name: str, args: VolumeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(VOLUME_TYPE, name, None, opts)
        disk = gcp.compute.Disk(
            f"{name}-disk",
            name=args.disk_name,
            zone=args.zone,
            size=args.size_gb,
            type="pd-balanced",
            labels=args.labels,
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=args.retain),
        )
        self.self_link = disk.self_link
        self.disk_name = disk.name
        self.register_outputs({"self_link": self.self_link, "disk_name": self.disk_name})
