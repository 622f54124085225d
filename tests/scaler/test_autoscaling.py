"""The AWS applier (`serveform.scaler.autoscaling`) against moto's server on loopback.

Real HTTP, real SigV4 (moto checks its shape), credentials from moto's instance metadata
(IMDSv2) as on the gateway VM; moto's call log and its own DescribeAutoScalingGroups (boto3 in
moto's interpreter) say what the groups look like afterwards.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests" / "boot"), str(ROOT / "tests" / "components")]

from _vmboot import Moto, loopback_moto  # noqa: E402

from serveform.aws.client import AwsError, Credentials, instance_credentials, query_call  # noqa: E402
from serveform.scaler.applier import ApplyError, ApplyWorker  # noqa: E402
from serveform.scaler.autoscaling import AutoScalingApplier, groups_from_discovery  # noqa: E402
from serveform.scaler.daemon import load_gateway_services  # noqa: E402

REGION = "us-east-1"
GROUPS = {"chat": "serveform-test-chat", "llm": "serveform-test-llm"}


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = loopback_moto(tmp_path_factory.mktemp("moto"))
    try:
        server.call(("ec2", "create_launch_template", {"LaunchTemplateName": "scaler-test", "LaunchTemplateData": {"ImageId": "ami-12c6146b", "InstanceType": "t3.micro"}}))
        yield server
    finally:
        server.close()


@pytest.fixture()
def groups(moto, monkeypatch):
    """Two fresh groups (chat 1 in 1..3, llm 0 in 0..2) and the SDK endpoint variables pointing at moto."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.url)
    monkeypatch.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", moto.url)
    calls = []
    for service, (low, high, desired) in {"chat": (1, 3, 1), "llm": (0, 2, 0)}.items():
        calls.append(("autoscaling", "create_auto_scaling_group", {
            "AutoScalingGroupName": GROUPS[service], "MinSize": low, "MaxSize": high, "DesiredCapacity": desired,
            "LaunchTemplate": {"LaunchTemplateName": "scaler-test", "Version": "$Latest"}, "AvailabilityZones": [f"{REGION}a"],
        }))
    moto.call(*calls)
    yield moto
    moto.call(*[("autoscaling", "delete_auto_scaling_group", {"AutoScalingGroupName": g, "ForceDelete": True}) for g in GROUPS.values()])


def _desired(moto: Moto) -> dict[str, int]:
    (described,) = moto.call(("autoscaling", "describe_auto_scaling_groups", {"AutoScalingGroupNames": list(GROUPS.values())}))
    by_name = {g["AutoScalingGroupName"]: g["DesiredCapacity"] for g in described["AutoScalingGroups"]}
    return {s: by_name[g] for s, g in GROUPS.items()}


def _applier(**kwargs) -> AutoScalingApplier:
    return AutoScalingApplier(GROUPS, REGION, credentials=instance_credentials, **kwargs)


def _calls(moto: Moto, since: int) -> list[str]:
    return [c.split(" ", 1)[1] for c in moto.calls()[since:]]


def test_reads_each_groups_desired_capacity_with_the_instance_role(groups):
    start = len(groups.calls())
    assert _applier().read_replicas() == {"chat": 1, "llm": 0}
    calls = _calls(groups, start)
    # IMDSv2: a session token first, then the role's keys; then one signed describe.
    assert calls[0] == "imds:PUT /latest/api/token" and "autoscaling:DescribeAutoScalingGroups" in calls


def test_a_group_that_does_not_exist_is_left_out(groups):
    applier = AutoScalingApplier({**GROUPS, "gone": "serveform-test-gone"}, REGION, credentials=instance_credentials)
    assert applier.read_replicas() == {"chat": 1, "llm": 0}
    with pytest.raises(ApplyError, match="gone: no auto scaling group serveform-test-gone"):
        applier.apply({"gone": 1}, message="test")


def test_apply_sets_the_desired_capacity_and_returns_what_the_groups_run(groups):
    start = len(groups.calls())
    assert _applier().apply({"chat": 3, "llm": 1}, message="serveform scaler: chat=3; llm=1") == {"chat": 3, "llm": 1}
    assert _desired(groups) == {"chat": 3, "llm": 1}
    assert _calls(groups, start).count("autoscaling:SetDesiredCapacity") == 2


def test_a_count_outside_the_groups_range_is_clamped_and_an_unchanged_one_is_not_written(groups):
    start = len(groups.calls())
    # Auto Scaling refuses a desired capacity outside [min, max]: the group's own range decides.
    assert _applier().apply({"chat": 9, "llm": 0}, message="test") == {"chat": 3, "llm": 0}
    assert _desired(groups) == {"chat": 3, "llm": 0}
    assert _calls(groups, start).count("autoscaling:SetDesiredCapacity") == 1  # llm was at 0 already


def test_a_count_set_since_the_decision_is_kept(groups):
    """Compare-and-set: someone ran `serveform scale chat 2` after the scaler decided from 1."""
    manual = _applier(source="manual")
    assert manual.apply({"chat": 2}, message="serveform scale chat 2") == {"chat": 2}
    start = len(groups.calls())
    assert _applier().apply({"chat": 3}, message="scaler", expected={"chat": 1}) == {"chat": 2}
    assert _desired(groups)["chat"] == 2
    assert "autoscaling:SetDesiredCapacity" not in _calls(groups, start)


def test_the_worker_drives_it_and_the_daemon_follows_what_the_groups_run(groups):
    applied = []
    worker = ApplyWorker(_applier(), on_applied=applied.append)
    worker.submit({"chat": 2}, expected={"chat": 1})
    assert worker.run_once() is None
    assert applied == [{"chat": 2}] and _desired(groups)["chat"] == 2


def test_an_aws_error_answer_names_its_code(groups):
    # Auto Scaling's (moto's) answer to an incomplete request: the XML error's code and message.
    with pytest.raises(AwsError) as caught:
        query_call("autoscaling", REGION, "CreateAutoScalingGroup", {"AutoScalingGroupName": "x", "MinSize": "1", "MaxSize": "2"},
                   version="2011-01-01", credentials=Credentials("test", "test"))
    assert caught.value.status == 400 and caught.value.code == "ValidationError", caught.value
    assert "LaunchTemplate" in caught.value.message


def test_unreachable_groups_fail_as_an_apply_error_that_is_retried(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    applier = AutoScalingApplier(GROUPS, REGION, credentials=lambda: Credentials("test", "test"))
    worker = ApplyWorker(applier, backoff_initial_seconds=0.01)
    worker.submit({"chat": 2})
    assert worker.run_once() > 0 and worker.pending() == {"chat": 2}
    assert "DescribeAutoScalingGroups" in worker.stats().last_error


def test_the_gateway_vms_files_say_which_groups_and_services(tmp_path):
    from _cloud_examples import example_plans  # tests/components: the seed examples

    discovery = tmp_path / "discovery.json"
    discovery.write_text(json.dumps({"stack": "dev", "targets": [
        {"service": "chat", "port": 8000, "cloud": "aws", "group": "serveform-dev-chat", "region": REGION},
    ]}))
    assert groups_from_discovery(discovery) == ({"chat": "serveform-dev-chat"}, REGION)
    plans = example_plans("aws")
    gateway = tmp_path / "gateway.json"
    gateway.write_text(json.dumps({"settings": {"domain": "example.com"},
                                   "plans": [json.loads(p.model_dump_json(exclude={"code"})) for p in plans.values()]}))
    services, problems = load_gateway_services(gateway, {n: 2 for n in plans})
    scaled = sorted(n for n, p in plans.items() if p.scaling)
    assert problems == [] and sorted(s.name for s in services) == scaled
    assert all(s.configured == 2 and s.host == f"{plans[s.name].route.subdomain}.example.com" for s in services)


@pytest.fixture()
def aws_stack(tmp_path, groups):
    """A project whose `prod` stack (real Pulumi CLI, file:// state) is an aws stack as `up` leaves it:
    its `services` output names the groups. The checkpoint is imported: the AWS provider cannot
    run here, and `serveform scale` / `status` read nothing else of the stack."""
    import os
    import subprocess

    from serveform.stacks.engine import find_pulumi

    (tmp_path / "stacks").mkdir()
    (tmp_path / "Pulumi.yaml").write_text("name: serveform\nruntime: python\nstackConfigDir: stacks\n")
    for name in GROUPS:
        (tmp_path / f"{name}.dstack.yml").write_text(
            f"type: service\nname: {name}\nimage: vllm/vllm-openai:v0.6.0\nport: 8000\nresources:\n  gpu: 1\n"
            "replicas: 0..3\nscaling:\n  metric: rps\n  target: 5\n"
        )
    (tmp_path / "stacks" / "Pulumi.prod.yaml").write_text(
        "config:\n  serveform:backend: aws\n  serveform:domain: models.example.com\n"
        f"  serveform:services: [chat.dstack.yml, llm.dstack.yml]\n  serveform:aws:\n    region: {REGION}\n"
    )
    env = {
        **os.environ, "PULUMI_BACKEND_URL": (tmp_path / "state").as_uri(), "PULUMI_CONFIG_PASSPHRASE": "scale-test",
        "PULUMI_SKIP_UPDATE_CHECK": "1", "AWS_ACCESS_KEY_ID": "operator", "AWS_SECRET_ACCESS_KEY": "operator-secret",
        "AWS_ENDPOINT_URL": groups.url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": "http://127.0.0.1:9",
    }
    (tmp_path / "state").mkdir()
    services = [{"name": s, "url": f"https://{s}.models.example.com", "group": g, "replicas": {"min": 0, "max": 3, "count": 1}}
                for s, g in GROUPS.items()]
    deployment = {"version": 3, "deployment": {"manifest": {"time": "2026-12-06T00:00:00Z", "magic": "", "version": ""}, "resources": [
        {"urn": "urn:pulumi:prod::serveform::pulumi:pulumi:Stack::serveform-prod", "custom": False, "type": "pulumi:pulumi:Stack",
         "outputs": {"services": services, "domain": "models.example.com", "gateway_address": "127.0.0.1"}}]}}
    (tmp_path / "deployment.json").write_text(json.dumps(deployment))
    pulumi = str(find_pulumi())
    for argv in (["stack", "init", "prod"], ["stack", "import", "--stack", "prod", "--file", "deployment.json"]):
        subprocess.run([pulumi, *argv], cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    return tmp_path, env


def _serveform(project: Path, env: dict, *argv: str):
    import subprocess

    return subprocess.run([str(Path(sys.executable).parent / "serveform"), *argv, "--stack", "prod", "--project-dir", str(project)],
                          env=env, capture_output=True, text=True, timeout=300)


def test_serveform_scale_on_aws_sets_the_group_with_the_operators_credentials(aws_stack):
    project, env = aws_stack
    result = _serveform(project, env, "scale", "chat", "3")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "serveform scale: chat runs 3 replica(s) (auto scaling group serveform-test-chat)"
    (described,) = _desired_raw(env)
    assert described == 3
    # Out of the group's range: clamped by the group's own bounds, and said so.
    result = _serveform(project, env, "scale", "chat", "7")
    assert result.returncode == 0 and "chat runs 3 replica(s)" in result.stdout and "7 is outside its replicas range" in result.stdout
    unknown = _serveform(project, env, "scale", "nope", "1")
    assert unknown.returncode == 2 and "has no deployed service 'nope' (deployed: chat, llm)" in unknown.stderr
    without = {k: v for k, v in env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    without["AWS_SHARED_CREDENTIALS_FILE"] = str(project / "no-such-file")
    denied = _serveform(project, without, "scale", "chat", "2")
    assert denied.returncode == 1 and "no AWS credentials: set AWS_ACCESS_KEY_ID" in denied.stderr, denied.stderr


def _desired_raw(env: dict) -> list[int]:
    applier = AutoScalingApplier({"chat": GROUPS["chat"]}, REGION, credentials=lambda: Credentials("test", "test"))
    import os

    saved = os.environ.get("AWS_ENDPOINT_URL")
    os.environ["AWS_ENDPOINT_URL"] = env["AWS_ENDPOINT_URL"]
    try:
        return [applier.read_replicas()["chat"]]
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL")
        else:
            os.environ["AWS_ENDPOINT_URL"] = saved


def test_serveform_status_on_aws_reads_the_groups(aws_stack, groups):
    project, env = aws_stack
    groups.call(("autoscaling", "set_desired_capacity", {"AutoScalingGroupName": GROUPS["llm"], "DesiredCapacity": 2}))
    result = _serveform(project, env, "status", "--json")
    assert result.returncode == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["groups"] == {"region": REGION, "reachable": True, "error": None}
    replicas = {s["name"]: s["replicas"] for s in status["services"]}
    # The groups' own counts and ranges, not the outputs' (count 1, range 0..3).
    assert {n: (r["desired"], r["min"], r["max"]) for n, r in replicas.items()} == {"chat": (1, 1, 3), "llm": (2, 0, 2)}
    without = {k: v for k, v in env.items() if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")}
    without["AWS_SHARED_CREDENTIALS_FILE"] = str(project / "no-such-file")
    table = _serveform(project, without, "status")
    assert table.returncode == 0, table.stderr
    assert "auto scaling groups: us-east-1  (desired counts from the stack's outputs; groups unreachable: no AWS credentials" in table.stdout


async def test_the_daemon_on_a_gateway_vm_applies_its_decision_to_the_group(groups, tmp_path):
    """`serveform scaler run --aws-groups --gateway-config`, as the AWS gateway's unit runs it: the
    services from gateway.json, their counts from the groups, a decision set with the instance role."""
    import asyncio
    import time

    from aiohttp import web

    from serveform.scaler.daemon import ScalerConfig, run
    from serveform.translator import CompileContext, compile_text

    text = "type: service\nname: chat\nimage: vllm/vllm-openai:v0.6.0\nport: 8000\nresources:\n  gpu: 1\nreplicas: 1..3\nscaling:\n  metric: rps\n  target: 5\n"
    context = CompileContext(backend="aws", domain="models.example.com", regions=(REGION,), require_env=False)
    plan = compile_text(text, file="chat.dstack.yml", context=context).plan
    (tmp_path / "gateway.json").write_text(json.dumps({"settings": {"domain": "models.example.com"}, "plans": [json.loads(plan.model_dump_json(exclude={"code"}))]}))
    (tmp_path / "discovery.json").write_text(json.dumps({"stack": "test", "targets": [
        {"service": "chat", "port": 8000, "cloud": "aws", "group": GROUPS["chat"], "region": REGION}]}))
    served = {"requests": 0}

    async def metrics(_request):
        return web.Response(text=f'serveform_requests_total{{service="chat",host="chat.models.example.com"}} {served["requests"]}\n')

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    config = ScalerConfig(
        stack="test", project_dir=tmp_path, metrics_url=f"http://127.0.0.1:{port}/metrics", interval_seconds=0.1, listen=None,
        state_path=tmp_path / "state.json", aws_groups=tmp_path / "discovery.json", gateway_config=tmp_path / "gateway.json",
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run(config, stop=stop))
    try:
        await asyncio.sleep(0.5)  # a first scrape: the window starts at 0 requests
        assert _desired(groups)["chat"] == 1
        served["requests"] = 700  # 700 over chat's 60 s window: 11.7 rps against 5 per replica -> 3
        deadline = time.monotonic() + 30
        while _desired(groups)["chat"] == 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert _desired(groups)["chat"] == 3
        assert json.loads((tmp_path / "state.json").read_text())["services"]["chat"]["applied"] == 3
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 30) == 0
        await runner.cleanup()
