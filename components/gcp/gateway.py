"""`Gateway`: the stack's entry point on GCP — one small VM with a static external address.

Caddy with the OpenAI-compatible router, the replica discovery timer and the scaler run as
systemd units (cloud-init from `components/templates/gateway/`). A firewall rule opens 80 and
443 to the gateway's service account only; that account may list instances and resize the
stack's groups, read the bearer tokens' secret and, for the DNS challenge, change records in
the stack's Cloud DNS zone. With a zone configured, `*.<domain>` points at the address;
otherwise the address is exported for the user's DNS.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from .._vm import DiscoveryTarget, GatewayBoot, SecretRef, gateway_user_data, scaler_env_document, short_name

__all__ = ["GATEWAY_PORTS", "GATEWAY_TYPE", "Gateway", "GatewayArgs", "GatewayGroupRef", "gateway_permissions"]

GATEWAY_TYPE = "serveform:gcp:Gateway"
GATEWAY_PORTS = (80, 443)
"""The only ports open to the internet."""
DEFAULT_MACHINE_TYPE = "e2-small"
GATEWAY_IMAGE = "ubuntu-os-cloud/ubuntu-2404-lts-amd64"
ROOT_DISK_GB = 20


@dataclass(frozen=True, kw_only=True)
class GatewayGroupRef:
    """One service's group as the gateway discovers and scales it."""

    group_name: str
    """The group's (fixed) name."""
    port: int
    """The service port on each replica."""


@dataclass(frozen=True, kw_only=True)
class GatewayArgs:
    """Inputs of a `Gateway`."""

    stack: str
    """The stack name, for tags and names."""
    domain: str
    """Services answer at `<service>.<domain>`; the DNS record is `*.<domain>`."""
    project: str
    """The GCP project."""
    region: str
    """The GCP region (of the static address)."""
    zone: str
    """The GCP zone of the VMs."""
    network: str
    """The VPC network."""
    gateway_document: dict[str, object]
    """`gateway.json` of the gateway host (settings and plans, no secrets), from `_cloud.gateway_document`."""
    groups: Mapping[str, GatewayGroupRef]
    """Service name → its group."""
    tokens: pulumi.Input[str] | None = None
    """The bearer tokens as a JSON list: a Pulumi secret, stored in Secret Manager."""
    machine_type: str = DEFAULT_MACHINE_TYPE
    """The gateway VM's machine type (`serveform:gateway.instance_type`)."""
    dns_zone: str | None = None
    """Cloud DNS managed zone of the domain: when set, `*.<domain>` is created there."""
    dns_provider: str | None = None
    """The ACME DNS provider (`serveform:gateway.dns_provider`)."""
    package_spec: str = "serveform"
    """What the gateway host installs with pip."""
    scaler_unit: str | None = None
    """The scaler's systemd unit, when a service autoscales."""
    project_files: dict[str, str] = field(default_factory=dict)
    """Project files the scaler on the host needs (`_cloud.project_files`)."""
    scaler_environment: Mapping[str, str] | None = None
    """The scaler's environment (state backend URL, passphrase), stored in Secret Manager and fetched
    at boot into /etc/serveform/scaler.env; None: taken from the deploying environment."""


class Gateway(pulumi.ComponentResource):
    """Gateway VM, static address, firewall (80/443), service account with a custom role, optional DNS record."""

    address: pulumi.Output[str]
    """The static external IPv4 address."""
    service_account: pulumi.Output[str]
    """The gateway's service account e-mail; replicas admit their port from it only."""
    instance_name: pulumi.Output[str]
    """The gateway VM's name."""
    dns_name: pulumi.Output[str | None]
    """`*.<domain>` when the record was created."""
    user_data: pulumi.Output[str]
    """The rendered cloud-init (names secrets, never holds their values)."""

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GATEWAY_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        labels = {"serveform-stack": args.stack, "serveform-role": "gateway"}

        account = gcp.serviceaccount.Account(
            f"{name}-identity",
            account_id=short_name("sf", args.stack, "gateway", limit=30),
            display_name=f"serveform gateway ({args.stack})",
            project=args.project,
            opts=child,
        )
        zone_for_acme = args.dns_zone if args.dns_provider == "googleclouddns" else None
        role = gcp.projects.IAMCustomRole(
            f"{name}-role",
            project=args.project,
            role_id=short_name("sf", args.stack, "gateway", limit=64).replace("-", "_"),
            title=f"serveform gateway ({args.stack})",
            permissions=gateway_permissions(acme_dns=zone_for_acme is not None),
            opts=child,
        )
        gcp.projects.IAMMember(
            f"{name}-grant",
            project=args.project,
            role=role.name,
            member=account.member,
            opts=child,
        )
        secret_name: pulumi.Output[str] | None = None
        if args.tokens is not None:
            secret = gcp.secretmanager.Secret(
                f"{name}-tokens",
                secret_id=short_name("serveform", args.stack, "gateway-tokens", limit=255),
                project=args.project,
                replication={"auto": {}},
                labels=labels,
                opts=child,
            )
            gcp.secretmanager.SecretVersion(
                f"{name}-tokens-value", secret=secret.id, secret_data=pulumi.Output.secret(args.tokens), opts=child
            )
            gcp.secretmanager.SecretIamMember(
                f"{name}-tokens-access",
                secret_id=secret.id,
                project=args.project,
                role="roles/secretmanager.secretAccessor",
                member=account.member,
                opts=child,
            )
            secret_name = secret.name
        scaler_env_name: pulumi.Output[str] | None = None
        scaler_env = scaler_env_document(args.scaler_unit, args.scaler_environment)
        if scaler_env is not None:
            env_secret = gcp.secretmanager.Secret(
                f"{name}-scaler-env",
                secret_id=short_name("serveform", args.stack, "scaler-env", limit=255),
                project=args.project,
                replication={"auto": {}},
                labels=labels,
                opts=child,
            )
            gcp.secretmanager.SecretVersion(
                f"{name}-scaler-env-value", secret=env_secret.id, secret_data=pulumi.Output.secret(scaler_env), opts=child
            )
            gcp.secretmanager.SecretIamMember(
                f"{name}-scaler-env-access",
                secret_id=env_secret.id,
                project=args.project,
                role="roles/secretmanager.secretAccessor",
                member=account.member,
                opts=child,
            )
            scaler_env_name = env_secret.name

        gcp.compute.Firewall(
            f"{name}-firewall",
            project=args.project,
            network=args.network,
            direction="INGRESS",
            allows=[{"protocol": "tcp", "ports": [str(p) for p in GATEWAY_PORTS]}],
            source_ranges=["0.0.0.0/0"],
            target_service_accounts=[account.email],
            description="serveform gateway: HTTP and HTTPS only",
            opts=child,
        )
        address = gcp.compute.Address(
            f"{name}-address", project=args.project, region=args.region, address_type="EXTERNAL", labels=labels, opts=child
        )
        targets = tuple(
            DiscoveryTarget(service=s, port=g.port, cloud="gcp", group=g.group_name, region=args.zone, project=args.project)
            for s, g in sorted(args.groups.items())
        )
        user_data = pulumi.Output.all(secret_name, scaler_env_name).apply(
            lambda refs: gateway_user_data(
                GatewayBoot(
                    cloud="gcp",
                    stack=args.stack,
                    domain=args.domain,
                    gateway_document=args.gateway_document,
                    targets=targets,
                    tokens_secret=SecretRef(cloud="gcp", ref=refs[0]) if refs[0] else None,
                    scaler_env_secret=SecretRef(cloud="gcp", ref=refs[1]) if refs[1] else None,
                    dns_provider=args.dns_provider,
                    package_spec=args.package_spec,
                    scaler_unit=args.scaler_unit,
                    project_files=args.project_files,
                    dns_options={"gcp_project": args.project} if args.dns_provider == "googleclouddns" else {},
                )
            )
        )
        vm = gcp.compute.Instance(
            f"{name}-vm",
            project=args.project,
            zone=args.zone,
            machine_type=args.machine_type,
            boot_disk={"initialize_params": {"image": GATEWAY_IMAGE, "size": ROOT_DISK_GB, "type": "pd-balanced"}},
            network_interfaces=[{"network": args.network, "access_configs": [{"nat_ip": address.address}]}],
            service_account={"email": account.email, "scopes": ["cloud-platform"]},
            # A changed boot document replaces the VM (metadata_startup_script semantics); the
            # static address moves with it.
            metadata={"user-data": user_data, "enable-oslogin": "TRUE"},
            allow_stopping_for_update=True,
            labels=labels,
            opts=child.merge(pulumi.ResourceOptions(replace_on_changes=["metadata"])),
        )
        dns_name: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        if args.dns_zone:
            record = gcp.dns.RecordSet(
                f"{name}-dns",
                project=args.project,
                managed_zone=args.dns_zone,
                name=f"*.{args.domain}.",
                type="A",
                ttl=300,
                rrdatas=[address.address],
                opts=child,
            )
            dns_name = record.name
        self.address = address.address
        self.service_account = account.email
        self.instance_name = vm.name
        self.dns_name = dns_name
        self.user_data = user_data
        self.register_outputs(
            {"address": self.address, "service_account": self.service_account, "instance_name": self.instance_name, "dns_name": self.dns_name}
        )


def gateway_permissions(*, acme_dns: bool) -> list[str]:
    """The gateway's custom role: list replicas, resize groups, (answer the DNS challenge)."""
    permissions = [
        "compute.instances.list",
        "compute.instances.get",
        "compute.instanceGroupManagers.get",
        "compute.instanceGroupManagers.update",
        "compute.instanceGroups.get",
        "compute.zoneOperations.get",
    ]
    if acme_dns:
        permissions += [
            "dns.changes.create",
            "dns.changes.get",
            "dns.managedZones.list",
            "dns.resourceRecordSets.create",
            "dns.resourceRecordSets.delete",
            "dns.resourceRecordSets.list",
            "dns.resourceRecordSets.update",
        ]
    return permissions
