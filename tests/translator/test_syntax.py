"""Each syntax of the service format, read as dstack reads it (values checked, not just "no error")."""

from __future__ import annotations

import pytest
from serveform.translator import CompileContext, TranslatorError, compile_text
from serveform.translator.ranges import IntRange, MemoryRange
from serveform.translator.sizes import Duration, Memory

BASE = "type: service\nname: svc\ncommands: [serve]\nport: 8000\n"


def spec_of(extra: str, **context: object):
    return compile_text(BASE + extra, "svc.dstack.yml", CompileContext(**context)).spec  # type: ignore[arg-type]


def plan_of(extra: str, **context: object):
    return compile_text(BASE + extra, "svc.dstack.yml", CompileContext(**context)).plan  # type: ignore[arg-type]


# ---------------------------------------------------------------- ranges and sizes


@pytest.mark.parametrize(
    ("text", "expected"),
    [(4, (4, 4)), ("4", (4, 4)), ("1..4", (1, 4)), ("0..", (0, None)), ("..8", (None, 8)), (" 2 .. 6 ", (2, 6)), ({"min": 1}, (1, None))],
)
def test_int_range_forms(text: object, expected: tuple[int | None, int | None]) -> None:
    r = IntRange.model_validate(text)
    assert (r.min, r.max) == expected


@pytest.mark.parametrize("text", ["..", "4..1", "1..2..3", "a..b", "1.5", True, [1, 2]])
def test_int_range_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        IntRange.model_validate(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("24GB..80GB", (24.0, 80.0)),
        ("24GB..", (24.0, None)),
        ("..80GB", (None, 80.0)),
        ("512MB..2GB", (0.5, 2.0)),
        ("1.5TB", (1536.0, 1536.0)),
        ("0.5gb", (0.5, 0.5)),
        (16, (16.0, 16.0)),
    ],
)
def test_memory_range_forms(text: object, expected: tuple[float | None, float | None]) -> None:
    r = MemoryRange.model_validate(text)
    assert (r.min, r.max) == expected


@pytest.mark.parametrize(("text", "gb"), [("24GB", 24.0), ("1TB", 1024.0), ("512MB", 0.5), ("0.25TB", 256.0), (8, 8.0), ("8", 8.0), (" 16 GB ", 16.0)])
def test_memory_parse(text: object, gb: float) -> None:
    assert Memory.parse(text) == gb


@pytest.mark.parametrize("text", ["abc", "-1GB", "GB", True, None, [1], "nan"])
def test_memory_parse_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        Memory.parse(text)


@pytest.mark.parametrize(("text", "seconds"), [(90, 90), ("90", 90), ("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1w", 604800)])
def test_duration_parse(text: object, seconds: int) -> None:
    assert Duration.parse(text) == seconds


def test_fractional_durations_are_truncated_as_dstack_does() -> None:
    assert Duration.parse(3.9) == 3


@pytest.mark.parametrize("text", ["1y", "5 minutes", "m", True, None, float("nan")])
def test_duration_parse_rejects(text: object) -> None:
    with pytest.raises(ValueError):
        Duration.parse(text)


# ---------------------------------------------------------------- resources.gpu


@pytest.mark.parametrize(
    ("text", "vendor", "names", "count", "memory"),
    [
        ("A100", None, ["A100"], (1, None), None),
        ("A10G,A100", None, ["A10G", "A100"], (1, None), None),
        ("A100:80GB", None, ["A100"], (1, None), (80.0, 80.0)),
        ("A100:2", None, ["A100"], (2, 2), None),
        ("24GB..40GB:2", None, None, (2, 2), (24.0, 40.0)),
        ("A100:40GB:2", None, ["A100"], (2, 2), (40.0, 40.0)),
        ("nvidia", "nvidia", None, (1, None), None),
        ("amd", "amd", None, (1, None), None),
        ("tpu", "google", None, (1, None), None),
        ("80GB:2", None, None, (2, 2), (80.0, 80.0)),
        ("L4:1..2", None, ["L4"], (1, 2), None),
        ("2:A100", None, ["A100"], (2, 2), None),
        ("nvidia:A100:80GB:8", "nvidia", ["A100"], (8, 8), (80.0, 80.0)),
        ("24GB", None, None, (1, None), (24.0, 24.0)),
    ],
)
def test_gpu_string_syntax(text: str, vendor: str | None, names: list[str] | None, count: tuple, memory: tuple | None) -> None:
    gpu = spec_of(f"resources:\n  gpu: {text}\n").resources.gpu
    assert gpu is not None
    assert gpu.vendor == vendor
    assert gpu.name == names
    assert (gpu.count.min, gpu.count.max) == count
    assert (None if gpu.memory is None else (gpu.memory.min, gpu.memory.max)) == memory


def test_gpu_number_is_a_count() -> None:
    gpu = spec_of("resources:\n  gpu: 2\n").resources.gpu
    assert gpu is not None and (gpu.count.min, gpu.count.max) == (2, 2) and gpu.name is None


def test_gpu_object_syntax() -> None:
    gpu = spec_of(
        "resources:\n  gpu:\n    vendor: NVIDIA\n    name: [A100, H100]\n    count: 1..2\n    memory: 40GB..\n"
        "    total_memory: 80GB..160GB\n    compute_capability: 8.0\n"
    ).resources.gpu
    assert gpu is not None
    assert gpu.vendor == "nvidia" and gpu.name == ["A100", "H100"]
    assert (gpu.count.min, gpu.count.max) == (1, 2)
    assert (gpu.memory.min, gpu.memory.max) == (40.0, None)
    assert (gpu.total_memory.min, gpu.total_memory.max) == (80.0, 160.0)
    assert gpu.compute_capability == (8, 0)
    plan = plan_of(
        "resources:\n  gpu:\n    name: A100\n    compute_capability: '8.0'\n    total_memory: 80GB..\n"
    ).replica_group.resources
    assert plan.gpu_names == ("A100",) and plan.gpu_compute_capability == "8.0" and plan.gpu_total_memory_min_gb == 80.0


def test_gpu_defaults_to_none_required() -> None:
    plan = plan_of("")
    assert (plan.replica_group.resources.gpu_count_min, plan.replica_group.resources.gpu_count_max) == (0, None)
    assert plan.replica_group.gpus_num == 0


@pytest.mark.parametrize("text", ["A100:H100", '"2:3"', "80GB:40GB", "nvidia:amd", "A100,", ":2", "{vendor: foo}", "true"])
def test_gpu_spec_errors(text: str) -> None:
    with pytest.raises(TranslatorError) as caught:
        spec_of(f"resources:\n  gpu: {text}\n")
    assert caught.value.diagnostics[0].field.startswith("resources.gpu")


# ---------------------------------------------------------------- other resources


def test_resources_defaults_match_dstack() -> None:
    r = plan_of("").replica_group.resources
    assert (r.cpu_min, r.cpu_max, r.memory_min_gb, r.memory_max_gb, r.disk_min_gb, r.disk_max_gb) == (2, None, 8.0, None, 100.0, None)


def test_cpu_memory_shm_disk() -> None:
    spec = spec_of("resources:\n  cpu: arm:8..16\n  memory: 32GB..64GB\n  shm_size: 16GB\n  disk: 500GB..1TB\n")
    assert spec.resources.cpu.arch == "arm" and (spec.resources.cpu.count.min, spec.resources.cpu.count.max) == (8, 16)
    r = plan_of("resources:\n  cpu: 4\n  memory: 32GB..64GB\n  shm_size: 16GB\n  disk: 500GB..1TB\n").replica_group.resources
    assert (r.cpu_min, r.cpu_max, r.memory_min_gb, r.memory_max_gb, r.shm_size_gb, r.disk_min_gb, r.disk_max_gb) == (4, 4, 32.0, 64.0, 16.0, 500.0, 1024.0)
    assert spec_of("resources:\n  disk:\n    size: 200GB\n").resources.disk.size.min == 200.0


# ---------------------------------------------------------------- port, replicas, scaling


@pytest.mark.parametrize(("text", "local", "container"), [("8000", 80, 8000), ('"8080:80"', 8080, 80), ("{local_port: 8081, container_port: 81}", 8081, 81)])
def test_port_forms(text: str, local: int, container: int) -> None:
    spec = compile_text(f"type: service\nname: svc\ncommands: [x]\nport: {text}\n").spec
    assert (spec.port.local_port, spec.port.container_port) == (local, container)


def test_port_unquoted_mapping_is_read_as_yaml_1_1_does() -> None:
    # PyYAML (dstack's loader) reads 8080:80 as a string but 8080:50 as a base-60 integer.
    assert compile_text("type: service\nname: svc\ncommands: [x]\nport: 8080:80\n").spec.port.container_port == 80
    with pytest.raises(TranslatorError) as caught:
        compile_text("type: service\nname: svc\ncommands: [x]\nport: 8080:50\n")
    assert "484850" in caught.value.diagnostics[0].message


def test_replicas_number_and_range() -> None:
    assert plan_of("replicas: 3\n").replicas.model_dump() == {"min": 3, "max": 3, "initial": 3}
    plan = plan_of("replicas: 0..4\nscaling:\n  metric: rps\n  target: 2.5\n")
    assert plan.replicas.model_dump() == {"min": 0, "max": 4, "initial": 0}
    assert plan.scaling is not None and plan.scaling.target == 2.5
    assert plan_of("replicas: ..3\nscaling: {metric: rps, target: 1}\n").replicas.min == 0
    assert plan_of("").replicas.model_dump() == {"min": 1, "max": 1, "initial": 1}


def test_scaling_defaults_and_window() -> None:
    scaling = plan_of("replicas: 1..2\nscaling: {metric: rps, target: 1}\n").scaling
    assert scaling is not None
    assert (scaling.scale_up_delay_seconds, scaling.scale_down_delay_seconds, scaling.window_seconds) == (300, 600, 60)
    scaling = plan_of("replicas: 1..2\nscaling: {metric: rps, target: 1, scale_up_delay: 30s, scale_down_delay: 2m, window: 5m}\n").scaling
    assert scaling is not None
    assert (scaling.scale_up_delay_seconds, scaling.scale_down_delay_seconds, scaling.window_seconds) == (30, 120, 300)
    assert spec_of("replicas: 1..2\nscaling: {metric: rps, target: 1}\n").model_dump(mode="json")["scaling"] == {
        "metric": "rps",
        "target": 1.0,
        "window": None,
        "scale_up_delay": 300,
        "scale_down_delay": 600,
    }


@pytest.mark.parametrize(
    ("extra", "field", "words"),
    [
        ("replicas: 1..4\n", "replicas", "`scaling` is required"),
        ("replicas: 2\nscaling: {metric: rps, target: 1}\n", "scaling", "range"),
        ("scaling: {metric: rps, target: 1}\n", "scaling", "range"),
        ("replicas: 1..\nscaling: {metric: rps, target: 1}\n", "replicas", "maximum"),
        ("replicas: -1\n", "replicas", "negative"),
        ("replicas: 1..2\nscaling: {metric: rps, target: 1, window: 45s}\n", "scaling.window", "30s, 60s, 300s"),
    ],
)
def test_replicas_and_scaling_rules(extra: str, field: str, words: str) -> None:
    with pytest.raises(TranslatorError) as caught:
        spec_of(extra)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.field == field and words in diagnostic.message


# ---------------------------------------------------------------- env


def test_env_list_and_mapping() -> None:
    env = plan_of("env:\n  - A=1\n  - B=x=y\n  - C=\n").replica_group.env
    assert {k: v.value for k, v in env.items()} == {"A": "1", "B": "x=y", "C": ""}
    env = plan_of("env:\n  A: 1\n  B: two\n").replica_group.env
    assert {k: v.value for k, v in env.items()} == {"A": "1", "B": "two"}
    assert not any(v.secret for v in env.values())


def test_bare_env_name_sources() -> None:
    text = "env:\n  - TOKEN\n  - OTHER\n"
    plan = plan_of(text, environ={"TOKEN": "from-env", "OTHER": "env-other"}, stack_secrets={"OTHER": "from-stack"})
    env = plan.replica_group.env
    assert (env["TOKEN"].source, env["TOKEN"].value.get_secret_value(), env["TOKEN"].secret) == ("environment", "from-env", True)
    # the stack's secret is the reviewed configuration of this stack: it wins
    assert (env["OTHER"].source, env["OTHER"].value.get_secret_value()) == ("stack", "from-stack")
    assert "from-env" not in plan.model_dump_json() and "from-stack" not in plan.model_dump_json()


def test_bare_env_name_without_value() -> None:
    with pytest.raises(TranslatorError) as caught:
        plan_of("env: [TOKEN]\n")
    assert caught.value.diagnostics[0].field == "env.TOKEN"
    result = compile_text(BASE + "env: [TOKEN]\n", context=CompileContext(require_env=False))
    assert result.plan.replica_group.env["TOKEN"].value is None
    assert [w.field for w in result.warnings if w.field.startswith("env")] == ["env.TOKEN"]


def test_secret_references_in_env_and_registry_auth() -> None:
    plan = plan_of(
        "env:\n  - URL=https://user:${{ secrets.DB_PASS }}@db\nimage: private/x\nregistry_auth:\n  username: bot\n  password: ${{ secrets.REGISTRY }}\n",
        stack_secrets={"DB_PASS": "p4ss", "REGISTRY": "r3g"},
    )
    url = plan.replica_group.env["URL"]
    assert url.secret and url.source == "stack" and url.value.get_secret_value() == "https://user:p4ss@db"
    assert plan.replica_group.registry_auth is not None
    assert plan.replica_group.registry_auth.password.get_secret_value() == "r3g"
    with pytest.raises(TranslatorError) as caught:
        plan_of("env:\n  - URL=${{ secrets.MISSING }}\n")
    assert "serveform:secrets" in caught.value.diagnostics[0].message


# ---------------------------------------------------------------- image, python, nvcc


def test_image_python_nvcc() -> None:
    assert plan_of('python: "3.12"\n').replica_group.python == "3.12"
    assert plan_of("python: 3.10\n").replica_group.python == "3.10", "the YAML float 3.1 is 3.10, as dstack reads it"
    assert plan_of("").replica_group.python == "3.12"
    group = plan_of("image: nginx\nentrypoint: /bin/sh\nworking_dir: /app\nprivileged: true\n", backend="k8s").replica_group
    assert (group.image, group.image_from, group.entrypoint, group.working_dir, group.privileged) == ("nginx", "image", "/bin/sh", "/app", True)
    docker = plan_of("docker: true\n").replica_group
    assert docker.image == "dstackai/dind" and docker.privileged and docker.commands[0] == "start-dockerd"


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ('image: x\npython: "3.11"\n', "python"),
        ("image: x\nnvcc: true\n", "nvcc"),
        ("image: x\ndocker: true\n", "docker"),
        ("python: 3.8\n", "python"),
    ],
)
def test_image_exclusions(extra: str, field: str) -> None:
    with pytest.raises(TranslatorError) as caught:
        spec_of(extra)
    assert [d.field for d in caught.value.diagnostics] == [field]


def test_commands_or_image_required() -> None:
    with pytest.raises(TranslatorError) as caught:
        compile_text("type: service\nport: 80\n")
    assert "either `commands` or `image`" in caught.value.diagnostics[0].message
    assert compile_text("type: service\nname: web\nimage: nginx\nport: 80\n").plan.replica_group.commands == ()


# ---------------------------------------------------------------- model, route


def test_model_forms() -> None:
    route = plan_of("model: org/m\n").route
    assert route.model is not None and (route.model.name, route.model.format, route.model.prefix) == ("org/m", "openai", "/v1")
    route = plan_of("model:\n  name: org/m\n  format: openai\n  prefix: /api/v2\n").route
    assert route.model.prefix == "/api/v2" and route.readiness_path == "/api/v2/chat/completions"
    route = plan_of("model: {type: chat, name: m, format: tgi, chat_template: t, eos_token: e}\n").route
    assert (route.model.format, route.model.chat_template, route.model.eos_token) == ("tgi", "t", "e")
    assert route.probes == () and route.readiness_path == "/"


def test_route_fields() -> None:
    route = compile_text("type: service\ncommands: [x]\nport: 80\nname: my-api\nauth: false\nhttps: auto\ngateway: team/gw\nstrip_prefix: false\n").plan.route
    assert (route.subdomain, route.auth, route.https, route.gateway, route.strip_prefix) == ("my-api", False, "auto", "team/gw", False)
    assert plan_of("https: false\ngateway: false\n").route.https is False


def test_probes() -> None:
    route = plan_of(
        "probes:\n  - type: http\n    url: /ready\n    method: post\n    body: '{}'\n    timeout: 5s\n    interval: 1m\n    ready_after: 3\n"
        "    headers:\n      - name: Authorization\n        value: Bearer t0k\n      - name: X-Kind\n        value: probe\n"
    ).route
    (probe,) = route.probes
    assert (probe.url, probe.method, probe.body, probe.timeout_seconds, probe.interval_seconds, probe.ready_after) == ("/ready", "post", "{}", 5, 60, 3)
    assert probe.headers["X-Kind"] == "probe"
    assert probe.headers["Authorization"].get_secret_value() == "Bearer t0k"  # type: ignore[union-attr]
    assert route.readiness_path == "/ready"
    (default,) = plan_of("probes: [{type: http}]\n").route.probes
    assert (default.url, default.method, default.timeout_seconds, default.interval_seconds, default.ready_after) == ("/", "get", 10, 15, 1)
    assert plan_of("model: m\nprobes: []\n").route.probes == (), "an explicit empty list disables the model's default probe"


def test_rate_limits() -> None:
    limits = plan_of("rate_limits:\n  - prefix: /v1\n    rps: 5\n    burst: 10\n  - rps: 1\n    key: {type: header, header: X-Api-Key}\n").route.rate_limits
    assert [(r.prefix, r.key, r.header, r.rps, r.burst) for r in limits] == [("/v1", "ip_address", None, 5.0, 10), ("/", "header", "X-Api-Key", 1.0, 0)]


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ("rate_limits: [{rps: 1}, {rps: 2}]\n", "rate_limits[1].prefix"),
        ("rate_limits: [{rps: 1, key: {type: header, header: 'a b'}}]\n", "rate_limits[0].key.header"),
        ("rate_limits: [{prefix: 'v1', rps: 1}]\n", "rate_limits[0].prefix"),
        ("rate_limits: [{rps: 0.001}]\n", "rate_limits[0].rps"),
        ("probes: [{type: http, url: health}]\n", "probes[0].url"),
        ("probes: [{type: http, method: get, body: x}]\n", "probes[0].body"),
        ("probes: [{type: http}, {type: http}]\n", "probes[1]"),
        ("probes: [{type: http, timeout: 0}]\n", "probes[0].timeout"),
        # what the gateway could not render or send (gateway/routes.py refuses it at deploy time)
        ("probes: [{type: http, url: '/health\"x'}]\n", "probes[0].url"),
        ("probes: [{type: http, url: '/h{x}'}]\n", "probes[0].url"),
        ("probes: [{type: http, headers: [{name: X_Key, value: v}]}]\n", "probes[0].headers[0].name"),
        ("probes: [{type: http, headers: [{name: X-Key, value: \"a\\nb\"}]}]\n", "probes[0].headers[0].value"),
        ("rate_limits: [{rps: 1, prefix: '/v1?x=1'}]\n", "rate_limits[0].prefix"),
        ("rate_limits: [{rps: 1, prefix: '/v1*'}]\n", "rate_limits[0].prefix"),
        ("rate_limits: [{rps: 1, key: {type: header, header: X_Api_Key}}]\n", "rate_limits[0].key.header"),
    ],
)
def test_probe_and_rate_limit_errors(extra: str, field: str) -> None:
    with pytest.raises(TranslatorError) as caught:
        spec_of(extra)
    assert [d.field for d in caught.value.diagnostics] == [field]


# ---------------------------------------------------------------- name


@pytest.mark.parametrize("name", ["ab", "my-service-2", "a" * 41])
def test_name_is_a_dns_label(name: str) -> None:
    assert compile_text(f"type: service\nname: {name}\ncommands: [x]\nport: 80\n").plan.route.subdomain == name


@pytest.mark.parametrize("name", ["a", "My-Service", "1abc", "ab-", "a" * 42, "my_service", "my.service", "gateway"])
def test_name_rejects_what_is_not_a_dns_label(name: str) -> None:
    with pytest.raises(TranslatorError) as caught:
        compile_text(f"type: service\nname: {name}\ncommands: [x]\nport: 80\n")
    assert caught.value.diagnostics[0].field == "name"


def test_name_defaults_to_the_file_name() -> None:
    result = compile_text("type: service\ncommands: [x]\nport: 80\n", "deploy/My_Chat.dstack.yml")
    assert result.plan.name == "my-chat"
    assert compile_text("type: service\ncommands: [x]\nport: 80\n", "api/gateway.dstack.yml").plan.name == "api", "`gateway` is reserved"
    assert any("named `my-chat`" in w.message for w in result.warnings)


# ---------------------------------------------------------------- volumes


def test_volumes_long_and_short() -> None:
    volumes = plan_of(
        "volumes:\n  - data:/data\n  - /mnt/cache:/root/.cache\n  - name: [vol-eu, vol-us]\n    path: /models\n"
        "  - instance_path: /opt\n    path: /opt\n    optional: true\n",
        backend="aws",
    ).volumes
    assert [(v.kind, v.names, v.instance_path, v.path, v.optional) for v in volumes] == [
        ("network", ("data",), None, "/data", False),
        ("instance", (), "/mnt/cache", "/root/.cache", False),
        ("network", ("vol-eu", "vol-us"), None, "/models", False),
        ("instance", (), "/opt", "/opt", True),
    ]


@pytest.mark.parametrize(
    ("entry", "field"),
    [("a:b:c", "volumes[0]"), ("data:relative", "volumes[0].path"), ("data:/x/../y", "volumes[0].path"), ("{name: data}", "volumes[0].path")],
)
def test_volume_errors(entry: str, field: str) -> None:
    with pytest.raises(TranslatorError) as caught:
        spec_of(f"volumes:\n  - {entry}\n")
    assert [d.field for d in caught.value.diagnostics] == [field]


# ---------------------------------------------------------------- profile fields


def test_profile_fields() -> None:
    plan = plan_of(
        "spot_policy: auto\nmax_price: 2.5\nretry: {on_events: [no-capacity], duration: 2h}\nmax_duration: 1d\n"
        "backends: [aws]\nregions: [us-east-1]\ninstance_types: [g5.xlarge, g6.xlarge]\n",
        backend="aws",
    )
    assert (plan.spot_policy, plan.max_price, plan.max_duration_seconds) == ("auto", 2.5, 86400)
    assert plan.retry == {"on_events": ["no-capacity"], "duration_seconds": 7200}
    assert plan_of("retry: true\n").retry == {"on_events": ["no-capacity", "interruption", "error"], "duration_seconds": 3600}
    assert plan_of("max_duration: off\n").max_duration_seconds is None
    assert plan_of("").spot_policy == "on-demand"


def test_older_spellings_stay_accepted_with_warnings() -> None:
    result = compile_text(
        BASE + "retry_policy: {retry: true, duration: 1h}\npool_name: pool\ntermination_policy: destroy-after-idle\ntermination_idle_time: 5m\nhome_dir: /home/u\nsetup: [pip install x]\n",
        context=CompileContext(backend="aws"),
    )
    assert result.plan.retry == {"on_events": ["no-capacity", "interruption", "error"], "duration_seconds": 3600}
    assert result.plan.replica_group.setup[-1] == "pip install x", "after the venv of the base image"
    warned = {w.field for w in result.warnings}
    assert {"retry_policy", "pool_name", "termination_policy", "termination_idle_time", "home_dir", "setup"} <= warned


@pytest.mark.parametrize("image", ["'nginx latest'", "''", "\"nginx\\n\""])
def test_image_is_one_reference(image: str) -> None:
    with pytest.raises(TranslatorError) as caught:
        compile_text(f"type: service\nname: ab\nport: 80\nimage: {image}\n")
    assert [d.field for d in caught.value.diagnostics] == ["image"]


def test_dollar_escapes_and_references_as_dstack_interpolates_them() -> None:
    env = plan_of(
        "env:\n  - PRICE=5$$\n  - SHELL_VAR=$HOME\n  - LITERAL=$${{ secrets.X }}\n  - MIXED=a-${{ secrets.X }}-$$-b\n",
        stack_secrets={"X": "sx"},
    ).replica_group.env
    assert env["PRICE"].value == "5$" and not env["PRICE"].secret
    assert env["SHELL_VAR"].value == "$HOME"
    assert env["LITERAL"].value == "${{ secrets.X }}" and not env["LITERAL"].secret
    assert env["MIXED"].secret and env["MIXED"].value.get_secret_value() == "a-sx-$-b"
    for bad in ("${{ env.HOME }}", "${{ secrets.X", "${{secrets.1X}}"):
        with pytest.raises(TranslatorError) as caught:
            plan_of(f"env:\n  - A={bad}\n", stack_secrets={"X": "sx"})
        assert caught.value.diagnostics[0].field == "env.A" and "invalid reference" in caught.value.diagnostics[0].message
