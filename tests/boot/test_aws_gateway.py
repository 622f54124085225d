"""Issue 14: the AWS stack's gateway VM user data, booted for real.

The user data is rendered by the AWS components (under Pulumi's mock runtime, the only way here:
the AWS provider plugin cannot be built) from the aws stack's chat example, with the real
artifacts (`serveform.image.vm`). It then boots in a Debian bookworm container (systemd as PID
1, cloud-init's NoCloud seed) that has its own network namespace and no route anywhere but the
veth's host side, where moto answers S3, Secrets Manager, EC2 / Auto Scaling, STS and the
instance metadata, and the project's chat server stands in for the replica that discovery finds
through the group in moto. The only test knobs are the AWS SDKs' endpoint variables, set by a
drop-in in the container's root — the user data carries none.

Boot timings are printed (`pytest tests/boot -s -k timings` shows them).
"""

from __future__ import annotations

import base64
import fnmatch
import gzip
import http.client
import json
import os
import re
import socket
import ssl
import time
from pathlib import Path

import pytest
import yaml

from _gateway_checks import Replica, https as _https, wait_https as _wait_https
from _vmboot import ROOT, Moto, Network, Vm, prepare

import _pulumi_harness

TOKEN = "boot-test-token-0123456789abcdef0123456789abcdef"
PASSPHRASE = "boot-test-passphrase"
DOMAIN = "ai.example.com"
SERVEFORM_UNITS = ["serveform-gateway.service", "serveform-discovery.timer", "serveform-scaler.service"]
TIMINGS: dict[str, float] = {}

class _BootMocks(_pulumi_harness.Mocks):
    """The components' mocks, with secret IDs moto can hold (a name is a valid SecretId)."""

    def new_resource(self, args):
        ident, state = super().new_resource(args)
        if args.typ == "aws:secretsmanager/secret:Secret":
            state["arn"] = f"serveform-boot-{args.name}"
        if args.typ == "aws:s3/bucket:Bucket":
            # The bucket's real ARN shape: the role's object grants then name what the VM fetches.
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
        return ident, state


def _render(monkeypatch_env: dict[str, str], *, aws: dict | None = None) -> dict:
    """The aws stack's gateway: its user data, its artifacts (key -> file) and its secrets (ID -> value).

    ``aws``: more `serveform:aws` keys (the replica test's runtime image).
    """
    from serveform.components import aws as aws_backend
    from serveform.components.program import compile_plans
    from serveform.stacks.settings import StackSettings

    config = yaml.safe_load((ROOT / "stacks" / "Pulumi.aws.yaml").read_text())["config"]
    # The internal CA instead of ACME (no DNS here); a token of the test's own.
    config["serveform:gateway"] = {"tls": "internal"}
    config["serveform:tokens"] = [TOKEN]
    config["serveform:aws"] = {**config["serveform:aws"], **(aws or {})}
    # The stack's own name: the scaler's project copy holds stacks/Pulumi.aws.yaml.
    settings = StackSettings.from_config(config, stack="aws", project_dir=str(ROOT))
    plans = compile_plans(settings)
    saved = {k: os.environ.get(k) for k in monkeypatch_env}
    os.environ.update(monkeypatch_env)
    original = _pulumi_harness.Mocks
    _pulumi_harness.Mocks = _BootMocks
    try:
        recording = _pulumi_harness.run_program(lambda: aws_backend.deploy(settings, plans), stack="aws")
    finally:
        _pulumi_harness.Mocks = original
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    vm = recording.one("aws:ec2/instance:Instance", "gateway-vm")
    objects = {r.inputs["key"]: Path(r.raw_inputs["source"].path) for r in recording.resources if r.type == "aws:s3/bucketObjectv2:BucketObjectv2"}
    secrets = {}
    for r in recording.resources:
        if r.type == "aws:secretsmanager/secretVersion:SecretVersion":
            secrets[f"serveform-boot-{r.name.removesuffix('-value')}"] = _pulumi_harness.unwrap(r.inputs["secretString"])
    # What EC2 would hand the VM: the gzip'd document (cloud-init unpacks it).
    seed = base64.b64decode(vm.inputs["userDataBase64"])
    user_data = gzip.decompress(seed).decode()
    bucket = re.search(r"/opt/serveform/bin/serveform-fetch artifact \S+ \S+ (\S+) ", user_data).group(1)
    group = next(r for r in recording.resources if r.type == "aws:autoscaling/group:Group")
    template = next(r for r in recording.resources if r.type == "aws:ec2/launchTemplate:LaunchTemplate")
    policy = json.loads(recording.one("aws:iam/rolePolicy:RolePolicy", "gateway-policy").inputs["policy"])
    return {"replica_seed": base64.b64decode(template.inputs["userData"]), "image": plans[0].replica_group.image,
            "user_data": user_data, "seed": seed, "objects": objects, "secrets": secrets, "bucket": bucket, "group": group.inputs["name"],
            "port": plans[0].replica_group.container_port, "host": f"chat.{DOMAIN}", "policy": policy, "plan": plans[0]}


@pytest.fixture(scope="module")
def vmboot():
    return prepare()


@pytest.fixture(scope="module")
def rendered():
    # A deploying environment with state credentials: none of it may reach the VM (its scaler runs no `up`).
    env = {"PULUMI_BACKEND_URL": "file:///var/lib/serveform-scaler/state", "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE}
    t0 = time.monotonic()
    out = _render(env)
    TIMINGS["render (mocks, artifacts cached)"] = time.monotonic() - t0
    return out


def _seed_moto(moto: Moto, rendered: dict, net: Network, *, tamper: str | None = None) -> None:
    calls = [("s3", "create_bucket", {"Bucket": rendered["bucket"]})]
    for key, path in sorted(rendered["objects"].items()):
        if tamper and key.startswith(f"artifacts/{tamper}-"):
            calls.append(("s3", "put_object", {"Bucket": rendered["bucket"], "Key": key, "Body": "tampered"}))
        else:
            calls.append(("s3", "put_object", {"Bucket": rendered["bucket"], "Key": key, "Body": {"file": str(path)}}))
    for name, value in sorted(rendered["secrets"].items()):
        calls.append(("secretsmanager", "create_secret", {"Name": name, "SecretString": value}))
    moto.call(*calls)


def _start_replica_group(moto: Moto, rendered: dict, net: Network) -> str:
    """The service's auto scaling group in moto, in the veth's subnet: its instance's address."""
    (vpc,) = moto.call(("ec2", "create_vpc", {"CidrBlock": str(net.subnet)}))
    (subnet,) = moto.call(("ec2", "create_subnet", {"VpcId": vpc["Vpc"]["VpcId"], "CidrBlock": str(net.subnet)}))
    moto.call(
        ("ec2", "create_launch_template", {"LaunchTemplateName": "boot-chat", "LaunchTemplateData": {"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"}}),
        ("autoscaling", "create_auto_scaling_group", {
            "AutoScalingGroupName": rendered["group"], "MinSize": 1, "MaxSize": 3, "DesiredCapacity": 1,
            "LaunchTemplate": {"LaunchTemplateName": "boot-chat", "Version": "$Latest"}, "VPCZoneIdentifier": subnet["Subnet"]["SubnetId"],
        }),
    )
    (described,) = moto.call(("ec2", "describe_instances", {"Filters": [{"Name": "tag:aws:autoscaling:groupName", "Values": [rendered["group"]]}]}))
    (address,) = [i["PrivateIpAddress"] for r in described["Reservations"] for i in r["Instances"]]
    assert address not in (net.host_ip, net.guest_ip), "moto gave the replica the veth's own address; rerun"
    return address


@pytest.fixture(scope="module")
def gateway(vmboot, rendered, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gateway-vm")
    net = Network.create(f"sfgw{os.getpid() % 100000}")
    moto = replica = vm = None
    try:
        moto = Moto(vmboot["MOTO_SERVER"], net.host_ip, folder)
        t0 = time.monotonic()
        _seed_moto(moto, rendered, net)
        TIMINGS["moto seeded with the artifacts"] = time.monotonic() - t0
        address = _start_replica_group(moto, rendered, net)
        net.add_host_address(int(address.rsplit(".", 1)[1]) - 1)
        replica = Replica(address, rendered["port"], folder)
        vm = Vm(f"sfgw{os.getpid() % 100000}", vmboot["ROOT"], folder, net)
        vm.seed(rendered["seed"], instance_id="i-0boot0gateway", environment={
            "AWS_ENDPOINT_URL": moto.url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": moto.url,
        })
        vm.boot()
        status, seconds = vm.wait_cloud_init()
        TIMINGS["first boot: cloud-init done"] = seconds
        yield {"vm": vm, "moto": moto, "net": net, "status": status, "replica": address}
    finally:
        for part in (vm, replica, moto):
            if part is not None:
                part.close()
        net.close()
        print("\nboot timings (s): " + json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


def test_cloud_init_finishes_and_every_unit_is_active(gateway):
    vm = gateway["vm"]
    assert gateway["status"] == "done", vm.sh("cloud-init status --long; tail -50 /var/log/cloud-init-output.log").stdout
    states = vm.wait_active(SERVEFORM_UNITS)
    assert states == {u: "active" for u in SERVEFORM_UNITS}, vm.sh("journalctl -u 'serveform-*' --no-pager | tail -60").stdout
    assert vm.sh("systemctl is-failed serveform-discovery.service").stdout.strip() != "failed"


def test_nothing_came_from_the_internet(gateway):
    """The container has no route but to the host side; the software came from moto's bucket."""
    vm, moto = gateway["vm"], gateway["moto"]
    calls = [c.split(" ", 1)[1] for c in moto.calls() if c.startswith(gateway["net"].guest_ip + " ")]
    fetched = {c.split("/")[-1].rsplit("-", 1)[0] for c in calls if c.startswith("s3:GET ")}
    # No Pulumi CLI: the scaler sets desired capacity with the Auto Scaling API.
    assert fetched == {"wheelhouse", "caddy"}
    assert "ok" in vm.sh("test -x /usr/local/bin/caddy && /usr/local/bin/caddy list-modules | grep -q serveform && echo ok").stdout
    assert vm.sh("ip route get 1.1.1.1").stdout.split()[2] == gateway["net"].host_ip


def test_https_answers_401_without_the_token_and_200_with_it(gateway):
    vm, net = gateway["vm"], gateway["net"]
    t0 = time.monotonic()
    assert _wait_https(vm, net, f"chat.{DOMAIN}", "/health", TOKEN) == 200
    TIMINGS["first 200 after cloud-init"] = time.monotonic() - t0
    code, _ = _https(vm, net, f"chat.{DOMAIN}", "/health", None)
    assert code == 401
    code, body = _https(vm, net, f"chat.{DOMAIN}", "/v1/models", TOKEN)
    assert code == 200 and b"chat-small" in body


def test_discovery_found_the_replica_through_the_group(gateway):
    vm = gateway["vm"]
    calls = [c.split(" ", 1)[1] for c in gateway["moto"].calls() if c.startswith(gateway["net"].guest_ip + " ")]
    assert "ec2:DescribeInstances" in calls
    replicas = vm.sh("cat /var/lib/serveform/gateway/replicas/*.json 2>/dev/null; ls -R /var/lib/serveform/gateway").stdout
    assert gateway["replica"] in replicas


def test_scaler_healthz_answers(gateway):
    vm = gateway["vm"]
    deadline = time.monotonic() + 60
    out = ""
    while time.monotonic() < deadline:
        out = vm.sh("python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9465/healthz').status)\"").stdout.strip()
        if out == "200":
            break
        time.sleep(1)
    assert out == "200", vm.sh("journalctl -u serveform-scaler --no-pager | tail -30").stdout


def test_the_vm_holds_no_state_credentials_and_the_gateway_user_cannot_see_the_scaler(gateway, rendered):
    vm = gateway["vm"]
    # The scaler runs no `up`: no env file, no Pulumi CLI, no project copy, and the passphrase of
    # the deploying environment nowhere on the VM or in its boot document.
    assert vm.sh("test -e /etc/serveform/scaler.env || test -e /usr/local/bin/pulumi || test -e /opt/serveform/project || echo none").stdout.strip() == "none"
    assert PASSPHRASE not in rendered["user_data"] and PASSPHRASE not in vm.sh("grep -rl -- " + PASSPHRASE + " /etc /opt /var/lib 2>/dev/null; true").stdout
    # Nor its processes: run as the gateway's unit runs (its user, ProtectProc=invisible), the
    # scaler's process is not there at all.
    scaler_pid = vm.sh("systemctl show -p MainPID --value serveform-scaler.service").stdout.strip()
    assert scaler_pid not in ("", "0")
    probe = "systemd-run --wait --pipe --quiet -p User=serveform -p ProtectProc=invisible sh -c 'test -e /proc/{pid} && echo visible || echo hidden'"
    assert vm.sh(probe.format(pid=scaler_pid)).stdout.strip() == "hidden"
    # The control: the same probe sees its own process (`$$$$`: systemd turns `$$` into `$`).
    assert vm.sh(probe.format(pid="$$$$")).stdout.strip() == "visible"


def _group_desired(moto: Moto, group: str) -> int:
    (described,) = moto.call(("autoscaling", "describe_auto_scaling_groups", {"AutoScalingGroupNames": [group]}))
    return described["AutoScalingGroups"][0]["DesiredCapacity"]


def test_a_scaling_decision_reaches_the_group_as_its_desired_capacity(gateway, rendered):
    """Real requests through Caddy fill the scaler's window; its decision becomes moto's desired capacity.

    chat scales 1..3 at 10 rps per replica over a 60 s window and was never scaled, so more than
    600 requests within the window ask for 2 replicas at once (scaler/policy.py).
    """
    vm, net, moto = gateway["vm"], gateway["net"], gateway["moto"]
    scaling = rendered["plan"].scaling
    assert (scaling.target, scaling.window_seconds, rendered["plan"].replicas.max) == (10, 60, 3)
    assert _group_desired(moto, rendered["group"]) == 1
    requests = int(scaling.target * scaling.window_seconds * 1.3)  # 780: 13 rps over the window -> 2 replicas
    status = json.loads(vm.sh("cat /var/lib/serveform/gateway/status.json", check=True).stdout)
    context = ssl.create_default_context(cadata=(vm.root / status["ca_cert"].lstrip("/")).read_text())
    host = f"chat.{DOMAIN}"

    def burst(count: int) -> int:
        ok = 0
        connection = http.client.HTTPSConnection(net.guest_ip, 443, context=context, timeout=30)
        connection.sock = context.wrap_socket(socket.create_connection((net.guest_ip, 443), timeout=30), server_hostname=host)
        for _ in range(count):
            connection.request("GET", "/health", headers={"Host": host, "Authorization": f"Bearer {TOKEN}"})
            response = connection.getresponse()
            response.read()
            ok += response.status == 200
        connection.close()
        return ok

    t0 = time.monotonic()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        served = sum(pool.map(burst, [requests // 4] * 4))
    TIMINGS[f"{requests} requests through Caddy"] = time.monotonic() - t0
    assert served == requests // 4 * 4
    assert time.monotonic() - t0 < scaling.window_seconds, "the burst must fit in the scaler's window"
    deadline = time.monotonic() + 90
    desired = 1
    while time.monotonic() < deadline and desired == 1:
        time.sleep(2)
        desired = _group_desired(moto, rendered["group"])
    TIMINGS["burst start -> desired capacity changed"] = time.monotonic() - t0
    journal = vm.sh("journalctl -u serveform-scaler --no-pager | tail -30").stdout
    assert desired == 2, journal
    assert f"group {rendered['group']} desired capacity 1 -> 2" in journal, journal
    calls = [c.split(" ", 1)[1] for c in moto.calls() if c.startswith(net.guest_ip + " ")]
    assert "autoscaling:SetDesiredCapacity" in calls and "autoscaling:DescribeAutoScalingGroups" in calls


def test_units_are_sandboxed(gateway):
    """`systemd-analyze security` inside the booted VM: each serveform unit's exposure score."""
    vm = gateway["vm"]
    scores = {}
    for unit in ("serveform-gateway.service", "serveform-scaler.service", "serveform-discovery.service"):
        out = vm.sh(f"systemd-analyze security --no-pager {unit}").stdout
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", out)
        assert match, out[-2000:]
        scores[unit] = float(match.group(1))
    print("\nsystemd-analyze security: " + json.dumps(scores))
    # systemd calls <= 2.0 "OK"; the gateway keeps CAP_NET_BIND_SERVICE and the network, hence its margin.
    assert all(score <= 2.5 for score in scores.values()), scores


def test_a_rebooted_gateway_comes_back_serving(gateway):
    vm, net = gateway["vm"], gateway["net"]
    vm.stop()
    assert vm.proc.returncode is not None
    vm.boot()
    t0 = time.monotonic()
    assert vm.wait_active(SERVEFORM_UNITS, timeout=180) == {u: "active" for u in SERVEFORM_UNITS}
    assert _wait_https(vm, net, f"chat.{DOMAIN}", "/health", TOKEN) == 200
    TIMINGS["reboot: serving again"] = time.monotonic() - t0


def _allows(statement: dict, action: str, resource: str | None) -> bool:
    """Whether an Allow statement (no conditions here) grants ``action`` on ``resource`` (None: the call names none, IAM's `*`)."""
    resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
    if statement["Effect"] != "Allow" or action not in statement["Action"] or "Condition" in statement:
        return False
    return any(pattern == "*" or (resource is not None and fnmatch.fnmatchcase(resource, pattern)) for pattern in resources)


def test_the_calls_the_gateway_made_are_what_its_role_grants(gateway, rendered):
    """Every call moto answered for the VM (boot, discovery, serving, scaling), with what it named,
    against the role's own rendered policy: each is granted, and each grant was used (issue 14 item 3)."""
    guest = gateway["net"].guest_ip
    records = [json.loads(line) for line in Path(str(gateway["moto"].log) + ".jsonl").read_text().splitlines() if line]
    made = {(r["call"], r["resource"]) for r in records if r["client"] == guest and not r["call"].startswith("imds:")}
    policy = rendered["policy"]
    calls = set()
    for call, resource in made:
        service, action = call.split(":", 1)
        if service == "s3":
            assert action.startswith("GET "), call
            calls.add(("s3:GetObject", f"arn:aws:s3:::{resource}"))
        elif action == "SetDesiredCapacity":
            calls.add((call, f"arn:aws:autoscaling:us-east-1:123456789012:autoScalingGroup:0-uuid:autoScalingGroupName/{resource}"))
        elif service == "secretsmanager":
            calls.add((call, resource))  # the mocks make a secret's ARN its name
        else:
            assert action.startswith("Describe"), call
            calls.add((call, None))
    print("\ncalls the gateway VM made: " + json.dumps(sorted(c[0] for c in calls)))
    denied = [c for c in calls if not any(_allows(s, *c) for s in policy["Statement"])]
    assert not denied, denied
    # Least privilege, both ways: no grant the VM never used.
    unused = [(s["Sid"], a) for s in policy["Statement"] for a in s["Action"] if not any(a == c[0] and _allows(s, *c) for c in calls)]
    assert not unused, unused
    assert {c[0] for c in calls} == {"s3:GetObject", "secretsmanager:GetSecretValue", "ec2:DescribeInstances",
                                     "autoscaling:DescribeAutoScalingGroups", "autoscaling:SetDesiredCapacity"}


@pytest.fixture()
def tampered_boot(vmboot, rendered, tmp_path):
    net = Network.create(f"sftp{os.getpid() % 100000}")
    moto = vm = None
    try:
        moto = Moto(vmboot["MOTO_SERVER"], net.host_ip, tmp_path)
        _seed_moto(moto, rendered, net, tamper="caddy")
        vm = Vm(f"sftp{os.getpid() % 100000}", vmboot["ROOT"], tmp_path, net)
        vm.seed(rendered["seed"], instance_id="i-0boot0tampered", environment={
            "AWS_ENDPOINT_URL": moto.url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": moto.url,
        })
        vm.boot()
        status, seconds = vm.wait_cloud_init()
        TIMINGS["tampered boot: cloud-init ended"] = seconds
        yield vm, status
    finally:
        for part in (vm, moto):
            if part is not None:
                part.close()
        net.close()


def test_a_tampered_artifact_fails_the_boot_with_one_clear_line(tampered_boot, rendered):
    vm, status = tampered_boot
    assert status == "error"
    expected = re.search(r"serveform-fetch artifact caddy (\S+) ", rendered["user_data"]).group(1)
    import hashlib

    got = hashlib.sha256(b"tampered").hexdigest()
    line = f"serveform: artifact caddy: sha256 mismatch (expected {expected}, got {got})"
    # cloud-final's output goes to `journal+console` (on EC2 the serial console, which
    # `aws ec2 get-console-output` shows); the journal holds what the console was sent. (nspawn
    # here forwards none of the container's console output, systemd's own included.)
    console = vm.sh("journalctl -b -u cloud-final.service -o cat --no-pager", check=True).stdout
    assert line in console, console[-3000:]
    assert [entry for entry in console.splitlines() if entry.startswith("serveform:")] == [line]
    assert line in vm.sh("cat /var/log/cloud-init-output.log").stdout
    assert vm.sh("test -e /usr/local/bin/caddy || echo absent").stdout.strip() == "absent"
    assert vm.sh("systemctl is-active serveform-gateway.service").stdout.strip() != "active"
