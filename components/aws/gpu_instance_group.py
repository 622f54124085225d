"""`GpuInstanceGroup`: the replicas of one service as an EC2 auto scaling group.

A launch template carries the GPU machine image, the root disk and the cloud-init user data; the
auto scaling group's mixed instances policy lists every instance type of the plan's offers
(cheapest first) and mixes spot and on-demand capacity as the plan's `spot_policy` says. The
replicas' role may read the service's secret and attach its volumes, nothing else; their
security group admits the service port from the gateway only.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from serveform.translator.plan import ServicePlan

from .._vm import Capacity, CodeSource, ReplicaBoot, SecretRef, VolumeMount, needs_secret_store, replica_user_data, secret_payload

__all__ = ["GPU_INSTANCE_GROUP_TYPE", "GpuInstanceGroup", "GpuInstanceGroupArgs", "AwsVolumeRef", "group_name"]

GPU_INSTANCE_GROUP_TYPE = "serveform:aws:GpuInstanceGroup"
# EBS device names handed to attached volumes, in mount order.
_DEVICE_NAMES = tuple(f"/dev/sd{letter}" for letter in "fghijklmnop")
# A replacement instance must boot, pull the image and pass the gateway's checks.
HEALTH_CHECK_GRACE_SECONDS = 600


def group_name(stack: str, service: str) -> str:
    """The auto scaling group of a service: `serveform-<stack>-<service>`."""
    return f"serveform-{stack}-{service}"


@dataclass(frozen=True, kw_only=True)
class AwsVolumeRef:
    """A `Volume` as the group needs it."""

    volume_id: pulumi.Input[str]
    """The EBS volume ID."""
    arn: pulumi.Input[str]
    """The volume's ARN (the replicas' role may attach it)."""


@dataclass(frozen=True, kw_only=True)
class GpuInstanceGroupArgs:
    """Inputs of a `GpuInstanceGroup`."""

    plan: ServicePlan
    """The compiled service: image, commands, env, port, resources, offers, replica bounds."""
    capacity: Capacity
    """Instance types and the spot / on-demand mix, from `serveform.components._vm.capacity`."""
    stack: str
    """The stack name, for tags."""
    region: str
    """The AWS region of the group."""
    group_name: str
    """The auto scaling group's name (fixed, so the gateway knows it before the group exists)."""
    desired: int
    """Replicas a new group starts with (the plan's initial count, or the stack's kept count,
    clamped to the plan's bounds). Afterwards the group's desired capacity is the scaler's and
    `serveform scale`'s (Auto Scaling's SetDesiredCapacity): the stack never sets it again."""
    ami: pulumi.Input[str]
    """The GPU machine image (Deep Learning Base AMI unless the stack names one)."""
    vpc_id: pulumi.Input[str]
    """The VPC of the replicas' security group."""
    subnet_ids: pulumi.Input[Sequence[str]]
    """Subnets the group launches into (one zone when the service has network volumes)."""
    gateway_security_group_id: pulumi.Input[str]
    """The gateway's security group: the only source admitted to the service port."""
    volumes: Mapping[str, AwsVolumeRef] = field(default_factory=dict)
    """Network volume name → its `Volume`, for every network mount of the plan."""
    key_name: str | None = None
    """An EC2 key pair for SSH (no SSH rule is opened; use Session Manager or a bastion)."""
    code_url: pulumi.Input[str] | None = None
    """Where the plan's code archive lies in the stack's artifact store (`_vm.CodeSource.url`); None: not shipped."""


class GpuInstanceGroup(pulumi.ComponentResource):
    """Launch template + auto scaling group (mixed instances policy) for one service."""

    group_name: pulumi.Output[str]
    """The auto scaling group's name; the gateway's discovery lists its instances."""
    group_arn: pulumi.Output[str]
    """The auto scaling group's ARN; the gateway's role may set its desired capacity."""
    security_group_id: pulumi.Output[str]
    """The replicas' security group."""
    launch_template_id: pulumi.Output[str]
    """The launch template the group launches from."""
    role_arn: pulumi.Output[str]
    """The instance role's ARN."""
    user_data: pulumi.Output[str]
    """The rendered cloud-init (plain text: it names the secret, never holds its value)."""

    def __init__(self, name: str, args: GpuInstanceGroupArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GPU_INSTANCE_GROUP_TYPE, name, None, opts)
        plan, cap = args.plan, args.capacity
        child = pulumi.ResourceOptions(parent=self)
        tags = {"serveform:stack": args.stack, "serveform:service": plan.name}

        secret_arn: pulumi.Output[str] | None = None
        if needs_secret_store(plan):
            secret = aws.secretsmanager.Secret(
                f"{name}-secret",
                description=f"serveform: env secrets and registry password of service {plan.name}",
                recovery_window_in_days=0,  # a redeploy may recreate it under the same name at once
                tags=tags,
                opts=child,
            )
            aws.secretsmanager.SecretVersion(
                f"{name}-secret-value",
                secret_id=secret.id,
                secret_string=pulumi.Output.secret(secret_payload(plan)),
                opts=child,
            )
            secret_arn = secret.arn

        role = aws.iam.Role(
            f"{name}-role",
            assume_role_policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Principal": {"Service": "ec2.amazonaws.com"}, "Action": "sts:AssumeRole"}],
                }
            ),
            tags=tags,
            opts=child,
        )
        volume_arns = [v.arn for v in args.volumes.values()]
        aws.iam.RolePolicy(
            f"{name}-policy",
            role=role.id,
            policy=pulumi.Output.all(secret_arn, args.code_url, *volume_arns).apply(
                lambda xs: _replica_policy(xs[0], xs[2:], code_url=xs[1])
            ),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)

        firewall = aws.ec2.SecurityGroup(
            f"{name}-firewall",
            description=f"serveform replicas of {plan.name}: service port from the gateway only",
            vpc_id=args.vpc_id,
            ingress=[
                {
                    "protocol": "tcp",
                    "from_port": plan.replica_group.container_port,
                    "to_port": plan.replica_group.container_port,
                    "security_groups": [args.gateway_security_group_id],
                    "description": "service port from the gateway",
                }
            ],
            egress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": ["::/0"]}],
            tags=tags,
            opts=child,
        )

        mounts = [v for v in plan.volumes if v.kind == "network"]
        volume_ids = [args.volumes[m.names[0]].volume_id for m in mounts]
        user_data = pulumi.Output.all(secret_arn, args.code_url, *volume_ids).apply(
            lambda xs: replica_user_data(
                ReplicaBoot(
                    plan=plan,
                    cloud="aws",
                    stack=args.stack,
                    secret=SecretRef(cloud="aws", ref=xs[0], region=args.region) if xs[0] else None,
                    volumes=tuple(
                        VolumeMount(name=m.names[0], ref=vid, container_path=m.path, device=_DEVICE_NAMES[i])
                        for i, (m, vid) in enumerate(zip(mounts, xs[2:]))
                    ),
                    code=CodeSource(url=xs[1], region=args.region) if xs[1] else None,
                )
            )
        )
        template = aws.ec2.LaunchTemplate(
            f"{name}-template",
            image_id=args.ami,
            instance_type=cap.instance_types[0],
            iam_instance_profile={"arn": profile.arn},
            vpc_security_group_ids=[firewall.id],
            key_name=args.key_name,
            user_data=user_data.apply(lambda text: base64.b64encode(text.encode()).decode()),
            block_device_mappings=[
                {
                    "device_name": "/dev/sda1",
                    "ebs": {
                        "volume_size": max(int(plan.replica_group.resources.disk_min_gb), 30),
                        "volume_type": "gp3",
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            # IMDSv2 only, one hop: the token's answer does not survive the hop through the container
            # engine's bridge, so the replica's container cannot get the role's credentials (run.sh
            # also drops its packets to the address). The VM's own processes are not behind a hop.
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1},
            tag_specifications=[{"resource_type": "instance", "tags": tags}, {"resource_type": "volume", "tags": tags}],
            update_default_version=True,
            tags=tags,
            opts=child,
        )
        distribution: dict[str, object] = {
            "on_demand_base_capacity": cap.on_demand_base,
            "on_demand_percentage_above_base_capacity": cap.on_demand_percentage,
            "on_demand_allocation_strategy": "prioritized",
        }
        if cap.spot:
            distribution["spot_allocation_strategy"] = "price-capacity-optimized"
            if cap.max_price is not None:
                distribution["spot_max_price"] = f"{cap.max_price:.4f}"
        group = aws.autoscaling.Group(
            f"{name}-group",
            name=args.group_name,
            min_size=args.plan.replicas.min,
            max_size=args.plan.replicas.max,
            desired_capacity=args.desired,
            vpc_zone_identifiers=args.subnet_ids,
            capacity_rebalance=cap.spot,
            health_check_type="EC2",
            health_check_grace_period=HEALTH_CHECK_GRACE_SECONDS,
            mixed_instances_policy={
                "instances_distribution": distribution,
                "launch_template": {
                    "launch_template_specification": {"launch_template_id": template.id, "version": "$Latest"},
                    "overrides": [{"instance_type": t} for t in cap.instance_types],
                },
            },
            instance_refresh={"strategy": "Rolling", "preferences": {"min_healthy_percentage": 50}},
            tags=[{"key": k, "value": v, "propagate_at_launch": True} for k, v in sorted(tags.items())],
            # The scaler on the gateway VM sets the desired capacity with Auto Scaling's API, as
            # AWS's own target tracking does: no `up` (CI's, a preview) may revert it. Min and max
            # still follow the service file; AWS moves the desired capacity into a new range.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["desired_capacity"]),
        )
        self.group_name = group.name
        self.group_arn = group.arn
        self.security_group_id = firewall.id
        self.launch_template_id = template.id
        self.role_arn = role.arn
        self.user_data = user_data
        self.register_outputs(
            {
                "group_name": self.group_name,
                "group_arn": self.group_arn,
                "security_group_id": self.security_group_id,
                "launch_template_id": self.launch_template_id,
                "role_arn": self.role_arn,
            }
        )


def _replica_policy(secret_arn: str | None, volume_arns: Sequence[str], *, code_url: str | None = None) -> str:
    """Read the service's own secret and code archive, attach its own volumes (an empty policy is not allowed)."""
    statements: list[dict[str, object]] = [
        {"Sid": "DescribeOwnVolumes", "Effect": "Allow", "Action": ["ec2:DescribeVolumes"], "Resource": "*"}
    ]
    if code_url:
        # `s3://<bucket>/<key>`: this service's archive only, not the bucket.
        statements.append(
            {"Sid": "FetchServiceCode", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": [f"arn:aws:s3:::{code_url.removeprefix('s3://')}"]}
        )
    if secret_arn:
        statements.append({"Sid": "ReadServiceSecret", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": [secret_arn]})
    if volume_arns:
        statements.append(
            {
                "Sid": "AttachServiceVolumes",
                "Effect": "Allow",
                "Action": ["ec2:AttachVolume"],
                "Resource": [*volume_arns, "arn:aws:ec2:*:*:instance/*"],
            }
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)
