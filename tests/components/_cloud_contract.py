"""Tests every VM backend (AWS, GCP, Azure) must pass, under Pulumi's mock runtime.

Each backend's test module sets `BACKEND`, `CONFIG` (its `serveform:*` stack config) and
`BAD_CONFIGS`, then star-imports this module so pytest collects these tests there.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import importlib
import json

import pulumi
import pytest
import yaml

from _cloud_examples import HF_TOKEN, REGISTRY_PASSWORD, example_plans, hostile_plan
from _pulumi_harness import GATEWAY_IP, Recording, run_program

from serveform.stacks.settings import StackSettings

TOKEN = "tok-abc.DEF_123~xyz-0123456789abcdef0123456789"


def make_settings(backend: str, config: dict, **extra) -> StackSettings:
    base = {"serveform:backend": backend, "serveform:services": ["services/x.dstack.yml"], "serveform:domain": "example.com",
            "serveform:tokens": [TOKEN]}
    base.update(config)
    base.update(extra)
    return StackSettings.from_config(base, stack="dev", project_dir=".")


def deploy(backend: str, settings: StackSettings, plans) -> Recording:  # noqa: D103
    module = importlib.import_module(f"serveform.components.{backend}")
    return run_program(lambda: module.deploy(settings, list(plans)))


def _decoded_texts(value) -> list[str]:
    """Every string in ``value``, plus the base64-decoded (and gunzipped: the AWS gateway's user data)
    form of strings that decode to text."""
    out = []
    if isinstance(value, dict):
        for v in value.values():
            out += _decoded_texts(v)
    elif isinstance(value, list):
        for v in value:
            out += _decoded_texts(v)
    elif isinstance(value, str):
        out.append(value)
        if len(value) > 16:
            try:
                raw = base64.b64decode(value, validate=True)
                out.append((gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode())
            except (binascii.Error, UnicodeDecodeError, ValueError, OSError, EOFError):
                pass
    return out


def _strip_secrets(value):
    from pulumi.runtime import rpc

    if rpc.is_rpc_secret(value):
        return "[secret]"
    if isinstance(value, dict):
        return {k: _strip_secrets(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip_secrets(v) for v in value]
    return value


def user_data_of(rec: Recording, service: str) -> str:
    """The cloud-init a backend gives a service's replicas (decoded)."""
    for r in rec.resources:
        if r.parent.endswith(f"::{service}") or r.parent.split("::")[-1] == service:
            for text in _decoded_texts(r.inputs):
                if text.startswith("#cloud-config"):
                    document = yaml.safe_load(text)
                    return "\n".join(f["content"] for f in document["write_files"])
    raise AssertionError(f"no cloud-init among {service}'s resources")


@pytest.fixture(scope="module")
def recording(request) -> Recording:
    mod = request.module
    return deploy(mod.BACKEND, make_settings(mod.BACKEND, mod.CONFIG), example_plans(mod.BACKEND).values())


def test_one_group_per_example_service_children_parented(recording, request):
    backend = request.module.BACKEND
    groups = recording.of_type(f"serveform:{backend}:GpuInstanceGroup")
    assert sorted(g.name for g in groups) == sorted(example_plans(backend))
    assert len(recording.of_type(f"serveform:{backend}:Gateway")) == 1
    assert [v.name for v in recording.of_type(f"serveform:{backend}:Volume")] == ["my-new-volume-volume"]
    components = {r.urn: r for r in recording.resources if not r.custom}
    for r in recording.resources:
        if r.custom and not r.type.startswith("pulumi:providers:") and r.type != "azure-native:resources:ResourceGroup":
            parent = components.get(r.parent)
            assert parent is not None, f"{r.type} {r.name} is not parented to a component"
            assert r.name.startswith(parent.name + "-"), f"{r.name} not named after its component {parent.name}"
            assert f"serveform:{backend}:" in r.urn  # the parent chain shows in the URN's type


def test_secrets_reach_pulumi_as_secrets_and_no_plain_text_anywhere(recording):
    secret_inputs = [r for r in recording.resources if r.secret_inputs]
    assert len(secret_inputs) >= 3  # llama31's HF_TOKEN, the private registry password, the gateway tokens
    everything = json.dumps([_strip_secrets(r.raw_inputs) for r in recording.resources], default=repr)  # FileAsset: the artifacts uploaded
    texts = [t for r in recording.resources for t in _decoded_texts(_strip_secrets(r.raw_inputs))]
    for secret in (HF_TOKEN, REGISTRY_PASSWORD, TOKEN):
        assert secret not in everything
        assert not any(secret in t for t in texts)
    # ... but they are in the secret stores' values.
    revealed = []
    for text in _decoded_texts([r.inputs for r in secret_inputs]):
        revealed.append(text)
        try:
            revealed += _decoded_texts(json.loads(text))
        except ValueError:
            pass
    for secret in (HF_TOKEN, REGISTRY_PASSWORD, TOKEN):
        assert any(secret in t for t in revealed)


def test_user_data_runs_the_service(recording, request):
    plans = example_plans(request.module.BACKEND)
    for name, plan in plans.items():
        text = user_data_of(recording, name)
        for command in plan.replica_group.commands:
            assert command.split()[0] in text
        assert f"IMAGE={plan.replica_group.image}" in text
        assert ("--gpus all" in text) == (plan.replica_group.gpus_num > 0)
    assert "--shm-size 16384m" in user_data_of(recording, "mixtral")
    llama = user_data_of(recording, "llama31-service")
    assert "serveform_fetch_secret" in llama and "-e \"$name\"" in llama
    private = user_data_of(recording, "private-image")
    assert "docker login --username peterschmidt85 --password-stdin ghcr.io" in private
    volume = user_data_of(recording, "volume-service")
    assert "serveform_attach_volume" in volume and "/mnt/serveform/my-new-volume:/volume_data" in volume


def test_volumes_are_kept_unless_the_stack_says_otherwise(recording, request):
    mod = request.module
    disks = [r for r in recording.resources if r.parent.endswith("::my-new-volume-volume")]
    assert disks and all(d.retain_on_delete for d in disks)
    rec = deploy(mod.BACKEND, make_settings(mod.BACKEND, mod.CONFIG, **{"serveform:retainVolumes": False}),
                 [example_plans(mod.BACKEND)["volume-service"]])
    disks = [r for r in rec.resources if r.parent.endswith("::my-new-volume-volume")]
    assert disks and not any(d.retain_on_delete for d in disks)


def _by_name(services):
    return {service["name"]: service for service in services}


def test_exports(recording, request):
    services = _by_name(recording.outputs["services"])
    assert recording.outputs["domain"] == "example.com"
    assert recording.outputs["gateway_address"] == GATEWAY_IP
    assert services["llama31-service"]["url"] == "https://llama31-service.example.com"
    assert services["llama31-service"]["model_endpoint"] == "https://gateway.example.com/v1"
    assert services["http-server-service"]["model_endpoint"] is None
    assert services["llama31-service"]["model"] == "meta-llama/Meta-Llama-3.1-8B-Instruct"
    assert services["llama31-service"]["auth"] is True
    assert services["llama31-service"]["replicas"] == {"min": 1, "max": 4, "count": 1}
    assert services["volume-service"]["replicas"] == {"min": 0, "max": 2, "count": 0}  # scale to zero: starts empty
    assert services["mixtral"]["group"]


def test_scaler_count_is_clamped_into_bounds(request):
    mod = request.module
    plans = example_plans(mod.BACKEND)
    # The program resolves counts (serveform.stacks.replicas) and hands them over in the settings.
    settings = make_settings(mod.BACKEND, mod.CONFIG).model_copy(update={"replicas": {"llama31-service": 9}})
    rec = deploy(mod.BACKEND, settings, [plans["llama31-service"]])
    assert _by_name(rec.outputs["services"])["llama31-service"]["replicas"]["count"] == 4
    assert mod.desired_of(rec, "llama31-service") == 4


@pytest.mark.parametrize("case", range(3))
def test_bad_stack_config_is_rejected_before_anything_is_registered(request, case):
    mod = request.module
    config, key = mod.BAD_CONFIGS[case]
    settings = make_settings(mod.BACKEND, config)
    module = importlib.import_module(f"serveform.components.{mod.BACKEND}")
    rec = Recording()
    with pytest.raises(pulumi.RunError) as info:
        run_program(lambda: module.deploy(settings, list(example_plans(mod.BACKEND).values())), recording=rec)
    assert key in str(info.value)
    assert rec.resources == []


def test_plan_without_matching_offer_is_rejected_before_registration(request):
    mod = request.module
    plan = example_plans(mod.BACKEND)["http-server-service"]
    plan = plan.model_copy(update={"offers": ()})
    with pytest.raises(pulumi.RunError, match="offers: no .* offer"):
        deploy(mod.BACKEND, make_settings(mod.BACKEND, mod.CONFIG), [plan])


def test_hostile_values_do_not_leak_and_render(request):
    mod = request.module
    rec = deploy(mod.BACKEND, make_settings(mod.BACKEND, mod.CONFIG), [hostile_plan(mod.BACKEND)])
    text = user_data_of(rec, "hostile")
    assert "s3cr3t" not in text and "reboot)`x`" not in text
    assert "SECRET_TOKEN" not in text  # secret names travel inside the secret document only
