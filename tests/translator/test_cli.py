"""`serveform compile / validate / schema`: the command line around the translator."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from serveform.cli import main

HERE = Path(__file__).parent
EXAMPLES = sorted((HERE / "examples").glob("*.dstack.yml"))
SECRET = "hf_s3cret_value"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_compile_json_shape(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", SECRET)
    files = [str(HERE / "examples" / "002-auto-scaling.dstack.yml"), str(HERE / "examples" / "002-private-registry.dstack.yml")]
    status, out, err = run(capsys, "compile", "--json", "--backend", "gcp", *files)
    assert status == 0, err
    services = json.loads(out)
    assert [s["file"] for s in services] == files
    first = services[0]
    assert set(first) == {"file", "name", "spec", "plan", "warnings"}
    assert first["name"] == "llama31-service"
    spec = first["spec"]
    # dstack's normalised shape
    assert spec["replicas"] == {"min": 1, "max": 4}
    assert spec["port"] == {"local_port": 80, "container_port": 8000}
    assert spec["env"] == {"HF_TOKEN": {"key": "HF_TOKEN"}}
    assert spec["scaling"] == {"metric": "rps", "target": 10.0, "window": None, "scale_up_delay": 300, "scale_down_delay": 600}
    assert spec["resources"]["gpu"]["count"] == {"min": 1, "max": None}
    assert spec["resources"]["gpu"]["memory"] == {"min": 24.0, "max": 24.0}
    assert spec["resources"]["disk"] == {"size": {"min": 100.0, "max": None}}
    plan = first["plan"]
    assert plan["replica_group"]["env"]["HF_TOKEN"] == {"value": "**********", "secret": True, "source": "environment"}
    assert plan["offers"] and plan["offers"][0]["backend"] == "gcp"
    assert services[1]["spec"]["registry_auth"] == {"username": "peterschmidt85", "password": "**********"}
    assert SECRET not in out + err and "<registry-token>" not in out + err


def test_compile_text_output(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "compile", str(EXAMPLES[0]))
    assert status == 0
    assert out.startswith(f"# {EXAMPLES[0]}: service `")
    document = yaml.safe_load(out)
    assert set(document) == {"spec", "plan"}
    assert "warning: `name` is not set" in err


def test_validate(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "validate", *map(str, EXAMPLES))
    assert status == 0
    assert len(out.splitlines()) == len(EXAMPLES) and all(": ok: service `" in line for line in out.splitlines())


def test_bad_files_exit_2_with_every_problem_and_the_good_files_still_checked(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "bad.dstack.yml"
    bad.write_text("type: service\nreplica: 2\nport: 80\ncommands: [x]\nregistry_auth: {username: u, password: hunter2, x: 1}\n")
    status, out, err = run(capsys, "validate", str(bad), str(EXAMPLES[0]), str(tmp_path / "missing.dstack.yml"))
    assert status == 2
    assert f"{bad}:2:1: error: replica: unknown field `replica` (did you mean `replicas`?)" in err
    assert f"{bad}:5:" in err and "registry_auth.x" in err
    assert "missing.dstack.yml: error: cannot read the file" in err
    assert str(EXAMPLES[0]) in out
    assert "hunter2" not in out + err and "Traceback" not in err


def test_real_entry_point_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dstack.yml"
    bad.write_text("type: service\nport: [\n")
    executable = shutil.which("serveform") or ""
    command = [executable] if executable else [sys.executable, "-m", "serveform.cli"]
    done = subprocess.run([*command, "compile", "--json", str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "YAML syntax error" in done.stderr and "Traceback" not in done.stderr
    assert json.loads(done.stdout) == []


def test_stack_config_gives_backend_domain_regions_and_files(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "Pulumi.yaml").write_text("name: demo\nruntime: python\n")
    (tmp_path / "svc").mkdir()
    shutil.copy(HERE / "examples" / "002-models-long.dstack.yml", tmp_path / "svc" / "llm.dstack.yml")
    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.prod.yaml").write_text(
        "config:\n  serveform:backend: aws\n  serveform:domain: example.com\n  serveform:regions: [eu-west-1]\n"
        "  serveform:services:\n    - svc/llm.dstack.yml\n  serveform:tokens:\n    secure: v1:AAAA\n"
    )
    monkeypatch.chdir(tmp_path)
    status, out, err = run(capsys, "compile", "--json", "--stack", "prod")
    assert status == 0, err
    (service,) = json.loads(out)
    assert service["file"] == str(Path("svc") / "llm.dstack.yml")
    assert service["plan"]["backend"] == "aws"
    assert {o["region"] for o in service["plan"]["offers"]} == {"eu-west-1"}
    # a stack may name a fresh offers catalog
    (tmp_path / "offers.csv").write_text(
        "provider,instance_name,location,price,cpu,memory,gpu_count,gpu_name,gpu_memory,spot,disk_size,gpu_vendor,flags,cpu_arch,provider_data\n"
        "aws,x9.fresh,eu-west-1,0.5,8,32,1,L4,24,False,,nvidia,,x86,{}\n"
    )
    config = (tmp_path / "stacks" / "Pulumi.prod.yaml").read_text()
    (tmp_path / "stacks" / "Pulumi.prod.yaml").write_text(config + "  serveform:offersCatalog: offers.csv\n")
    status, out, err = run(capsys, "compile", "--json", "--stack", "prod")
    assert status == 0, err
    assert [o["instance_type"] for o in json.loads(out)[0]["plan"]["offers"]] == ["x9.fresh"]
    status, out, err = run(capsys, "validate", "--stack", "nope")
    assert status == 2 and "Pulumi.nope.yaml" in err


def test_schema_is_valid_and_accepts_every_example(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "schema")
    assert status == 0
    schema = json.loads(out)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for path in EXAMPLES:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert not errors, (path.name, errors)
    for field in ("replicas", "resources", "port", "env", "model", "scaling", "probes", "rate_limits", "volumes"):
        assert schema["properties"][field].get("description"), field


def test_schema_agrees_with_the_translator_on_the_dstack_cases(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from serveform.translator import TranslatorError, compile_file

    _, out, _ = run(capsys, "schema")
    validator = jsonschema.Draft202012Validator(json.loads(out))
    cases = yaml.safe_load((HERE / "dstack_cases.yaml").read_text())
    for index, case in enumerate(cases):
        path = tmp_path / f"c{index}.dstack.yml"
        path.write_text(case["yaml"])
        try:
            compile_file(path)
        except TranslatorError:
            continue
        if case.get("lax"):
            continue
        # every file the translator accepts is valid under the schema editors use
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(case["yaml"]))]
        assert not errors, (case["yaml"], errors)
    for text in ("type: service\nport: 80\nreplica: 2\n", "type: service\nport: 80\nresources: {gpu: {cont: 1}}\n", "type: service\n"):
        assert list(validator.iter_errors(yaml.safe_load(text))), text



def test_checked_in_schema_is_current() -> None:
    """translator/service.schema.json (for editors' `# yaml-language-server: $schema=...`) matches `serveform schema`."""
    from serveform.translator.schema import service_json_schema

    checked_in = json.loads((HERE.parents[1] / "translator" / "service.schema.json").read_text())
    assert checked_in == service_json_schema(), "regenerate: serveform schema > translator/service.schema.json"


def test_standard_input(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("type: service\nname: piped\nport: 80\ncommands: [x]\n"))
    status, out, err = run(capsys, "compile", "--json", "-")
    assert status == 0, err
    assert [(s["file"], s["name"]) for s in json.loads(out)] == [("<stdin>", "piped")]
