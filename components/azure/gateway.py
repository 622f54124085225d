"""`Gateway`: the stack's entry point on Azure — one small VM with a static public IP.

It also owns what the stack's groups share: the virtual network (a gateway subnet and a
replica subnet) and the Key Vault holding the stack's secrets. Caddy with the router, the
replica discovery timer and the scaler run as systemd units (cloud-init from
`components/templates/gateway/`). Its network security group opens 80 and 443 and nothing else;
its identity may read the scale sets and their network interfaces and set their capacity in the
stack's resource group, read the tokens' secret and, for the DNS challenge, read the DNS zone
and write its TXT records — nothing else (`ACME_DNS_ACTIONS`, a custom role assigned on the zone).

Why not one record set: Azure DNS does accept role assignments on a single record set
(`.../dnszones/<zone>/TXT/_acme-challenge`), but Caddy's Azure DNS module deletes the record
set when the challenge is done and creates it again at the next renewal; an assignment on a
deleted record set grants nothing on the new one. So the narrowest grant that survives renewals
is "TXT records of this zone": the gateway can no longer move `*.<domain>` (an A record) or
any other record type, which the built-in DNS Zone Contributor role allowed.

Its software is shipped, not downloaded: the deployment uploads the gateway's artifacts (a
wheelhouse of serveform and its pinned dependencies, the project's Caddy build, the Pulumi CLI;
`serveform.image.vm`) as blobs into a private container of a storage account of the stack — HTTPS
only, TLS 1.2 at least, no public blob access, encrypted at rest with Microsoft-managed keys — and
the user data names each by its sha256. The gateway's identity is "Storage Blob Data Reader" on
that container only; the boot fetches the blobs with its token from the instance metadata service
and checks every digest (`components/boot/azure_fetch.py`).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from dataclasses import dataclass

import pulumi
import pulumi_azure_native as azure

from serveform.image.vm import VmArtifact

from .._cloud import GatewayGroupRef, VmGatewayArgs
from .._vm import ArtifactRef, SecretRef, gateway_user_data
from . import _roles

__all__ = [
    "ACME_DNS_ACTIONS",
    "ARTIFACT_CONTAINER",
    "GATEWAY_PORTS",
    "GATEWAY_TYPE",
    "GATEWAY_SUBNET",
    "REPLICA_SUBNET",
    "Gateway",
    "GatewayArgs",
    "GatewayGroupRef",
    "artifact_account_name",
    "code_container_name",
    "relative_record_name",
    "store_code",
]

GATEWAY_TYPE = "serveform:azure:Gateway"
GATEWAY_PORTS = (80, 443)
"""The only ports open to the internet."""
VNET_RANGE = "10.42.0.0/16"
GATEWAY_SUBNET = "10.42.0.0/24"
REPLICA_SUBNET = "10.42.1.0/24"
DEFAULT_VM_SIZE = "Standard_B2s"
# Debian 12 (bookworm): the system the boot test boots for real, and the Python (3.11) the
# wheelhouse is built for (`serveform.image.vm`).
GATEWAY_IMAGE = {"publisher": "Debian", "offer": "debian-12", "sku": "12-gen2", "version": "latest"}
# The blob container of the gateway's artifacts, in the stack's storage account.
ARTIFACT_CONTAINER = "serveform-artifacts"
ADMIN_USER = "serveform"
# What the gateway's identity may do in the stack's resource group: discovery and the scaler.
GATEWAY_ACTIONS = (
    "Microsoft.Compute/virtualMachineScaleSets/read",
    "Microsoft.Compute/virtualMachineScaleSets/write",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/read",
    "Microsoft.Compute/virtualMachineScaleSets/virtualMachines/networkInterfaces/read",
    "Microsoft.Network/networkInterfaces/read",
)
# The ACME DNS challenge on the stack's zone: read the zone, change TXT record sets only.
ACME_DNS_ACTIONS = (
    "Microsoft.Network/dnszones/read",
    "Microsoft.Network/dnszones/recordsets/read",
    "Microsoft.Network/dnszones/TXT/read",
    "Microsoft.Network/dnszones/TXT/write",
    "Microsoft.Network/dnszones/TXT/delete",
)


@dataclass(frozen=True, kw_only=True)
class GatewayArgs(VmGatewayArgs):
    """Inputs of a `Gateway`: the shared `VmGatewayArgs` plus where it runs on Azure."""

    subscription_id: pulumi.Input[str]
    """The Azure subscription (from the provider's client config)."""
    tenant_id: pulumi.Input[str]
    """The Azure AD tenant, for Key Vault access."""
    resource_group: pulumi.Input[str]
    """The stack's resource group."""
    resource_group_name: str
    """The resource group's name (plain), for role scopes and discovery."""
    location: str
    """The Azure location."""
    vault_name: str
    """The stack's Key Vault (globally unique, 24 characters at most)."""
    ssh_public_key: str
    """The admin SSH key Azure requires (`serveform:azure.ssh_public_key`); no SSH port is opened."""
    vm_size: str = DEFAULT_VM_SIZE
    """The gateway VM's size (`serveform:gateway.instance_type`)."""
    dns_zone: str | None = None
    """Azure DNS zone of the domain: when set, `*.<domain>` is created there."""
    dns_resource_group: str | None = None
    """The DNS zone's resource group (default: the stack's)."""
    artifacts: tuple[VmArtifact, ...] = ()
    """What the VM runs (`serveform.image.vm.gateway_artifacts`), uploaded into the stack's container."""


class Gateway(pulumi.ComponentResource):
    """VNet + Key Vault + gateway VM with a static IP, NSG (80/443), identity, optional DNS record."""

    address: pulumi.Output[str]
    """The static public IPv4 address; point `*.<domain>` here when no zone is configured."""
    replica_subnet_id: pulumi.Output[str]
    """The subnet the scale sets join."""
    vault_id: pulumi.Output[str]
    """The stack's Key Vault."""
    vault_name: pulumi.Output[str]
    """The stack's Key Vault name."""
    dns_name: pulumi.Output[str | None]
    """`*.<domain>` when the record was created."""
    user_data: pulumi.Output[str]
    """The rendered cloud-init (names secrets, never holds their values)."""
    artifact_container_url: pulumi.Output[str]
    """The private blob container of the VM's artifacts."""

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GATEWAY_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {"serveform-stack": args.stack, "serveform-role": "gateway"}
        rg, loc = args.resource_group, args.location

        vnet = azure.network.VirtualNetwork(
            f"{name}-network", resource_group_name=rg, location=loc, address_space={"address_prefixes": [VNET_RANGE]},
            tags=tags, opts=child.merge(pulumi.ResourceOptions(ignore_changes=["subnets"])),
        )
        nsg = azure.network.NetworkSecurityGroup(
            f"{name}-firewall",
            resource_group_name=rg,
            location=loc,
            security_rules=[
                {
                    "name": f"allow-{port}",
                    "priority": 100 + i,
                    "direction": "Inbound",
                    "access": "Allow",
                    "protocol": "Tcp",
                    "source_address_prefix": "*",
                    "source_port_range": "*",
                    "destination_address_prefix": "*",
                    "destination_port_range": str(port),
                }
                for i, port in enumerate(GATEWAY_PORTS)
            ],
            tags=tags,
            opts=child,
        )
        gateway_subnet = azure.network.Subnet(
            f"{name}-subnet", resource_group_name=rg, virtual_network_name=vnet.name, address_prefix=GATEWAY_SUBNET,
            network_security_group={"id": nsg.id}, opts=child,
        )
        replica_subnet = azure.network.Subnet(
            f"{name}-replica-subnet", resource_group_name=rg, virtual_network_name=vnet.name, address_prefix=REPLICA_SUBNET,
            opts=child.merge(pulumi.ResourceOptions(depends_on=[gateway_subnet])),
        )
        vault = azure.keyvault.Vault(
            f"{name}-vault",
            vault_name=args.vault_name,
            resource_group_name=rg,
            location=loc,
            properties={
                "tenant_id": args.tenant_id,
                "sku": {"family": "A", "name": "standard"},
                "enable_rbac_authorization": True,
                "enable_soft_delete": True,
                "soft_delete_retention_in_days": 7,
            },
            tags=tags,
            opts=child,
        )
        identity = azure.managedidentity.UserAssignedIdentity(
            f"{name}-identity", resource_group_name=rg, location=loc, tags=tags, opts=child
        )
        role_id = _roles.custom_role_id(args.stack, args.resource_group_name, "gateway")
        scope = pulumi.Output.concat("/subscriptions/", args.subscription_id, "/resourceGroups/", args.resource_group_name)
        role = azure.authorization.RoleDefinition(
            f"{name}-role",
            role_definition_id=role_id,
            role_name=f"serveform gateway {args.stack} ({args.resource_group_name})",
            description="serveform gateway: discover replicas, set scale set capacity",
            scope=scope,
            assignable_scopes=[scope],
            permissions=[{"actions": list(GATEWAY_ACTIONS)}],
            opts=child,
        )
        azure.authorization.RoleAssignment(
            f"{name}-grant", principal_id=identity.principal_id, principal_type="ServicePrincipal",
            role_definition_id=role.id, scope=scope, opts=child,
        )
        def stored_secret(role: str, secret_name: str, value: pulumi.Input[str]) -> str:
            """A Key Vault secret (`<name>-<role>`) holding ``value``, readable by the identity only; its URL."""
            secret = azure.keyvault.Secret(
                f"{name}-{role}",
                resource_group_name=rg,
                vault_name=vault.name,
                secret_name=secret_name,
                properties={"value": pulumi.Output.secret(value)},
                opts=child,
            )
            azure.authorization.RoleAssignment(
                f"{name}-{role}-access", principal_id=identity.principal_id, principal_type="ServicePrincipal",
                role_definition_id=pulumi.Output.from_input(args.subscription_id).apply(
                    lambda sub: _roles.role_definition(sub, _roles.KEY_VAULT_SECRETS_USER)
                ),
                scope=secret.id, opts=child,
            )
            return f"https://{args.vault_name}.vault.azure.net/secrets/{secret_name}"

        secret_url = stored_secret("tokens", "gateway-tokens", args.tokens) if args.tokens is not None else None
        scaler_env = args.scaler_env()
        scaler_env_url = stored_secret("scaler-env", "scaler-env", scaler_env) if scaler_env is not None else None
        if args.dns_zone and args.dns_provider == "azure":
            dns_group = args.dns_resource_group or args.resource_group_name
            zone_scope = pulumi.Output.concat(
                "/subscriptions/", args.subscription_id, "/resourceGroups/", dns_group,
                "/providers/Microsoft.Network/dnszones/", args.dns_zone,
            )
            dns_role = azure.authorization.RoleDefinition(
                f"{name}-dns-role",
                role_definition_id=_roles.custom_role_id(args.stack, dns_group, args.dns_zone, "acme-dns"),
                role_name=f"serveform ACME DNS {args.stack} ({args.dns_zone})",
                description="serveform gateway: answer the ACME DNS challenge with TXT records only",
                scope=zone_scope,
                assignable_scopes=[zone_scope],
                permissions=[{"actions": list(ACME_DNS_ACTIONS)}],
                opts=child,
            )
            azure.authorization.RoleAssignment(
                f"{name}-dns-access", principal_id=identity.principal_id, principal_type="ServicePrincipal",
                role_definition_id=dns_role.id, scope=zone_scope, opts=child,
            )

        address = azure.network.PublicIPAddress(
            f"{name}-address", resource_group_name=rg, location=loc, public_ip_allocation_method="Static",
            sku={"name": "Standard"}, tags=tags, opts=child,
        )
        nic = azure.network.NetworkInterface(
            f"{name}-nic",
            resource_group_name=rg,
            location=loc,
            ip_configurations=[
                {"name": "primary", "subnet": {"id": gateway_subnet.id}, "public_ip_address": {"id": address.id}, "primary": True}
            ],
            network_security_group={"id": nsg.id},
            tags=tags,
            opts=child,
        )
        # The artifacts' store: a storage account of the stack, HTTPS and TLS 1.2 only, no public
        # blobs; a private container; the gateway's identity reads that container and nothing else.
        account_name = artifact_account_name(args.stack, args.resource_group_name, args.location)
        account = azure.storage.StorageAccount(
            f"{name}-store",
            account_name=account_name,
            resource_group_name=rg,
            location=loc,
            kind="StorageV2",
            sku={"name": "Standard_LRS"},
            enable_https_traffic_only=True,
            minimum_tls_version="TLS1_2",
            allow_blob_public_access=False,
            tags=tags,
            opts=child,
        )
        container = azure.storage.BlobContainer(
            f"{name}-artifacts",
            account_name=account.name,
            resource_group_name=rg,
            container_name=ARTIFACT_CONTAINER,
            public_access="None",
            opts=child,
        )
        blobs = [
            azure.storage.Blob(
                f"{name}-artifact-{artifact.name}",
                account_name=account.name,
                container_name=container.name,
                resource_group_name=rg,
                blob_name=artifact.key,
                type="Block",
                content_type="application/octet-stream",
                # A scale update on the VM has no file (it keeps what it booted from): the name is
                # the digest, so the bytes under it never change, and the source is not compared.
                source=pulumi.FileAsset(str(artifact.path)) if artifact.path else pulumi.StringAsset(""),
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=["source"]),
            )
            for artifact in args.artifacts
        ]
        refs = tuple(ArtifactRef(name=a.name, sha256=a.sha256, key=a.key) for a in args.artifacts)
        reads = [
            azure.authorization.RoleAssignment(
                f"{name}-artifacts-read", principal_id=identity.principal_id, principal_type="ServicePrincipal",
                role_definition_id=pulumi.Output.from_input(args.subscription_id).apply(
                    lambda sub: _roles.role_definition(sub, _roles.STORAGE_BLOB_DATA_READER)
                ),
                scope=container.id, opts=child,
            )
        ] if refs else []
        container_url = f"https://{account_name}.blob.core.windows.net/{ARTIFACT_CONTAINER}"

        targets = args.targets("azure", resource_group=args.resource_group_name)
        def boot(ids: list[str]) -> str:
            common = args.boot(
                "azure",
                targets,
                tokens_secret=SecretRef(cloud="azure", ref=secret_url) if secret_url else None,
                scaler_env_secret=SecretRef(cloud="azure", ref=scaler_env_url) if scaler_env_url else None,
                identity=ids[0],
                # The managed identity is the credential: the DNS module gets IDs only.
                dns_options=(
                    {
                        "client_id": ids[0],
                        "subscription_id": ids[1],
                        "tenant_id": ids[2],
                        "resource_group_name": args.dns_resource_group or args.resource_group_name,
                    }
                    if args.dns_provider == "azure"
                    else {}
                ),
            )
            return gateway_user_data(dataclasses.replace(common, artifacts=refs, artifact_bucket=container_url if refs else None))

        user_data = pulumi.Output.all(identity.client_id, args.subscription_id, args.tenant_id).apply(boot)
        azure.compute.VirtualMachine(
            f"{name}-vm",
            resource_group_name=rg,
            location=loc,
            hardware_profile={"vm_size": args.vm_size},
            identity={"type": "UserAssigned", "user_assigned_identities": [identity.id]},
            network_profile={"network_interfaces": [{"id": nic.id, "primary": True}]},
            os_profile={
                "computer_name": "serveform-gateway",
                "admin_username": ADMIN_USER,
                "custom_data": user_data.apply(lambda text: base64.b64encode(text.encode()).decode()),
                "linux_configuration": {
                    "disable_password_authentication": True,
                    "ssh": {"public_keys": [{"path": f"/home/{ADMIN_USER}/.ssh/authorized_keys", "key_data": args.ssh_public_key}]},
                },
            },
            storage_profile={
                "image_reference": GATEWAY_IMAGE,
                "os_disk": {"create_option": "FromImage", "managed_disk": {"storage_account_type": "StandardSSD_LRS"}, "delete_option": "Delete"},
            },
            tags=tags,
            # custom_data is read at first boot only: a changed boot document replaces the VM. The
            # boot fetches the artifacts: they are in the container, and readable, before the VM exists.
            opts=child.merge(pulumi.ResourceOptions(replace_on_changes=["osProfile.customData"], depends_on=[*blobs, *reads])),
        )
        dns_name: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        if args.dns_zone:
            relative = relative_record_name(args.domain, args.dns_zone)
            record = azure.dns.RecordSet(
                f"{name}-dns",
                resource_group_name=args.dns_resource_group or args.resource_group_name,
                zone_name=args.dns_zone,
                relative_record_set_name=relative,
                record_type="A",
                ttl=300,
                a_records=[{"ipv4_address": address.ip_address}],
                opts=child,
            )
            dns_name = record.fqdn
        self.address = address.ip_address.apply(lambda ip: ip or "")
        self.replica_subnet_id = replica_subnet.id
        self.vault_id = vault.id
        self.vault_name = vault.name
        self.dns_name = dns_name
        self.user_data = user_data
        self.artifact_container_url = pulumi.Output.from_input(container_url)
        self._account = account
        self._account_name = account_name
        self._resource_group = rg
        self.register_outputs(
            {
                "address": self.address,
                "replica_subnet_id": self.replica_subnet_id,
                "vault_id": self.vault_id,
                "dns_name": self.dns_name,
                "artifact_container_url": self.artifact_container_url,
            }
        )


def code_container_name(service: str) -> str:
    """The container of one service's code archives: its own, so that a role scoped to it reads nothing else.

    A container name has no two hyphens in a row (a service's DNS label may): those are folded, and
    a hash of the service keeps two such services apart.
    """
    folded = re.sub(r"-{2,}", "-", service)
    suffix = "" if folded == service else "-" + hashlib.sha256(service.encode()).hexdigest()[:6]
    return f"code-{folded}{suffix}"


def store_code(gateway: Gateway, name: str, service: str, key: str, source: pulumi.Asset) -> tuple[pulumi.Output[str], pulumi.Output[str]]:
    """Upload a service's code archive into its own private container of the gateway's storage
    account, as the gateway's children; the blob's URL and the container's ID (for the replicas' grant).

    The key is the archive's digest, so its bytes never change under it: a scale update (which
    rebuilds the stack without the deploying machine's archive file) ignores the source.
    """
    container = azure.storage.BlobContainer(
        f"{name}-container",
        account_name=gateway._account.name,
        resource_group_name=gateway._resource_group,
        container_name=code_container_name(service),
        public_access="None",
        opts=pulumi.ResourceOptions(parent=gateway),
    )
    blob = azure.storage.Blob(
        name,
        account_name=gateway._account.name,
        container_name=container.name,
        resource_group_name=gateway._resource_group,
        blob_name=key,
        type="Block",
        content_type="application/gzip",
        source=source,
        opts=pulumi.ResourceOptions(parent=gateway, ignore_changes=["source"]),
    )
    url = blob.name.apply(lambda _: f"https://{gateway._account_name}.blob.core.windows.net/{code_container_name(service)}/{key}")
    return url, container.id


def artifact_account_name(stack: str, resource_group: str, location: str) -> str:
    """The stack's storage account: globally unique, 3–24 lower-case letters and digits, stable for the stack."""
    return "sf" + hashlib.sha256(f"{stack}/{resource_group}/{location}".encode()).hexdigest()[:22]


def relative_record_name(domain: str, zone: str) -> str:
    """`*.<domain>` relative to the zone: `*` at the apex, `*.svc` for `svc.<zone>`."""
    if domain == zone:
        return "*"
    if not domain.endswith("." + zone):
        raise ValueError(f"domain {domain!r} is not inside DNS zone {zone!r}")
    return "*." + domain[: -len(zone) - 1]
