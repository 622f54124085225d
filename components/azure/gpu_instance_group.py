"""`GpuInstanceGroup`: the replicas of one service as an Azure virtual machine scale set.

A Uniform scale set of the plan's cheapest instance size (Azure scale sets hold one size), with
Spot priority where the plan asks (evicted instances are deleted, the bid capped at the plan's
`max_price`), the GPU image, the OS disk sized by the plan, and cloud-init as custom data. The
replicas' user-assigned identity may read the service's Key Vault secret and attach its disks;
their network security group admits the service port from the gateway subnet only.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_azure_native as azure

from serveform.translator.plan import ServicePlan

from .._vm import Capacity, CodeSource, ReplicaBoot, SecretRef, VolumeMount, needs_secret_store, replica_user_data, secret_payload, short_name
from . import _roles
from .gateway import ADMIN_USER, GATEWAY_SUBNET

__all__ = ["GPU_INSTANCE_GROUP_TYPE", "GpuInstanceGroup", "GpuInstanceGroupArgs", "group_name"]

GPU_INSTANCE_GROUP_TYPE = "serveform:azure:GpuInstanceGroup"
# Data Science VM (Ubuntu, HPC): NVIDIA driver, Docker and the NVIDIA container toolkit preinstalled.
DEFAULT_IMAGE = {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"}
# What a replica's identity may do to attach its disks: write its own scale set instance, use the disk.
ATTACH_ACTIONS = (
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/write",
    "Microsoft.Compute/disks/read",
    "Microsoft.Compute/disks/write",
)


def group_name(stack: str, service: str) -> str:
    """The scale set of a service: `serveform-<stack>-<service>` (64 characters at most)."""
    return short_name("serveform", stack, service, limit=64)


@dataclass(frozen=True, kw_only=True)
class GpuInstanceGroupArgs:
    """Inputs of a `GpuInstanceGroup`."""

    plan: ServicePlan
    """The compiled service: image, commands, env, port, resources, offers, replica bounds."""
    capacity: Capacity
    """Instance size and Spot choice, from `serveform.components._vm.capacity`."""
    stack: str
    """The stack name, for tags and names."""
    subscription_id: pulumi.Input[str]
    """The Azure subscription (from the provider's client config)."""
    resource_group: pulumi.Input[str]
    """The stack's resource group."""
    resource_group_name: str
    """The resource group's name (plain), for role scopes and discovery."""
    location: str
    """The Azure location."""
    group_name: str
    """The scale set's name (fixed, so the gateway knows it before the set exists)."""
    desired: int
    """Replicas to run now (the scaler's count, clamped to the plan's bounds)."""
    subnet_id: pulumi.Input[str]
    """The replica subnet (from the `Gateway`)."""
    vault_name: pulumi.Input[str]
    """The stack's Key Vault (from the `Gateway`)."""
    vault_host: str
    """`<vault>.vault.azure.net`, for the secret's URL in the boot script."""
    ssh_public_key: str
    """The admin SSH key Azure requires (`serveform:azure.ssh_public_key`); no SSH port is opened."""
    image: Mapping[str, str] | None = None
    """Image reference; the Data Science VM image unless the stack names one."""
    volumes: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Network volume name → managed disk ID."""
    code_url: pulumi.Input[str] | None = None
    """Where the plan's code archive lies in the stack's artifact store (`_vm.CodeSource.url`); None: not shipped."""
    code_container_id: pulumi.Input[str] | None = None
    """The blob container holding only this service's code archive (with `code_url`): the replicas'
    identity is its "Storage Blob Data Reader" (Azure scopes data roles to a container, not a blob)."""


class GpuInstanceGroup(pulumi.ComponentResource):
    """Virtual machine scale set (Spot where asked) + identity + NSG for one service."""

    group_name: pulumi.Output[str]
    """The scale set's name; the gateway's discovery lists its instances."""
    identity_client_id: pulumi.Output[str]
    """Client ID of the replicas' user-assigned identity."""
    user_data: pulumi.Output[str]
    """The rendered cloud-init (names the secret, never holds its value)."""

    def __init__(self, name: str, args: GpuInstanceGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GPU_INSTANCE_GROUP_TYPE, name, None, opts)
        plan, cap = args.plan, args.capacity
        child = pulumi.ResourceOptions(parent=self)
        tags = {"serveform-stack": args.stack, "serveform-service": plan.name}
        rg, loc = args.resource_group, args.location
        role_of = lambda guid: pulumi.Output.from_input(args.subscription_id).apply(lambda sub: _roles.role_definition(sub, guid))  # noqa: E731

        identity = azure.managedidentity.UserAssignedIdentity(f"{name}-identity", resource_group_name=rg, location=loc, tags=tags, opts=child)
        secret_url: str | None = None
        if needs_secret_store(plan):
            secret_name = short_name("svc", plan.name, limit=127)
            secret = azure.keyvault.Secret(
                f"{name}-secret",
                resource_group_name=rg,
                vault_name=args.vault_name,
                secret_name=secret_name,
                properties={"value": pulumi.Output.secret(secret_payload(plan))},
                tags=tags,
                opts=child,
            )
            azure.authorization.RoleAssignment(
                f"{name}-secret-access", principal_id=identity.principal_id, principal_type="ServicePrincipal",
                role_definition_id=role_of(_roles.KEY_VAULT_SECRETS_USER), scope=secret.id, opts=child,
            )
            secret_url = f"https://{args.vault_host}/secrets/{secret_name}"

        code_reads: list[pulumi.Resource] = []
        if args.code_container_id is not None and args.code_url is not None:
            code_reads.append(
                azure.authorization.RoleAssignment(
                    f"{name}-code-read", principal_id=identity.principal_id, principal_type="ServicePrincipal",
                    role_definition_id=role_of(_roles.STORAGE_BLOB_DATA_READER), scope=args.code_container_id, opts=child,
                )
            )

        nsg = azure.network.NetworkSecurityGroup(
            f"{name}-firewall",
            resource_group_name=rg,
            location=loc,
            security_rules=[
                {
                    "name": "service-port-from-gateway",
                    "priority": 100,
                    "direction": "Inbound",
                    "access": "Allow",
                    "protocol": "Tcp",
                    "source_address_prefix": GATEWAY_SUBNET,
                    "source_port_range": "*",
                    "destination_address_prefix": "*",
                    "destination_port_range": str(plan.replica_group.container_port),
                },
                {
                    # Azure's default rules admit the whole virtual network; replicas admit the gateway only.
                    "name": "deny-other-inbound",
                    "priority": 4000,
                    "direction": "Inbound",
                    "access": "Deny",
                    "protocol": "*",
                    "source_address_prefix": "VirtualNetwork",
                    "source_port_range": "*",
                    "destination_address_prefix": "*",
                    "destination_port_range": "*",
                },
            ],
            tags=tags,
            opts=child,
        )

        mounts = [v for v in plan.volumes if v.kind == "network"]
        disk_ids = [args.volumes[m.names[0]] for m in mounts]
        user_data = pulumi.Output.all(identity.client_id, args.code_url, *disk_ids).apply(
            lambda xs: replica_user_data(
                ReplicaBoot(
                    plan=plan,
                    cloud="azure",
                    stack=args.stack,
                    secret=SecretRef(cloud="azure", ref=secret_url) if secret_url else None,
                    identity=xs[0],
                    volumes=tuple(
                        VolumeMount(name=m.names[0], ref=disk_id, container_path=m.path, device=str(lun))
                        for lun, (m, disk_id) in enumerate(zip(mounts, xs[2:]))
                    ),
                    code=CodeSource(url=xs[1]) if xs[1] else None,
                )
            )
        )
        spot: dict[str, object] = {}
        if cap.spot:
            spot = {
                "priority": "Spot",
                "eviction_policy": "Delete",
                # -1: pay up to the on-demand price; otherwise the service's max_price per hour.
                "billing_profile": {"max_price": cap.max_price if cap.max_price is not None else -1},
            }
        scale_set = azure.compute.VirtualMachineScaleSet(
            f"{name}-group",
            vm_scale_set_name=args.group_name,
            resource_group_name=rg,
            location=loc,
            sku={"name": cap.instance_types[0], "tier": "Standard", "capacity": args.desired},
            orchestration_mode="Uniform",
            overprovision=False,
            # Rolling upgrades need a health probe the replicas do not expose to Azure; a changed
            # model (image, boot document) reaches every instance at once, as a fresh boot.
            upgrade_policy={"mode": "Automatic"},
            identity={"type": "UserAssigned", "user_assigned_identities": [identity.id]},
            virtual_machine_profile={
                **spot,
                "os_profile": {
                    "computer_name_prefix": plan.name[:9],
                    "admin_username": ADMIN_USER,
                    "custom_data": user_data.apply(lambda text: base64.b64encode(text.encode()).decode()),
                    "linux_configuration": {
                        "disable_password_authentication": True,
                        "ssh": {"public_keys": [{"path": f"/home/{ADMIN_USER}/.ssh/authorized_keys", "key_data": args.ssh_public_key}]},
                    },
                },
                "storage_profile": {
                    "image_reference": dict(args.image or DEFAULT_IMAGE),
                    "os_disk": {
                        "create_option": "FromImage",
                        "caching": "ReadWrite",
                        "disk_size_gb": max(int(plan.replica_group.resources.disk_min_gb), 64),
                        "managed_disk": {"storage_account_type": "Premium_LRS"},
                    },
                },
                "network_profile": {
                    "network_interface_configurations": [
                        {
                            "name": "primary",
                            "primary": True,
                            "network_security_group": {"id": nsg.id},
                            "ip_configurations": [
                                {
                                    "name": "primary",
                                    "subnet": {"id": args.subnet_id},
                                    # A public address for egress (image pulls); the NSG admits the gateway only.
                                    "public_ip_address_configuration": {"name": "egress"},
                                }
                            ],
                        }
                    ]
                },
            },
            tags=tags,
            # A replica fetches its code at boot: readable before the first one starts.
            opts=child.merge(pulumi.ResourceOptions(depends_on=code_reads)),
        )
        if mounts:
            role = azure.authorization.RoleDefinition(
                f"{name}-attach-role",
                role_definition_id=_roles.custom_role_id(args.stack, args.resource_group_name, plan.name, "attach"),
                role_name=f"serveform {args.stack} {plan.name} attach ({args.resource_group_name})",
                description=f"serveform {plan.name}: attach its disks to its own scale set instances",
                scope=pulumi.Output.concat("/subscriptions/", args.subscription_id, "/resourceGroups/", args.resource_group_name),
                assignable_scopes=[pulumi.Output.concat("/subscriptions/", args.subscription_id, "/resourceGroups/", args.resource_group_name)],
                permissions=[{"actions": list(ATTACH_ACTIONS)}],
                opts=child,
            )
            for i, scope in enumerate([scale_set.id, *disk_ids]):
                azure.authorization.RoleAssignment(
                    f"{name}-attach-grant-{i}", principal_id=identity.principal_id, principal_type="ServicePrincipal",
                    role_definition_id=role.id, scope=scope, opts=child,
                )
        self.group_name = scale_set.name
        self.identity_client_id = identity.client_id
        self.user_data = user_data
        self.register_outputs({"group_name": self.group_name, "identity_client_id": self.identity_client_id})
