"""The local backend's components under Pulumi's mock runtime: what gets registered, with what.

Mocks (the shared `_pulumi_harness`) are installed before the backend registers anything; each
test deploys a stack in its own event loop and looks at the registrations the mocks saw (type,
logical name, parent chain, inputs, secret-ness).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pulumi
import pytest
from _pulumi_harness import Mocks, install
from pulumi.runtime import rpc
from pydantic import SecretStr

from serveform.stacks.settings import StackSettings
from serveform.translator.plan import (
    EnvValue,
    GatewayRoutePlan,
    ModelPlan,
    ReplicaBounds,
    ReplicaGroupPlan,
    ResourcesPlan,
    ScalingPlan,
    ServicePlan,
    VolumePlan,
)

REPLICA = "pulumi-python:dynamic/serveform-local:Replica"
DAEMON = "pulumi-python:dynamic/serveform-local:Daemon"
TOKEN = "pulumi-python:dynamic/serveform-local:Token"
DIRECTORY = "pulumi-python:dynamic/serveform-local:Directory"
PUBLICATION = "pulumi-python:dynamic/serveform-local:Publication"


@pytest.fixture
def tmp_path():
    """A project directory outside pytest's tree, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="sf-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def mocks() -> Mocks:
    return install(stack="dev")


def _plan(name: str = "chat", *, replicas: tuple[int, int, int] = (1, 3, 2), **group) -> ServicePlan:
    low, high, initial = replicas
    return ServicePlan(
        file=f"{name}.dstack.yml",
        name=name,
        backend="local",
        replica_group=ReplicaGroupPlan(
            image="python:3.11",
            commands=group.pop("commands", ("python stacks/examples/chat_server.py",)),
            container_port=8000,
            resources=ResourcesPlan(cpu_min=1, memory_min_gb=0.5, disk_min_gb=1),
            env=group.pop(
                "env",
                {
                    "MODEL_NAME": EnvValue(value="chat-small"),
                    "HF_TOKEN": EnvValue(value=SecretStr("hf-secret-value"), secret=True, source="stack"),
                },
            ),
            **group,
        ),
        replicas=ReplicaBounds(min=low, max=high, initial=initial),
        scaling=ScalingPlan(target=10) if high > low else None,
        route=GatewayRoutePlan(subdomain=name, model=ModelPlan(name=f"{name}-model")),
        volumes=(
            VolumePlan(kind="network", names=("shared-data",), path="/data"),
            VolumePlan(kind="instance", instance_path="/tmp/cache", path="/root/.cache"),
        ),
    )


def _settings(tmp_path: Path, **config) -> StackSettings:
    base = {"serveform:backend": "local", "serveform:services": ["chat.dstack.yml"]}
    return StackSettings.from_config({**base, **config}, stack="dev", project_dir=tmp_path)


async def _resolve(value):
    """Await an Output (or a structure of them) into (value, is_secret)."""
    output = pulumi.Output.from_input(value)
    return await output.future(), await output.is_secret()


def _exports() -> dict:
    return pulumi.runtime.get_root_resource().outputs


async def _deploy(settings: StackSettings, plans: list[ServicePlan]) -> None:
    """Run the backend and wait until every registration has reached the mocks."""
    from serveform.components.local import deploy

    deploy(settings, plans)
    for value in _exports().values():
        await _resolve(value)
    await pulumi.runtime.stack.wait_for_rpcs(await_all_outstanding_tasks=False)


async def test_registers_gateway_token_volume_and_one_replica_per_count(tmp_path, mocks):
    await _deploy(_settings(tmp_path).model_copy(update={"replicas": {"chat": 3}}), [_plan()])
    services, _ = await _resolve(_exports()["services"])

    replicas = sorted(r.name for r in mocks.of_type(REPLICA))
    assert replicas == ["chat-replica-0", "chat-replica-1", "chat-replica-2"]  # the scaler's count wins
    types = {r.typ for r in mocks.registered}
    assert {"serveform:local:Gateway", "serveform:local:ReplicaGroup", "serveform:local:Volume"} <= types
    assert [r.name for r in mocks.of_type(TOKEN)] == ["gateway-token"]
    assert [r.name for r in mocks.of_type(DIRECTORY)] == ["volume-shared-data-directory"]
    (publication,) = mocks.of_type(PUBLICATION)
    assert publication.name == "chat-route" and publication.inputs["gateway_instance"] == "gateway-process-id"
    assert sorted(r.name for r in mocks.of_type(DAEMON)) == ["gateway-process", "scaler-process"]
    assert services[0]["addresses"] == ["127.0.0.1:40000", "127.0.0.1:40001", "127.0.0.1:40002"]


@pytest.mark.parametrize(("configured", "expected"), [(None, 2), (0, 1), (9, 3), (3, 3)])
async def test_replica_count_is_the_resolved_or_initial_count_clamped_to_bounds(tmp_path, mocks, configured, expected):
    counts = {} if configured is None else {"chat": configured}
    await _deploy(_settings(tmp_path).model_copy(update={"replicas": counts}), [_plan()])
    services, _ = await _resolve(_exports()["services"])
    assert len(mocks.of_type(REPLICA)) == expected
    assert services[0]["replicas"] == {"min": 1, "max": 3, "count": expected}


async def test_children_are_parented_to_their_component(tmp_path, mocks):
    await _deploy(_settings(tmp_path), [_plan()])
    await _resolve(_exports()["services"])
    # The mock monitor builds URNs from the parent's type chain: the component's type appears in it.
    monitor = pulumi.runtime.settings.get_monitor()
    by_name = {urn.rsplit("::", 1)[-1]: urn for urn in monitor.resources}
    assert "serveform:local:ReplicaGroup$" + REPLICA in by_name["chat-replica-0"]
    assert "serveform:local:ReplicaGroup$" + PUBLICATION in by_name["chat-route"]
    assert "serveform:local:Gateway$" + DAEMON in by_name["gateway-process"]
    assert "serveform:local:Volume$" + DIRECTORY in by_name["volume-shared-data-directory"]


async def test_replica_inputs_carry_plan_commands_env_and_volumes(tmp_path, mocks):
    settings = _settings(tmp_path)
    await _deploy(settings, [_plan(working_dir="app", setup=("pip --version",))])
    await _resolve(_exports()["services"])
    inputs = mocks.named("chat-replica-1").inputs
    assert inputs["service"] == "chat" and inputs["replica"] == 1
    assert inputs["commands"] == ["python stacks/examples/chat_server.py"] and inputs["setup"] == ["pip --version"]
    assert inputs["project_dir"] == str(tmp_path) and inputs["working_dir"] == "app"
    assert inputs["log_path"] == str(settings.state_dir / "replicas" / "chat-1.log")
    assert inputs["container_port"] == 8000 and inputs["provider_version"]
    volume_dir = str(settings.state_dir / "volumes" / "shared-data")
    assert inputs["env"] == {
        "MODEL_NAME": "chat-small",
        "SERVEFORM_VOLUME_DATA": volume_dir,
        "SERVEFORM_VOLUME_ROOT_CACHE": "/tmp/cache",
        "SERVEFORM_VOLUMES": json.dumps({"/data": volume_dir, "/root/.cache": "/tmp/cache"}, sort_keys=True),
    }
    assert inputs["ready_timeout_seconds"] == settings.local.ready_timeout_seconds
    # The stack made .serveform/local/<stack> on demand: destroy may take it all, never more.
    assert inputs["cleanup_root"] == str(tmp_path / ".serveform")


async def test_secrets_stay_secret(tmp_path, mocks):
    await _deploy(_settings(tmp_path, **{"serveform:tokens": json.dumps(["configured-token-1-0123456789abcdef0123456789"])}), [_plan()])
    token, token_secret = await _resolve(_exports()["token"])
    assert (token, token_secret) == ("configured-token-1-0123456789abcdef0123456789", True)
    assert not mocks.of_type(TOKEN)  # configured tokens: nothing generated
    replica = mocks.named("chat-replica-0").inputs
    assert rpc.is_rpc_secret(replica["secret_env"])
    assert rpc.unwrap_rpc_secret(replica["secret_env"]) == {"HF_TOKEN": "hf-secret-value"}
    assert "HF_TOKEN" not in replica["env"]
    gateway = mocks.named("gateway-process").inputs
    assert rpc.is_rpc_secret(gateway["secret_files"])
    assert json.loads(rpc.unwrap_rpc_secret(gateway["secret_files"])["secrets/tokens.json"]) == ["configured-token-1-0123456789abcdef0123456789"]
    assert "configured-token-1-0123456789abcdef0123456789" not in json.dumps(gateway["files"])
    assert "__provider" in replica  # the serialized provider travels with the inputs


async def test_generated_token_is_exported_as_secret(tmp_path, mocks):
    await _deploy(_settings(tmp_path), [_plan()])
    assert await _resolve(_exports()["token"]) == ("generated-token-value", True)
    gateway = mocks.named("gateway-process").inputs
    assert json.loads(rpc.unwrap_rpc_secret(gateway["secret_files"])["secrets/tokens.json"]) == ["generated-token-value"]


async def test_gateway_runs_the_supervisor_on_loopback_with_local_ports(tmp_path, mocks):
    settings = _settings(tmp_path, **{"serveform:gateway": json.dumps({"https_port": 18443})})
    await _deploy(settings, [_plan()])
    gateway, _ = await _resolve(_exports()["gateway"])
    assert gateway == {
        "address": "127.0.0.1:18443",
        "ca_cert": str(settings.state_dir / "gateway" / "caddy" / "pki" / "authorities" / "local" / "root.crt"),
        "domain": "localhost",
    }
    inputs = mocks.named("gateway-process").inputs
    assert inputs["argv"][1:] == ["-m", "serveform.gateway", "run", "--state-dir", str(settings.state_dir / "gateway")]
    config = json.loads(inputs["files"]["gateway.json"])
    assert config["settings"]["bind"] == ["127.0.0.1"] and config["settings"]["http_port"] == 8080
    assert [p["name"] for p in config["plans"]] == ["chat"]
    assert inputs["ready_address"] == "127.0.0.1:18443"
    exports = _exports()
    assert await _resolve(exports["openai_base_url"]) == ("https://gateway.localhost:18443/v1", False)
    services, _ = await _resolve(exports["services"])
    assert services[0]["url"] == "https://chat.localhost:18443"
    assert services[0]["model"] == "chat-model" and services[0]["auth"] is True


async def test_plain_http_gateway_has_no_ca(tmp_path, mocks):
    await _deploy(_settings(tmp_path, **{"serveform:gateway": json.dumps({"tls": "off", "http_port": 18080})}), [_plan()])
    gateway, _ = await _resolve(_exports()["gateway"])
    assert gateway["address"] == "127.0.0.1:18080" and gateway["ca_cert"] is None
    services, _ = await _resolve(_exports()["services"])
    assert services[0]["url"] == "http://chat.localhost:18080"


async def test_a_volume_named_by_two_services_is_one_directory(tmp_path, mocks):
    await _deploy(_settings(tmp_path, **{"serveform:retainVolumes": "false"}), [_plan("chat"), _plan("other")])
    await _resolve(_exports()["services"])
    assert len(mocks.of_type(DIRECTORY)) == 1  # two services, one shared volume


async def test_a_service_the_gateway_cannot_serve_fails_before_any_resource(tmp_path, mocks):
    from serveform.components.local import deploy
    from serveform.components.local import deploy

    with pytest.raises(pulumi.RunError, match="chat.dstack.yml|gateway.dstack.yml: error: name: .*reserved"):
        deploy(_settings(tmp_path), [_plan("gateway")])  # `gateway.<domain>` is the router's host
    assert mocks.registered == []


async def test_the_scaler_runs_for_a_range_with_a_policy_and_gets_pulumi_env_at_start(tmp_path, mocks):
    settings = _settings(tmp_path)
    env = {
        "FROM_SHELL": EnvValue(value=SecretStr("shell-value"), secret=True, source="environment"),
        "HF_TOKEN": EnvValue(value=SecretStr("hf-secret-value"), secret=True, source="stack"),
    }
    await _deploy(settings, [_plan(env=env)])
    inputs = mocks.named("scaler-process").inputs
    argv = inputs["argv"]
    assert argv[1:6] == ["-m", "serveform.scaler", "run", "--stack", "dev"]
    assert argv[argv.index("--gateway-state-dir") + 1] == str(settings.state_dir / "gateway")
    assert argv[argv.index("--project-dir") + 1] == str(tmp_path)
    assert argv[argv.index("--listen") + 1] == "127.0.0.1:{port}" and inputs["ready_address"] == "127.0.0.1:{port}"
    # The backend URL and passphrase come from the environment at start, never from the state.
    assert "PULUMI_CONFIG_PASSPHRASE" in inputs["inherit_env"] and "PULUMI_CONFIG_PASSPHRASE" not in inputs["env"]
    # So do values the services take from the deploying environment: the scaler's `up` compiles them again.
    assert "FROM_SHELL" in inputs["inherit_env"] and "HF_TOKEN" not in inputs["inherit_env"]
    assert await _resolve(_exports()["scaler"]) == ({"address": "127.0.0.1:19465"}, False)


async def test_no_scaler_without_a_range(tmp_path, mocks):
    await _deploy(_settings(tmp_path), [_plan(replicas=(2, 2, 2))])
    assert [r.name for r in mocks.of_type(DAEMON)] == ["gateway-process"]
    assert "scaler" not in _exports()


async def test_a_state_dir_deeper_than_a_unix_socket_path_deploys(tmp_path, mocks):
    # The gateway keeps its sockets in a short runtime directory (tests/gateway runs one this deep).
    deep = tmp_path / ("d" * 100)
    await _deploy(_settings(tmp_path, **{"serveform:local": json.dumps({"state_dir": str(deep)})}), [_plan()])
    gateway = mocks.named("gateway-process")
    assert gateway.inputs["state_dir"] == str(deep / "gateway")
    assert len(str(deep / "gateway" / "caddy-admin.sock").encode()) > 107


async def test_a_service_scaled_to_zero_keeps_its_route_with_no_addresses(tmp_path, mocks):
    await _deploy(_settings(tmp_path).model_copy(update={"replicas": {"chat": 0}}), [_plan(replicas=(0, 2, 1))])
    assert mocks.of_type(REPLICA) == []
    (publication,) = mocks.of_type(PUBLICATION)
    assert publication.inputs["addresses"] == []
    services, _ = await _resolve(_exports()["services"])
    assert services[0]["replicas"]["count"] == 0 and services[0]["addresses"] == []


async def test_a_secret_probe_header_reaches_the_replica(tmp_path, mocks):
    """The files the component hands its daemon, run by the real gateway against a real replica:
    a probe header from a secret arrives with its value (never `**********`), and stays out of
    the plain files."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "gateway"))
    from gateway_helpers import CHAT_SERVER, ROOT, ensure_caddy, free_port, wait_for  # type: ignore[import-not-found]

    from serveform.gateway import publish_replicas, read_status
    from serveform.gateway.state import write_private
    from serveform.translator.plan import ProbePlan

    secret = "probe-secret-value"
    probe = ProbePlan(url="/health", interval_seconds=1, timeout_seconds=2, headers={"X-Probe-Key": SecretStr(secret), "X-Plain": "seen"})
    plan = _plan(replicas=(1, 1, 1))
    plan = plan.model_copy(update={"route": plan.route.model_copy(update={"probes": (probe,)})})
    ports = {"http_port": free_port(), "https_port": free_port(), "tls": "off"}
    await _deploy(_settings(tmp_path, **{"serveform:tokens": json.dumps(["tok-0123456789abcdef0123456789abcdef"]), "serveform:gateway": json.dumps(ports)}), [plan])
    inputs = mocks.named("gateway-process").inputs
    assert secret not in json.dumps(inputs["files"])
    secret_files = rpc.unwrap_rpc_secret(inputs["secret_files"])
    assert rpc.is_rpc_secret(inputs["secret_files"]) and secret in json.dumps(secret_files)

    ensure_caddy()
    state = tmp_path / "gateway"
    for name, text in {**inputs["files"], **secret_files}.items():
        write_private(state / name, text)
    port = free_port()
    replica = subprocess.Popen([sys.executable, str(CHAT_SERVER), "--host", "127.0.0.1", "--port", str(port)], cwd=ROOT)
    log = open(tmp_path / "gateway.log", "wb")  # noqa: SIM115
    gateway = subprocess.Popen([sys.executable, "-m", "serveform.gateway", "run", "--state-dir", str(state)], stdout=log, stderr=log, cwd=ROOT, env=os.environ)
    log.close()
    try:
        wait_for(lambda: gateway.poll() is not None or bool((read_status(state) or {}).get("caddy_pid")), 60, what="the gateway")
        assert gateway.poll() is None, (tmp_path / "gateway.log").read_text()
        publish_replicas(state, "chat", [f"127.0.0.1:{port}"])

        def probed() -> dict | None:
            try:
                headers = httpx.get(f"http://127.0.0.1:{port}/_stats", timeout=2).json()["last_headers"]
            except httpx.HTTPError:
                return None
            return headers if "X-Plain" in headers else None

        headers = wait_for(probed, what="a probe to reach the replica")
        assert headers["X-Probe-Key"] == secret
    finally:
        for process in (gateway, replica):
            process.send_signal(signal.SIGTERM)
            process.wait(30)
