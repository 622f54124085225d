"""`Gateway`: the stack's entry point on GCP — one small VM with a static external address.

Caddy with the OpenAI-compatible router, the replica discovery timer and the scaler run as
systemd units (cloud-init from `components/templates/gateway/`). A firewall rule opens 80 and
443 to the gateway's service account only. That account holds three grants, each as narrow as
GCP allows:

- `gateway-role`, project-wide but read-only: list and get instances, groups and operations
  (list calls are checked against the project, so a name condition cannot narrow them);
- `gateway-scale-role`, bound with an IAM condition naming the stack's own managed instance
  groups (`resource.name == "projects/P/zones/Z/instanceGroupManagers/serveform-<stack>-<svc>"`):
  the only write it may make is resizing those;
- for the DNS challenge, `gateway-dns-role` bound on the stack's Cloud DNS managed zone only
  (zone-level IAM), plus `dns.managedZones.list` in the read-only role (Caddy finds the zone by
  listing). Cloud DNS has no per-record-set condition, so the `_acme-challenge` TXT records
  cannot be singled out here.

It also reads the bearer tokens' secret. With a zone configured, `*.<domain>` points at the
address; otherwise the address is exported for the user's DNS.

Its software is shipped, not downloaded: the deployment uploads the gateway's artifacts (a
wheelhouse of serveform and its pinned dependencies, the project's Caddy build, the Pulumi CLI;
`serveform.image.vm`) into a Cloud Storage bucket of the stack — uniform bucket-level access,
public access prevention enforced, Google-managed encryption at rest — and the user data names
each by its sha256. The service account may view exactly those objects (an IAM condition on
their names); the boot fetches them with its token from the metadata server and checks every
digest (`components/boot/gcp_fetch.py`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from serveform.image.vm import VmArtifact

from .._cloud import GatewayGroupRef, VmGatewayArgs
from .._vm import ArtifactRef, SecretRef, gateway_user_data, short_name

__all__ = [
    "GATEWAY_PORTS",
    "GATEWAY_TYPE",
    "Gateway",
    "GatewayArgs",
    "GatewayGroupRef",
    "artifact_read_condition",
    "code_media_url",
    "gateway_dns_permissions",
    "gateway_permissions",
    "gateway_scale_condition",
    "gateway_scale_permissions",
    "store_code",
]

GATEWAY_TYPE = "serveform:gcp:Gateway"
GATEWAY_PORTS = (80, 443)
"""The only ports open to the internet."""
DEFAULT_MACHINE_TYPE = "e2-small"
# Debian 12 (bookworm): the system the boot test boots for real, and the Python (3.11) the
# wheelhouse is built for (`serveform.image.vm`).
GATEWAY_IMAGE = "debian-cloud/debian-12"
ROOT_DISK_GB = 20


@dataclass(frozen=True, kw_only=True)
class GatewayArgs(VmGatewayArgs):
    """Inputs of a `Gateway`: the shared `VmGatewayArgs` plus where it runs on GCP."""

    project: str
    """The GCP project."""
    region: str
    """The GCP region (of the static address)."""
    zone: str
    """The GCP zone of the VMs."""
    network: pulumi.Input[str]
    """The VPC network (the stack's own unless `serveform:gcp.network` names one)."""
    subnetwork: pulumi.Input[str] | None = None
    """The subnet of `network` (None: GCP picks the network's subnet in the region)."""
    machine_type: str = DEFAULT_MACHINE_TYPE
    """The gateway VM's machine type (`serveform:gateway.instance_type`)."""
    dns_zone: str | None = None
    """Cloud DNS managed zone of the domain: when set, `*.<domain>` is created there."""
    artifacts: tuple[VmArtifact, ...] = ()
    """What the VM runs (`serveform.image.vm.gateway_artifacts`), uploaded into the stack's bucket."""


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
    artifact_bucket: pulumi.Output[str]
    """The stack's private bucket of the VM's artifacts."""

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
        if args.groups:
            scale_role = gcp.projects.IAMCustomRole(
                f"{name}-scale-role",
                project=args.project,
                role_id=short_name("sf", args.stack, "gateway", "scale", limit=64).replace("-", "_"),
                title=f"serveform gateway scaling ({args.stack})",
                permissions=gateway_scale_permissions(),
                opts=child,
            )
            gcp.projects.IAMMember(
                f"{name}-scale-grant",
                project=args.project,
                role=scale_role.name,
                member=account.member,
                condition={
                    "title": "own-instance-groups",
                    "description": f"the managed instance groups of serveform stack {args.stack}",
                    "expression": gateway_scale_condition(args.project, args.zone, [g.group_name for g in args.groups.values()]),
                },
                opts=child,
            )
        if zone_for_acme is not None:
            dns_role = gcp.projects.IAMCustomRole(
                f"{name}-dns-role",
                project=args.project,
                role_id=short_name("sf", args.stack, "gateway", "dns", limit=64).replace("-", "_"),
                title=f"serveform gateway ACME DNS ({args.stack})",
                permissions=gateway_dns_permissions(),
                opts=child,
            )
            gcp.dns.DnsManagedZoneIamMember(
                f"{name}-dns-grant",
                project=args.project,
                managed_zone=zone_for_acme,
                role=dns_role.name,
                member=account.member,
                opts=child,
            )
        def stored_secret(role: str, secret_id: str, value: pulumi.Input[str]) -> pulumi.Output[str]:
            """A Secret Manager secret (`<name>-<role>`) holding ``value``, readable by the account only."""
            secret = gcp.secretmanager.Secret(
                f"{name}-{role}",
                secret_id=short_name("serveform", args.stack, secret_id, limit=255),
                project=args.project,
                replication={"auto": {}},
                labels=labels,
                opts=child,
            )
            gcp.secretmanager.SecretVersion(
                f"{name}-{role}-value", secret=secret.id, secret_data=pulumi.Output.secret(value), opts=child
            )
            gcp.secretmanager.SecretIamMember(
                f"{name}-{role}-access",
                secret_id=secret.id,
                project=args.project,
                role="roles/secretmanager.secretAccessor",
                member=account.member,
                opts=child,
            )
            return secret.name

        secret_name = stored_secret("tokens", "gateway-tokens", args.tokens) if args.tokens is not None else None
        scaler_env = args.scaler_env()
        scaler_env_name = stored_secret("scaler-env", "scaler-env", scaler_env) if scaler_env is not None else None

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
        # The artifacts' bucket: no ACLs (uniform access), never public, encrypted at rest by Google.
        bucket = gcp.storage.Bucket(
            f"{name}-artifacts",
            project=args.project,
            location=args.region.upper(),
            uniform_bucket_level_access=True,
            public_access_prevention="enforced",
            force_destroy=True,
            labels=labels,
            opts=child,
        )
        objects = [
            gcp.storage.BucketObject(
                f"{name}-artifact-{artifact.name}",
                bucket=bucket.name,
                name=artifact.key,
                # A scale update on the VM has no file (it keeps what it booted from): the name is
                # the digest, so the bytes under it never change, and the source is not compared.
                source=pulumi.FileAsset(str(artifact.path)) if artifact.path else pulumi.StringAsset(""),
                content_type="application/octet-stream",
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=["source"]),
            )
            for artifact in args.artifacts
        ]
        refs = tuple(ArtifactRef(name=a.name, sha256=a.sha256, key=a.key) for a in args.artifacts)
        grants: list[pulumi.Resource] = []
        if refs:
            grants.append(
                gcp.storage.BucketIAMMember(
                    f"{name}-artifacts-read",
                    bucket=bucket.name,
                    role="roles/storage.objectViewer",
                    member=account.member,
                    condition=bucket.name.apply(
                        lambda b: {
                            "title": "gateway-artifacts",
                            "description": "the gateway VM's artifacts, by name",
                            "expression": artifact_read_condition(b, [r.key for r in refs]),
                        }
                    ),
                    opts=child,
                )
            )

        targets = args.targets("gcp", region=args.zone, project=args.project)
        user_data = pulumi.Output.all(secret_name, scaler_env_name, bucket.name).apply(
            lambda refs_: gateway_user_data(
                dataclasses.replace(
                    args.boot(
                        "gcp",
                        targets,
                        tokens_secret=SecretRef(cloud="gcp", ref=refs_[0]) if refs_[0] else None,
                        scaler_env_secret=SecretRef(cloud="gcp", ref=refs_[1]) if refs_[1] else None,
                        dns_options={"gcp_project": args.project} if args.dns_provider == "googleclouddns" else {},
                    ),
                    artifacts=refs,
                    artifact_bucket=refs_[2] if refs else None,
                )
            )
        )
        vm = gcp.compute.Instance(
            f"{name}-vm",
            project=args.project,
            zone=args.zone,
            machine_type=args.machine_type,
            boot_disk={"initialize_params": {"image": GATEWAY_IMAGE, "size": ROOT_DISK_GB, "type": "pd-balanced"}},
            network_interfaces=[
                {"network": args.network, "subnetwork": args.subnetwork, "access_configs": [{"nat_ip": address.address}]}
            ],
            service_account={"email": account.email, "scopes": ["cloud-platform"]},
            # A changed boot document replaces the VM (metadata_startup_script semantics); the
            # static address moves with it.
            metadata={"user-data": user_data, "enable-oslogin": "TRUE"},
            allow_stopping_for_update=True,
            labels=labels,
            # The boot fetches the artifacts: they are in the bucket, and readable, before the VM exists.
            opts=child.merge(pulumi.ResourceOptions(replace_on_changes=["metadata"], depends_on=[*objects, *grants])),
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
        self.artifact_bucket = bucket.name
        self._bucket = bucket
        self.register_outputs(
            {
                "address": self.address,
                "service_account": self.service_account,
                "instance_name": self.instance_name,
                "dns_name": self.dns_name,
                "artifact_bucket": self.artifact_bucket,
            }
        )


def store_code(gateway: Gateway, name: str, key: str, source: pulumi.Asset) -> pulumi.Output[str]:
    """Upload a service's code archive into the gateway's artifact bucket, as the gateway's child; its media URL.

    The key is the archive's digest, so its bytes never change under it: a scale update (which
    rebuilds the stack without the deploying machine's archive file) ignores the source.
    """
    obj = gcp.storage.BucketObject(
        name,
        bucket=gateway._bucket.name,
        name=key,
        source=source,
        content_type="application/gzip",
        opts=pulumi.ResourceOptions(parent=gateway, ignore_changes=["source"]),
    )
    return pulumi.Output.all(obj.bucket, obj.name).apply(lambda v: code_media_url(v[0], v[1]))


def code_media_url(bucket: str, name: str) -> str:
    """The Cloud Storage JSON API's media URL of an object (its name fully escaped), as replicas fetch it."""
    import urllib.parse

    return f"https://storage.googleapis.com/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"


def artifact_read_condition(bucket: str, names: list[str]) -> str:
    """An IAM condition (CEL) true only for the named objects of the bucket, by full resource name."""
    full = [f"projects/_/buckets/{bucket}/objects/{name}" for name in sorted(names)]
    return " || ".join(f'resource.name == "{n}"' for n in full)


def gateway_permissions(*, acme_dns: bool) -> list[str]:
    """The gateway's project-wide custom role: read only (list replicas, read groups and operations)."""
    permissions = [
        "compute.instances.list",
        "compute.instances.get",
        "compute.instanceGroupManagers.get",
        "compute.instanceGroups.get",
        "compute.zoneOperations.get",
    ]
    if acme_dns:
        permissions.append("dns.managedZones.list")  # Caddy's Cloud DNS module finds the zone by listing
    return permissions


def gateway_scale_permissions() -> list[str]:
    """Resize a managed instance group: granted under `gateway_scale_condition` only."""
    return ["compute.instanceGroupManagers.get", "compute.instanceGroupManagers.update"]


def gateway_scale_condition(project: str, zone: str, groups: list[str]) -> str:
    """An IAM condition (CEL) true only for the stack's own managed instance groups, by full name."""
    names = [f"projects/{project}/zones/{zone}/instanceGroupManagers/{group}" for group in sorted(groups)]
    by_name = " || ".join(f'resource.name == "{n}"' for n in names)
    return f'resource.type == "compute.googleapis.com/InstanceGroupManager" && ({by_name})'


def gateway_dns_permissions() -> list[str]:
    """Answer the ACME DNS challenge: granted on the stack's managed zone only."""
    return [
        "dns.changes.create",
        "dns.changes.get",
        "dns.managedZones.get",
        "dns.resourceRecordSets.create",
        "dns.resourceRecordSets.delete",
        "dns.resourceRecordSets.list",
        "dns.resourceRecordSets.update",
    ]
