"""The code archive on Kubernetes under the mock runtime: a digest-named Secret, the init container
that checks and unpacks it, and the mounts at /workflow and each `files` target."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from _k8s_harness import run_program

from serveform.bundle import archive_service
from serveform.components import k8s as backend
from serveform.components.k8s import _capacity, _code
from serveform.components.k8s._pod import K8sPlanError
from serveform.stacks.settings import StackSettings
from serveform.translator import CompileContext, compile_file

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SECRET = "kubernetes:core/v1:Secret"
IMAGE = "registry.example/serveform:1"

SERVICE = """\
type: service
name: web
image: python:3.11-slim
working_dir: app
commands:
  - python server.py
port: 8000
files:
  - key.txt:/etc/web/key.txt
"""


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "project"
    (root / "app").mkdir(parents=True)
    (root / "app" / "server.py").write_text("print('serving')\n")
    (root / "key.txt").write_text("k\n")
    (root / "web.dstack.yml").write_text(SERVICE)
    monkeypatch.setattr(_capacity, "read_nodes", lambda kubeconfig, context: [_capacity.NodeFacts(name="n", allocatable={"cpu": "8"}, labels={})])
    return root


def _plan(project: Path, out: Path):
    plan = compile_file(project / "web.dstack.yml", CompileContext(backend="k8s")).plan
    code, archive = archive_service(plan, out_dir=out, project_dir=project)
    return plan.model_copy(update={"code": code}), archive


def _deploy(project: Path, plan):
    settings = StackSettings.from_config(
        {"backend": "k8s", "services": ["web.dstack.yml"], "k8s": {"image": IMAGE, "namespace": "ns"}}, stack="k8s", project_dir=str(project)
    )
    return run_program(lambda: backend.deploy(settings, [plan]))


def test_the_archive_rides_in_a_digest_named_secret_unpacked_by_an_init_container(project, tmp_path):
    plan, archive = _plan(project, tmp_path / "code")
    rec = _deploy(project, plan)
    secret = rec.one(SECRET, "web-code")
    assert secret.inputs["metadata"]["name"] == f"web-code-{archive.sha256[:12]}"
    assert secret.inputs["immutable"] is True
    assert base64.b64decode(secret.inputs["data"][_code.ARCHIVE_KEY]) == archive.path.read_bytes()

    template = rec.one(DEPLOYMENT, "web-deployment").inputs["spec"]["template"]
    assert template["metadata"]["annotations"] == {_code.CODE_ANNOTATION: archive.sha256}
    pod = template["spec"]
    (init,) = pod["initContainers"]
    assert init["image"] == IMAGE and init["command"][:2] == ["/bin/sh", "-c"]
    assert archive.sha256 in init["command"][2]
    assert init["securityContext"]["runAsNonRoot"] is True and init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["code-archive"]["secret"]["secretName"] == f"web-code-{archive.sha256[:12]}"
    assert volumes["code"]["emptyDir"] == {}
    (container,) = pod["containers"]
    assert container["workingDir"] == "/workflow/app"
    assert {"name": "code", "mountPath": "/workflow", "subPath": "repo"} in container["volumeMounts"]
    assert {"name": "code", "mountPath": "/etc/web/key.txt", "subPath": "mounts/0"} in container["volumeMounts"]


def test_an_unchanged_tree_renders_the_same_pod_and_a_change_a_new_one(project, tmp_path):
    plan, _ = _plan(project, tmp_path / "code")
    same, _ = _plan(project, tmp_path / "code")
    first = _deploy(project, plan).one(DEPLOYMENT, "web-deployment").inputs["spec"]["template"]
    assert same.code == plan.code
    assert _deploy(project, same).one(DEPLOYMENT, "web-deployment").inputs["spec"]["template"] == first
    (project / "app" / "server.py").write_text("print('changed')\n")
    changed, archive = _plan(project, tmp_path / "code")
    second = _deploy(project, changed).one(DEPLOYMENT, "web-deployment").inputs["spec"]["template"]
    assert second["metadata"]["annotations"][_code.CODE_ANNOTATION] == archive.sha256 != first["metadata"]["annotations"][_code.CODE_ANNOTATION]


def test_a_scale_update_without_the_archive_keeps_the_stored_bytes(project, tmp_path):
    plan, archive = _plan(project, tmp_path / "code")
    archive.path.unlink()  # the in-cluster scaler has no checkout, so no archive
    rec = _deploy(project, plan)
    secret = rec.one(SECRET, "web-code")
    assert secret.inputs["metadata"]["name"] == f"web-code-{archive.sha256[:12]}" and secret.inputs.get("data", {}) == {}


def test_an_archive_no_secret_can_hold_is_refused_naming_the_file(project, tmp_path):
    plan, _ = _plan(project, tmp_path / "code")
    big = plan.model_copy(update={"code": plan.code.model_copy(update={"size_bytes": _code.MAX_SECRET_BYTES + 1})})
    with pytest.raises(K8sPlanError, match=r"web\.dstack\.yml: error: code archive: .* \.dstackignore"):
        _code.check_size(big)


def test_the_init_script_refuses_a_tampered_archive_with_one_line_and_unpacks_a_good_one(project, tmp_path):
    plan, archive = _plan(project, tmp_path / "code")
    root = tmp_path / "pod"
    (root / "archive").mkdir(parents=True)
    (root / "code").mkdir()
    script = _code.init_script(plan).replace(_code.ARCHIVE_MOUNT, str(root / "archive")).replace(_code.UNPACK_MOUNT, str(root / "code"))
    script = script.replace("/dev/termination-log", str(root / "termination-log"))
    (root / "archive" / _code.ARCHIVE_KEY).write_bytes(archive.path.read_bytes() + b"tampered")
    bad = subprocess.run(["sh", "-c", script], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert bad.stderr.startswith(f"serveform: code archive web-code-{archive.sha256[:12]}: sha256 mismatch: expected {archive.sha256}, got ")
    assert (root / "termination-log").read_text() == bad.stderr and list((root / "code").iterdir()) == []
    (root / "archive" / _code.ARCHIVE_KEY).write_bytes(archive.path.read_bytes())
    subprocess.run(["sh", "-c", script], check=True)
    assert (root / "code" / "repo" / "app" / "server.py").read_text() == "print('serving')\n"
    assert (root / "code" / "mounts" / "0").read_text() == "k\n"
