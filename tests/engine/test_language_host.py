"""Plain `pulumi` commands run a Python program through serveform's own language host.

This is the path CI users take (`pulumi preview` / `pulumi up` in the project directory)
where the official `pulumi-language-python` is not installed: the real CLI starts
`.venv/bin/pulumi-language-python` (serveform.stacks.language_host), which runs `__main__.py`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PROGRAM = '''
import pulumi
from pulumi.dynamic import CreateResult, DiffResult, Resource, ResourceProvider, UpdateResult


class EchoProvider(ResourceProvider):
    def create(self, props):
        return CreateResult(id_="echo", outs={"value": props["value"]})

    def diff(self, _id, olds, news):
        return DiffResult(changes=olds.get("value") != news.get("value"))

    def update(self, _id, _olds, news):
        return UpdateResult(outs={"value": news["value"]})


class Echo(Resource):
    value: pulumi.Output[str]

    def __init__(self, name, value):
        super().__init__(EchoProvider(), name, {"value": value})


echo = Echo("echo", pulumi.Config().get("value") or "first")
pulumi.export("value", echo.value)
pulumi.export("secret", pulumi.Output.secret("s3cr3t-value"))
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "Pulumi.yaml").write_text(
        f"name: hosttest\nruntime:\n  name: python\n  options:\n    virtualenv: {Path(sys.prefix)}\n"
    )
    (tmp_path / "__main__.py").write_text(PROGRAM)
    return tmp_path


def _pulumi(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PULUMI_BACKEND_URL": (project / "state").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": "test-only",
        "PULUMI_SKIP_UPDATE_CHECK": "1",
        "PULUMI_HOME": str(project / "home"),
    }
    (project / "state").mkdir(exist_ok=True)
    return subprocess.run(
        [shutil.which("pulumi", path=env["PATH"]), *args, "--non-interactive"],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )


def test_plain_pulumi_preview_up_update_destroy(project: Path) -> None:
    assert _pulumi(project, "stack", "init", "t").returncode == 0

    preview = _pulumi(project, "preview")
    assert preview.returncode == 0, preview.stderr
    assert "+ 2 to create" in preview.stdout

    up = _pulumi(project, "up", "--yes")
    assert up.returncode == 0, up.stderr + up.stdout
    out = _pulumi(project, "stack", "output", "value")
    assert out.stdout.strip() == "first"
    # Secrets stay secrets through our host.
    assert "s3cr3t-value" not in _pulumi(project, "stack", "output", "secret").stdout
    assert "s3cr3t-value" not in (project / "state").joinpath(".pulumi", "stacks", "hosttest", "t.json").read_text()

    assert _pulumi(project, "config", "set", "value", "second").returncode == 0
    up2 = _pulumi(project, "up", "--yes")
    assert up2.returncode == 0, up2.stderr
    assert "1 updated" in up2.stdout
    assert _pulumi(project, "stack", "output", "value").stdout.strip() == "second"

    again = _pulumi(project, "up", "--yes")
    assert again.returncode == 0
    assert "updated" not in again.stdout and "created" not in again.stdout

    down = _pulumi(project, "destroy", "--yes")
    assert down.returncode == 0, down.stderr
    assert "2 deleted" in down.stdout


def test_program_error_is_reported_and_changes_nothing(project: Path) -> None:
    assert _pulumi(project, "stack", "init", "t").returncode == 0
    assert _pulumi(project, "up", "--yes").returncode == 0
    (project / "__main__.py").write_text("import pulumi\nraise pulumi.RunError('serve.dstack.yml:3:1: error: port: required')\n")
    failed = _pulumi(project, "up", "--yes")
    assert failed.returncode != 0
    assert "serve.dstack.yml:3:1: error: port: required" in failed.stdout + failed.stderr
    # Nothing was deleted: the failed program registered nothing, and Pulumi keeps what exists.
    assert _pulumi(project, "stack", "output", "value").stdout.strip() == "first"
