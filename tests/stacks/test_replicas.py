"""Where replica counts come from (`serveform.stacks.replicas`): the pure rule and its formats."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from serveform.stacks.replicas import (
    SCALE_ENV,
    DeployedInputs,
    ReplicaCount,
    ScaleRequest,
    counts_from_output,
    describe_drift,
    resolve_counts,
)
from serveform.translator import CompileContext, compile_text

NOW = datetime(2026, 12, 6, 1, 2, 3, tzinfo=timezone.utc)
SERVICE = """\
type: service
name: {name}
image: python:3.11
commands: [python -m http.server 8000]
port: 8000
env:
  - MODEL=small
  - API_KEY
replicas: {replicas}
{scaling}"""
SCALING = "scaling:\n  metric: rps\n  target: 10\n"


def plan(name: str = "chat", replicas: str = "0..4", api_key: str = "s3cret-value"):
    scaling = SCALING if ".." in replicas else ""
    text = SERVICE.format(name=name, replicas=replicas, scaling=scaling)
    context = CompileContext(backend="local", domain="example.test", environ={"API_KEY": api_key})
    return compile_text(text, f"{name}.dstack.yml", context).plan


def test_a_new_service_starts_at_its_initial_count():
    assert resolve_counts([plan(replicas="2..4")], {}, None, NOW) == {"chat": ReplicaCount(2, "initial")}


def test_every_up_keeps_the_last_deployments_count_and_its_source():
    kept = ReplicaCount(3, "scaler", "2026-12-06T00:00:00Z")
    assert resolve_counts([plan()], {"chat": kept}, None, NOW) == {"chat": kept}


def test_a_request_sets_the_count_with_its_source_and_time():
    request = ScaleRequest(counts={"chat": 3}, source="manual")
    resolved = resolve_counts([plan()], {"chat": ReplicaCount(1, "scaler")}, request, NOW)
    assert resolved == {"chat": ReplicaCount(3, "manual", "2026-12-06T01:02:03Z")}


def test_a_narrowed_range_clamps_the_kept_count():
    resolved = resolve_counts([plan(replicas="1..2")], {"chat": ReplicaCount(4, "scaler", "x")}, None, NOW)
    assert resolved == {"chat": ReplicaCount(2, "clamped", "2026-12-06T01:02:03Z")}


def test_a_request_outside_the_range_is_clamped():
    resolved = resolve_counts([plan()], {}, ScaleRequest(counts={"chat": 9}, source="scaler"), NOW)
    assert resolved["chat"].count == 4 and resolved["chat"].source == "clamped"


def test_counts_of_removed_services_are_dropped():
    assert set(resolve_counts([plan()], {"gone": ReplicaCount(2, "scaler")}, None, NOW)) == {"chat"}


@given(
    low=st.integers(0, 5),
    width=st.integers(0, 5),
    previous=st.none() | st.integers(0, 20),
    requested=st.none() | st.integers(0, 20),
)
def test_resolved_counts_always_lie_in_the_range(low, width, previous, requested):
    service = plan(replicas=f"{low}..{low + width}" if width else str(low))
    before = {} if previous is None else {"chat": ReplicaCount(previous, "scaler")}
    request = None if requested is None else ScaleRequest(counts={"chat": requested}, source="scaler")
    count = resolve_counts([service], before, request, NOW)["chat"].count
    assert low <= count <= low + width
    if requested is not None and low <= requested <= low + width:
        assert count == requested
    elif requested is None and previous is not None and low <= previous <= low + width:
        assert count == previous


def test_replicas_output_round_trips_and_accepts_float_counts():
    counts = {"chat": ReplicaCount(2, "scaler", "2026-12-06T01:02:03Z")}
    as_output = json.loads(json.dumps({k: v.to_output() for k, v in counts.items()}))
    as_output["chat"]["count"] = 2.0  # what a StackReference returns for a JSON number
    assert counts_from_output(as_output) == counts
    assert counts_from_output(None) == {} and counts_from_output({"x": "junk"}) == {}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("not json", "expected"),
        ('{"counts": {"chat": "two"}}', "expected"),
        ('{"counts": {"chat": -1}}', "0 or more"),
        ('{"counts": {"chat": 1}, "source": "ci"}', "source"),
    ],
)
def test_malformed_scale_requests_name_the_variable(raw, message):
    with pytest.raises(ValueError, match=message) as info:
        ScaleRequest.from_environ({SCALE_ENV: raw})
    assert SCALE_ENV in str(info.value)


def test_scale_request_round_trips_through_the_environment():
    request = ScaleRequest(counts={"chat": 2, "b": 0}, source="scaler")
    assert ScaleRequest.from_environ({SCALE_ENV: request.to_env()}) == request
    assert ScaleRequest.from_environ({}) is None


def test_deployed_inputs_round_trip_with_secrets_kept_secret():
    inputs = DeployedInputs(config={"serveform:domain": "example.test", "serveform:tokens": '["t"]'}, plans=(plan(),))
    output = json.loads(json.dumps(inputs.to_output()))  # what the state holds
    back = DeployedInputs.from_output(output)
    assert back is not None and back.config == inputs.config
    assert back.plans == inputs.plans
    env = back.plans[0].replica_group.env
    secret = env["API_KEY"].value
    assert isinstance(secret, SecretStr) and secret.get_secret_value() == "s3cret-value"
    assert DeployedInputs.from_output(None) is None and DeployedInputs.from_output({"version": 99}) is None


def test_drift_names_what_the_working_tree_changed():
    inputs = DeployedInputs(config={"serveform:domain": "example.test"}, plans=(plan(), plan(name="old")))
    edited = plan(api_key="another")
    drift = describe_drift(inputs, {"serveform:domain": "other.test"}, [edited, plan(name="new")])
    assert "stack config serveform:domain differs from the last deployment" in drift
    assert "service old is deployed but no longer in the working tree" in drift
    assert "service new is in the working tree but not deployed" in drift
    assert any(line.startswith("service chat: replica_group changed") for line in drift)
    assert describe_drift(inputs, dict(inputs.config), list(inputs.plans)) == []


def test_a_deployment_record_does_not_depend_on_where_its_checkout_was():
    # CI deploys from /ci/repo; the scaler pod rebuilds from its copy at /srv/serveform.
    deployed = plan().model_copy(update={"file": "/ci/repo/services/chat.dstack.yml"})
    outside = plan(name="other").model_copy(update={"file": "/elsewhere/other.dstack.yml"})
    record = DeployedInputs(config={}, plans=(deployed, outside)).relative_to("/ci/repo")
    assert [p.file for p in record.plans] == ["services/chat.dstack.yml", "/elsewhere/other.dstack.yml"]
    back = DeployedInputs.from_output(json.loads(json.dumps(record.to_output()))).rebased("/srv/serveform")
    assert [p.file for p in back.plans] == ["/srv/serveform/services/chat.dstack.yml", "/elsewhere/other.dstack.yml"]


def test_drift_ignores_how_an_object_config_value_is_spelled():
    inputs = DeployedInputs(config={"serveform:k8s": '{"namespace": "a", "cpu_request_fraction": 0.1}'}, plans=())
    assert describe_drift(inputs, {"serveform:k8s": '{"cpu_request_fraction":0.1,"namespace":"a"}'}, []) == []
    assert describe_drift(inputs, {"serveform:k8s": '{"cpu_request_fraction":0.2,"namespace":"a"}'}, []) == [
        "stack config serveform:k8s differs from the last deployment"
    ]


def test_a_request_expecting_another_count_keeps_the_one_set_since():
    # The scaler decided 0 believing the stack ran 1; `serveform scale chat 3` ran meanwhile.
    manual = ReplicaCount(3, "manual", "2026-12-06T01:00:00Z")
    stale = ScaleRequest(counts={"chat": 0}, source="scaler", expected={"chat": 1})
    assert resolve_counts([plan()], {"chat": manual}, stale, NOW) == {"chat": manual}
    fresh = ScaleRequest(counts={"chat": 0}, source="scaler", expected={"chat": 3})
    assert resolve_counts([plan()], {"chat": manual}, fresh, NOW)["chat"] == ReplicaCount(0, "scaler", "2026-12-06T01:02:03Z")
    assert ScaleRequest.from_environ({SCALE_ENV: stale.to_env()}) == stale


def test_a_scale_run_takes_how_this_host_reaches_the_cluster_from_its_own_stack_file():
    from serveform.components.program import _with_host_keys

    deployed = {
        "serveform:domain": "example.test",
        "serveform:k8s": json.dumps({"kubeconfig": "/home/ci/.kube/config", "context": "ci", "namespace": "prod"}),
    }
    # The in-cluster scaler's copy: no kubeconfig or context (its ServiceAccount), the image pinned.
    pod = {"serveform:k8s": json.dumps({"namespace": "edited", "runtime_image": "serveform:abc"})}
    merged = _with_host_keys(deployed, pod)
    assert json.loads(merged["serveform:k8s"]) == {"namespace": "prod", "runtime_image": "serveform:abc"}
    assert merged["serveform:domain"] == "example.test"  # everything else is the deployment's
    assert _with_host_keys({"serveform:domain": "x"}, {}) == {"serveform:domain": "x"}
