"""The local backend's unpacked code: the `Code` provider run for real, and the replicas' inputs
under the mock runtime (they run in the unpacked repository, at the plan's working directory)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
import pulumi
from _pulumi_harness import Mocks, install

from serveform.bundle import write_archive
from serveform.bundle.archive import ArchiveEntry
from serveform.components.local._code import PROVIDER_VERSION, CodeProvider
from serveform.stacks.settings import StackSettings
from serveform.translator.plan import CodePlan, GatewayRoutePlan, ReplicaBounds, ReplicaGroupPlan, ResourcesPlan, ServicePlan

CODE = "pulumi-python:dynamic/serveform-local:Code"
REPLICA = "pulumi-python:dynamic/serveform-local:Replica"


def _plan(**group) -> ServicePlan:
    return ServicePlan(
        file="chat.dstack.yml", name="chat", backend="local",
        replica_group=ReplicaGroupPlan(
            image="python:3.11", commands=("python app/server.py",), container_port=8000,
            resources=ResourcesPlan(cpu_min=1, memory_min_gb=0.5, disk_min_gb=1), **group,
        ),
        replicas=ReplicaBounds(min=2, max=2, initial=2),
        route=GatewayRoutePlan(subdomain="chat"),
    )


def _settings(tmp_path: Path) -> StackSettings:
    return StackSettings.from_config({"backend": "local", "services": ["chat.dstack.yml"]}, stack="dev", project_dir=tmp_path)


async def _deploy(settings: StackSettings, plans: list[ServicePlan]) -> None:
    from serveform.components.local import deploy

    deploy(settings, plans)
    for value in pulumi.runtime.get_root_resource().outputs.values():
        await pulumi.Output.from_input(value).future()
    await pulumi.runtime.stack.wait_for_rpcs(await_all_outstanding_tasks=False)


@pytest.fixture
def tmp_path():
    path = Path(tempfile.mkdtemp(prefix="sf-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def mocks() -> Mocks:
    return install(stack="dev")


def _archive(root: Path) -> tuple[Path, str]:
    (root / "src").mkdir(parents=True)
    (root / "src" / "server.py").write_text("print('hi')\n")
    archive = root / ".serveform" / "code" / "x.tar.gz"
    sha256, _ = write_archive([ArchiveEntry("repo/app/server.py", root / "src" / "server.py")], archive)
    final = archive.with_name(f"{sha256}.tar.gz")
    archive.replace(final)
    final.with_name(f"{sha256}.manifest.json").write_text("{}")
    return final, sha256


async def test_replicas_run_in_the_unpacked_repository_at_the_working_directory(tmp_path, mocks):
    archive, sha256 = _archive(tmp_path)
    plan = _plan(working_dir="app").model_copy(
        update={"code": CodePlan(sha256=sha256, size_bytes=1, archive=str(archive), workdir="/workflow/app")}
    )
    settings = _settings(tmp_path)
    await _deploy(settings, [plan])
    (code,) = mocks.of_type(CODE)
    unpacked = str(settings.state_dir / "code" / f"chat-{sha256[:16]}")
    assert code.name == "chat-code"
    assert {k: v for k, v in code.inputs.items() if k != "__provider"} == {
        "provider_version": PROVIDER_VERSION, "archive": str(archive), "sha256": sha256, "path": unpacked,
        "cleanup_root": str(tmp_path / ".serveform"),
    }
    for replica in mocks.of_type(REPLICA):
        assert replica.inputs["project_dir"] == unpacked + "/repo" and replica.inputs["working_dir"] == "app"


def test_the_provider_unpacks_a_checked_archive_and_destroy_leaves_nothing(tmp_path):
    archive, sha256 = _archive(tmp_path)
    provider = CodeProvider()
    props = {"provider_version": PROVIDER_VERSION, "archive": str(archive), "sha256": sha256,
             "path": str(tmp_path / ".serveform" / "local" / "dev" / "code" / "chat-x"), "cleanup_root": str(tmp_path / ".serveform")}
    with pytest.raises(RuntimeError, match=f"sha256 mismatch: expected {'0' * 64}, got {sha256}"):
        provider.create({**props, "sha256": "0" * 64})
    created = provider.create(props)
    assert (Path(created.id) / "repo" / "app" / "server.py").read_text() == "print('hi')\n"
    assert provider.diff(created.id, props, {**props, "sha256": "1" * 64}).replaces == ["sha256"]
    assert provider.diff(created.id, props, dict(props)).changes is False
    provider.delete(created.id, props)
    assert not (tmp_path / ".serveform").exists()  # the folder, the archive and its manifest are gone
