"""CI workflows: pull request code never holds a credential that can change production.

actionlint itself runs in tests/components/test_workflows.py; these checks read the workflows
as data: which job may read which secret, under which environment and for which pull requests.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
# The deploy credentials: only up.yml's per-stack (protected) environments hold them.
PRODUCTION_SECRETS = {
    "AWS_ROLE_ARN", "GCP_SERVICE_ACCOUNT", "AZURE_CLIENT_ID", "PULUMI_ACCESS_TOKEN", "PULUMI_CONFIG_PASSPHRASE",
}
_SECRET = re.compile(r"secrets\.([A-Z0-9_]+)")


def _load(name: str) -> dict:
    document = yaml.safe_load((ROOT / ".github" / "workflows" / name).read_text())
    document["on"] = document.pop(True, document.get("on"))
    return document


def _secrets(job: dict) -> set[str]:
    return set(_SECRET.findall(yaml.safe_dump(job))) - {"GITHUB_TOKEN"}


def test_pull_requests_get_no_production_secret() -> None:
    flow = _load("preview.yml")
    assert set(flow["on"]) == {"pull_request"}  # never pull_request_target (it hands PR code the secrets)
    for name, job in flow["jobs"].items():
        assert not (_secrets(job) & PRODUCTION_SECRETS), f"{name}: {_secrets(job) & PRODUCTION_SECRETS}"
        if _secrets(job):
            # Secrets only from the protected `preview` environment, which holds read-only ones.
            assert job.get("environment") == "preview", name


def test_the_live_preview_uses_read_only_identities_and_skips_forks() -> None:
    job = _load("preview.yml")["jobs"]["preview"]
    assert "head.repo.full_name == github.repository" in job["if"]
    used = _secrets(job)
    assert {"AWS_PREVIEW_ROLE_ARN", "GCP_PREVIEW_SERVICE_ACCOUNT", "AZURE_PREVIEW_CLIENT_ID"} <= used
    assert "PULUMI_PREVIEW_ACCESS_TOKEN" in used
    for step in job["steps"]:
        if str(step.get("uses", "")).startswith("pulumi/actions") and "command" in step.get("with", {}):
            assert step["with"]["command"] == "preview"


def test_forks_get_the_offline_plan_only() -> None:
    flow = _load("preview.yml")
    plan = flow["jobs"]["offline-plan"]
    assert "if" not in plan  # every pull request, forks included
    assert not _secrets(plan) and "id-token" not in (plan.get("permissions") or {})
    assert any("serveform plan --base" in step.get("run", "") for step in plan["steps"])
    # Every other job that runs pull request code with credentials excludes forks.
    for name, job in flow["jobs"].items():
        if _secrets(job) or (job.get("permissions") or {}).get("id-token") == "write":
            assert "head.repo.full_name == github.repository" in job.get("if", ""), name


def test_up_runs_only_in_a_protected_per_stack_environment_on_main() -> None:
    flow = _load("up.yml")
    assert set(flow["on"]) <= {"push", "workflow_dispatch"} and flow["on"]["push"]["branches"] == ["main"]
    for name, job in flow["jobs"].items():
        if _secrets(job):
            assert job.get("environment") == "${{ matrix.stack }}", name
            assert "github.ref == 'refs/heads/main'" in job["if"], name
    (step,) = [s for s in flow["jobs"]["up"]["steps"] if "command" in s.get("with", {})]
    assert step["with"]["command"] == "up"


def test_checkouts_do_not_leave_the_token_for_later_steps() -> None:
    for name in ("preview.yml", "up.yml"):
        for job_name, job in _load(name)["jobs"].items():
            for step in job["steps"]:
                if str(step.get("uses", "")).startswith("actions/checkout") and (_secrets(job) or job_name == "offline-plan"):
                    assert (step.get("with") or {}).get("persist-credentials") is False, (name, job_name)
