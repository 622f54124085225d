"""`Volume`: an EBS volume for a service's network volume mount."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

__all__ = ["VOLUME_TYPE", "Volume", "VolumeArgs"]

VOLUME_TYPE = "serveform:aws:Volume"


@dataclass(frozen=True, kw_only=True)
class VolumeArgs:
    """Inputs of a `Volume`."""

    volume_name: str
    """The volume's name in the service file (`volumes[].name`)."""
    size_gb: int
    """Size of a new volume in GB."""
    availability_zone: pulumi.Input[str]
    """The zone of the replicas that attach it (EBS volumes are zonal)."""
    retain: bool = True
    """Keep the volume in AWS when it leaves the program (`serveform:retainVolumes`)."""
    tags: dict[str, str] | None = None
    """Tags for the volume, besides `Name`."""


class Volume(pulumi.ComponentResource):
    """A gp3 EBS volume, encrypted, kept on delete unless the stack says otherwise."""

    volume_id: pulumi.Output[str]
    """The EBS volume ID (`vol-...`)."""
    arn: pulumi.Output[str]
    """The volume's ARN, for the replicas' attach permission."""
    availability_zone: pulumi.Output[str]
    """The volume's zone."""

    def __init__(self, name: str, args: VolumeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(VOLUME_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self, retain_on_delete=args.retain)
        volume = aws.ebs.Volume(
            f"{name}-disk",
            availability_zone=args.availability_zone,
            size=args.size_gb,
            type="gp3",
            encrypted=True,
            tags={"Name": args.volume_name, **(args.tags or {})},
            opts=child,
        )
        self.volume_id = volume.id
        self.arn = volume.arn
        self.availability_zone = volume.availability_zone
        self.register_outputs({"volume_id": self.volume_id, "arn": self.arn, "availability_zone": self.availability_zone})
