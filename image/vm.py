"""What a cloud VM runs, as files the deployment uploads: the gateway VM's artifacts.

A VM must not download serveform's software at boot: no package index has serveform, Caddy's
release download lacks the project's modules, and `curl | sh` checks nothing. So the deploying
machine builds up to three files, each cloud's gateway component uploads them into the stack's private
store (an S3 bucket, a Cloud Storage bucket, a blob container), and the user data names each one
with its sha256:

- `wheelhouse` — a tar of wheels: serveform (a wheel of the checkout) and its pinned
  dependencies (`runtime-requirements.txt` plus, where the scaler runs `up` on the VM, the
  cloud's Pulumi SDK: `VM_EXTRA_REQUIREMENTS`) for
  CPython 3.11 on x86-64, the Python of the gateway's Debian 12 image; the boot installs them
  with `pip --no-index`.
- `caddy` — the project's Caddy build (tools/setup.sh: our gateway module, the DNS modules and
  the rate limiter).
- `pulumi` — a tar of the Pulumi CLI build with its Python shims (the scaler's `up`), plus the
  cloud's resource plugin when the deploying machine has it (its `pulumi up` needs it anyway);
  GCP and Azure only: the AWS scaler sets desired capacity through the Auto Scaling API.

Every file is byte-for-byte reproducible from its inputs (tar members sorted, times and owners
fixed, the wheel built with SOURCE_DATE_EPOCH): an unchanged checkout keeps the digests, the user
data and so the gateway VM. Results are cached in ~/.cache/serveform/vm-artifacts/ by their
inputs' hash.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .build import (
    EXCLUDED_PREFIXES,
    LOCK_FILE,
    PYTHON_VERSION,
    STACK_FILE,
    ImageBuildError,
    _caddy_stamp,
    _hash_cached,
    _serveform_cache,
    project_files,
    source_root,
)

__all__ = ["VM_EXTRA_REQUIREMENTS", "VmArtifact", "gateway_artifacts", "shipped_artifacts"]

# The gateway VM's scaler runs `pulumi up` of its cloud's stack: that cloud's Pulumi SDK on top of
# the runtime lock (their own dependencies, pulumi, parver and semver, are pinned there already);
# the versions of pyproject.toml's `cloud` extra.
VM_EXTRA_REQUIREMENTS = {
    # The AWS gateway's scaler sets its groups' desired capacity through the Auto Scaling API
    # (serveform.scaler.autoscaling): no `up` on that VM, so no SDK and no Pulumi CLI.
    "aws": (),
    "gcp": ("pulumi_gcp==10.2.0",),
    "azure": ("pulumi_azure_native==3.29.0",),
}
# Bump when an artifact's recipe changes in a way its key does not see.
RECIPE_VERSION = "1"
PULUMI_VERSION = "v3.259.0"
CADDY_VERSION = "v2.11.9"
# The cloud's resource plugin, as `pulumi plugin install` names its folder.
PLUGINS = {"aws": "resource-aws-v7.51.1", "gcp": "resource-gcp-v10.2.0", "azure": "resource-azure-native-v3.29.0"}
# Wheelhouses kept in the cache (one per checkout state that deployed or was tested, ~50 MB each).
KEEP_WHEELHOUSES = 8
# 1980-01-01, the earliest time a zip (wheel) can hold: fixed times make the files reproducible.
SOURCE_DATE_EPOCH = 315532800


@dataclass(frozen=True, kw_only=True)
class VmArtifact:
    """One file a VM fetches at boot."""

    name: str
    """What it is (`wheelhouse`, `caddy`, `pulumi`): the boot's messages name it."""
    path: Path | None
    """The file on the deploying machine; None on a VM that booted from it (`shipped_artifacts`)."""
    sha256: str
    """Hex digest the boot checks before using it."""

    @property
    def key(self) -> str:
        """Its object key in the stack's bucket: content-addressed, so a new build never overwrites one a VM still fetches."""
        return f"artifacts/{self.name}-{self.sha256}"


def _cache() -> Path:
    return _serveform_cache() / "vm-artifacts"


def _run(step: str, argv: list[str], **kwargs) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-5:]
        raise ImageBuildError(f"{step}: `{' '.join(argv[:4])} …` failed: " + " | ".join(tail)) from None
    except OSError as exc:
        raise ImageBuildError(f"{step}: cannot run {argv[0]}: {exc.strerror}") from None


def _reproducible_tar(out: Path, members: list[tuple[str, Path, int]]) -> None:
    """A plain tar of (name, source, mode) members in name order, owned by root, times fixed."""
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, source, mode in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = source.stat().st_size
            info.mode = mode
            info.mtime = SOURCE_DATE_EPOCH
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            with source.open("rb") as handle:
                tar.addfile(info, handle)
    tmp.replace(out)


def _key(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:16]


def _requirements(cloud: str = "aws") -> str:
    try:
        lock = LOCK_FILE.read_text()
    except OSError as exc:
        raise ImageBuildError(f"{LOCK_FILE}: cannot read the pinned requirements: {exc.strerror}") from None
    return lock + "".join(f"{line}\n" for line in VM_EXTRA_REQUIREMENTS[cloud])


def _files(root: Path) -> list[str]:
    """The checkout's files (git's view); a tree exported from git (`serveform plan --base`) has no
    `.git`, and then every file in it counts."""
    if (root / ".git").exists():
        return project_files(root)
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and not p.relative_to(root).as_posix().startswith(EXCLUDED_PREFIXES) and "__pycache__" not in p.parts
        # Stack files are configuration, as in git's view (project_files): the same tree, the same wheelhouse.
        and not STACK_FILE.fullmatch(p.relative_to(root).as_posix())
    )


def _wheelhouse(root: Path, cloud: str = "aws") -> Path:
    files = _files(root)
    requirements = _requirements(cloud)
    parts = [RECIPE_VERSION.encode(), PYTHON_VERSION.encode(), requirements.encode()]
    for name in files:
        parts += [name.encode(), (root / name).read_bytes()]
    out = _cache() / f"wheelhouse-{_key(*parts)}.tar"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    deps_dir = _cache() / f"wheels-{_key(RECIPE_VERSION.encode(), PYTHON_VERSION.encode(), requirements.encode())}"
    if not (deps_dir / ".complete").is_file():
        deps_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".txt") as req:
            req.write(requirements)
            req.flush()
            _run(
                "wheelhouse (pip download of the pinned dependencies)",
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                 "--python-version", PYTHON_VERSION, "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                 "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64", "-d", str(deps_dir), "-r", req.name],
            )
        (deps_dir / ".complete").write_text("")
    with tempfile.TemporaryDirectory(prefix="serveform-vm-wheel-") as work:
        # From a copy of the checkout's files (setuptools writes build/ into the tree it builds).
        source = Path(work) / "source"
        for name in files:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / name, source / name)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(SOURCE_DATE_EPOCH)}
        _run(
            "wheelhouse (wheel of the checkout)",
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", work, str(source)],
            env=env,
        )
        (wheel,) = Path(work).glob("serveform-*.whl")
        members = [(f"wheelhouse/{w.name}", w, 0o644) for w in deps_dir.glob("*.whl")]
        members.append((f"wheelhouse/{wheel.name}", wheel, 0o644))
        _reproducible_tar(out, members)
    _prune(out)
    return out


def _prune(keep: Path) -> None:
    """Remove all but the KEEP_WHEELHOUSES newest wheelhouses (every code change makes one)."""
    def mtime(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # another checkout pruned it meanwhile
            return 0.0

    found = sorted(_cache().glob("wheelhouse-*.tar"), key=mtime, reverse=True)
    for old in found[KEEP_WHEELHOUSES:]:
        if old != keep:
            old.unlink(missing_ok=True)


def _plugin(cloud: str) -> Path | None:
    """The deploying machine's resource plugin of ``cloud``, where `pulumi plugin install` leaves it."""
    home = Path(os.environ.get("PULUMI_HOME") or Path.home() / ".pulumi")
    folder = PLUGINS[cloud]
    binary = home / "plugins" / folder / ("pulumi-" + folder.rsplit("-v", 1)[0])
    return binary if binary.is_file() else None


def _pulumi(cloud: str = "aws") -> Path:
    bin_dir = _serveform_cache() / f"pulumi-{PULUMI_VERSION}" / "bin"
    names = ("pulumi", "pulumi-language-python-exec", "pulumi-resource-pulumi-python")
    members: list[tuple[str, Path, int]] = []
    for name in names:
        if not (bin_dir / name).is_file():
            raise ImageBuildError(f"{bin_dir / name}: the Pulumi CLI build is missing; run `tools/setup.sh dev` first")
        members.append((f"pulumi/bin/{name}", bin_dir / name, 0o755))
    plugin = _plugin(cloud)
    if plugin is not None:
        members.append((f"pulumi/plugins/{PLUGINS[cloud]}/{plugin.name}", plugin, 0o755))
    key = _key(RECIPE_VERSION.encode(), *(f"{n}={_hash_cached(p)}".encode() for n, p, _ in members))
    out = _cache() / f"pulumi-{PULUMI_VERSION}-{key}.tar"
    if not out.is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        _reproducible_tar(out, members)
    return out


def _caddy() -> Path:
    binary = _serveform_cache() / f"caddy-{CADDY_VERSION}-{_caddy_stamp()}" / "bin" / "caddy"
    if not binary.is_file():
        raise ImageBuildError(f"{binary}: the project's Caddy build is missing; run `tools/setup.sh dev` first")
    return binary


def shipped_artifacts(path: str | os.PathLike[str]) -> tuple[VmArtifact, ...]:
    """The artifacts a gateway VM booted from, as its user data listed them (`/etc/serveform/artifacts.json`).

    The scaler's `up` on the VM has no checkout to build artifacts from; keeping these keeps the
    user data, so a scale update never replaces the VM it runs on.
    """
    import json

    try:
        document = json.loads(Path(path).read_text())
        return tuple(VmArtifact(name=a["name"], path=None, sha256=a["sha256"]) for a in document["artifacts"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ImageBuildError(f"{path}: expected the VM's artifact list ({{\"artifacts\": [{{\"name\", \"sha256\", \"key\"}}]}}): {exc}") from None


def gateway_artifacts(root: Path | None = None, *, cloud: str = "aws", pulumi: bool = True) -> tuple[VmArtifact, ...]:
    """Build (or find cached) the gateway VM's artifacts for a checkout (default: this one) on ``cloud``;
    the Pulumi CLI only with ``pulumi`` (a scaler that runs `up` on the VM).

    Raises `ImageBuildError` naming the missing build or the failed step.
    """
    if cloud not in VM_EXTRA_REQUIREMENTS:
        raise ImageBuildError(f"cloud {cloud!r}: expected one of {sorted(VM_EXTRA_REQUIREMENTS)}")
    root = root or source_root()
    paths = {"wheelhouse": _wheelhouse(root, cloud), "caddy": _caddy()}
    if pulumi:
        paths["pulumi"] = _pulumi(cloud)
    return tuple(VmArtifact(name=name, path=path, sha256=_hash_cached(path)) for name, path in paths.items())
