"""`GpuInstanceGroup`: the replicas of one service as a GCP managed instance group.

An instance template carries the machine type, the guest accelerators (GPUs), the boot image,
`on_host_maintenance: TERMINATE` (GPU instances cannot live-migrate) and spot provisioning where
the plan asks; a zonal managed instance group keeps `desired` instances of it. The replicas run
as their own service account, which may read the service's secret and attach its disks; a
firewall rule admits the service port from the gateway's service account only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import pulumi
import pulumi_gcp as gcp

from serveform.translator.plan import ServicePlan

from .._cloud import code_object_key
from .._vm import Capacity, CodeSource, ReplicaBoot, SecretRef, VmConfigError, VolumeMount, needs_secret_store, replica_user_data, secret_payload, short_name
from .gateway import artifact_read_condition

__all__ = ["GPU_INSTANCE_GROUP_TYPE", "GpuInstanceGroup", "GpuInstanceGroupArgs", "accelerator_type", "disk_name", "group_name"]

GPU_INSTANCE_GROUP_TYPE = "serveform:gcp:GpuInstanceGroup"

# gpuhunt's GPU names → Compute Engine accelerator types.
_ACCELERATORS = {
    "T4": "nvidia-tesla-t4",
    "P4": "nvidia-tesla-p4",
    "P100": "nvidia-tesla-p100",
    "V100": "nvidia-tesla-v100",
    "K80": "nvidia-tesla-k80",
    "L4": "nvidia-l4",
    "A100": "nvidia-tesla-a100",
    "A100-80GB": "nvidia-a100-80gb",
    "H100": "nvidia-h100-80gb",
    "H100-MEGA": "nvidia-h100-mega-80gb",
    "H200": "nvidia-h200-141gb",
    "B200": "nvidia-b200",
}


def accelerator_type(gpu_name: str, gpu_memory_gb: float | None = None) -> str:
    """The accelerator type of a GPU name; an A100 with 80 GB is its own type."""
    key = gpu_name.upper()
    if key == "A100" and gpu_memory_gb and gpu_memory_gb >= 80:
        key = "A100-80GB"
    try:
        return _ACCELERATORS[key]
    except KeyError:
        raise VmConfigError(f"no Compute Engine accelerator type for GPU {gpu_name!r}") from None


def disk_name(stack: str, volume: str) -> str:
    """The persistent disk of a network volume: `serveform-<stack>-<volume>`."""
    return short_name("serveform", stack, volume, limit=63)


def group_name(stack: str, service: str) -> str:
    """The managed instance group of a service: `serveform-<stack>-<service>` (63 characters at most)."""
    return short_name("serveform", stack, service, limit=63)


@dataclass(frozen=True, kw_only=True)
class GpuInstanceGroupArgs:
    """Inputs of a `GpuInstanceGroup`."""

    plan: ServicePlan
    """The compiled service: image, commands, env, port, resources, offers, replica bounds."""
    capacity: Capacity
    """Machine type and spot choice, from `serveform.components._vm.capacity`."""
    stack: str
    """The stack name, for tags and names."""
    project: str
    """The GCP project."""
    zone: str
    """The group's zone (and its disks')."""
    group_name: str
    """The group's name (fixed, so the gateway knows it before the group exists)."""
    desired: int
    """Replicas to run now (the scaler's count, clamped to the plan's bounds)."""
    image: str
    """Boot image (a Deep Learning VM image with NVIDIA drivers and Docker unless the stack names one)."""
    network: pulumi.Input[str]
    """The VPC network (the stack's own unless `serveform:gcp.network` names one)."""
    subnetwork: pulumi.Input[str] | None = None
    """The subnet of `network` (None: GCP picks the network's subnet in the region)."""
    gateway_service_account: pulumi.Input[str]
    """The gateway's service account e-mail: the only source admitted to the service port."""
    volumes: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Network volume name → the disk's self link."""
    code_url: pulumi.Input[str] | None = None
    """Where the plan's code archive lies in the stack's artifact store (`_vm.CodeSource.url`); None: not shipped."""
    code_bucket: pulumi.Input[str] | None = None
    """The bucket holding the code archive (with `code_url`): the replicas' account may view that one object."""


class GpuInstanceGroup(pulumi.ComponentResource):
    """Instance template (guest accelerators, TERMINATE on maintenance, spot) + managed instance group."""

    group_name: pulumi.Output[str]
    """The managed instance group's name; the gateway's discovery lists its instances."""
    instance_template: pulumi.Output[str]
    """The instance template the group runs."""
    service_account: pulumi.Output[str]
    """The replicas' service account e-mail."""
    user_data: pulumi.Output[str]
    """The rendered cloud-init (names the secret, never holds its value)."""

    def __init__(self, name: str, args: GpuInstanceGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GPU_INSTANCE_GROUP_TYPE, name, None, opts)
        plan, cap = args.plan, args.capacity
        child = pulumi.ResourceOptions(parent=self)
        labels = {"serveform-stack": args.stack, "serveform-service": plan.name}

        account = gcp.serviceaccount.Account(
            f"{name}-identity",
            account_id=short_name("sf", args.stack, plan.name, limit=30),
            display_name=f"serveform replicas of {plan.name} ({args.stack})",
            project=args.project,
            opts=child,
        )
        secret_name: pulumi.Output[str] | None = None
        if needs_secret_store(plan):
            secret = gcp.secretmanager.Secret(
                f"{name}-secret",
                secret_id=short_name("serveform", args.stack, plan.name, limit=255),
                project=args.project,
                replication={"auto": {}},
                labels=labels,
                opts=child,
            )
            gcp.secretmanager.SecretVersion(
                f"{name}-secret-value", secret=secret.id, secret_data=pulumi.Output.secret(secret_payload(plan)), opts=child
            )
            gcp.secretmanager.SecretIamMember(
                f"{name}-secret-access",
                secret_id=secret.id,
                project=args.project,
                role="roles/secretmanager.secretAccessor",
                member=account.member,
                opts=child,
            )
            secret_name = secret.name
        if args.volumes:
            # Attaching a disk needs `compute.instances.attachDisk` on the instance and `compute.disks.use`
            # on the disk: a custom role, granted only for this service's disks and instances.
            role = gcp.projects.IAMCustomRole(
                f"{name}-attach-role",
                project=args.project,
                role_id=short_name("sf", args.stack, plan.name, "attach", limit=64).replace("-", "_"),
                title=f"serveform {plan.name}: attach its disks",
                permissions=["compute.instances.attachDisk", "compute.disks.use", "compute.instances.get"],
                opts=child,
            )
            disk_names = [f"projects/{args.project}/zones/{args.zone}/disks/{disk_name(args.stack, v)}" for v in args.volumes]
            condition = " || ".join(
                [f'resource.name.startsWith("projects/{args.project}/zones/{args.zone}/instances/{plan.name}-")']
                + [f'resource.name == "{d}"' for d in disk_names]
            )
            gcp.projects.IAMMember(
                f"{name}-attach-grant",
                project=args.project,
                role=role.name,
                member=account.member,
                condition={"title": "own-disks-and-instances", "expression": condition},
                opts=child,
            )

        code_reads: list[pulumi.Resource] = []
        if args.code_bucket is not None and args.code_url is not None and plan.code is not None:
            key = code_object_key(plan)
            code_reads.append(
                gcp.storage.BucketIAMMember(
                    f"{name}-code-read",
                    bucket=args.code_bucket,
                    role="roles/storage.objectViewer",
                    member=account.member,
                    condition=pulumi.Output.from_input(args.code_bucket).apply(
                        lambda b: {"title": "service-code", "description": f"the code archive of {plan.name}", "expression": artifact_read_condition(b, [key])}
                    ),
                    opts=child,
                )
            )

        gcp.compute.Firewall(
            f"{name}-firewall",
            project=args.project,
            network=args.network,
            direction="INGRESS",
            allows=[{"protocol": "tcp", "ports": [str(plan.replica_group.container_port)]}],
            source_service_accounts=[args.gateway_service_account],
            target_service_accounts=[account.email],
            description=f"serveform {plan.name}: service port from the gateway only",
            opts=child,
        )

        mounts = [v for v in plan.volumes if v.kind == "network"]
        links = [args.volumes[m.names[0]] for m in mounts]
        user_data = pulumi.Output.all(secret_name, args.code_url, *links).apply(
            lambda xs: replica_user_data(
                ReplicaBoot(
                    plan=plan,
                    cloud="gcp",
                    stack=args.stack,
                    secret=SecretRef(cloud="gcp", ref=xs[0]) if xs[0] else None,
                    volumes=tuple(
                        VolumeMount(name=m.names[0], ref=link, container_path=m.path, device=m.names[0])
                        for m, link in zip(mounts, xs[2:])
                    ),
                    code=CodeSource(url=xs[1]) if xs[1] else None,
                )
            )
        )
        scheduling: dict[str, object] = {"on_host_maintenance": "TERMINATE", "automatic_restart": not cap.spot}
        if cap.spot:
            scheduling.update(provisioning_model="SPOT", preemptible=True, instance_termination_action="DELETE")
        else:
            scheduling.update(provisioning_model="STANDARD", preemptible=False)
        accelerators = []
        if cap.gpu_name and cap.gpu_count:
            gpu_memory = plan.replica_group.resources.gpu_memory_min_gb
            accelerators = [{"type": accelerator_type(cap.gpu_name, gpu_memory), "count": cap.gpu_count}]
        template = gcp.compute.InstanceTemplate(
            f"{name}-template",
            project=args.project,
            machine_type=cap.instance_types[0],
            guest_accelerators=accelerators,
            scheduling=scheduling,
            disks=[
                {
                    "boot": True,
                    "auto_delete": True,
                    "source_image": args.image,
                    "disk_size_gb": max(int(plan.replica_group.resources.disk_min_gb), 50),
                    "disk_type": "pd-balanced",
                }
            ],
            # No external address: egress (image pulls) goes through the network's Cloud NAT, and
            # nothing on the internet can even try the replica's ports.
            network_interfaces=[{"network": args.network, "subnetwork": args.subnetwork}],
            service_account={"email": account.email, "scopes": ["cloud-platform"]},
            metadata={"user-data": user_data, "enable-oslogin": "TRUE"},
            labels=labels,
            opts=child,
        )
        group = gcp.compute.InstanceGroupManager(
            f"{name}-group",
            name=args.group_name,
            project=args.project,
            zone=args.zone,
            base_instance_name=plan.name,
            versions=[{"instance_template": template.self_link_unique, "name": "primary"}],
            target_size=args.desired,
            update_policy={
                "type": "PROACTIVE",
                "minimal_action": "REPLACE",
                "max_surge_fixed": 1,
                "max_unavailable_fixed": 0,
            },
            wait_for_instances=False,
            # A replica fetches its code at boot: readable before the first one starts.
            opts=child.merge(pulumi.ResourceOptions(depends_on=code_reads)),
        )
        self.group_name = group.name
        self.instance_template = template.self_link
        self.service_account = account.email
        self.user_data = user_data
        self.register_outputs(
            {"group_name": self.group_name, "instance_template": self.instance_template, "service_account": self.service_account}
        )
