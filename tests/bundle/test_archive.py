"""The code archive: what goes in (git's rules, .dstackignore, files), byte-for-byte determinism,
the size cap's message, and the checked unpack."""

from __future__ import annotations

import gzip
import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from serveform.bundle import (
    ARCHIVE_MTIME,
    CodeArchiveError,
    CodeDigestError,
    CodeTooLargeError,
    archive_service,
    unpack,
)
from serveform.translator import CompileContext, compile_file

SERVICE = """\
type: service
name: app
port: 8000
commands: [python app.py]
"""


def _git(repo: Path, *args: str) -> None:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, env=env)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    _write(
        root,
        {
            "svc/app.dstack.yml": SERVICE,
            "app.py": "print('hi')\n",
            "lib/util.py": "X = 1\n",
            "data/big.bin": "tracked despite the ignore rule\n",
            "notes.log": "ignored by .gitignore\n",
            ".gitignore": "*.log\n*.bin\n",
            "docs/readme.md": "left out by .dstackignore\n",
            ".dstackignore": "docs/\n",
            "lib/.dstackignore": "secret.txt\n",
            "lib/secret.txt": "left out by a nested .dstackignore\n",
            "gone.py": "tracked, then deleted\n",
        },
    )
    _git(root, "init", "-q")
    _git(root, "add", "-f", "app.py", "lib/util.py", "data/big.bin", ".gitignore", ".dstackignore", "lib/.dstackignore", "gone.py", "svc/app.dstack.yml", "docs/readme.md")
    _git(root, "commit", "-q", "-m", "init")
    (root / "gone.py").unlink()
    _write(root, {"new.py": "untracked, not ignored\n", ".serveform/state/secret": "never shipped\n"})
    return root


def _plan(service_file: Path, backend: str = "k8s"):
    return compile_file(service_file, CompileContext(backend=backend)).plan  # type: ignore[arg-type]


def _members(path: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, "r:gz") as tar:
        return {m.name: m for m in tar.getmembers()}


def test_a_git_repository_ships_tracked_and_untracked_files_minus_ignored_ones(repo, tmp_path):
    code, archive = archive_service(_plan(repo / "svc" / "app.dstack.yml"), out_dir=tmp_path / "out")
    files = sorted(m for m in archive.members)
    assert files == [
        "repo/.dstackignore",
        "repo/.gitignore",
        "repo/app.py",
        "repo/data/big.bin",  # tracked: .gitignore does not apply (git's rule)
        "repo/lib/.dstackignore",
        "repo/lib/util.py",
        "repo/new.py",  # untracked but not ignored: a local change, shipped as dstack does
    ]  # never: .serveform/ (state), the service file itself (it reaches replicas through the plan)
    assert code.sha256 == archive.sha256 and code.archive == str(archive.path) and code.workdir == "/workflow"
    assert archive.path.name == f"{archive.sha256}.tar.gz"
    assert _members(archive.path)["repo/app.py"].mode == 0o644


def test_the_same_tree_gives_the_same_bytes_and_a_change_gives_new_ones(repo, tmp_path):
    plan = _plan(repo / "svc" / "app.dstack.yml")
    first, a = archive_service(plan, out_dir=tmp_path / "one")
    os.utime(repo / "app.py", (1, 1))  # times, owners and the output folder do not matter
    (repo / "lib" / "util.py").chmod(0o600)
    second, b = archive_service(plan, out_dir=tmp_path / "two")
    assert first.sha256 == second.sha256 and a.path.read_bytes() == b.path.read_bytes()
    (repo / "app.py").write_text("print('changed')\n")
    third, _ = archive_service(plan, out_dir=tmp_path / "one")
    assert third.sha256 != first.sha256
    (repo / "app.py").chmod(0o755)  # the executable bit is content too
    fourth, c = archive_service(plan, out_dir=tmp_path / "one")
    assert fourth.sha256 != third.sha256 and _members(c.path)["repo/app.py"].mode == 0o755


def test_entries_are_sorted_and_carry_no_time_owner_or_name(repo, tmp_path):
    _, archive = archive_service(_plan(repo / "svc" / "app.dstack.yml"), out_dir=tmp_path / "out")
    data = archive.path.read_bytes()
    assert data[4:8] == b"\0\0\0\0"  # gzip MTIME
    assert not data[3] & 0x08  # no FNAME
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    files = [m.name for m in members if m.isfile()]
    assert files == sorted(files)
    for member in members:  # every folder comes before what it holds
        if member.isdir():
            assert all(names.index(n) > names.index(member.name) for n in names if n.startswith(member.name + "/"))
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(ARCHIVE_MTIME, 0, 0, "", "")}


def test_a_file_outside_git_ships_the_project_folder_or_its_own(tmp_path):
    project = tmp_path / "project"
    _write(project, {"stacks/app.dstack.yml": SERVICE, "app.py": "x\n", "cache/x.tmp": "x\n", ".gitignore": "cache/\n", ".serveform/local/state.json": "{}"})
    plan = _plan(project / "stacks" / "app.dstack.yml")
    _, archive = archive_service(plan, out_dir=tmp_path / "out", project_dir=project)
    assert sorted(archive.members) == ["repo/.gitignore", "repo/app.py"]
    (project / "stacks" / "tool.py").write_text("y\n")
    _, alone = archive_service(plan, out_dir=tmp_path / "out")  # no project: the file's own folder
    assert sorted(alone.members) == ["repo/tool.py"]


def test_editing_deployment_config_changes_no_archive(repo, tmp_path):
    service = repo / "svc" / "app.dstack.yml"
    first, _ = archive_service(_plan(service), out_dir=tmp_path / "out")
    service.write_text(SERVICE + "replicas: 3\n")
    (repo / "Pulumi.yaml").write_text("name: x\n")
    (repo / "Pulumi.prod.yaml").write_text("config: {}\n")
    (repo / "lib" / "__pycache__").mkdir()
    (repo / "lib" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0")
    second, archive = archive_service(_plan(service), out_dir=tmp_path / "out")
    assert second.sha256 == first.sha256, archive.members


def test_the_cap_names_the_service_file_the_size_the_cap_and_the_biggest_files(repo, tmp_path):
    (repo / "weights.pt").write_bytes(b"\0" * 5000)
    plan = _plan(repo / "svc" / "app.dstack.yml")
    with pytest.raises(CodeTooLargeError) as caught:
        archive_service(plan, out_dir=tmp_path / "out", max_bytes=4096)
    message = str(caught.value)
    assert message.startswith(f"{plan.file}: error: code archive:")
    assert "4096 bytes" in message and f"({caught.value.size} bytes)" in message and caught.value.size > 5000
    assert caught.value.biggest[0] == (str(repo / "weights.pt"), 5000)
    assert "weights.pt" in message and ".dstackignore" in message and "serveform:code.max_bytes" in message
    assert not (tmp_path / "out").exists()  # nothing written


def test_files_mappings_land_in_the_repository_or_as_mounts(repo, tmp_path):
    extra = tmp_path / "extra"
    _write(extra, {"prompts/a.txt": "a\n", "prompts/b.txt": "b\n", "prompts/.gitignore": "b.txt\n", "key": "k\n", "app.py": "mapped\n"})
    (repo / "svc" / "app.dstack.yml").write_text(
        SERVICE
        + "working_dir: lib\nfiles:\n"
        + f"  - {extra}/prompts:prompts\n"  # relative: under working_dir (/workflow/lib)
        + f"  - {extra}/key:/root/.ssh/id_rsa\n"  # absolute outside /workflow: a mount
        + f"  - {extra}/app.py:/workflow/app.py\n"  # wins over the repository's app.py
        + f"  - local_path: {extra}/prompts\n    path: /opt/prompts\n"
    )
    code, archive = archive_service(_plan(repo / "svc" / "app.dstack.yml"), out_dir=tmp_path / "out")
    assert code.workdir == "/workflow/lib"
    assert {"repo/lib/prompts/a.txt", "mounts/0", "mounts/1/a.txt"} <= set(archive.members)
    assert "repo/lib/prompts/b.txt" not in archive.members  # the folder's own .gitignore holds
    assert [(m.member, m.path) for m in code.mounts] == [("mounts/0", "/root/.ssh/id_rsa"), ("mounts/1", "/opt/prompts")]
    out = unpack(archive.path, code.sha256, tmp_path / "unpacked")
    assert (out / "repo" / "app.py").read_text() == "mapped\n"
    assert (out / "mounts" / "0").read_text() == "k\n"


def test_a_file_mapped_over_a_folder_is_refused(repo, tmp_path):
    (tmp_path / "f").write_text("x")
    (repo / "svc" / "app.dstack.yml").write_text(SERVICE + f"files:\n  - {tmp_path}/f:/workflow/lib\n")
    with pytest.raises(CodeArchiveError, match="both a file and a folder"):
        archive_service(_plan(repo / "svc" / "app.dstack.yml"), out_dir=tmp_path / "out")


def test_a_symlink_leaving_the_repository_is_refused(repo, tmp_path):
    (repo / "escape").symlink_to("/etc/passwd")
    with pytest.raises(CodeArchiveError, match="escape.*is a symlink to `/etc/passwd`"):
        archive_service(_plan(repo / "svc" / "app.dstack.yml"), out_dir=tmp_path / "out")
    (repo / "escape").unlink()
    (repo / "inside").symlink_to("lib/util.py")
    _, archive = archive_service(_plan(repo / "svc" / "app.dstack.yml"), out_dir=tmp_path / "out")
    assert _members(archive.path)["repo/inside"].issym()


def test_unpack_checks_the_digest_first(repo, tmp_path):
    code, archive = archive_service(_plan(repo / "svc" / "app.dstack.yml"), out_dir=tmp_path / "out")
    with pytest.raises(CodeDigestError) as caught:
        unpack(archive.path, "0" * 64, tmp_path / "bad")
    assert str(caught.value) == f"code archive {archive.path}: sha256 mismatch: expected {'0' * 64}, got {code.sha256}"
    assert not (tmp_path / "bad").exists()
    out = unpack(archive.path, code.sha256, tmp_path / "good")
    assert (out / "repo" / "app.py").read_text() == "print('hi')\n" and not (out / "repo" / "notes.log").exists()


def test_the_manifest_lists_every_file_with_its_digest(repo, tmp_path):
    import hashlib
    import json

    _, archive = archive_service(_plan(repo / "svc" / "app.dstack.yml"), out_dir=tmp_path / "out")
    manifest = json.loads(archive.manifest.read_text())
    entry = next(f for f in manifest["files"] if f["path"] == "repo/app.py")
    assert entry == {"path": "repo/app.py", "size": 12, "sha256": hashlib.sha256(b"print('hi')\n").hexdigest()}
    assert manifest["sha256"] == archive.sha256 and oct(archive.path.stat().st_mode & 0o777) == "0o600"


def test_pulumi_home_and_a_file_backend_inside_the_tree_are_never_shipped(tmp_path, monkeypatch):
    project = tmp_path / "project"
    _write(project, {"app.dstack.yml": SERVICE, "app.py": "x\n", "home/credentials.json": "{\"token\": 1}", "state/.pulumi/x.json": "{}"})
    monkeypatch.setenv("PULUMI_HOME", str(project / "home"))
    monkeypatch.setenv("PULUMI_BACKEND_URL", (project / "state").as_uri())
    _, archive = archive_service(_plan(project / "app.dstack.yml"), out_dir=tmp_path / "out", project_dir=project)
    assert sorted(archive.members) == ["repo/app.py"]
