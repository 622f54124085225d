"""The Azure backend: each service as a virtual machine scale set behind one gateway VM.

`deploy(settings, plans)` checks `serveform:azure` (location, SSH key, image URN, DNS zone),
registers the resource group unless the stack names one, and hands managed disks, the gateway
(which owns the network and the Key Vault) and the scale sets to the VM backends' shared flow in
`components._cloud` (checks, registration, exports).
"""

from __future__ import annotations

from collections.abc import Sequence

import pulumi
import pulumi_azure_native as azure

from serveform.stacks.settings import StackSettings
from serveform.translator.plan import ServicePlan

from .. import _cloud
from .._vm import short_name
from .gateway import DEFAULT_VM_SIZE, GATEWAY_TYPE, Gateway, GatewayArgs, GatewayGroupRef, relative_record_name, store_code
from .gpu_instance_group import GPU_INSTANCE_GROUP_TYPE, GpuInstanceGroup, GpuInstanceGroupArgs, group_name
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


def _image(text: str | None) -> dict[str, str] | None:
    """`publisher:offer:sku:version` (the Azure CLI's URN form) → an image reference."""
    if not text:
        return None
    publisher, offer, sku, version = text.split(":")
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": version}


def deploy(settings: StackSettings, plans: Sequence[ServicePlan]) -> None:
    """Register the stack's Azure resources for ``plans`` and export its endpoints."""
    cfg = settings.azure
    problems: list[tuple[str, str]] = []
    location = cfg.location or (settings.regions[0] if settings.regions else None)
    _cloud.require(settings, problems, "serveform:azure.location", location, "required: the stack's Azure location (or set serveform:regions)")
    _cloud.require(settings, problems, "serveform:azure.ssh_public_key", cfg.ssh_public_key, "required: Azure Linux VMs need an admin SSH public key")
    if cfg.image and cfg.image.count(":") != 3:
        problems.append(("serveform:azure.image", f"{cfg.image!r}: expected publisher:offer:sku:version"))
    if cfg.dns_zone:
        try:
            relative_record_name(settings.domain, cfg.dns_zone)
        except ValueError as exc:
            problems.append(("serveform:azure.dns_zone", str(exc)))
    if settings.gateway.tls == "acme_dns" and settings.gateway.dns_provider == "azure" and not cfg.dns_zone:
        problems.append(("serveform:azure.dns_zone", "required for tls acme_dns with dns_provider azure"))
    caps = _cloud.preflight(settings, plans, "azure", problems, region=location)
    assert location and cfg.ssh_public_key
    artifacts = _cloud.gateway_artifacts("azure")

    provider = azure.Provider("azure", location=location)
    opts = pulumi.ResourceOptions(provider=provider)
    client = azure.authorization.get_client_config_output(opts=pulumi.InvokeOutputOptions(provider=provider))
    rg_name = cfg.resource_group or f"serveform-{settings.stack}"
    if cfg.resource_group:
        resource_group: pulumi.Input[str] = cfg.resource_group
    else:
        resource_group = azure.resources.ResourceGroup(
            "resource-group", resource_group_name=rg_name, location=location, tags={"serveform-stack": settings.stack}, opts=opts
        ).name
    vault_name = short_name("sf", settings.stack, rg_name, location, limit=24)

    def volume(name: str, common: _cloud.VolumeCommon) -> Volume:
        args = VolumeArgs(
            **common,
            disk_name=short_name("serveform", settings.stack, name, limit=80),
            resource_group=resource_group,
            location=location,
            tags={"serveform-stack": settings.stack},
        )
        return Volume(f"{name}-volume", args, opts)

    built: dict[str, Gateway] = {}
    code_containers: dict[str, pulumi.Output[str]] = {}

    def gateway(common: _cloud.GatewayCommon) -> Gateway:
        args = GatewayArgs(
            **common,
            subscription_id=client.subscription_id,
            tenant_id=client.tenant_id,
            resource_group=resource_group,
            resource_group_name=rg_name,
            location=location,
            vault_name=vault_name,
            ssh_public_key=cfg.ssh_public_key,
            vm_size=settings.gateway.instance_type or DEFAULT_VM_SIZE,
            dns_zone=cfg.dns_zone,
            dns_resource_group=cfg.dns_resource_group,
            artifacts=artifacts,
        )
        built["gateway"] = Gateway("gateway", args, opts)
        return built["gateway"]

    def code_store(plan: ServicePlan) -> pulumi.Output[str]:
        # The service's code archive (issue 14 item 2) in its own container of the gateway's storage account.
        url, code_containers[plan.name] = store_code(
            built["gateway"], f"{plan.name}-code", plan.name, _cloud.code_object_key(plan), _cloud.code_asset(plan)
        )
        return url

    def group(common: _cloud.GroupCommon, gateway: Gateway, volumes: dict[str, Volume]) -> GpuInstanceGroup:
        args = GpuInstanceGroupArgs(
            **common,
            subscription_id=client.subscription_id,
            resource_group=resource_group,
            resource_group_name=rg_name,
            location=location,
            subnet_id=gateway.replica_subnet_id,
            vault_name=gateway.vault_name,
            vault_host=f"{vault_name}.vault.azure.net",
            ssh_public_key=cfg.ssh_public_key,
            image=_image(cfg.image),
            volumes={name: v.disk_id for name, v in volumes.items()},
            code_container_id=code_containers.get(common["plan"].name),
        )
        return GpuInstanceGroup(common["plan"].name, args, opts)

    _cloud.register(
        settings, plans, caps, group_name=group_name, group_ref=GatewayGroupRef, volume=volume, gateway=gateway, group=group,
        code_store=code_store,
    )
