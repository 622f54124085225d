"""Properties: any text or YAML yields a plan or clean diagnostics — never a traceback — and
whatever compiles is stable: plans round-trip through JSON, the normalised spec re-reads to
itself, replica bounds hold."""

from __future__ import annotations

import json
import os
import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serveform.translator import CompileContext, TranslatorError, compile_text
from serveform.translator.plan import ServicePlan
from serveform.translator.spec import ServiceSpec

# 300 per property in CI; SERVEFORM_HYPOTHESIS_EXAMPLES=5000 for a longer hunt.
SETTINGS = settings(max_examples=int(os.environ.get("SERVEFORM_HYPOTHESIS_EXAMPLES", "300")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIELDS = sorted(ServiceSpec.model_fields) + ["replica", "comands", "resources.gpu", "<<"]
SUB_FIELDS = ["gpu", "cpu", "memory", "disk", "shm_size", "count", "name", "vendor", "min", "max", "metric", "target", "window", "size", "path", "type", "url"]
CONTEXTS = [CompileContext(), CompileContext(backend="aws"), CompileContext(backend="gcp", regions=("us-central1",)), CompileContext(backend="k8s", require_env=False)]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(["1..4", "0..", "..80GB", "24GB..80GB", "A100:80GB:2", "8080:80", "off", "5m", "rps", "service", "nvidia", "/data", "a:/b", "${{ secrets.X }}", "3.10"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(SUB_FIELDS) | st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
documents = st.dictionaries(st.sampled_from(FIELDS), values, max_size=10).map(lambda d: {"type": "service", **d} if d.get("type") is None else d)


def _compile(text: str, context: CompileContext) -> None:
    try:
        result = compile_text(text, "prop.dstack.yml", context)
    except TranslatorError as exc:
        assert exc.diagnostics, "an error always says what is wrong"
        for diagnostic in exc.diagnostics:
            assert diagnostic.file == "prop.dstack.yml" and diagnostic.line >= 0 and diagnostic.message
        str(exc)
        return
    _check_stable(result)


def _check_stable(result) -> None:  # noqa: ANN001
    plan = result.plan
    again = ServicePlan.model_validate_json(plan.model_dump_json())
    skip = {"replica_group": {"env", "registry_auth"}}
    assert again.model_dump(exclude=skip) == plan.model_dump(exclude=skip)
    assert plan.replicas.min <= plan.replicas.initial <= plan.replicas.max
    dumped = result.spec.model_dump(mode="json")
    json.dumps(dumped)
    if dumped.get("registry_auth") is None:
        # the normalised shape is a fixed point: reading it back gives the same spec
        assert ServiceSpec.model_validate(dumped).model_dump(mode="json") == dumped


@SETTINGS
@given(text=st.text(alphabet=string.printable + "ÿ\u2028\x00", max_size=300), index=st.integers(0, len(CONTEXTS) - 1))
def test_any_text_compiles_or_fails_cleanly(text: str, index: int) -> None:
    _compile(text, CONTEXTS[index])


@SETTINGS
@given(document=documents, index=st.integers(0, len(CONTEXTS) - 1))
def test_any_yaml_document_compiles_or_fails_cleanly(document: dict, index: int) -> None:
    try:
        text = yaml.safe_dump(document, allow_unicode=True)
    except (yaml.YAMLError, ValueError, OverflowError):
        return
    _compile(text, CONTEXTS[index])


gpu_specs = st.sampled_from(["A100", "A10G,A100", "A100:80GB", "A100:2", "24GB..40GB:2", "A100:40GB:2", "nvidia", "amd", "80GB:2", "L4:1..2", "1", "24GB"])
valid_services = st.fixed_dictionaries(
    {"type": st.just("service"), "name": st.from_regex(r"[a-z][a-z0-9-]{0,30}[a-z0-9]", fullmatch=True), "port": st.integers(1, 65535), "commands": st.lists(st.text(min_size=1, max_size=10), min_size=1, max_size=3)},
    optional={
        "python": st.sampled_from(["3.9", "3.10", "3.11", "3.12"]),
        "env": st.dictionaries(st.from_regex(r"[A-Z_][A-Z0-9_]{0,8}", fullmatch=True), st.text(max_size=10), max_size=3),
        "resources": st.fixed_dictionaries({}, optional={"gpu": gpu_specs, "memory": st.sampled_from(["8GB", "16GB..", "1TB"]), "cpu": st.integers(1, 64)}),
        "auth": st.booleans(),
        "model": st.text(alphabet=string.ascii_letters + "/-", min_size=1, max_size=12),
        "spot_policy": st.sampled_from(["spot", "on-demand", "auto"]),
    },
)


@SETTINGS
@given(service=valid_services, scaled=st.tuples(st.integers(0, 3), st.integers(1, 5), st.floats(0.1, 100)), index=st.integers(0, len(CONTEXTS) - 1))
def test_valid_services_always_compile(service: dict, scaled: tuple[int, int, float], index: int) -> None:
    low, extra, target = scaled
    service = {**service, "replicas": f"{low}..{low + extra}", "scaling": {"metric": "rps", "target": target}}
    context = CONTEXTS[index]
    try:
        result = compile_text(yaml.safe_dump(service), "prop.dstack.yml", context)
    except TranslatorError as exc:
        # only the catalog may lack an offer for a random GPU spec on a cloud backend
        assert context.backend in ("aws", "gcp") and all("offer" in d.message for d in exc.diagnostics), str(exc)
        return
    plan = result.plan
    assert (plan.replicas.min, plan.replicas.max) == (low, low + extra)
    assert plan.scaling is not None and plan.scaling.target == target
    assert plan.route.subdomain == service["name"]
    _check_stable(result)
