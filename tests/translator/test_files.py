"""`files` and `working_dir`: the accepted forms, where each end resolves, and the errors, at their lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from serveform.translator import CompileContext, TranslatorError, compile_file

HEAD = "type: service\nname: web\nport: 8000\ncommands: [python app.py]\n"


def _compile(tmp_path: Path, body: str, backend: str = "k8s"):
    (tmp_path / "svc").mkdir(exist_ok=True)
    path = tmp_path / "svc" / "web.dstack.yml"
    path.write_text(HEAD + body)
    return compile_file(path, CompileContext(backend=backend))  # type: ignore[arg-type]


def test_every_form_resolves_local_paths_from_the_file_and_targets_under_the_working_dir(tmp_path):
    (tmp_path / "svc" / "data").mkdir(parents=True)
    (tmp_path / "svc" / "req.txt").write_text("x")
    (tmp_path / "key").write_text("k")
    plan = _compile(
        tmp_path,
        "working_dir: app\nfiles:\n  - data:/opt/data\n  - req.txt\n  - {local_path: ../key, path: conf/key}\n"
        f"  - {tmp_path}/key\n",
    ).plan
    assert [(f.local_path, f.path) for f in plan.files] == [
        (str(tmp_path / "svc" / "data"), "/opt/data"),
        (str(tmp_path / "svc" / "req.txt"), "/workflow/app/req.txt"),
        (str(tmp_path / "key"), "/workflow/app/conf/key"),
        (str(tmp_path / "key"), str(tmp_path / "key")),  # dstack: an absolute LOCAL alone keeps its path
    ]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("missing.txt", "is not a file or folder on this machine"),
        ("req.txt:../up", "`..` is not allowed in a container path"),
        ("req.txt:/a:b", "expected `LOCAL:PATH` or `LOCAL` (one `:`)"),
        ("req.txt:/a,b", "a container path cannot contain ','"),
        ("~/x", "starts with `~`: give the container path too"),
        ("req.txt:/", "cannot copy onto `/`"),
    ],
)
def test_bad_entries_are_reported_at_their_line(tmp_path, entry, message):
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "req.txt").write_text("x")
    with pytest.raises(TranslatorError) as caught:
        _compile(tmp_path, f"files:\n  - {entry}\n")
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.line == 6 and diagnostic.field.startswith("files[0]") and message in diagnostic.message


def test_the_local_backend_refuses_targets_outside_the_repository_folder(tmp_path):
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "req.txt").write_text("x")
    assert _compile(tmp_path, "files:\n  - req.txt:conf/req.txt\n", backend="local").plan.files
    with pytest.raises(TranslatorError, match=r"`/etc/req.txt` is outside /workflow: the local backend"):
        _compile(tmp_path, "files:\n  - req.txt:/etc/req.txt\n", backend="local")


@pytest.mark.parametrize("working_dir", ["../up", "a/../../b", "\"a\\nb\""])
def test_a_working_dir_leaving_the_repository_or_spanning_lines_is_refused(tmp_path, working_dir):
    with pytest.raises(TranslatorError, match="working_dir"):
        _compile(tmp_path, f"working_dir: {working_dir}\n")
