"""The GCP backend: each service as a zonal managed instance group behind one gateway VM.

`deploy(settings, plans)` checks `serveform:gcp` (project, zone inside the region, Cloud DNS
zone), creates the stack's own `Network` (VPC, subnet, Cloud NAT) unless `serveform:gcp.network`
names an existing one, and hands persistent disks, the gateway and the groups to the VM backends'
shared flow in `components._cloud` (checks, registration, exports).
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_gcp as gcp

from serveform.stacks.settings import StackSettings
from serveform.translator.plan import ServicePlan

from .. import _cloud
from .gateway import DEFAULT_MACHINE_TYPE, GATEWAY_TYPE, Gateway, GatewayArgs, GatewayGroupRef, store_code
from .gpu_instance_group import GPU_INSTANCE_GROUP_TYPE, GpuInstanceGroup, GpuInstanceGroupArgs, disk_name, group_name
from .network import NETWORK_TYPE, Network, NetworkArgs
from .volume import VOLUME_TYPE, Volume, VolumeArgs

__all__ = [
    "GATEWAY_TYPE",
    "GPU_INSTANCE_GROUP_TYPE",
    "VOLUME_TYPE",
    "Gateway",
    "GatewayArgs",
    "GpuInstanceGroup",
    "GpuInstanceGroupArgs",
    "NETWORK_TYPE",
    "Network",
    "NetworkArgs",
    "Volume",
    "VolumeArgs",
    "deploy",
]

# Deep Learning VM image: NVIDIA driver, Docker and the NVIDIA container toolkit preinstalled.
DEFAULT_IMAGE = "projects/deeplearning-platform-release/global/images/family/common-cu124-ubuntu-2204-py310"


def deploy(settings: StackSettings, plans: Sequence[ServicePlan]) -> None:
    """Register the stack's GCP resources for ``plans`` and export its endpoints."""
    cfg = settings.gcp
    problems: list[tuple[str, str]] = []
    _cloud.require(settings, problems, "serveform:gcp.project", cfg.project, "required: the GCP project of the stack")
    _cloud.require(settings, problems, "serveform:gcp.zone", cfg.zone, "required: the zone of the groups and their disks (e.g. us-central1-a)")
    region = cfg.region or (cfg.zone.rsplit("-", 1)[0] if cfg.zone else None)
    if cfg.zone and cfg.region and not cfg.zone.startswith(cfg.region + "-"):
        problems.append(("serveform:gcp.zone", f"{cfg.zone!r} is not in serveform:gcp.region {cfg.region!r}"))
    if settings.gateway.tls == "acme_dns" and settings.gateway.dns_provider == "googleclouddns" and not cfg.dns_zone:
        problems.append(("serveform:gcp.dns_zone", "required for tls acme_dns with dns_provider googleclouddns"))
    if cfg.subnetwork and not cfg.network:
        problems.append(("serveform:gcp.subnetwork", "set only with serveform:gcp.network (the stack's own network has its own subnet)"))
    caps = _cloud.preflight(settings, plans, "gcp", problems, region=region, zone=cfg.zone)
    assert cfg.project and cfg.zone and region
    artifacts = _cloud.gateway_artifacts("gcp")
    project, zone = cfg.project, cfg.zone

    provider = gcp.Provider("gcp", project=project, region=region, zone=zone)
    opts = pulumi.ResourceOptions(provider=provider)
    network: pulumi.Input[str]
    subnetwork: pulumi.Input[str] | None
    if cfg.network:
        network, subnetwork = cfg.network, cfg.subnetwork
    else:
        own = Network("network", NetworkArgs(stack=settings.stack, project=project, region=region, subnet_cidr=cfg.subnet_cidr), opts)
        network, subnetwork = own.network, own.subnetwork

    def volume(name: str, common: _cloud.VolumeCommon) -> Volume:
        args = VolumeArgs(**common, disk_name=disk_name(settings.stack, name), zone=zone, labels={"serveform-stack": settings.stack})
        return Volume(f"{name}-volume", args, opts)

    built: dict[str, Gateway] = {}

    def gateway(common: _cloud.GatewayCommon) -> Gateway:
        args = GatewayArgs(
            **common,
            project=project,
            region=region,
            zone=zone,
            network=network,
            subnetwork=subnetwork,
            machine_type=settings.gateway.instance_type or DEFAULT_MACHINE_TYPE,
            dns_zone=cfg.dns_zone,
            artifacts=artifacts,
        )
        built["gateway"] = Gateway("gateway", args, opts)
        return built["gateway"]

    def code_store(plan: ServicePlan) -> pulumi.Output[str]:
        # The service's code archive (issue 14 item 2) in the gateway's artifact bucket.
        return store_code(built["gateway"], f"{plan.name}-code", _cloud.code_object_key(plan), _cloud.code_asset(plan))

    def group(common: _cloud.GroupCommon, gateway: Gateway, volumes: dict[str, Volume]) -> GpuInstanceGroup:
        args = GpuInstanceGroupArgs(
            **common,
            project=project,
            zone=zone,
            image=cfg.image or DEFAULT_IMAGE,
            network=network,
            subnetwork=subnetwork,
            gateway_service_account=gateway.service_account,
            volumes={name: v.self_link for name, v in volumes.items()},
            code_bucket=gateway.artifact_bucket if common["code_url"] is not None else None,
        )
        return GpuInstanceGroup(common["plan"].name, args, opts)

    _cloud.register(
        settings, plans, caps, group_name=group_name, group_ref=GatewayGroupRef, volume=volume, gateway=gateway, group=group,
        code_store=code_store,
    )
