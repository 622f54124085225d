"""`Gateway`: the stack's entry point on AWS — one small VM with an Elastic IP.

Its software is shipped, not downloaded: the deployment uploads the gateway's artifacts (a
wheelhouse of serveform and its pinned dependencies, and the project's Caddy build;
`serveform.image.vm`) into a private, encrypted bucket of the stack, and the user data names each
by its sha256; the boot fetches them with the instance role and checks every digest. The bucket
blocks public access, encrypts at rest, refuses plain HTTP, and lets only the gateway's role (and
whoever deploys) read objects.

It runs Caddy with the OpenAI-compatible router, the replica discovery timer and the scaler
as systemd units (cloud-init from `components/templates/gateway/`). The scaler sets the groups'
desired capacity through the Auto Scaling API (no Pulumi on the VM, no state credentials). Its
security group opens 80 and 443 and nothing else; its role may list the groups' instances,
describe the groups and set the autoscaled ones' desired capacity, read the bearer tokens'
secret and, for the DNS challenge, change records in the stack's hosted zone — nothing broader. With a hosted zone configured, `*.<domain>` points at
the address; otherwise the address is exported for the user's DNS.
"""

from __future__ import annotations

import base64
import dataclasses
import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_aws as aws

from serveform.image.vm import VmArtifact

from .._cloud import GatewayGroupRef, VmGatewayArgs
from .._vm import ArtifactRef, SecretRef, gateway_user_data

__all__ = [
    "GATEWAY_TYPE",
    "Gateway",
    "GatewayArgs",
    "GatewayGroupRef",
    "GATEWAY_PORTS",
    "artifact_bucket_policy",
    "compressed_user_data",
    "gateway_policy",
    "store_code",
]

GATEWAY_TYPE = "serveform:aws:Gateway"
GATEWAY_PORTS = (80, 443)
"""The only ports open to the internet."""
DEFAULT_INSTANCE_TYPE = "t3.small"
ROOT_DISK_GB = 20


@dataclass(frozen=True, kw_only=True)
class GatewayArgs(VmGatewayArgs):
    """Inputs of a `Gateway`: the shared `VmGatewayArgs` plus where it runs on AWS.

    With `dns_provider` `route53` the role may answer the ACME challenge in `zone_id`.
    """

    region: str
    """The AWS region of the gateway and the groups it discovers."""
    ami: pulumi.Input[str]
    """The gateway's machine image (Ubuntu LTS)."""
    vpc_id: pulumi.Input[str]
    """The VPC of the security groups."""
    subnet_id: pulumi.Input[str]
    """A public subnet for the gateway VM."""
    instance_type: str = DEFAULT_INSTANCE_TYPE
    """The gateway VM's instance type (`serveform:gateway.instance_type`)."""
    zone_id: str | None = None
    """Route 53 hosted zone of the domain: when set, `*.<domain>` is created there."""
    tags: dict[str, str] = field(default_factory=dict)
    """Extra tags for every child."""
    artifacts: tuple[VmArtifact, ...] = ()
    """What the VM runs (`serveform.image.vm.gateway_artifacts`), uploaded into the stack's bucket."""


class Gateway(pulumi.ComponentResource):
    """Gateway VM, Elastic IP, security group (80/443), instance role, optional `*.<domain>` record."""

    address: pulumi.Output[str]
    """The static public IPv4 address; point `*.<domain>` here when no zone is configured."""
    instance_id: pulumi.Output[str]
    """The gateway VM's instance ID."""
    security_group_id: pulumi.Output[str]
    """Replicas admit their service port from this group only."""
    role_arn: pulumi.Output[str]
    """The instance role's ARN."""
    dns_name: pulumi.Output[str | None]
    """`*.<domain>` when the record was created."""
    user_data: pulumi.Output[str]
    """The rendered cloud-init (names secrets, never holds their values)."""
    artifact_bucket: pulumi.Output[str]
    """The stack's private bucket of the VM's artifacts."""

    def __init__(self, name: str, args: GatewayArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(GATEWAY_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        tags = {"serveform:stack": args.stack, "serveform:role": "gateway", **args.tags}

        firewall = aws.ec2.SecurityGroup(
            f"{name}-firewall",
            description="serveform gateway: HTTP and HTTPS only",
            vpc_id=args.vpc_id,
            ingress=[
                {"protocol": "tcp", "from_port": port, "to_port": port, "cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": ["::/0"]}
                for port in GATEWAY_PORTS
            ],
            egress=[{"protocol": "-1", "from_port": 0, "to_port": 0, "cidr_blocks": ["0.0.0.0/0"], "ipv6_cidr_blocks": ["::/0"]}],
            tags=tags,
            opts=child,
        )

        secret_arn: pulumi.Output[str] | None = None
        if args.tokens is not None:
            secret_arn = _stored_secret(f"{name}-tokens", "serveform: the gateway's bearer tokens", args.tokens, tags, child)

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
        zone_id = args.zone_id if args.dns_provider == "route53" else None
        # The scaler changes the size of the autoscaled services' groups only.
        group_names = [g.group_name for g in args.groups.values() if g.scaled]

        # The artifacts' bucket: private, encrypted, TLS only, no other instance reads it.
        bucket = aws.s3.Bucket(f"{name}-artifacts", force_destroy=True, tags=tags, opts=child)
        private = aws.s3.BucketPublicAccessBlock(
            f"{name}-artifacts-private",
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            f"{name}-artifacts-owner", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"}, opts=child
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            f"{name}-artifacts-encryption",
            bucket=bucket.id,
            rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
            opts=child,
        )
        aws.s3.BucketPolicy(
            f"{name}-artifacts-policy",
            bucket=bucket.id,
            policy=bucket.arn.apply(lambda arn: artifact_bucket_policy(arn, args.stack)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[private]),
        )
        objects = [
            aws.s3.BucketObjectv2(
                f"{name}-artifact-{artifact.name}",
                bucket=bucket.id,
                key=artifact.key,
                # An update without the file (a scale run rebuilds from the last deployment's
                # inputs): the key is the digest, so the bytes under it never change, and the
                # source is not compared.
                source=pulumi.FileAsset(str(artifact.path)) if artifact.path else pulumi.StringAsset(""),
                checksum_algorithm="SHA256",
                content_type="application/octet-stream",
                tags=tags,
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=["source"]),
            )
            for artifact in args.artifacts
        ]
        refs = tuple(ArtifactRef(name=a.name, sha256=a.sha256, key=a.key) for a in args.artifacts)

        aws.iam.RolePolicy(
            f"{name}-policy",
            role=role.id,
            policy=pulumi.Output.all(secret_arn, bucket.arn).apply(
                lambda arns: gateway_policy(
                    arns[0], args.region, group_names, zone_id, domain=args.domain,
                    artifact_arns=[f"{arns[1]}/{r.key}" for r in refs],
                )
            ),
            opts=child,
        )
        profile = aws.iam.InstanceProfile(f"{name}-profile", role=role.name, tags=tags, opts=child)

        targets = args.targets("aws", region=args.region)
        user_data = pulumi.Output.all(secret_arn, bucket.bucket).apply(
            lambda arns: gateway_user_data(
                dataclasses.replace(
                    args.boot(
                        "aws",
                        targets,
                        tokens_secret=SecretRef(cloud="aws", ref=arns[0], region=args.region) if arns[0] else None,
                        # The scaler sets its groups' desired capacity with this VM's role: it
                        # needs no state backend or passphrase, so none is stored for it.
                        scaler_env_secret=None,
                        # Route 53 is global, but the AWS SDK inside Caddy wants a region.
                        dns_options={"region": args.region} if args.dns_provider == "route53" else {},
                    ),
                    artifacts=refs,
                    artifact_bucket=arns[1],
                    artifact_region=args.region,
                )
            )
        )
        vm = aws.ec2.Instance(
            f"{name}-vm",
            ami=args.ami,
            instance_type=args.instance_type,
            subnet_id=args.subnet_id,
            vpc_security_group_ids=[firewall.id],
            iam_instance_profile=profile.name,
            # EC2 takes 16 KB of user data; the gateway's document (routes, project copy, fetcher)
            # is larger, so it travels gzip'd (cloud-init unpacks it), without a timestamp so
            # that the same document gives the same bytes.
            user_data_base64=user_data.apply(compressed_user_data),
            # The gateway's configuration is its boot document: a changed route set boots a new VM
            # (the Elastic IP moves with it) instead of leaving a stale one running.
            user_data_replace_on_change=True,
            metadata_options={"http_endpoint": "enabled", "http_tokens": "required", "http_put_response_hop_limit": 1},
            root_block_device={"volume_size": ROOT_DISK_GB, "volume_type": "gp3", "encrypted": True},
            tags={"Name": f"serveform-{args.stack}-gateway", **tags},
            # The boot fetches the artifacts: they are in the bucket before the VM exists.
            opts=pulumi.ResourceOptions(parent=self, depends_on=objects),
        )
        address = aws.ec2.Eip(f"{name}-address", domain="vpc", instance=vm.id, tags=tags, opts=child)

        dns_name: pulumi.Output[str | None] = pulumi.Output.from_input(None)
        if args.zone_id:
            record = aws.route53.Record(
                f"{name}-dns",
                zone_id=args.zone_id,
                name=f"*.{args.domain}",
                type="A",
                ttl=300,
                records=[address.public_ip],
                opts=child,
            )
            dns_name = record.name
        self.address = address.public_ip
        self.instance_id = vm.id
        self.security_group_id = firewall.id
        self.role_arn = role.arn
        self.dns_name = dns_name
        self.user_data = user_data
        self.artifact_bucket = bucket.bucket
        self._bucket = bucket
        self.register_outputs(
            {
                "address": self.address,
                "instance_id": self.instance_id,
                "security_group_id": self.security_group_id,
                "role_arn": self.role_arn,
                "dns_name": self.dns_name,
                "artifact_bucket": self.artifact_bucket,
            }
        )


def store_code(gateway: Gateway, name: str, key: str, source: pulumi.Asset) -> pulumi.Output[str]:
    """Upload a service's code archive into the gateway's artifact bucket, as the gateway's child; its `s3://` URL.

    The key is the archive's digest, so its bytes never change under it: a scale update (which
    rebuilds the stack without the deploying machine's archive file) ignores the source.
    """
    obj = aws.s3.BucketObjectv2(
        name,
        bucket=gateway._bucket.id,
        key=key,
        source=source,
        checksum_algorithm="SHA256",
        content_type="application/gzip",
        opts=pulumi.ResourceOptions(parent=gateway, ignore_changes=["source"]),
    )
    return pulumi.Output.all(gateway.artifact_bucket, obj.key).apply(lambda v: _code_url(v[0], v[1]))


def _stored_secret(
    name: str, description: str, value: pulumi.Input[str], tags: dict[str, str], opts: pulumi.ResourceOptions
) -> pulumi.Output[str]:
    """A Secrets Manager secret (`name`) holding ``value`` (`name-value`); its ARN."""
    secret = aws.secretsmanager.Secret(name, description=description, recovery_window_in_days=0, tags=tags, opts=opts)
    aws.secretsmanager.SecretVersion(f"{name}-value", secret_id=secret.id, secret_string=pulumi.Output.secret(value), opts=opts)
    return secret.arn


def _code_url(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def compressed_user_data(text: str) -> str:
    """The user data as EC2 takes it: gzip (no timestamp), then base64."""
    return base64.b64encode(gzip.compress(text.encode(), mtime=0)).decode()


def artifact_bucket_policy(bucket_arn: str, stack: str) -> str:
    """The artifacts bucket's policy: TLS only, and no instance but the stack's own reads an object.

    Instance credentials (requests carrying `ec2:SourceInstanceARN`) are denied unless their role
    carries the tag `serveform:stack=<stack>`: the gateway's and the replicas' roles (the replicas'
    are created after this policy, hence the tag rather than their ARNs). People and CI of the
    account keep what their own IAM policies give them (the deployer reads objects back on a
    refresh), and each stack role's own policy names the exact objects it may read. The policy
    names no deployer, so whoever runs an update leaves it unchanged.
    """
    statements: list[dict[str, object]] = [
        {
            "Sid": "TlsOnly",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:*",
            "Resource": [bucket_arn, f"{bucket_arn}/*"],
            "Condition": {"Bool": {"aws:SecureTransport": "false"}},
        },
        {
            "Sid": "NoOtherInstanceReads",
            "Effect": "Deny",
            "Principal": "*",
            "Action": "s3:GetObject",
            "Resource": [f"{bucket_arn}/*"],
            # Both must hold for the deny: instance credentials, and not a role of this stack.
            "Condition": {
                "Null": {"ec2:SourceInstanceARN": "false"},
                "StringNotEquals": {"aws:PrincipalTag/serveform:stack": stack},
            },
        },
    ]
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)


def acme_challenge_name(domain: str) -> str:
    """The ACME DNS-01 record of `*.<domain>` and `<domain>`, as Route 53's condition keys spell names."""
    return f"_acme-challenge.{domain.lower().rstrip('.')}"


def gateway_policy(
    secret_arn: str | None,
    region: str,
    group_names: Sequence[str],
    zone_id: str | None,
    *,
    domain: str = "",
    artifact_arns: Sequence[str] = (),
) -> str:
    """The gateway role: its artifacts, discovery, the scaler's groups, its tokens, its DNS challenge.

    ``group_names``: the groups the scaler sizes (the autoscaled services').

    Exactly what the booted VM calls (tests/boot/test_aws_gateway.py checks every call moto
    answered against this policy, and that each grant was used).
    """
    statements: list[dict[str, object]] = [
        # Describe calls take no resource scope in IAM. Discovery asks Auto Scaling which of a
        # group's instances are in service, then EC2 for their addresses; the scaler reads its
        # groups' sizes with the same describe.
        {
            "Sid": "DiscoverReplicas",
            "Effect": "Allow",
            "Action": ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances"],
            "Resource": "*",
        }
    ]
    if artifact_arns:
        statements.append({"Sid": "FetchArtifacts", "Effect": "Allow", "Action": ["s3:GetObject"], "Resource": sorted(artifact_arns)})
    if group_names:
        # The scaler sets a group's desired capacity: on the stack's scaled groups only.
        statements.append(
            {
                "Sid": "ScaleServiceGroups",
                "Effect": "Allow",
                "Action": ["autoscaling:SetDesiredCapacity"],
                "Resource": [
                    f"arn:aws:autoscaling:{region}:*:autoScalingGroup:*:autoScalingGroupName/{n}" for n in sorted(group_names)
                ],
            }
        )
    if secret_arn:
        statements.append({"Sid": "ReadTokens", "Effect": "Allow", "Action": ["secretsmanager:GetSecretValue"], "Resource": [secret_arn]})
    if zone_id:
        # Route 53 evaluates these keys on each change batch: only TXT records named
        # `_acme-challenge.<domain>` (normalised: lower case, no trailing dot; the wildcard
        # certificate's challenge lives there too), so the role cannot move `*.<domain>` or any
        # other record of the zone.
        statements.append(
            {
                "Sid": "AcmeDnsChallenge",
                "Effect": "Allow",
                "Action": ["route53:ChangeResourceRecordSets"],
                "Resource": [f"arn:aws:route53:::hostedzone/{zone_id}"],
                "Condition": {
                    "ForAllValues:StringEquals": {
                        "route53:ChangeResourceRecordSetsNormalizedRecordNames": [acme_challenge_name(domain)],
                        "route53:ChangeResourceRecordSetsRecordTypes": ["TXT"],
                    }
                },
            }
        )
        statements.append(
            {
                "Sid": "AcmeDnsChallengeRead",
                "Effect": "Allow",
                "Action": ["route53:ListResourceRecordSets"],
                "Resource": [f"arn:aws:route53:::hostedzone/{zone_id}"],
            }
        )
        statements.append(
            {"Sid": "AcmeDnsChallengeStatus", "Effect": "Allow", "Action": ["route53:GetChange", "route53:ListHostedZonesByName"], "Resource": "*"}
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements}, sort_keys=True)
