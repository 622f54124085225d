"""`serveform plan --base`: a temporary git repository made of this project's own code, with two
commits that change its services, is planned offline and shows exactly the expected changes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SECRET = "plain-text-secret-in-config-123"

_SERVICE = """\
type: service
name: {name}
image: ghcr.io/acme/{name}:1
commands:
  - serve --port 8000
port: 8000
resources:
  cpu: 2..
  memory: 4GB..
replicas: {replicas}
{scaling}
"""


def _service(name: str, replicas: str) -> str:
    scaling = "scaling:\n  metric: rps\n  target: 5" if ".." in replicas else ""
    return _SERVICE.format(name=name, replicas=replicas, scaling=scaling)


def _stack(services: list[str]) -> str:
    listed = "\n".join(f"    - services/{s}.dstack.yml" for s in services)
    return textwrap.dedent(
        """\
        config:
          serveform:backend: aws
          serveform:domain: ai.example.com
          serveform:tokens:
            - secure: v1:AAAAAAAAAAAAAAAA:bm90LWRlY3J5cHRhYmxlLW9mZmxpbmU=
          serveform:secrets:
            API_KEY: {secret}
          serveform:services:
        {listed}
          serveform:aws:
            region: us-east-1
            zone_id: Z0123456789EXAMPLE
        """
    ).format(secret=SECRET, listed=listed)


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com"}
    subprocess.run(["git", *args], cwd=repo, check=True, env=env, capture_output=True)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """This project's committed code, then two commits: one service, then a second and a bigger first."""
    repo = tmp_path_factory.mktemp("repo")
    archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(repo)], input=archive, check=True)
    for stack in (repo / "stacks").glob("Pulumi.*.yaml"):
        stack.unlink()  # only the stack this test writes
    (repo / "services").mkdir()
    (repo / "services" / "web.dstack.yml").write_text(_service("web", "1"))
    (repo / "stacks" / "Pulumi.review.yaml").write_text(_stack(["web"]))
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "one service")
    (repo / "services" / "web.dstack.yml").write_text(_service("web", "1..3"))
    (repo / "services" / "api.dstack.yml").write_text(_service("api", "2"))
    (repo / "stacks" / "Pulumi.review.yaml").write_text(_stack(["web", "api"]))
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "a second service; web autoscales")
    return repo


def _plan(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "serveform.cli", "plan", *args], cwd=repo, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": ""})


def test_plan_shows_the_added_service_and_the_changed_group(repo):
    result = _plan(repo, "--base", "HEAD~1", "--json")
    assert result.returncode == 0, result.stderr
    (diff,) = json.loads(result.stdout)
    assert diff["stack"] == "review"
    added = {(c["type"], c["name"]) for c in diff["changes"] if c["op"] == "+"}
    assert added == {
        ("serveform:aws:GpuInstanceGroup", "api"),
        ("aws:autoscaling/group:Group", "api-group"),
        ("aws:ec2/launchTemplate:LaunchTemplate", "api-template"),
        ("aws:ec2/securityGroup:SecurityGroup", "api-firewall"),
        ("aws:iam/role:Role", "api-role"),
        ("aws:iam/rolePolicy:RolePolicy", "api-policy"),
        ("aws:iam/instanceProfile:InstanceProfile", "api-profile"),
    }
    assert [c for c in diff["changes"] if c["op"] == "-"] == []
    changed = {c["name"]: c["fields"] for c in diff["changes"] if c["op"] == "~"}
    assert changed["web-group"] == ["maxSize"]
    assert "policy" in changed["gateway-policy"]  # the gateway may now scale api's group too
    assert "userDataBase64" in changed["gateway-vm"]  # the gateway's routes and discovery include api
    assert "web-template" not in changed  # web's replicas changed, not what a replica runs


def test_plan_text_report_and_no_secret(repo):
    result = _plan(repo, "--base", "HEAD~1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith("stack review: 7 to add, ")
    assert "  + serveform:aws:GpuInstanceGroup  api" in result.stdout
    assert SECRET not in result.stdout + result.stderr


def test_plan_against_the_same_revision_changes_nothing(repo):
    result = _plan(repo, "--base", "HEAD", "--json")
    assert result.returncode == 0, result.stderr
    (diff,) = json.loads(result.stdout)
    assert diff["changes"] == [] and diff["unchanged"] > 10


def test_bad_base_is_an_error(repo):
    result = _plan(repo, "--base", "no-such-ref")
    assert result.returncode == 1
    assert "no-such-ref" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("stack,cloud", [("aws", "aws"), ("gcp", "gcp"), ("azure", "azure")])
def test_environment_stacks_render_offline(stack, cloud):
    """The repository's own environment stacks compile and wire under the mock runtime."""
    from serveform.stacks.review import render_graph

    graph = render_graph(ROOT, stack)
    types = {r["type"] for r in graph["resources"]}
    assert {f"serveform:{cloud}:Gateway", f"serveform:{cloud}:GpuInstanceGroup"} <= types
    names = {r["name"] for r in graph["resources"]}
    assert {"gateway", "chat", "gateway-dns"} <= names
