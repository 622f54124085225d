"""Every example of the seed documents compiles, and its plan says what the example means."""

from __future__ import annotations

from pathlib import Path

import pytest
from serveform.translator import CompileContext, TranslatorError, compile_file
from serveform.translator.plan import ServicePlan

EXAMPLES = Path(__file__).parent / "examples"
ENV = {"HF_TOKEN": "hf-secret-value", "HUGGING_FACE_HUB_TOKEN": "hub-secret-value"}


# Examples no offer of a backend satisfies: the translator says so, as dstack would find none.
NO_OFFERS = {
    ("000-resources.dstack.yml", "aws"): "2 GPUs of exactly 80GB: AWS has only 8-GPU A100 80GB instances",
    ("002-resources.dstack.yml", "aws"): "2 GPUs of exactly 80GB: AWS has only 8-GPU A100 80GB instances",
    ("002-regions.dstack.yml", "gcp"): "AWS region names",
    ("002-regions.dstack.yml", "azure"): "AWS region names",
}


@pytest.mark.parametrize("backend", ["local", "k8s", "aws", "gcp", "azure"])
def test_every_example_compiles(example: Path, backend: str) -> None:
    context = CompileContext(backend=backend, domain="example.com", environ=ENV)  # type: ignore[arg-type]
    if (example.name, backend) in NO_OFFERS:
        with pytest.raises(TranslatorError) as caught:
            compile_file(example, context)
        assert [d.message.split(" in ")[0] for d in caught.value.diagnostics] == [f"no {backend} offer"]
        return
    result = compile_file(example, context)
    plan = result.plan
    assert plan.backend == backend
    if result.spec.backends is not None and backend not in result.spec.backends:
        assert plan.offers == ()
        assert any(w.field == "backends" for w in result.warnings)
    elif backend in ("aws", "gcp", "azure"):
        assert plan.offers, "a cloud plan lists the offers to choose from"
        prices = [o.price_per_hour for o in plan.offers]
        assert prices == sorted(prices), "cheapest first"
    else:
        assert plan.offers == ()
    assert isinstance(plan, ServicePlan)
    assert plan.file == str(example)
    assert plan.replica_group.container_port == 8000
    assert plan.replica_group.commands, "every example runs commands"
    assert plan.route.subdomain == plan.name
    # the plan survives JSON both ways (secrets excepted, which serialise masked)
    again = ServicePlan.model_validate_json(plan.model_dump_json())
    assert again.model_dump(exclude={"replica_group": {"env", "registry_auth"}}) == plan.model_dump(
        exclude={"replica_group": {"env", "registry_auth"}}
    )


def _compile(name: str, **context: object):
    return compile_file(EXAMPLES / name, CompileContext(**{"backend": "aws", "environ": ENV, **context}))


def test_python_example_uses_dstacks_base_image() -> None:
    plan = _compile("002-python-version.dstack.yml").plan
    assert plan.name == "http-server-service"
    assert plan.replica_group.image == "dstackai/base:0.16-base-ubuntu24.04"
    assert plan.replica_group.image_from == "python"
    assert plan.replica_group.python == "3.10"
    # as dstack's runner does, the replica gets a venv of that Python before its commands
    setup = plan.replica_group.setup
    assert any("uv venv" in c and "--python 3.10" in c for c in setup) and setup[-1].endswith('/bin/activate"')
    assert _compile("002-python-version.dstack.yml", backend="local").plan.replica_group.setup == ()
    assert _compile("002-docker.dstack.yml").plan.replica_group.setup == ()


def test_nvcc_example_uses_the_devel_variant() -> None:
    group = _compile("002-nvcc.dstack.yml").plan.replica_group
    assert group.image == "dstackai/base:0.16-devel-ubuntu24.04"
    assert group.nvcc is True


def test_docker_example_keeps_its_image() -> None:
    group = _compile("002-docker.dstack.yml").plan.replica_group
    assert group.image == "dstackai/base:py3.13-0.6-cuda-12.1"
    assert group.image_from == "image"
    assert group.python is None


def test_private_registry_password_is_secret() -> None:
    result = _compile("002-private-registry.dstack.yml")
    auth = result.plan.replica_group.registry_auth
    assert auth is not None and auth.username == "peterschmidt85"
    assert auth.password.get_secret_value() == "<registry-token>"
    assert "<registry-token>" not in result.plan.model_dump_json()
    assert "<registry-token>" not in str(result.to_json())


def test_model_name_shorthand_means_openai_at_v1() -> None:
    result = _compile("002-models.dstack.yml")
    model = result.plan.route.model
    assert model is not None
    assert (model.name, model.format, model.prefix) == ("meta-llama/Meta-Llama-3.1-8B-Instruct", "openai", "/v1")
    # dstack 0.22 probes a model service with a one-token chat request
    assert result.plan.route.readiness_path == "/v1/chat/completions"
    assert result.plan.route.probes[0].method == "post"
    assert result.spec.model_dump(mode="json")["model"] == _compile("002-models-long.dstack.yml").spec.model_dump(mode="json")["model"]


def test_bare_env_name_takes_the_deploying_environment_as_a_secret() -> None:
    env = _compile("002-environment-variables.dstack.yml").plan.replica_group.env
    assert env["MODEL"].value == "NousResearch/Llama-2-7b-chat-hf" and not env["MODEL"].secret
    assert env["HF_TOKEN"].secret and env["HF_TOKEN"].source == "environment"
    assert env["HF_TOKEN"].value.get_secret_value() == "hf-secret-value"


def test_auto_scaling_example() -> None:
    plan = _compile("002-auto-scaling.dstack.yml").plan
    assert (plan.replicas.min, plan.replicas.max, plan.replicas.initial) == (1, 4, 1)
    assert plan.scaling is not None
    assert (plan.scaling.target, plan.scaling.scale_up_delay_seconds, plan.scaling.scale_down_delay_seconds, plan.scaling.window_seconds) == (
        10.0,
        300,
        600,
        60,
    )


def test_resources_example() -> None:
    plan = _compile("002-resources.dstack.yml", backend="gcp").plan
    assert {o.instance_type for o in plan.offers} == {"a2-ultragpu-2g"}, "2 GPUs of 80GB, cheapest first"
    resources = plan.replica_group.resources
    assert (resources.gpu_count_min, resources.gpu_count_max) == (2, 2)
    assert (resources.gpu_memory_min_gb, resources.gpu_memory_max_gb) == (80.0, 80.0)
    assert (resources.disk_min_gb, resources.disk_max_gb) == (200.0, 200.0)
    assert plan.replica_group.gpus_num == 2
    # a folded multi-line command stays one command
    assert len(plan.replica_group.commands) == 2
    assert plan.replica_group.commands[1].endswith("--tensor-parallel-size $DSTACK_GPUS_NUM")


def test_auth_false_example() -> None:
    assert _compile("002-authorization.dstack.yml").plan.route.auth is False


def test_profile_examples() -> None:
    assert _compile("002-backends.dstack.yml").spec.backends == ["aws", "gcp"]
    assert _compile("002-regions.dstack.yml").spec.regions == ["eu-west-1", "eu-west-2"]
    assert _compile("002-spot-policy.dstack.yml").plan.spot_policy == "on-demand"


def test_volume_examples() -> None:
    long = _compile("002-volumes.dstack.yml").plan.volumes
    assert [(v.kind, v.names, v.path) for v in long] == [("network", ("my-new-volume",), "/volume_data")]
    short = _compile("002-volumes-short.dstack.yml").plan.volumes
    assert [(v.kind, v.names, v.instance_path, v.path) for v in short] == [
        ("network", ("volume-name",), None, "/container/path"),
        ("instance", (), "/instance/path", "/container/other"),
    ]


@pytest.mark.parametrize("name", ["002-chat-template.dstack.yml", "001-chat-template.dstack.yml"])
def test_tgi_chat_template_examples(name: str) -> None:
    model = _compile(name).plan.route.model
    assert model is not None and model.format == "tgi"
    assert model.eos_token == "</s>"
    assert model.chat_template is not None and model.chat_template.startswith("{% if messages[0]['role'] == 'system' %}")
    assert "'<<SYS>>\\n'" in model.chat_template  # YAML's `\\n` is a backslash and an n, as Jinja needs
