"""The code archive in a replica VM's boot: rendered for every cloud (cloud-init schema, bash -n),
and the fetch–check–unpack step run for real with bash, tar and sha256sum (the fetch stubbed)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cloud_examples import hostile_plan  # noqa: E402
from _system_tools import apt_install  # noqa: E402

from serveform.bundle import write_archive  # noqa: E402
from serveform.bundle.archive import ArchiveEntry  # noqa: E402
from serveform.components._render import render  # noqa: E402
from serveform.components._vm import CodeSource, ReplicaBoot, replica_user_data  # noqa: E402
from serveform.translator.plan import CodeMountPlan, CodePlan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CLOUDS = ("aws", "gcp", "azure")
URLS = {
    "aws": "s3://serveform-dev-artifacts/code/hostile/x.tar.gz",
    "gcp": "https://storage.googleapis.com/storage/v1/b/sf-dev/o/code%2Fhostile%2Fx.tar.gz?alt=media",
    "azure": "https://sfdev.blob.core.windows.net/artifacts/code/hostile/x.tar.gz",
}


@pytest.fixture(scope="module")
def cloud_init() -> str:
    return apt_install("cloud-init", "cloud-init")


def _archive(tmp_path: Path) -> tuple[Path, str]:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "server.py").write_text("print('hi')\n")
    (tmp_path / "src" / "key").write_text("k\n")
    entries = [ArchiveEntry("mounts/0", tmp_path / "src" / "key"), ArchiveEntry("repo/app/server.py", tmp_path / "src" / "server.py")]
    path = tmp_path / "code.tar.gz"
    sha256, _ = write_archive(entries, path)
    return path, sha256


def _code_plan(archive: Path, sha256: str) -> CodePlan:
    return CodePlan(
        sha256=sha256, size_bytes=archive.stat().st_size, archive=str(archive), workdir="/workflow/app",
        mounts=(CodeMountPlan(member="mounts/0", path="/etc/it's/key"),),
    )


@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_replica_boot_fetches_checks_and_mounts_the_code(cloud, cloud_init, tmp_path):
    archive, sha256 = _archive(tmp_path)
    plan = hostile_plan(cloud).model_copy(update={"code": _code_plan(archive, sha256)})
    identity = "00000000-0000-0000-0000-0000000000aa" if cloud == "azure" else None
    text = replica_user_data(ReplicaBoot(plan=plan, cloud=cloud, stack="dev", identity=identity, code=CodeSource(url=URLS[cloud], region="us-east-1")))
    (tmp_path / "user-data").write_text(text)
    schema = subprocess.run([cloud_init, "schema", "--config-file", str(tmp_path / "user-data")], capture_output=True, text=True)
    assert schema.returncode == 0, schema.stdout + schema.stderr
    run_sh = next(f["content"] for f in yaml.safe_load(text)["write_files"] if f["path"] == "/opt/serveform/replica/run.sh")
    assert subprocess.run(["bash", "-n"], input=run_sh, text=True, capture_output=True).returncode == 0
    assert f"CODE_SHA256={sha256}" in run_sh and "sha256sum" in run_sh
    assert "docker_args+=(--workdir /workflow/app)" in run_sh  # the plan's working directory, under /workflow
    assert """docker_args+=(-v "$CODE_DIR/repo:"/workflow)""" in run_sh
    assert """docker_args+=(-v "$CODE_DIR/"'mounts/0:/etc/it'"'"'s/key')""" in run_sh
    # The code step runs before the container starts.
    assert run_sh.index("serveform_fetch_code \"$CODE_DIR.tar.gz\"") < run_sh.index("exec docker run")
    files = {f["path"]: f for f in yaml.safe_load(text)["write_files"]}
    # The gateway's stdlib fetcher of each cloud, with the instance's identity: no awscli, gcloud or az.
    assert files["/opt/serveform/bin/serveform-fetch"]["permissions"] == "0755"
    assert files["/opt/serveform/bin/serveform-fetch"]["content"] == (ROOT / "components" / "boot" / f"{cloud}_fetch.py").read_text()
    assert files["/opt/serveform/bin/_fetch.py"]["permissions"] == "0644"
    fetch = {
        "aws": f"artifact code {sha256} serveform-dev-artifacts code/hostile/x.tar.gz us-east-1",
        "gcp": f"artifact code {sha256} sf-dev code/hostile/x.tar.gz",
        "azure": f"artifact code {sha256} {URLS['azure']} {identity}",
    }[cloud]
    assert f"/opt/serveform/bin/serveform-fetch {fetch} " in run_sh
    assert "curl" not in run_sh.split("serveform_fetch_code()", 1)[1].split("}", 1)[0]


@pytest.mark.parametrize(("cloud", "url"), [
    ("gcp", "https://storage.googleapis.com/storage/v1/b/sf-dev/o/code%2F..%2F%24%28id%29?alt=media"),
    ("gcp", "https://example.com/x.tar.gz"),
    ("azure", "https://evil.example/x.tar.gz"),
])
def test_a_gcp_or_azure_code_location_must_be_the_stacks_store(cloud, url, tmp_path):
    from serveform.components._vm import VmConfigError

    archive, sha256 = _archive(tmp_path)
    plan = hostile_plan(cloud).model_copy(update={"code": _code_plan(archive, sha256)})
    identity = "00000000-0000-0000-0000-0000000000aa" if cloud == "azure" else None
    with pytest.raises(VmConfigError, match="code archive: expected"):
        replica_user_data(ReplicaBoot(plan=plan, cloud=cloud, stack="dev", identity=identity, code=CodeSource(url=url)))


def test_an_aws_code_location_must_be_an_s3_object_with_its_region(tmp_path):
    from serveform.components._vm import VmConfigError

    archive, sha256 = _archive(tmp_path)
    plan = hostile_plan("aws").model_copy(update={"code": _code_plan(archive, sha256)})
    for source in (CodeSource(url="https://example.com/x.tar.gz", region="us-east-1"), CodeSource(url=URLS["aws"])):
        with pytest.raises(VmConfigError, match="code archive: expected an s3://BUCKET/KEY location and its region"):
            replica_user_data(ReplicaBoot(plan=plan, cloud="aws", stack="dev", code=source))


def test_without_an_artifact_store_the_boot_is_as_before(tmp_path):
    archive, sha256 = _archive(tmp_path)
    plan = hostile_plan("aws")
    with_code = plan.model_copy(update={"code": _code_plan(archive, sha256)})
    assert replica_user_data(ReplicaBoot(plan=with_code, cloud="aws", stack="dev")) == replica_user_data(ReplicaBoot(plan=plan, cloud="aws", stack="dev"))


def test_a_code_change_changes_the_user_data_and_an_unchanged_tree_does_not(tmp_path):
    archive, sha256 = _archive(tmp_path)
    plan = hostile_plan("aws").model_copy(update={"code": _code_plan(archive, sha256)})
    source = CodeSource(url=URLS["aws"], region="us-east-1")
    boot = ReplicaBoot(plan=plan, cloud="aws", stack="dev", code=source)
    assert replica_user_data(boot) == replica_user_data(ReplicaBoot(plan=plan, cloud="aws", stack="dev", code=source))
    other = plan.model_copy(update={"code": plan.code.model_copy(update={"sha256": "f" * 64})})
    assert replica_user_data(ReplicaBoot(plan=other, cloud="aws", stack="dev", code=source)) != replica_user_data(boot)


def _run_code_step(tmp_path: Path, code: CodePlan, served: Path, name: str) -> subprocess.CompletedProcess[str]:
    """The rendered code step of an AWS replica, run by bash with `aws` stubbed to copy ``served``."""
    stub = tmp_path / "serveform-fetch"
    # `serveform-fetch artifact NAME SHA256 BUCKET KEY REGION DEST` (components/boot/aws_fetch.py,
    # tested with its own digest check elsewhere): this stub serves a local file and checks nothing,
    # so the step's own check is what stands between a bad archive and the container.
    stub.write_text('#!/bin/sh\n[ "$1 $2 $4 $5 $6" = "artifact code serveform-dev-artifacts code/hostile/x.tar.gz us-east-1" ] || exit 9\n'
                    'cp "$SERVED" "$7"\necho fetched >> "$FETCH_LOG"\n')
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    step = render("replica/code.sh.j2", cloud="aws", code=CodeSource(url=URLS["aws"], region="us-east-1"), code_plan=code,
                  code_root=str(tmp_path / "code"), console=str(tmp_path / "console"), fetch_bin=str(stub),
                  s3={"bucket": "serveform-dev-artifacts", "key": "code/hostile/x.tar.gz", "region": "us-east-1"})
    script = "set -euo pipefail\numask 077\ndocker_args=()\nretry() { \"$@\"; }\n" + step + '\nprintf "%s\\n" "${docker_args[@]}"\n'
    (tmp_path / name).write_text(script)
    env = {**os.environ, "SERVED": str(served), "FETCH_LOG": str(tmp_path / "fetches")}
    return subprocess.run(["bash", str(tmp_path / name)], capture_output=True, text=True, env=env, timeout=60)


def test_the_code_step_unpacks_a_checked_archive_once(tmp_path):
    archive, sha256 = _archive(tmp_path)
    code = _code_plan(archive, sha256)
    first = _run_code_step(tmp_path, code, archive, "step.sh")
    assert first.returncode == 0, first.stderr
    unpacked = tmp_path / "code" / sha256
    assert (unpacked / "repo" / "app" / "server.py").read_text() == "print('hi')\n"
    assert first.stdout.splitlines() == ["-v", f"{unpacked}/repo:/workflow", "-v", f"{unpacked}/mounts/0:/etc/it's/key"]
    assert not (tmp_path / "code" / f"{sha256}.tar.gz").exists()
    again = _run_code_step(tmp_path, code, archive, "step.sh")  # a restarted unit: no second download
    assert again.returncode == 0 and (tmp_path / "fetches").read_text() == "fetched\n"


def test_a_tampered_archive_fails_the_boot_with_one_line(tmp_path):
    archive, sha256 = _archive(tmp_path)
    tampered = tmp_path / "tampered.tar.gz"
    tampered.write_bytes(archive.read_bytes()[:-8] + b"\0" * 8)
    actual = hashlib.sha256(tampered.read_bytes()).hexdigest()
    result = _run_code_step(tmp_path, _code_plan(archive, sha256), tampered, "step.sh")
    assert result.returncode == 1 and result.stdout == ""
    line = f"serveform: code archive {URLS['aws']}: sha256 mismatch: expected {sha256}, got {actual}\n"
    assert result.stderr == line and (tmp_path / "console").read_text() == line
    assert not (tmp_path / "code" / sha256 / "repo").exists()
