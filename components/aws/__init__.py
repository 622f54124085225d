"""The AWS backend: each service as an EC2 auto scaling group behind one gateway VM.

`deploy(settings, plans)` checks `serveform:aws` (region, VPC and subnets, Route 53 zone), looks
up the default VPC's subnets and the machine images, and hands EBS volumes, the gateway and the
groups to the VM backends' shared flow in `components._cloud` (checks, registration, exports).
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_aws as aws

from serveform.stacks.settings import StackSettings
from serveform.translator.plan import ServicePlan

from .. import _cloud
from .gateway import DEFAULT_INSTANCE_TYPE as DEFAULT_GATEWAY_INSTANCE_TYPE
from .gateway import GATEWAY_TYPE, Gateway, GatewayArgs, GatewayGroupRef, store_code
from .gpu_instance_group import GPU_INSTANCE_GROUP_TYPE, AwsVolumeRef, GpuInstanceGroup, GpuInstanceGroupArgs, group_name
from .volume import VOLUME_TYPE, Volume, VolumeArgs

__all__ = [
    "GATEWAY_TYPE",
    "GPU_INSTANCE_GROUP_TYPE",
    "VOLUME_TYPE",
    "Gateway",
    "GatewayArgs",
    "GpuInstanceGroup",
    "GpuInstanceGroupArgs",
    "Volume",
    "VolumeArgs",
    "deploy",
    "group_name",
]

# Deep Learning Base AMI: NVIDIA driver, Docker and the NVIDIA container toolkit preinstalled.
GPU_AMI_OWNER = "amazon"
GPU_AMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
# Debian 12 (bookworm): the system the boot test boots for real, and the Python (3.11) the
# wheelhouse is built for (`serveform.image.vm`).
GATEWAY_AMI_OWNER = "136693071363"  # Debian
GATEWAY_AMI_NAME = "debian-12-amd64-*"


def deploy(settings: StackSettings, plans: Sequence[ServicePlan]) -> None:
    """Register the stack's AWS resources for ``plans`` and export its endpoints."""
    cfg = settings.aws
    problems: list[tuple[str, str]] = []
    region = cfg.region or (settings.regions[0] if settings.regions else None)
    _cloud.require(settings, problems, "serveform:aws.region", region, "required: the stack's AWS region (or set serveform:regions)")
    if cfg.subnet_ids and not cfg.vpc_id:
        problems.append(("serveform:aws.vpc_id", "required when serveform:aws.subnet_ids is set (the subnets' VPC)"))
    if settings.gateway.tls == "acme_dns" and settings.gateway.dns_provider == "route53" and not cfg.zone_id:
        problems.append(("serveform:aws.zone_id", "required for tls acme_dns with dns_provider route53 (the hosted zone of the domain)"))
    problems.extend(_cloud.runtime_image_problems(plans, "serveform:aws", cfg.python_image, cfg.runtime_image))
    caps = _cloud.preflight(settings, plans, "aws", problems, region=region)
    assert region is not None
    # Not the Pulumi CLI: the AWS gateway's scaler sets its groups' desired capacity with the
    # instance role and runs no `up` (serveform.scaler.autoscaling).
    artifacts = _cloud.gateway_artifacts("aws")
    built: dict[str, Gateway] = {}

    provider = aws.Provider("aws", region=region)
    invoke = pulumi.InvokeOutputOptions(provider=provider)
    opts = pulumi.ResourceOptions(provider=provider)
    vpc_id: pulumi.Input[str] = cfg.vpc_id or aws.ec2.get_vpc_output(default=True, opts=invoke).id
    if cfg.subnet_ids:
        subnet_ids: pulumi.Output[list[str]] = pulumi.Output.from_input(list(cfg.subnet_ids))
    else:
        subnet_ids = aws.ec2.get_subnets_output(
            filters=[{"name": "vpc-id", "values": [vpc_id]}, {"name": "default-for-az", "values": ["true"]}], opts=invoke
        ).ids
    first_subnet = subnet_ids.apply(lambda ids: sorted(ids)[0])
    volume_zone = aws.ec2.get_subnet_output(id=first_subnet, opts=invoke).availability_zone
    gpu_ami: pulumi.Input[str] = cfg.ami or aws.ec2.get_ami_output(
        owners=[GPU_AMI_OWNER], most_recent=True, filters=[{"name": "name", "values": [GPU_AMI_NAME]}], opts=invoke
    ).id
    gateway_ami = aws.ec2.get_ami_output(
        owners=[GATEWAY_AMI_OWNER], most_recent=True, filters=[{"name": "name", "values": [GATEWAY_AMI_NAME]}], opts=invoke
    ).id

    def volume(name: str, common: _cloud.VolumeCommon) -> Volume:
        args = VolumeArgs(**common, volume_name=name, availability_zone=volume_zone, tags={"serveform:stack": settings.stack})
        return Volume(f"{name}-volume", args, opts)

    def gateway(common: _cloud.GatewayCommon) -> Gateway:
        args = GatewayArgs(
            **common,
            region=region,
            ami=gateway_ami,
            vpc_id=vpc_id,
            subnet_id=first_subnet,
            instance_type=settings.gateway.instance_type or DEFAULT_GATEWAY_INSTANCE_TYPE,
            zone_id=cfg.zone_id,
            artifacts=artifacts,
        )
        built["gateway"] = Gateway("gateway", args, opts)
        return built["gateway"]

    def code_store(plan: ServicePlan) -> pulumi.Output[str]:
        # The service's code archive (issue 14 item 2) in the gateway's artifact bucket.
        return store_code(built["gateway"], f"{plan.name}-code", _cloud.code_object_key(plan), _cloud.code_asset(plan))

    def group(common: _cloud.GroupCommon, gateway: Gateway, volumes: dict[str, Volume]) -> GpuInstanceGroup:
        args = GpuInstanceGroupArgs(
            **runtime(common),
            region=region,
            ami=gpu_ami,
            vpc_id=vpc_id,
            # EBS volumes are zonal: a service that mounts one runs in the volume's zone.
            subnet_ids=first_subnet.apply(lambda s: [s]) if volumes else subnet_ids,
            gateway_security_group_id=gateway.security_group_id,
            volumes={name: AwsVolumeRef(volume_id=v.volume_id, arn=v.arn) for name, v in volumes.items()},
            key_name=cfg.key_name,
        )
        return GpuInstanceGroup(common["plan"].name, args, opts)

    def runtime(common: _cloud.GroupCommon) -> _cloud.GroupCommon:
        # Only the replicas' boot changes: the gateway and the scaler keep the compiled plans.
        if cfg.python_image != _cloud.RUNTIME_IMAGE or cfg.runtime_image is None:
            return common
        return {**common, "plan": _cloud.on_runtime_image(common["plan"], cfg.runtime_image)}

    _cloud.register(
        settings, plans, caps, group_name=group_name, group_ref=GatewayGroupRef, volume=volume, gateway=gateway, group=group,
        code_store=code_store,
    )

