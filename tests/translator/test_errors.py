"""Bad input: one report listing every problem with file, line, column and field; no secret leaks."""

from __future__ import annotations

from pathlib import Path

import pytest
from serveform.translator import CompileContext, Diagnostic, TranslatorError, compile_file, compile_text


def problems(text: str, **context: object) -> list[Diagnostic]:
    with pytest.raises(TranslatorError) as caught:
        compile_text(text, "bad.dstack.yml", CompileContext(**context))  # type: ignore[arg-type]
    return list(caught.value.diagnostics)


def test_every_problem_is_reported_at_once_with_positions() -> None:
    text = (
        "type: service\n"  # 1
        "name: Bad_Name\n"  # 2
        "replica: 2\n"  # 3
        "port: 99999\n"  # 4
        "resources:\n"  # 5
        "  gpu: A100:H100\n"  # 6
        "  memry: 8GB\n"  # 7
        "env:\n"  # 8
        "  - 1BAD=value\n"  # 9
        "commands: [a]\n"  # 10
        "commands: [b]\n"  # 11
    )
    found = [(d.line, d.column, d.field) for d in problems(text)]
    assert found == [
        (2, 7, "name"),
        (3, 1, "replica"),
        (4, 7, "port.container_port"),
        (6, 8, "resources.gpu"),
        (7, 3, "resources.memry"),
        (9, 5, "env[0]"),
        (11, 1, "commands"),
    ]


def test_report_format() -> None:
    error = TranslatorError(problems("type: service\nport: 80\ncommands: [x]\nreplica: 2\n"))
    assert str(error) == "bad.dstack.yml:4:1: error: replica: unknown field `replica` (did you mean `replicas`?)"


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ("replica: 2\n", "replica", "did you mean `replicas`?"),
        ("comands: [x]\n", "comands", "did you mean `commands`?"),
        ("resources:\n  gpus: 1\n", "resources.gpus", "did you mean `gpu`?"),
        ("resources:\n  gpu:\n    cont: 2\n", "resources.gpu.cont", "did you mean `count`?"),
        ("scaling:\n  metric: rps\n  targt: 1\nreplicas: 1..2\n", "scaling.targt", "did you mean `target`?"),
        ("model:\n  name: m\n  format: openai\n  prefx: /v1\n", "model.prefx", "did you mean `prefix`?"),
        ("registry_auth:\n  username: u\n  pasword: x\n", "registry_auth.pasword", "did you mean `password`?"),
        ("probes:\n  - type: http\n    intervall: 5\n", "probes[0].intervall", "did you mean `interval`?"),
        ("volumes:\n  - name: v\n    pth: /x\n", "volumes[0].pth", "did you mean `path`?"),
        ("zzzz: 1\n", "zzzz", None),
    ],
)
def test_unknown_fields_get_did_you_mean(text: str, field: str, hint: str | None) -> None:
    found = problems("type: service\nport: 80\ncommands: [x]\n" + text)
    unknown = [d for d in found if d.message.startswith("unknown field")]
    assert [(d.field, d.hint) for d in unknown] == [(field, hint)]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("---\n", "the file is empty"),
        ("- type: service\n", "got a list"),
        ("just a string\n", "at the top level"),
        ("type: task\ncommands: [x]\n", "only `type: service`"),
        ("port: 80\ncommands: [x]\n", "`type` is required"),
        ("type: service\ncommands: [x]\n", "the required field `port` is missing"),
        ("type: service\nport: 80\ncommands: [x]\ngroups: []\n", "replica groups are not supported"),
    ],
)
def test_document_level_errors(text: str, message: str) -> None:
    assert any(message in d.message for d in problems(text))


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("type: [service\n", 2, "expected ',' or ']'"),
        ("type: service\n\tport: 80\n", 2, "tab"),
        ("type: service\n---\ntype: service\n", 2, "single document"),
        ("type: service\nport: 80\ncommands: !!python/object:os.system [x]\n", 3, "constructor"),
        ("a: b: c\n", 1, "mapping values are not allowed"),
        ("type: 'service\n", 2, "found unexpected end of stream"),
    ],
)
def test_yaml_syntax_errors(text: str, line: int, words: str) -> None:
    (diagnostic,) = problems(text)
    assert diagnostic.line == line and words in diagnostic.message and "YAML" in diagnostic.message


def test_duplicate_keys_are_errors_at_every_level() -> None:
    found = problems("type: service\nport: 80\ncommands: [x]\nresources:\n  gpu: 1\n  gpu: 2\nport: 81\n")
    assert [(d.line, d.field) for d in found] == [(6, "resources.gpu"), (7, "port")]
    assert "first defined on line 5" in found[0].message


def test_aliases_and_merge_keys_are_not_duplicates() -> None:
    text = "type: service\nname: ab\n_base: &base {port: 80}\n<<: *base\ncommands: [x]\n"
    # `_base` is an unknown field (dstack rejects it too); the merge itself is fine
    assert [d.field for d in problems(text)] == ["_base"]
    assert compile_text("type: service\nname: ab\n<<: {port: 80, commands: [x]}\nport: 81\n").spec.port.container_port == 81


def test_alias_bomb_is_refused_without_expanding() -> None:
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdefg", "bcdefgh", strict=True))
    found = problems("type: service\nport: 80\ncommands: [x]\n" + bomb)
    # Refused before anything is built (issue 16): 10**8 expanded nodes, reported at the heaviest anchor.
    (diagnostic,) = found
    assert "aliases expand the document to" in diagnostic.message and diagnostic.line > 1


def test_deep_nesting_is_a_clean_error() -> None:
    text = "type: service\nport: 80\ncommands: [x]\nx: " + "[" * 5000 + "]" * 5000 + "\n"
    assert problems(text)


def test_file_level_errors(tmp_path: Path) -> None:
    with pytest.raises(TranslatorError) as caught:
        compile_file(tmp_path / "missing.dstack.yml")
    assert "cannot read the file" in str(caught.value)
    binary = tmp_path / "binary.dstack.yml"
    binary.write_bytes(b"type: service\n\xff\xfe\n")
    with pytest.raises(TranslatorError) as caught:
        compile_file(binary)
    assert "not UTF-8" in str(caught.value)
    with pytest.raises(TranslatorError) as caught:
        compile_file(tmp_path)
    assert str(tmp_path) in str(caught.value)


SECRET = "s3cr3t-do-not-print"


@pytest.mark.parametrize(
    "text",
    [
        f"registry_auth:\n  username: u\n  password: {{{SECRET}: 1}}\n",
        f"registry_auth:\n  username: [{SECRET}]\n  password: {SECRET}\n  extra: {SECRET}\n",
        f"env:\n  - 'BAD NAME={SECRET}'\n  - 'A={SECRET}'\n  - 'A={SECRET}'\n",
        f"env:\n  A: [{SECRET}]\n  B: {{k: {SECRET}}}\n",
        f"probes:\n  - type: http\n    method: get\n    body: {SECRET}\n    headers: [{{name: Authorization, value: {SECRET}, x: 1}}]\n",
    ],
)
def test_errors_never_print_secret_values(text: str) -> None:
    found = problems("type: service\nport: 80\nimage: x\n" + text)
    report = str(TranslatorError(found))
    assert found and SECRET not in report


def test_warnings_never_print_secret_values() -> None:
    result = compile_text(
        f"type: service\nname: ab\nport: 80\nimage: x\nregistry_auth: {{username: u, password: {SECRET}}}\nenv: [TOKEN, 'A=${{{{ secrets.S }}}}']\n",
        context=CompileContext(environ={"TOKEN": SECRET}, stack_secrets={"S": SECRET}),
    )
    assert result.warnings  # local backend: image and registry_auth are ignored
    assert SECRET not in "\n".join(str(w) for w in result.warnings)
    assert SECRET not in str(result.to_json())
    assert SECRET not in repr(result.plan) and SECRET not in str(result.plan)


def test_diagnostics_are_sorted_and_json_ready() -> None:
    found = problems("type: service\nzz: 1\naa: 2\nport: 80\ncommands: [x]\n")
    assert [d.line for d in found] == sorted(d.line for d in found)
    assert found[0].to_json() == {
        "file": "bad.dstack.yml",
        "line": 2,
        "column": 1,
        "field": "zz",
        "severity": "error",
        "message": "unknown field `zz`",
        "hint": None,
    }


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ("type: servce\nport: 80\ncommands: [x]\n", "type", "did you mean `service`?"),
        ("type: service\nport: 80\ncommands: [x]\nspot_policy: ondemand\n", "spot_policy", "did you mean `on-demand`?"),
        ("type: service\nport: 80\ncommands: [x]\nreplicas: 1..2\nscaling: {metric: rsp, target: 1}\n", "scaling.metric", "did you mean `rps`?"),
        ("type: service\nport: 80\ncommands: [x]\nprobes: [{type: http, method: gett}]\n", "probes[0].method", "did you mean `get`?"),
    ],
)
def test_misspelt_choices_get_did_you_mean(text: str, field: str, hint: str) -> None:
    (diagnostic,) = problems(text)
    assert (diagnostic.field, diagnostic.hint) == (field, hint)


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ("resources:\n  cpu: 2\ngpu: 24GB\n", "gpu", "did you mean `resources.gpu`? check the indentation"),
        ("target: 10\n", "target", "did you mean `scaling.target`? check the indentation"),
        ("resources:\n  replicas: 2\n", "resources.replicas", "did you mean `replicas`? check the indentation"),
    ],
)
def test_fields_at_the_wrong_level_get_a_hint(text: str, field: str, hint: str) -> None:
    found = [d for d in problems("type: service\nport: 80\ncommands: [x]\n" + text) if d.message.startswith("unknown field")]
    assert [(d.field, d.hint) for d in found] == [(field, hint)]


def test_rules_between_fields_are_reported_with_the_fields_own_errors() -> None:
    found = problems('type: service\nname: Bad_Name\nport: 80\nimage: x\npython: "3.10"\nreplicas: 1..3\n')
    assert [(d.line, d.field) for d in found] == [(2, "name"), (5, "python"), (6, "replicas")]
    assert "mutually exclusive" in found[1].message and "`scaling` is required" in found[2].message
    # a field with its own error is not reported twice
    found = problems("type: service\nport: 80\nimage: x\npython: 3.8\n")
    assert [d.field for d in found] == ["python"] and "unsupported" in found[0].message
