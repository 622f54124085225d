"""The deployment plan: offers from the catalog, backend warnings, secrets, JSON round trip."""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path

import pytest
from serveform.translator import CompileContext, TranslatorError, compile_text
from serveform.translator.offers import MAX_OFFERS_PER_REGION, load_catalog
from serveform.translator.plan import ServicePlan

GPU_SERVICE = "type: service\nname: llm\ncommands: [serve]\nport: 8000\nresources:\n  gpu: 24GB\n"
FIELDS = ["instance_name", "location", "price", "cpu", "memory", "gpu_count", "gpu_name", "gpu_memory", "spot", "disk_size", "gpu_vendor", "flags", "cpu_arch", "provider_data"]


def plan_of(extra: str = "", text: str = GPU_SERVICE, **context: object) -> ServicePlan:
    return compile_text(text + extra, "llm.dstack.yml", CompileContext(**context)).plan  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", ["aws", "gcp", "azure"])
def test_offers_satisfy_resources_cheapest_first(backend: str) -> None:
    offers = plan_of(backend=backend).offers
    assert offers
    assert all(o.backend == backend and o.gpu_memory_gb == 24.0 and o.gpu_count >= 1 for o in offers)
    assert all(not o.spot for o in offers), "spot_policy defaults to on-demand for services"
    prices = [o.price_per_hour for o in offers]
    assert prices == sorted(prices)
    per_region: dict[str, int] = {}
    for offer in offers:
        per_region[offer.region] = per_region.get(offer.region, 0) + 1
    assert max(per_region.values()) <= MAX_OFFERS_PER_REGION


def test_spot_policy_selects_the_market() -> None:
    assert all(o.spot for o in plan_of("spot_policy: spot\n", backend="aws").offers)
    both = plan_of("spot_policy: auto\n", backend="aws").offers
    assert {o.spot for o in both} == {True, False}
    assert both[0].spot, "spot is cheaper, so it comes first"


def test_max_price_instance_types_and_regions() -> None:
    offers = plan_of("max_price: 1.0\n", backend="aws").offers
    assert offers and all(o.price_per_hour <= 1.0 for o in offers)
    offers = plan_of("instance_types: [g5.2xlarge]\n", backend="aws").offers
    assert {o.instance_type for o in offers} == {"g5.2xlarge"}
    offers = plan_of("regions: [us-east-1, eu-west-1]\n", backend="aws").offers
    assert {o.region for o in offers} == {"us-east-1", "eu-west-1"}
    # the stack's regions narrow the service's
    offers = plan_of("regions: [us-east-1, eu-west-1]\n", backend="aws", regions=("eu-west-1",)).offers
    assert {o.region for o in offers} == {"eu-west-1"}
    offers = plan_of(backend="aws", regions=("us-west-2",)).offers
    assert {o.region for o in offers} == {"us-west-2"}


def test_gcp_offers_carry_region_and_zone() -> None:
    offers = plan_of(backend="gcp", regions=("us-central1",)).offers
    assert offers and {o.region for o in offers} == {"us-central1"}
    assert {o.zone for o in offers} == {"us-central1-a", "us-central1-c"}


def test_gpu_names_vendor_count_and_compute_capability() -> None:
    text = "type: service\nname: llm\ncommands: [x]\nport: 80\nresources:\n"
    assert {o.gpu_name for o in plan_of(text=text + "  gpu: A100:8\n", backend="aws").offers} == {"A100"}
    assert {o.instance_type for o in plan_of(text=text + "  gpu: A100:80GB:8\n", backend="aws").offers} == {"p4de.24xlarge"}
    names = {o.gpu_name for o in plan_of(text=text + "  gpu: {compute_capability: 8.0}\n", backend="aws").offers}
    assert names and not names & {"T4", "V100"}
    assert {o.gpu_name for o in plan_of(text=text + "  gpu: T4,L4:1\n", backend="gcp").offers} == {"T4", "L4"}
    cpu_only = plan_of(text="type: service\nname: web\ncommands: [x]\nport: 80\n", backend="azure").offers
    assert cpu_only[0].gpu_count == 0 and cpu_only[0].instance_type == "Standard_D2s_v5"


def test_no_offer_is_an_error_naming_the_constraints() -> None:
    with pytest.raises(TranslatorError) as caught:
        plan_of("max_price: 0.01\n", backend="aws")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.field == "resources" and "max_price 0.01" in diagnostic.message and diagnostic.hint
    with pytest.raises(TranslatorError) as caught:
        plan_of("regions: [mars-1]\n", backend="gcp")
    assert caught.value.diagnostics[0].field == "regions"


def test_backends_without_instances_get_no_offers() -> None:
    assert plan_of(backend="local").offers == ()
    assert plan_of(backend="k8s").offers == ()
    result = compile_text(GPU_SERVICE + "backends: [gcp]\n", context=CompileContext(backend="aws"))
    assert result.plan.offers == ()
    assert [w.field for w in result.warnings] == ["backends"]


def _write_catalog(path: Path, rows: list[dict[str, str]], *, provider_column: bool) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=(["provider"] if provider_column else []) + FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row if provider_column else {k: v for k, v in row.items() if k != "provider"})


ROW = {
    "provider": "aws",
    "instance_name": "x9.fresh",
    "location": "us-east-1",
    "price": "0.42",
    "cpu": "8",
    "memory": "32",
    "gpu_count": "1",
    "gpu_name": "L4",
    "gpu_memory": "24",
    "spot": "False",
    "disk_size": "",
    "gpu_vendor": "nvidia",
    "flags": "",
    "cpu_arch": "x86",
    "provider_data": "{}",
}


@pytest.mark.parametrize("layout", ["provider-column", "per-provider-file", "directory", "zip"])
def test_a_fresh_catalog_replaces_the_snapshot(tmp_path: Path, layout: str) -> None:
    if layout == "provider-column":
        catalog = tmp_path / "offers.csv"
        _write_catalog(catalog, [ROW], provider_column=True)
    elif layout == "per-provider-file":
        catalog = tmp_path / "aws.csv"
        _write_catalog(catalog, [ROW], provider_column=False)
    elif layout == "directory":
        catalog = tmp_path / "catalog"
        catalog.mkdir()
        _write_catalog(catalog / "aws.csv", [ROW], provider_column=False)
    else:
        _write_catalog(tmp_path / "aws.csv", [ROW], provider_column=False)
        catalog = tmp_path / "catalog.zip"
        with zipfile.ZipFile(catalog, "w") as archive:
            archive.write(tmp_path / "aws.csv", "aws.csv")
    offers = plan_of(backend="aws", offers_catalog=catalog).offers
    assert [(o.instance_type, o.price_per_hour, o.gpu_name) for o in offers] == [("x9.fresh", 0.42, "L4")]


@pytest.mark.parametrize(
    ("content", "words"),
    [("name,price\nx,1\n", "not a gpuhunt catalog"), (None, "No such file"), ("instance_name,location\nx,y\n", "no `provider` column")],
)
def test_a_broken_catalog_is_reported(tmp_path: Path, content: str | None, words: str) -> None:
    catalog = tmp_path / "broken.csv"
    if content is not None:
        catalog.write_text(content)
    with pytest.raises(TranslatorError) as caught:
        plan_of(backend="aws", offers_catalog=catalog)
    assert "offers catalog" in str(caught.value) and words in str(caught.value)


def test_snapshot_is_in_gpuhunt_item_format() -> None:
    catalog = load_catalog()
    assert set(catalog) == {"aws", "gcp", "azure"}
    assert sum(map(len, catalog.values())) >= 700
    item = next(i for i in catalog["aws"] if i.instance_name == "p5.48xlarge" and not i.spot)
    assert (item.gpu_name, item.gpu_count, item.gpu_memory, item.cpu) == ("H100", 8, 80.0, 192)


# ---------------------------------------------------------------- backend warnings


def test_local_backend_warns_about_every_field_it_ignores() -> None:
    text = (
        "type: service\nname: ab\nimage: nginx\nregistry_auth: {username: u, password: p}\nentrypoint: /x\nprivileged: true\n"
        "port: 80\nresources: {gpu: 1, memory: 8GB}\nspot_policy: spot\nmax_price: 1\ninstance_types: [a]\nregions: [r]\n"
        "retry: true\nmax_duration: 1h\nvolumes: [data:/data]\ngateway: false\nstrip_prefix: true\nuser: root\n"
    )
    warned = {w.field for w in compile_text(text, context=CompileContext(backend="local")).warnings}
    assert warned == {
        "image", "registry_auth", "entrypoint", "privileged", "resources.gpu", "resources.memory", "spot_policy", "max_price",
        "instance_types", "regions", "retry", "max_duration", "volumes[0]", "gateway", "strip_prefix", "user",
    }  # fmt: skip
    for warning in compile_text(text, context=CompileContext(backend="local")).warnings:
        assert warning.severity == "warning" and ("`local` backend" in warning.message or "serveform" in warning.message)


def test_cloud_backends_warn_only_about_what_they_cannot_do() -> None:
    result = compile_text(GPU_SERVICE + "max_duration: 2h\n", context=CompileContext(backend="aws"))
    assert [w.field for w in result.warnings] == ["max_duration"]
    assert compile_text(GPU_SERVICE, context=CompileContext(backend="gcp")).warnings == ()


# ---------------------------------------------------------------- JSON round trip and secrets


def test_plan_round_trips_through_json_and_keeps_secrets_marked() -> None:
    result = compile_text(
        GPU_SERVICE + "image: private/server\nregistry_auth: {username: bot, password: p4ss}\nenv: [TOKEN, PLAIN=1]\nreplicas: 0..3\n"
        "scaling: {metric: rps, target: 4, window: 30s}\nvolumes: [data:/data]\nmodel: m\nrate_limits: [{rps: 2}]\n",
        context=CompileContext(backend="gcp", environ={"TOKEN": "t0ken"}),
    )
    plan = result.plan
    text = plan.model_dump_json()
    assert "p4ss" not in text and "t0ken" not in text
    again = ServicePlan.model_validate_json(text)
    assert again.model_dump(exclude={"replica_group": {"env", "registry_auth"}}) == plan.model_dump(exclude={"replica_group": {"env", "registry_auth"}})
    assert again.replica_group.env["PLAIN"].value == "1"
    assert again.replica_group.env["TOKEN"].secret is True
    assert plan.replica_group.env["TOKEN"].value.get_secret_value() == "t0ken"
    assert plan.replica_group.registry_auth is not None and plan.replica_group.registry_auth.password.get_secret_value() == "p4ss"


# ---------------------------------------------------------------- GPU facts from gpuhunt


def _gpu(spec: str):  # noqa: ANN202
    return compile_text(f"type: service\nname: ab\nport: 80\ncommands: [x]\nresources:\n  gpu: {spec}\n", context=CompileContext(backend="k8s"))


def test_gpu_vendor_comes_from_gpuhunts_facts() -> None:
    assert _gpu("A100:2").plan.replica_group.resources.gpu_vendor == "nvidia"
    assert _gpu("MI300X").plan.replica_group.resources.gpu_vendor == "amd"
    assert _gpu("tpu").plan.replica_group.resources.gpu_vendor == "google"
    assert _gpu("24GB").plan.replica_group.resources.gpu_vendor is None, "any vendor"
    assert _gpu("{name: [A100, MI300X]}").plan.replica_group.resources.gpu_vendor is None


def test_unknown_or_contradictory_gpus_are_warned_about() -> None:
    (warning,) = _gpu("A1000:2").warnings
    assert (warning.field, warning.hint) == ("resources.gpu.name[0]", "did you mean `A100`?")
    (warning,) = _gpu("amd:A100").warnings
    assert warning.field == "resources.gpu" and "nvidia, not amd" in warning.message


def test_a_wrong_context_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="backend"):
        CompileContext(backend="digitalocean")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="regions"):
        CompileContext(regions="us-east-1")  # type: ignore[arg-type]
    assert CompileContext(regions=["us-east-1"]).regions == ("us-east-1",)  # type: ignore[arg-type]


def test_the_service_host_must_be_a_dns_name() -> None:
    domain = ".".join(["d" * 60] * 4)  # 243 characters
    with pytest.raises(TranslatorError) as caught:
        compile_text("type: service\nname: my-long-service\nport: 80\ncommands: [x]\n", context=CompileContext(domain=domain))
    assert caught.value.diagnostics[0].field == "name" and "longer than a DNS name" in caught.value.diagnostics[0].message
    assert compile_text("type: service\nname: ab\nport: 80\ncommands: [x]\n", context=CompileContext(domain=domain)).plan.name == "ab"


def test_volume_name_lists_use_the_first_name() -> None:
    result = compile_text(GPU_SERVICE + "volumes:\n  - name: [vol-a, vol-b]\n    path: /data\n", context=CompileContext(backend="gcp"))
    assert result.plan.volumes[0].names == ("vol-a", "vol-b")
    assert [(w.field, w.line) for w in result.warnings] == [("volumes[0].name", 8)]
