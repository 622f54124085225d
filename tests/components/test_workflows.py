"""The GitHub Actions workflows: valid for actionlint (built from the Go module proxy) and shaped as promised.

actionlint checks workflow syntax, expressions, the inputs of known actions (pulumi/actions,
configure-aws-credentials, google-github-actions/auth, azure/login) and, through shellcheck,
every `run:` script.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from _system_tools import apt_install

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


@pytest.fixture(scope="module")
def actionlint() -> str:
    apt_install("shellcheck", "shellcheck")  # actionlint lints run: scripts with it when present
    built = subprocess.run([str(ROOT / "tools" / "actionlint" / "build.sh")], capture_output=True, text=True, timeout=900)
    assert built.returncode == 0, built.stderr
    return built.stdout.strip().splitlines()[-1]


def _lint(actionlint: str, *paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run([actionlint, "-no-color", "-oneline", *map(str, paths)], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_actionlint_is_the_pinned_version(actionlint):
    out = subprocess.run([actionlint, "-version"], capture_output=True, text=True).stdout
    pinned = re.search(r"github.com/rhysd/actionlint (v\S+)", (ROOT / "tools/actionlint/go.mod").read_text()).group(1)
    assert out.splitlines()[0] == pinned


def test_workflows_pass_actionlint(actionlint):
    assert {"preview.yml", "up.yml"} <= {p.name for p in WORKFLOWS}
    result = _lint(actionlint, *WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_actionlint_rejects_a_broken_workflow(actionlint, tmp_path):
    """Negative control: a wrong pulumi/actions input, a bad expression and a shell bug are caught."""
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    bad = folder / "bad.yml"
    bad.write_text(
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n"
        "      - uses: pulumi/actions@v6\n        with:\n          comand: preview\n"
        "      - run: echo ${{ matrix.nope }} $undefined_var[0]\n"
    )
    result = _lint(actionlint, bad)
    assert result.returncode != 0
    assert "comand" in result.stdout


def _load(name: str) -> dict:
    document = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    document["on"] = document.pop(True, document.get("on"))  # YAML 1.1 reads the key `on` as true
    return document


def _pulumi_steps(job: dict) -> list[dict]:
    return [s for s in job["steps"] if str(s.get("uses", "")).startswith("pulumi/actions@") and "command" in s.get("with", {})]


def test_preview_on_pull_requests_comments_the_diff_per_stack():
    flow = _load("preview.yml")
    assert "pull_request" in flow["on"]
    job = flow["jobs"]["preview"]
    assert "matrix" in job["strategy"] and job["permissions"]["pull-requests"] == "write"
    (step,) = _pulumi_steps(job)
    assert step["with"]["command"] == "preview" and step["with"]["comment-on-pr"] is True and step["with"]["diff"] is True
    assert step["with"]["stack-name"] == "${{ matrix.stack }}"
    assert any("serveform plan --base" in s.get("run", "") for s in flow["jobs"]["offline-plan"]["steps"])


def test_up_on_main_one_update_per_stack_at_a_time():
    flow = _load("up.yml")
    assert flow["on"]["push"]["branches"] == ["main"]
    job = flow["jobs"]["up"]
    (step,) = _pulumi_steps(job)
    assert step["with"]["command"] == "up"
    assert job["concurrency"]["cancel-in-progress"] is False and "matrix.stack" in job["concurrency"]["group"]


def test_workflows_pin_the_cli_of_the_python_sdk():
    sdk = re.search(r'"pulumi==([0-9.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    for name in ("preview.yml", "up.yml"):
        assert _load(name)["env"]["PULUMI_VERSION"] == sdk
        assert any(s.get("run") == "pulumi install" for s in _load(name)["jobs"]["preview" if name == "preview.yml" else "up"]["steps"])
