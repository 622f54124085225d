"""The AWS backend under Pulumi's mock runtime: every example service, key inputs, secrets, bad config."""

from __future__ import annotations

import base64
import gzip
import json

import yaml

from _cloud_contract import *  # noqa: F401,F403 (the shared VM-backend tests)
from _cloud_contract import deploy, make_settings, recording  # noqa: F401
from _cloud_examples import example_plans

BACKEND = "aws"
CONFIG = {"serveform:aws": {"region": "us-east-1", "zone_id": "Z0123456789"}}
BAD_CONFIGS = [
    ({"serveform:aws": {}}, "serveform:aws.region"),
    ({"serveform:aws": {"region": "us-east-1", "subnet_ids": ["subnet-1"]}}, "serveform:aws.vpc_id"),
    (
        {"serveform:aws": {"region": "us-east-1"}, "serveform:gateway": {"tls": "acme_dns", "dns_provider": "route53"}},
        "serveform:aws.zone_id",
    ),
]


def desired_of(rec, service):
    return rec.one("aws:autoscaling/group:Group", f"{service}-group").inputs["desiredCapacity"]


def _types_by_price(plan, spot=None):
    offers = sorted((o for o in plan.offers if spot is None or o.spot == spot), key=lambda o: (o.price_per_hour, o.instance_type))
    types = []
    for offer in offers:
        if offer.instance_type not in types:
            types.append(offer.instance_type)
    return types


def test_auto_scaling_groups_mix_instance_types_and_markets(recording):
    plans = example_plans("aws")
    llama = recording.one("aws:autoscaling/group:Group", "llama31-service-group").inputs
    assert (llama["minSize"], llama["maxSize"], llama["desiredCapacity"]) == (1, 4, 1)
    assert llama["name"] == "serveform-dev-llama31-service"
    policy = llama["mixedInstancesPolicy"]
    overrides = [o["instanceType"] for o in policy["launchTemplate"]["overrides"]]
    assert overrides == _types_by_price(plans["llama31-service"]) and len(overrides) > 1
    assert all(t.startswith(("g5.", "g6.", "g6e.", "g4dn.", "p")) for t in overrides)  # 24 GB GPU instances only
    assert policy["instancesDistribution"]["onDemandPercentageAboveBaseCapacity"] == 100
    # spot_policy auto: the floor (min replicas, here 0) stays on-demand, the rest is spot under max_price.
    auto = recording.one("aws:autoscaling/group:Group", "volume-service-group").inputs
    dist = auto["mixedInstancesPolicy"]["instancesDistribution"]
    assert dist["onDemandBaseCapacity"] == 0 and dist["onDemandPercentageAboveBaseCapacity"] == 0
    assert dist["spotAllocationStrategy"] == "price-capacity-optimized" and dist["spotMaxPrice"] == "0.5000"
    assert auto["capacityRebalance"] is True
    assert (auto["minSize"], auto["maxSize"], auto["desiredCapacity"]) == (0, 2, 0)
    assert len(auto["vpcZoneIdentifiers"]) == 1  # the EBS volume's zone only


def test_no_up_reverts_the_desired_capacity_the_scaler_set(recording):
    """The group is created at its count, then its desired capacity is the scaler's (Auto Scaling's
    SetDesiredCapacity): neither CI's `up` nor a preview may change it back. Min and max follow the file."""
    for group in recording.of_type("aws:autoscaling/group:Group"):
        assert group.ignore_changes == ("desiredCapacity",), group.name
        assert {"minSize", "maxSize", "desiredCapacity"} <= set(group.inputs)


def test_launch_templates_disk_image_and_imds(recording):
    plans = example_plans("aws")
    mixtral = recording.one("aws:ec2/launchTemplate:LaunchTemplate", "mixtral-template").inputs
    assert mixtral["instanceType"] == _types_by_price(plans["mixtral"])[0]
    assert plans["mixtral"].offers[0].gpu_count == 4 and plans["mixtral"].replica_group.gpus_num == 4
    assert mixtral["blockDeviceMappings"][0]["ebs"]["volumeSize"] == 200
    assert mixtral["imageId"] == "ami-0123456789abcdef0"
    assert mixtral["metadataOptions"]["httpTokens"] == "required"


def test_firewalls_gateway_80_443_only_replicas_from_gateway_only(recording):
    gw = recording.one("aws:ec2/securityGroup:SecurityGroup", "gateway-firewall").inputs
    assert sorted((r["fromPort"], r["toPort"], r["protocol"]) for r in gw["ingress"]) == [(80, 80, "tcp"), (443, 443, "tcp")]
    replica = recording.one("aws:ec2/securityGroup:SecurityGroup", "llama31-service-firewall").inputs
    (rule,) = replica["ingress"]
    assert (rule["fromPort"], rule["toPort"]) == (8000, 8000)
    assert rule["securityGroups"] == ["gateway-firewall-id"] and "cidrBlocks" not in rule


def test_wildcard_dns_record_and_static_address(recording):
    record = recording.one("aws:route53/record:Record").inputs
    assert (record["name"], record["type"], record["zoneId"]) == ("*.example.com", "A", "Z0123456789")
    assert record["records"] == ["203.0.113.10"]
    assert recording.one("aws:ec2/eip:Eip").inputs["domain"] == "vpc"


def test_no_zone_no_record(request):
    rec = deploy("aws", make_settings("aws", {"serveform:aws": {"region": "us-east-1"}}), [example_plans("aws")["mixtral"]])
    assert rec.of_type("aws:route53/record:Record") == []
    assert rec.outputs["gateway_address"] == "203.0.113.10"


def test_gateway_role_is_narrow(recording):
    policy = json.loads(recording.one("aws:iam/rolePolicy:RolePolicy", "gateway-policy").inputs["policy"])
    actions = sorted(a for s in policy["Statement"] for a in s["Action"])
    # No Pulumi on the VM any more: the scaler describes its groups and sets their desired
    # capacity, discovery lists instances, the boot reads its artifacts and the tokens.
    assert actions == sorted(
        ["autoscaling:DescribeAutoScalingGroups", "ec2:DescribeInstances", "autoscaling:SetDesiredCapacity", "secretsmanager:GetSecretValue",
         "s3:GetObject"]
    )
    # Every write names the stack's own groups; only describe calls (which IAM cannot scope) use "*".
    for statement in policy["Statement"]:
        if statement["Resource"] == "*":
            assert all(":Describe" in a or a.startswith("route53:Get") or a.startswith("route53:List") for a in statement["Action"]), statement
    fetch = next(s for s in policy["Statement"] if s["Sid"] == "FetchArtifacts")
    # Exactly the artifacts' objects, content-addressed: not the bucket, not a wildcard.
    assert len(fetch["Resource"]) == 2 and all("/artifacts/" in r and "*" not in r for r in fetch["Resource"])
    scale = next(s for s in policy["Statement"] if s["Sid"] == "ScaleServiceGroups")
    # The autoscaled services' groups only: a fixed count is the stack's, never the scaler's.
    scaled = sorted(n for n, p in example_plans("aws").items() if p.scaling is not None)
    assert scaled and len(scaled) < len(example_plans("aws"))
    assert scale["Resource"] == [f"arn:aws:autoscaling:us-east-1:*:autoScalingGroup:*:autoScalingGroupName/serveform-dev-{n}" for n in scaled]
    replica = json.loads(recording.one("aws:iam/rolePolicy:RolePolicy", "llama31-service-policy").inputs["policy"])
    assert {a for s in replica["Statement"] for a in s["Action"]} == {"ec2:DescribeVolumes", "secretsmanager:GetSecretValue"}


def test_artifacts_are_shipped_into_a_private_encrypted_bucket(recording):
    """Issue 14: what the gateway VM runs is uploaded by the deployment, named by digest in its user data."""
    bucket = recording.one("aws:s3/bucket:Bucket", "gateway-artifacts")
    assert "serveform:aws:Gateway" in bucket.urn
    block = recording.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "gateway-artifacts-private").inputs
    assert all(block[k] for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"))
    sse = recording.one("aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration", "gateway-artifacts-encryption")
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    policy = json.loads(recording.one("aws:s3/bucketPolicy:BucketPolicy", "gateway-artifacts-policy").inputs["policy"])
    by_sid = {s["Sid"]: s for s in policy["Statement"]}
    assert by_sid["TlsOnly"]["Effect"] == "Deny" and by_sid["TlsOnly"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    condition = by_sid["NoOtherInstanceReads"]["Condition"]
    # No instance credentials but the stack's roles' (by their tag: the replicas' roles come later).
    assert condition == {"Null": {"ec2:SourceInstanceARN": "false"}, "StringNotEquals": {"aws:PrincipalTag/serveform:stack": "dev"}}
    roles = [r for r in recording.resources if r.type == "aws:iam/role:Role"]
    assert roles and all(r.inputs["tags"]["serveform:stack"] == "dev" for r in roles)
    objects = [r for r in recording.resources if r.type == "aws:s3/bucketObjectv2:BucketObjectv2" and r.name.startswith("gateway-artifact-")]
    # No Pulumi CLI: the scaler runs no `up` on the VM.
    assert sorted(o.name for o in objects) == ["gateway-artifact-caddy", "gateway-artifact-wheelhouse"]
    encoded = recording.one("aws:ec2/instance:Instance", "gateway-vm").inputs["userDataBase64"]
    user_data = gzip.decompress(base64.b64decode(encoded)).decode()
    # EC2's limit is 16 KB of user data: the document travels gzip'd.
    assert len(base64.b64decode(encoded)) < 16384 < len(user_data) + 16384
    install = yaml.safe_load(user_data)["write_files"]
    script = next(f["content"] for f in install if f["path"] == "/opt/serveform/install.sh")
    for obj in objects:
        key = obj.inputs["key"]
        digest = key.rsplit("-", 1)[1]
        assert key in script and digest in script
    # Nothing from the internet at boot: no index, no download, no curl | sh.
    assert "pip install -q serveform" not in script and "curl" not in script and "get.pulumi.com" not in script


def test_a_services_code_archive_is_uploaded_and_only_its_replicas_may_read_it(tmp_path):
    """Issue 14 item 2 on AWS: the archive goes into the stack's artifact bucket (item 1), named by digest."""
    import hashlib

    from _cloud_contract import deploy as deploy_backend

    from serveform.translator.plan import CodePlan

    archive = tmp_path / "code.tar.gz"
    archive.write_bytes(b"not really a tarball")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    plans = {name: p for name, p in example_plans("aws").items()}
    name, plan = sorted(plans.items())[0]
    plans[name] = plan.model_copy(update={"code": CodePlan(sha256=digest, size_bytes=20, archive=str(archive))})
    rec = deploy_backend("aws", make_settings("aws", CONFIG), plans.values())
    code = rec.one("aws:s3/bucketObjectv2:BucketObjectv2", f"{name}-code")
    assert code.inputs["key"] == f"code/{name}/{digest}.tar.gz" and "serveform:aws:Gateway" in code.urn
    policy = json.loads(rec.one("aws:iam/rolePolicy:RolePolicy", f"{name}-policy").inputs["policy"])
    (grant,) = [s for s in policy["Statement"] if s["Sid"] == "FetchServiceCode"]
    assert grant["Resource"] == [f"arn:aws:s3:::gateway-artifacts-0mock/code/{name}/{digest}.tar.gz"]
    others = [json.loads(r.inputs["policy"]) for r in rec.resources if r.type == "aws:iam/rolePolicy:RolePolicy" and r.name != f"{name}-policy"]
    assert not [s for p in others for s in p["Statement"] if s.get("Sid") == "FetchServiceCode"]


def test_the_scaler_on_the_vm_sets_desired_capacity_without_pulumi_or_the_states_credentials(recording):
    """The AWS gateway's scaler applies counts with Auto Scaling's API and the instance role: its unit
    names the boot document's gateway.json and discovery.json, and the VM gets no project copy, no
    Pulumi CLI and no state backend or passphrase (no secret for them, no env file)."""

    user_data = gzip.decompress(base64.b64decode(recording.one("aws:ec2/instance:Instance", "gateway-vm").inputs["userDataBase64"])).decode()
    files = {f["path"]: f["content"] for f in yaml.safe_load(user_data)["write_files"]}
    unit = files["/etc/systemd/system/serveform-scaler.service"]
    exec_line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert '"--aws-groups" "/etc/serveform/discovery.json" "--gateway-config" "/etc/serveform/gateway.json"' in exec_line
    assert "PULUMI" not in unit and "EnvironmentFile" not in unit and "/opt/serveform/project" not in unit
    assert not any(path.startswith("/opt/serveform/project/") for path in files)
    install = files["/opt/serveform/install.sh"]
    assert "pulumi.artifact" not in install and "/usr/local/bin/pulumi" not in install and "scaler.env" not in install
    secrets = [r.name for r in recording.resources if r.type == "aws:secretsmanager/secret:Secret"]
    assert not [n for n in secrets if "scaler" in n], secrets
    # What the unit reads: the plans and domain the gateway serves, and each service's group.
    discovery = json.loads(files["/etc/serveform/discovery.json"])
    assert {t["service"]: t["group"] for t in discovery["targets"]} == {n: f"serveform-dev-{n}" for n in example_plans("aws")}
    assert sorted(p["name"] for p in json.loads(files["/etc/serveform/gateway.json"])["plans"]) == sorted(example_plans("aws"))



def _replica_run_sh(rec, service):
    """The run.sh a group's launch template writes (its user data is base64 cloud-config)."""
    doc = yaml.safe_load(base64.b64decode(rec.one("aws:ec2/launchTemplate:LaunchTemplate", f"{service}-template").inputs["userData"]))
    return next(f["content"] for f in doc["write_files"] if f["path"] == "/opt/serveform/replica/run.sh")


def test_python_services_can_run_in_the_runtime_image(tmp_path):
    """`python_image: runtime`: a `python: "3.11"` service pulls the stack's runtime image, without dstack's venv setup."""
    from serveform.translator import CompileContext, compile_text

    text = "type: service\nname: pysvc\npython: \"3.11\"\ncommands:\n  - python stacks/examples/chat_server.py\nport: 8000\n"
    plan = compile_text(text, file=str(tmp_path / "pysvc.dstack.yml"), context=CompileContext(backend="aws", regions=("us-east-1",))).plan
    assert "uv venv" in " ".join(plan.replica_group.setup)  # dstack's setup, for its base image
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/serveform@sha256:" + "a" * 64
    others = [p for n, p in example_plans("aws").items() if n == "private-image"]
    config = {"serveform:aws": {**CONFIG["serveform:aws"], "python_image": "runtime", "runtime_image": image}}
    rec = deploy("aws", make_settings("aws", config), [plan, *others])
    run_sh = _replica_run_sh(rec, "pysvc")
    assert f"IMAGE={image}\n" in run_sh
    assert "uv venv" not in run_sh and "python stacks/examples/chat_server.py" in run_sh
    # A service naming its image keeps it; the gateway's routes are the compiled plans'.
    assert "IMAGE=ghcr.io/peterschmidt85/base:py3.13-0.6-cuda-12.1\n" in _replica_run_sh(rec, "private-image")
    # Unset: dstack's base image and its venv setup, as dstack runs them.
    rec = deploy("aws", make_settings("aws", CONFIG), [plan])
    assert "IMAGE=dstackai/base:0.16-base-ubuntu24.04\n" in _replica_run_sh(rec, "pysvc")


def test_the_runtime_image_needs_its_reference_and_python_3_11(tmp_path):
    import pulumi
    import pytest

    from _pulumi_harness import Recording, run_program

    from serveform.components import aws as backend
    from serveform.translator import CompileContext, compile_text

    text = "type: service\nname: old\npython: \"3.10\"\ncommands: [python -V]\nport: 8000\n"
    plan = compile_text(text, file="old.dstack.yml", context=CompileContext(backend="aws", regions=("us-east-1",))).plan
    settings = make_settings("aws", {"serveform:aws": {**CONFIG["serveform:aws"], "python_image": "runtime"}})
    rec = Recording()
    with pytest.raises(pulumi.RunError) as info:
        run_program(lambda: backend.deploy(settings, [plan]), recording=rec)
    assert "serveform:aws.runtime_image: required with python_image: runtime" in str(info.value)
    assert "serveform:aws.python_image: runtime: the runtime image has Python 3.11, but old.dstack.yml asks for python: '3.10'" in str(info.value)
    assert rec.resources == []
