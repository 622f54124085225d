"""The GCP backend: each service as a zonal managed instance group behind one gateway VM.

`deploy(settings, plans)` checks the `serveform:gcp` settings and every plan first — a bad
value stops the program with a message naming its config key, before any resource exists —
then registers one `Volume` per network volume, one `GpuInstanceGroup` per service and one
`Gateway`, and exports each service's URL, model endpoint, group and replica bounds, and the
gateway's address and domain.
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_gcp as gcp

from serveform.stacks.settings import StackSettings
from serveform.translator.plan import ServicePlan

from .. import _cloud
from .._vm import DEFAULT_VOLUME_SIZE_GB, capacity
from .gateway import DEFAULT_MACHINE_TYPE, GATEWAY_TYPE, Gateway, GatewayArgs, GatewayGroupRef
from .gpu_instance_group import GPU_INSTANCE_GROUP_TYPE, GpuInstanceGroup, GpuInstanceGroupArgs, disk_name, group_name
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
    _cloud.check_plans(settings, plans, "gcp", problems)
    caps = _cloud.checked(settings, problems, lambda: {p.name: capacity(p, "gcp", region=region, zone=cfg.zone) for p in plans})
    # The gateway package checks every route (and renders the Caddyfile) before anything is registered.
    _cloud.gateway_caddyfile(settings, plans)
    assert cfg.project and cfg.zone and region
    project, zone = cfg.project, cfg.zone

    provider = gcp.Provider("gcp", project=project, region=region, zone=zone)
    opts = pulumi.ResourceOptions(provider=provider)

    volumes: dict[str, Volume] = {}
    for plan in plans:
        for mount in plan.volumes:
            if mount.kind == "network" and mount.names[0] not in volumes:
                volumes[mount.names[0]] = Volume(
                    f"{mount.names[0]}-volume",
                    VolumeArgs(
                        disk_name=disk_name(settings.stack, mount.names[0]),
                        size_gb=DEFAULT_VOLUME_SIZE_GB,
                        zone=zone,
                        retain=settings.retain_volumes,
                        labels={"serveform-stack": settings.stack},
                    ),
                    opts,
                )

    names = {plan.name: group_name(settings.stack, plan.name) for plan in plans}
    gateway = Gateway(
        "gateway",
        GatewayArgs(
            stack=settings.stack,
            domain=settings.domain,
            project=project,
            region=region,
            zone=zone,
            network=cfg.network,
            gateway_document=_cloud.gateway_document(settings, plans),
            groups={p.name: GatewayGroupRef(group_name=names[p.name], port=p.replica_group.container_port) for p in plans},
            tokens=_cloud.tokens_secret(settings),
            machine_type=settings.gateway.instance_type or DEFAULT_MACHINE_TYPE,
            dns_zone=cfg.dns_zone,
            dns_provider=settings.gateway.dns_provider,
            package_spec=_cloud.package_spec(plans),
            scaler_unit=_cloud.scaler_unit(settings, plans),
            project_files=_cloud.project_files(settings, plans),
        ),
        opts,
    )
    groups: dict[str, GpuInstanceGroup] = {}
    for plan in plans:
        network = [m for m in plan.volumes if m.kind == "network"]
        groups[plan.name] = GpuInstanceGroup(
            plan.name,
            GpuInstanceGroupArgs(
                plan=plan,
                capacity=caps[plan.name],
                stack=settings.stack,
                project=project,
                zone=zone,
                group_name=names[plan.name],
                desired=_cloud.desired_replicas(settings, plan),
                image=cfg.image or DEFAULT_IMAGE,
                network=cfg.network,
                gateway_service_account=gateway.service_account,
                volumes={m.names[0]: volumes[m.names[0]].self_link for m in network},
            ),
            opts,
        )

    _cloud.export_services(settings, plans, {name: g.group_name for name, g in groups.items()})
    pulumi.export("gateway_address", gateway.address)
    pulumi.export("gateway_dns_name", gateway.dns_name)
