"""Build a service's code archive: its repository and `files`, as one deterministic tar.gz.

What goes in (dstack ships a run's repository the same way: the tracked files as they are in the
working tree, plus local changes, minus what is ignored):

- the service file's **git repository**: every tracked file as it is in the working tree, and
  every untracked file git does not ignore (`git ls-files --cached --others --exclude-standard`),
  minus what a `.dstackignore` (gitignore syntax, in any folder) excludes. Git's own matcher
  decides, so the rules are exactly git's. The user's global excludes file is not read: the same
  tree gives the same archive on every machine;
- a service file **outside any git repository**: the stack's project folder when the file lies in
  it, else the file's own folder, with `.gitignore` and `.dstackignore` honoured the same way;
- each **`files`** mapping: a file, or a folder with its `.gitignore`/`.dstackignore` honoured.

Never, at any depth: `.git`; serveform's and Pulumi's state folders `.serveform/` and `.pulumi/`
(stack state, logs, passphrases), `$PULUMI_HOME` and a `file://` `$PULUMI_BACKEND_URL` when they
lie inside; `__pycache__/`; and the deployment's own configuration —
service files (`.dstack.yml`, `*.dstack.yml`) and Pulumi project and stack files (`Pulumi.yaml`,
`Pulumi.<stack>.yaml`, which hold encrypted secrets). Those reach replicas through the plan, so an
edit of a replica count or a stack setting changes no archive and restarts nobody; only code
rolls replicas. Submodules and nested repositories are left out (git lists them as folders).

Layout: `repo/<path>` is unpacked at the repository folder (`/workflow`), `files` targets under
it are merged in (a mapping wins over a repository file of the same path); every other target is
`mounts/<n>` (the file or folder itself), mounted at its path. Entries are sorted, owned by 0:0,
dated `ARCHIVE_MTIME`, mode 0644 (0755 when executable, folders 0755); gzip carries no name or
time. So the bytes, and the SHA-256 that names the archive, depend on the contents only.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from serveform.translator.files import REPO_DIR, resolve_workdir, under
from serveform.translator.plan import CodeMountPlan, CodePlan, FileMappingPlan, ServicePlan

from .errors import CodeArchiveError, CodeTooLargeError

__all__ = [
    "ARCHIVE_MTIME",
    "ArchiveEntry",
    "CodeArchive",
    "DEFAULT_MAX_BYTES",
    "archive_service",
    "collect",
    "repository_root",
    "write_archive",
]

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
"""Default cap on the files' total size before compression (`serveform:code.max_bytes`). A
service's code is source, configs and small assets; models and data belong in volumes or images,
and every replica downloads the archive at each start."""
ARCHIVE_MTIME = 315532800
"""1980-01-01T00:00:00Z, every entry's mtime: fixed, and late enough that tar does not warn."""
_NEVER = frozenset({".git", ".serveform", ".pulumi", "__pycache__"})
_CONFIG_FILE = re.compile(r"^(.*\.|\.)dstack\.ya?ml$|^Pulumi(\.[^/]+)?\.ya?ml$")
_BIGGEST_SHOWN = 5
_GZIP_LEVEL = 6
_GIT_TIMEOUT_SECONDS = 60


@dataclass(frozen=True)
class ArchiveEntry:
    """One file or symlink of the archive."""

    member: str
    """Its path in the archive (`repo/app.py`, `mounts/0`)."""
    source: Path
    """Where it is read from on this machine."""


@dataclass(frozen=True)
class CodeArchive:
    """A written archive."""

    path: Path
    """The archive file, `<out_dir>/<sha256>.tar.gz`."""
    sha256: str
    """SHA-256 of its bytes (hex)."""
    size_bytes: int
    """Its size (compressed)."""
    content_bytes: int
    """The files' total size before compression (what the cap limits)."""
    members: tuple[str, ...]
    """Every file's member path, sorted."""
    manifest: Path
    """`<sha256>.manifest.json` beside it: every member with its size and SHA-256."""


def repository_root(path: Path) -> Path | None:
    """The top folder of the git work tree holding ``path`` (a file or folder), None outside git."""
    folder = path if path.is_dir() else path.parent
    try:
        out = _git(["rev-parse", "--show-toplevel"], cwd=folder)
    except CodeArchiveError:
        return None
    return Path(out.strip()).resolve()


def _git(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> str:
    # The user's global and system config stay out: the archive must not depend on who builds it.
    base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    base.update({"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"})
    try:
        done = subprocess.run(
            ["git", "-c", "core.quotePath=false", *args],
            cwd=cwd,
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_SECONDS,
        )
    except FileNotFoundError:
        raise CodeArchiveError("git is not installed: serveform lists a service's files with it") from None
    if done.returncode != 0:
        raise CodeArchiveError(f"git {' '.join(args)} in {cwd}: {done.stderr.strip() or 'failed'}")
    return done.stdout


def _list_tree(root: Path) -> list[str]:
    """Files under ``root`` to ship, relative (posix), sorted: git's rules plus `.dstackignore`."""
    top = repository_root(root)
    if top is not None and top == root.resolve():
        listed = _git(["ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root)
        ignored = _git(["ls-files", "-z", "--cached", "--others", "--ignored", "--exclude-per-directory=.dstackignore"], cwd=root)
        return _keep(root, listed, ignored)
    # Not a repository's top (outside git, or a `files` folder): an empty repository elsewhere
    # lends git's matcher to the folder, every file counting as untracked.
    with tempfile.TemporaryDirectory(prefix="serveform-git-") as git_dir:
        _git(["init", "-q", "--bare", git_dir], cwd=root)
        env = {"GIT_DIR": git_dir, "GIT_WORK_TREE": str(root)}
        listed = _git(["ls-files", "-z", "--others", "--exclude-standard"], cwd=root, env=env)
        ignored = _git(["ls-files", "-z", "--others", "--ignored", "--exclude-per-directory=.dstackignore"], cwd=root, env=env)
    return _keep(root, listed, ignored)


def _pulumi_dirs() -> list[Path]:
    """Pulumi's home (credentials, plugins) and a `file://` state backend: never code, wherever they are."""
    found = []
    home = os.environ.get("PULUMI_HOME")
    if home:
        found.append(Path(home).expanduser().resolve())
    backend = os.environ.get("PULUMI_BACKEND_URL", "")
    if backend.startswith("file://"):
        found.append(Path(backend.removeprefix("file://")).expanduser().resolve())
    return found


def _keep(root: Path, listed: str, ignored: str) -> list[str]:
    drop = set(filter(None, ignored.split("\0")))
    resolved = root.resolve()
    private = [d.relative_to(resolved) for d in _pulumi_dirs() if d == resolved or resolved in d.parents]
    out = []
    for name in filter(None, listed.split("\0")):
        parts = PurePosixPath(name).parts
        if name in drop or name.endswith("/") or _NEVER.intersection(parts) or _CONFIG_FILE.match(parts[-1]):
            continue  # ignored; a nested repository or submodule (a folder); state; deployment config
        if any(Path(name) == d or d in Path(name).parents for d in private):
            continue
        path = root / name
        if path.is_symlink() or path.is_file():
            out.append(name)  # a tracked file deleted in the working tree is not shipped
    return sorted(set(out))


def project_root(service_file: Path, project_dir: Path | None) -> Path:
    """The folder shipped as the repository: git's top, else the project, else the file's folder."""
    top = repository_root(service_file)
    if top is not None:
        return top
    folder = service_file.resolve().parent
    if project_dir is not None and (project_dir.resolve() == folder or project_dir.resolve() in folder.parents):
        return project_dir.resolve()
    return folder


def collect(plan: ServicePlan, *, project_dir: Path | None = None) -> tuple[Path, list[ArchiveEntry], tuple[CodeMountPlan, ...]]:
    """The repository folder, every entry of the archive and the mounts outside the repository."""
    root = project_root(Path(plan.file), project_dir)
    entries: dict[str, ArchiveEntry] = {}
    for name in _list_tree(root):
        entries[f"repo/{name}"] = ArchiveEntry(f"repo/{name}", root / name)
    mounts: list[CodeMountPlan] = []
    for mapping in plan.files:
        base = _mapping_member(mapping, len(mounts))
        if not base.startswith("repo/") and base != "repo":
            mounts.append(CodeMountPlan(member=base, path=mapping.path))
        source = Path(mapping.local_path)
        if source.is_dir():
            for name in _list_tree(source):
                entries[f"{base}/{name}"] = ArchiveEntry(f"{base}/{name}", source / name)
        elif source.is_file():
            entries[base] = ArchiveEntry(base, source)
        else:
            raise CodeArchiveError(f"{plan.file}: error: files: {mapping.local_path} is not a file or folder on this machine")
    _check_no_file_over_folder(plan, entries)
    return root, [entries[k] for k in sorted(entries)], tuple(mounts)


def _mapping_member(mapping: FileMappingPlan, index: int) -> str:
    if under(mapping.path, REPO_DIR):
        relative = PurePosixPath(mapping.path).relative_to(REPO_DIR)
        return str(PurePosixPath("repo") / relative)
    return f"mounts/{index}"


def _check_no_file_over_folder(plan: ServicePlan, entries: dict[str, ArchiveEntry]) -> None:
    folders = {str(p) for member in entries for p in PurePosixPath(member).parents}
    clashes = sorted(m for m in entries if m in folders)
    if clashes:
        raise CodeArchiveError(
            f"{plan.file}: error: files: `{clashes[0]}` would be both a file and a folder in the replica; "
            "map the file elsewhere or name the file inside the folder"
        )


def write_archive(entries: list[ArchiveEntry], destination: Path) -> tuple[str, int]:
    """Write ``entries`` as a deterministic tar.gz at ``destination``; returns (sha256, size)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        folders: set[str] = set()
        for entry in entries:
            for parent in reversed(PurePosixPath(entry.member).parents):
                name = str(parent)
                if name != "." and name not in folders:
                    folders.add(name)
                    tar.addfile(_info(name, tarfile.DIRTYPE, 0o755))
            if entry.source.is_symlink():
                info = _info(entry.member, tarfile.SYMTYPE, 0o777)
                info.linkname = os.readlink(entry.source)
                tar.addfile(info)
                continue
            data = entry.source.read_bytes()
            executable = os.access(entry.source, os.X_OK)
            info = _info(entry.member, tarfile.REGTYPE, 0o755 if executable else 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    # filename="" and mtime=0: gzip's header carries neither the name nor the time of writing.
    with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=_GZIP_LEVEL) as gz:
        gz.write(raw.getvalue())
    data = packed.getvalue()
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.chmod(temporary, 0o600)
    temporary.replace(destination)
    return hashlib.sha256(data).hexdigest(), len(data)


def _info(name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = ARCHIVE_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _check_symlinks(plan: ServicePlan, entries: list[ArchiveEntry]) -> None:
    """A symlink must stay inside its own part of the archive: unpacking follows no link outward."""
    for entry in entries:
        if not entry.source.is_symlink():
            continue
        target = os.readlink(entry.source)
        resolved = PurePosixPath(os.path.normpath(str(PurePosixPath(entry.member).parent / target)))
        top = PurePosixPath(*PurePosixPath(entry.member).parts[:2]) if entry.member.startswith("mounts/") else PurePosixPath("repo")
        if target.startswith("/") or not (resolved == top or top in resolved.parents):
            raise CodeArchiveError(
                f"{plan.file}: error: code archive: {entry.source} is a symlink to `{target}`, outside what is shipped; "
                "replace it with the file or add it to .dstackignore"
            )


def archive_service(
    plan: ServicePlan, *, out_dir: Path, max_bytes: int = DEFAULT_MAX_BYTES, project_dir: Path | None = None
) -> tuple[CodePlan, CodeArchive]:
    """Archive ``plan``'s repository and `files` into ``out_dir``; the plan's `code` and the archive.

    Raises `CodeTooLargeError` (naming the service file, the size, the cap and the biggest files)
    when the files add up to more than ``max_bytes``, and `CodeArchiveError` for anything else
    that cannot be shipped.
    """
    _root, entries, mounts = collect(plan, project_dir=project_dir)
    _check_symlinks(plan, entries)
    sizes = {e.member: (0 if e.source.is_symlink() else e.source.stat().st_size) for e in entries}
    total = sum(sizes.values())
    if total > max_bytes:
        biggest = sorted(entries, key=lambda e: (-sizes[e.member], e.member))[:_BIGGEST_SHOWN]
        raise CodeTooLargeError(plan.file, total, max_bytes, [(str(e.source), sizes[e.member]) for e in biggest])
    out_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(out_dir, 0o700)  # the code may hold what its owner alone should read
    with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".building-", suffix=".tar.gz", delete=False) as handle:
        building = Path(handle.name)
    try:
        sha256, size = write_archive(entries, building)
        path = out_dir / f"{sha256}.tar.gz"
        building.replace(path)
    finally:
        building.unlink(missing_ok=True)
    manifest = out_dir / f"{sha256}.manifest.json"
    manifest.write_text(
        json.dumps(
            {
                "sha256": sha256,
                "size_bytes": size,
                "content_bytes": total,
                "files": [
                    {"path": e.member, "size": sizes[e.member], "sha256": _file_sha256(e.source)} for e in entries
                ],
            },
            indent=1,
            sort_keys=True,
        )
        + "\n"
    )
    os.chmod(manifest, 0o600)
    workdir = resolve_workdir(plan.replica_group.working_dir)
    code = CodePlan(sha256=sha256, size_bytes=size, archive=str(path), repo_dir=REPO_DIR, workdir=workdir, mounts=mounts)
    archive = CodeArchive(
        path=path, sha256=sha256, size_bytes=size, content_bytes=total, members=tuple(e.member for e in entries), manifest=manifest
    )
    return code, archive


def _file_sha256(path: Path) -> str | None:
    if path.is_symlink():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
