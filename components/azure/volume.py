"""`Volume`: an Azure managed disk for a service's network volume mount."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure

__all__ = ["VOLUME_TYPE", "Volume", "VolumeArgs"]

VOLUME_TYPE = "serveform:azure:Volume"


@dataclass(frozen=True, kw_only=True)
class VolumeArgs:
    """Inputs of a `Volume`."""

    disk_name: str
    """The disk's name in Azure (`serveform-<stack>-<volume>`)."""
    size_gb: int
    """Size of a new disk in GB."""
    resource_group: pulumi.Input[str]
    """The stack's resource group."""
    location: str
    """The Azure location."""
    retain: bool = True
    """Keep the disk in Azure when it leaves the program (`serveform:retainVolumes`)."""
    tags: dict[str, str] | None = None
    """Extra tags for every child."""


class Volume(pulumi.ComponentResource):
    """An empty Premium SSD managed disk, kept on delete unless the stack says otherwise."""

    disk_id: pulumi.Output[str]
    """The disk's resource ID; the replica's boot script attaches it by this ID."""

    def __init__(self, name: str, args: VolumeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(VOLUME_TYPE, name, None, opts)
        disk = azure.compute.Disk(
            f"{name}-disk",
            disk_name=args.disk_name,
            resource_group_name=args.resource_group,
            location=args.location,
            disk_size_gb=args.size_gb,
            sku={"name": "Premium_LRS"},
            creation_data={"create_option": "Empty"},
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self, retain_on_delete=args.retain),
        )
        self.disk_id = disk.id
        self.register_outputs({"disk_id": self.disk_id})
