"""Build serveform's runtime image as an OCI archive, layer by layer, each layer cached by its inputs.

Layers, bottom to top (each one a gzip'd tar under CACHE/images/layers/, rebuilt only when its key
changes, so a code change rebuilds the small top layer only):

1. `base`: `debootstrap --variant=minbase bookworm` from the Debian mirror apt uses, with python3
   and ca-certificates; apt lists, docs and locales removed; the user `serveform` (10001).
2. `deps`: a virtualenv at /opt/serveform (python is Debian's 3.11) holding
   `runtime-requirements.txt`, installed by pip from PyPI, byte-compiled with in-image paths.
3. `tools`: the project's Go builds from ~/.cache/serveform (Pulumi CLI and its Python shims,
   Caddy, the Pulumi Kubernetes provider) in /opt/serveform/bin, the language host wrapper and the
   `serveform` launcher.
4. `app`: serveform itself (a wheel of the checkout, installed without dependencies) and the
   project's files at /workflow, the image's working directory, where dstack runs a service's
   `commands` (so `python stacks/examples/chat_server.py` runs as written).

The tag is derived from the inputs, not from the layer bytes: debootstrap writes timestamps and
logs into the root, so two builds of one commit never give the same bytes, but they do give the
same tag (base recipe, lock file, binaries' sha256, the checkout's files; see `image_tag`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "IMAGE_NAME",
    "ImageBuildError",
    "BuildResult",
    "build",
    "image_ref",
    "image_tag",
    "source_root",
    "archive_path",
    "pause_image",
    "cache_dir",
]

IMAGE_NAME = "serveform"
PAUSE_IMAGE_NAME = "serveform-pause"
# Bump when a layer's recipe changes in a way its key does not see.
RECIPE_VERSION = "1"
SUITE = "bookworm"
DEBIAN_PACKAGES = ("python3", "ca-certificates")
PYTHON_VERSION = "3.11"  # Debian bookworm's python3; the lock's wheels are built for it
USER_ID = 10001
VENV = "/opt/serveform"
WORKDIR = "/workflow"
SITE_PACKAGES = f"{VENV}/lib/python{PYTHON_VERSION}/site-packages"
LOCK_FILE = Path(__file__).with_name("runtime-requirements.txt")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Project paths never copied into the image (tests, benchmarks, CI, local state).
EXCLUDED_PREFIXES = ("tests/", "bench/", ".ci/", ".github/", ".serveform/", ".venv/")
# Per-environment stack files are configuration, not code: Pulumi rewrites them (the passphrase
# salt of a first `up`), which must not change the image's tag; the in-cluster scaler writes its own.
STACK_FILE = re.compile(r"stacks/Pulumi\.[^/]+\.ya?ml")
# Environment of every process in the image: nothing writable is needed but /tmp.
IMAGE_ENV = {
    "PATH": f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "PULUMI_HOME": "/tmp/.pulumi",
    "PULUMI_SKIP_UPDATE_CHECK": "1",
    "PULUMI_PYTHON_CMD": f"{VENV}/bin/python",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
GZIP_LEVEL = 6
# Set in the image's environment to its own reference.
SELF_REF_ENV = "SERVEFORM_RUNTIME_IMAGE"


class ImageBuildError(RuntimeError):
    """A step of the image build failed; the message names the step and what to do."""


@dataclass(frozen=True)
class Binary:
    """A file of the tools layer: where it comes from and its version, for the manifest."""

    name: str
    source: Path
    version: str


@dataclass(frozen=True)
class Layer:
    name: str
    key: str
    digest: str
    diff_id: str
    size: int
    uncompressed_size: int
    path: Path


@dataclass(frozen=True)
class BuildResult:
    ref: str
    tag: str
    archive: Path
    manifest: Path
    size: int
    uncompressed_size: int
    seconds: float
    rebuilt: tuple[str, ...]


def cache_dir() -> Path:
    base = os.environ.get("SERVEFORM_CACHE") or str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "serveform")
    return Path(base) / "images"


def archive_path(tag: str) -> Path:
    return cache_dir() / f"{IMAGE_NAME}-{tag}.oci.tar"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_cached(path: Path) -> str:
    """sha256 of a large binary, remembered by (path, size, mtime): deploys ask for the tag too."""
    stat = path.stat()
    memo = cache_dir() / "hashes.json"
    try:
        known = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    key = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    if key not in known:
        known[key] = _sha256_file(path)
        memo.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known, indent=0, sort_keys=True))
        tmp.replace(memo)
    return known[key]


def _serveform_cache() -> Path:
    return cache_dir().parent


def _caddy_stamp() -> str:
    """tools/setup.sh's caddy_stamp: the wrapper module's go.mod, go.sum and Go files (sorted by path)."""
    wrapper = source_root() / "tools" / "caddy"
    names = ["go.mod", "go.sum", *sorted((f"./{p.relative_to(wrapper)}" for p in wrapper.rglob("*.go")), key=lambda n: n.encode())]
    return hashlib.sha256(b"".join((wrapper / name).read_bytes() for name in names)).hexdigest()[:12]


def binaries() -> list[Binary]:
    """The tools layer's Go builds, where tools/setup.sh and tools/k8s/build.sh leave them."""
    cache = _serveform_cache()
    pulumi = cache / "pulumi-v3.259.0" / "bin"
    provider = cache / "pulumi-kubernetes-v4.0.0-20260115033456-f47bc2d6f199" / "bin"
    return [
        Binary("pulumi", pulumi / "pulumi", "v3.259.0"),
        Binary("pulumi-language-python-exec", pulumi / "pulumi-language-python-exec", "v3.259.0"),
        Binary("pulumi-resource-pulumi-python", pulumi / "pulumi-resource-pulumi-python", "v3.259.0"),
        Binary("caddy", cache / f"caddy-v2.11.9-{_caddy_stamp()}" / "bin" / "caddy", "v2.11.9"),
        Binary("pulumi-resource-kubernetes", provider / "pulumi-resource-kubernetes", "4.0.0-20260115033456-f47bc2d6f199"),
    ]


def debian_mirror() -> str:
    """The first Debian mirror of apt's sources (deb822 or one-line form), else deb.debian.org."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), *sorted(Path("/etc/apt/sources.list.d").glob("*.sources")), Path("/etc/apt/sources.list")]
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            line = line.strip()
            if line.startswith("URIs:") and "security" not in line:
                uri = line.split(":", 1)[1].split()[0]
                if uri.rstrip("/").endswith("/debian"):
                    return uri
            if line.startswith("deb ") and "security" not in line:
                parts = [p for p in line.split() if not p.startswith("[")]
                if len(parts) > 1 and parts[1].rstrip("/").endswith("/debian"):
                    return parts[1]
    return DEFAULT_MIRROR


def project_files(root: Path) -> list[str]:
    """The checkout's files that go into the image: tracked and untracked-not-ignored, minus tests."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True, capture_output=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ImageBuildError(f"{root}: not a git checkout (git ls-files failed: {exc}); the image is built from one") from None
    files = sorted({f for f in listed.split("\0") if f and not f.startswith(EXCLUDED_PREFIXES) and not STACK_FILE.fullmatch(f)})
    return [f for f in files if (root / f).is_file()]


def _keys(root: Path) -> dict[str, str]:
    """Each layer's key: a hash of everything that decides its contents."""
    def h(*parts: bytes) -> str:
        digest = hashlib.sha256()
        for part in parts:
            digest.update(hashlib.sha256(part).digest())
        return digest.hexdigest()[:16]

    base = h(RECIPE_VERSION.encode(), SUITE.encode(), debian_mirror().encode(), " ".join(DEBIAN_PACKAGES).encode(), str(USER_ID).encode())
    try:
        lock = LOCK_FILE.read_bytes()
    except OSError as exc:
        raise ImageBuildError(f"{LOCK_FILE}: cannot read the image's pinned requirements: {exc.strerror}") from None
    deps = h(base.encode(), lock, PYTHON_VERSION.encode())
    tool_parts = []
    for binary in binaries():
        if not binary.source.is_file():
            raise ImageBuildError(
                f"{binary.source}: {binary.name} is not built; run `tools/setup.sh all` (or `make setup`) first"
            )
        tool_parts.append(f"{binary.name}={_hash_cached(binary.source)}".encode())
    tools = h(RECIPE_VERSION.encode(), *tool_parts)
    app_parts = [RECIPE_VERSION.encode()]
    for name in project_files(root):
        app_parts.append(name.encode())
        app_parts.append((root / name).read_bytes())
    app = h(*app_parts)
    return {"base": base, "deps": deps, "tools": tools, "app": app}


def source_root() -> Path:
    """The serveform checkout this code runs from (an editable install's repository root)."""
    return Path(__file__).resolve().parents[1]


def image_tag(root: Path | None = None) -> str:
    """The tag of the image a checkout (default: this one) builds, building nothing: a hash of every layer's key."""
    try:
        keys = _keys(root or source_root())
    except OSError as exc:
        raise ImageBuildError(f"cannot read what the image is built from ({exc}); set serveform:k8s.image") from None
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]


def image_ref(root: Path | None = None) -> str:
    """`serveform:<tag>`: how pods name the image (containerd reads it as docker.io/library/...).

    Inside the image itself (no checkout beside the installed package), the image's own name.
    """
    if root is None and os.environ.get(SELF_REF_ENV) and not (source_root() / "tools").is_dir():
        return os.environ[SELF_REF_ENV]
    return f"{IMAGE_NAME}:{image_tag(root)}"


# --- layers -------------------------------------------------------------------------------------


def _run(step: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, check=True, capture_output=True, text=True, **kwargs)
    except FileNotFoundError:
        raise ImageBuildError(f"{step}: {argv[0]} is not installed (tools/k8s/host-packages.sh image installs it)") from None
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or exc.stdout or "").strip().splitlines()[-15:]
        raise ImageBuildError(f"{step}: `{' '.join(argv[:4])} ...` exited {exc.returncode}:\n" + "\n".join(tail)) from None


def _tar_layer(source: Path, out: Path) -> tuple[str, str, int, int]:
    """gzip'd tar of SOURCE's contents (paths relative to it): (digest, diff_id, size, uncompressed size)."""
    tar = subprocess.Popen(
        ["tar", "-C", str(source), "--sort=name", "--numeric-owner", "--xattrs", "-cf", "-", "."],
        stdout=subprocess.PIPE,
    )
    assert tar.stdout is not None
    diff = hashlib.sha256()
    raw = 0
    tmp = out.with_suffix(".tmp")
    with tmp.open("wb") as sink, gzip.GzipFile(fileobj=sink, mode="wb", compresslevel=GZIP_LEVEL, mtime=0) as gz:
        for chunk in iter(lambda: tar.stdout.read(1 << 20), b""):
            diff.update(chunk)
            raw += len(chunk)
            gz.write(chunk)
    if tar.wait() != 0:
        tmp.unlink(missing_ok=True)
        raise ImageBuildError(f"layer {out.name}: tar of {source} failed (exit {tar.returncode})")
    tmp.replace(out)
    return "sha256:" + _sha256_file(out), "sha256:" + diff.hexdigest(), out.stat().st_size, raw


def _unmount_under(path: Path) -> None:
    """Unmount anything a failed debootstrap left mounted inside PATH (deepest first)."""
    prefix = str(path.resolve()) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for point in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False)


def _build_base(stage: Path, meta: dict) -> None:
    env = {**os.environ, "PATH": "/usr/local/sbin:/usr/sbin:/sbin:" + os.environ.get("PATH", "")}
    try:
        _run(
            "base layer (debootstrap)",
            ["debootstrap", "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}", SUITE, str(stage), debian_mirror()],
            env=env,
        )
    finally:
        _unmount_under(stage)
    packages = _run(
        "base layer (package list)",
        ["dpkg-query", f"--admindir={stage}/var/lib/dpkg", "-W", "-f", "${Package}\t${Version}\n"],
    ).stdout
    meta["debian_packages"] = [dict(zip(("name", "version"), line.split("\t"))) for line in packages.splitlines() if line]
    # What a running container never reads: package lists, caches, docs, man pages, locales.
    for relative in ("var/lib/apt/lists", "var/cache/apt", "var/cache/debconf", "usr/share/doc", "usr/share/man",
                     "usr/share/info", "usr/share/locale", "var/log", "tmp"):
        target = stage / relative
        if target.exists():
            shutil.rmtree(target)
            target.mkdir(mode=0o755)
    (stage / "tmp").chmod(0o1777)
    for name in ("etc/machine-id", "var/lib/dbus/machine-id", "etc/hostname", "etc/resolv.conf"):
        (stage / name).unlink(missing_ok=True)
    (stage / "etc/machine-id").write_text("")  # systemd-less containers expect the file, empty
    with (stage / "etc/passwd").open("a") as handle:
        handle.write(f"serveform:x:{USER_ID}:{USER_ID}:serveform:/tmp:/usr/sbin/nologin\n")
    with (stage / "etc/group").open("a") as handle:
        handle.write(f"serveform:x:{USER_ID}:\n")
    os.makedirs(stage / VENV.lstrip("/"), exist_ok=True)
    os.makedirs(stage / WORKDIR.lstrip("/"), exist_ok=True)


def _python(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


def _compile(stage: Path, directory: str) -> None:
    """Byte-compile DIRECTORY with in-image paths (the image's root is read-only at run time)."""
    _run(f"byte-compile {directory}", _python("compileall", "-q", "-j", "0", "-s", str(stage), "-p", "/", str(stage / directory.lstrip("/"))))


def _build_deps(stage: Path, meta: dict) -> None:
    venv = stage / VENV.lstrip("/")
    (venv / "bin").mkdir(parents=True)
    # A virtualenv by hand (python3-venv is not needed): pyvenv.cfg beside bin/ makes
    # /opt/serveform the prefix of Debian's interpreter.
    (venv / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\nversion = {PYTHON_VERSION}\n")
    for name in ("python", "python3", f"python{PYTHON_VERSION}"):
        (venv / "bin" / name).symlink_to(f"/usr/bin/python{PYTHON_VERSION}")
    site = stage / SITE_PACKAGES.lstrip("/")
    site.mkdir(parents=True)
    _run(
        "deps layer (pip install)",
        _python("pip", "install", "--quiet", "--no-deps", "--no-compile", "--only-binary=:all:",
                "--python-version", PYTHON_VERSION, "--implementation", "cp", "--platform", "manylinux2014_x86_64",
                "--platform", "manylinux_2_28_x86_64", "--platform", "linux_x86_64",
                "--target", str(site), "-r", str(LOCK_FILE)),
    )
    # Console scripts with the host's interpreter in their shebang: pods call `python -m`.
    shutil.rmtree(site / "bin", ignore_errors=True)
    _compile(stage, SITE_PACKAGES)
    meta["python_packages"] = [
        line.strip() for line in LOCK_FILE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]


def _build_tools(stage: Path, meta: dict) -> None:
    bin_dir = stage / VENV.lstrip("/") / "bin"
    bin_dir.mkdir(parents=True)
    meta["binaries"] = []
    for binary in binaries():
        target = bin_dir / binary.name
        shutil.copyfile(binary.source, target)
        target.chmod(0o755)
        meta["binaries"].append({"path": f"{VENV}/bin/{binary.name}", "version": binary.version, "sha256": _hash_cached(binary.source)})
    scripts = {
        # serveform's own language host (the official pulumi-language-python cannot be built here).
        "pulumi-language-python": f'#!/bin/sh\nexec {VENV}/bin/python -m serveform.stacks.language_host "$@"\n',
        "serveform": f'#!/bin/sh\nexec {VENV}/bin/python -m serveform.cli "$@"\n',
    }
    for name, text in scripts.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)


def _build_app(stage: Path, meta: dict, root: Path) -> None:
    files = project_files(root)
    with tempfile.TemporaryDirectory(prefix="serveform-wheel-") as wheels:
        # From a copy of the checkout's files: setuptools writes build/ into the tree it builds,
        # and only these files belong in the image.
        source = Path(wheels) / "source"
        for name in files:
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / name, source / name)
        _run("app layer (wheel of the checkout)", _python("pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", wheels, str(source)))
        (wheel,) = Path(wheels).glob("serveform-*.whl")
        site = stage / SITE_PACKAGES.lstrip("/")
        site.mkdir(parents=True)
        _run("app layer (install the wheel)", _python("pip", "install", "--quiet", "--no-deps", "--no-compile", "--target", str(site), str(wheel)))
        meta["wheel"] = {"name": wheel.name, "sha256": _sha256_file(wheel)}
    shutil.rmtree(site / "bin", ignore_errors=True)
    _compile(stage, SITE_PACKAGES)
    work = stage / WORKDIR.lstrip("/")
    for name in files:
        target = work / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / name, target)
    meta["project_files"] = len(files)


_BUILDERS: dict[str, Callable[..., None]] = {"base": _build_base, "deps": _build_deps, "tools": _build_tools, "app": _build_app}


def _layer(name: str, key: str, root: Path, log: Callable[[str], None]) -> tuple[Layer, dict, bool]:
    layers = cache_dir() / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    blob, info = layers / f"{name}-{key}.tar.gz", layers / f"{name}-{key}.json"
    if blob.is_file() and info.is_file():
        meta = json.loads(info.read_text())
        return Layer(name, key, meta["digest"], meta["diff_id"], meta["size"], meta["uncompressed_size"], blob), meta, False
    t0 = time.monotonic()
    log(f"layer {name}: building ({key})")
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=layers))
    stage = work / "root"
    stage.mkdir()
    meta: dict = {}
    try:
        builder = _BUILDERS[name]
        builder(stage, meta, root) if name == "app" else builder(stage, meta)
        digest, diff_id, size, raw = _tar_layer(stage, blob)
    finally:
        _unmount_under(work)
        shutil.rmtree(work, ignore_errors=True)
    meta.update(digest=digest, diff_id=diff_id, size=size, uncompressed_size=raw)
    info.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    log(f"layer {name}: {size / 1e6:.0f} MB compressed ({raw / 1e6:.0f} MB) in {time.monotonic() - t0:.0f} s")
    return Layer(name, key, digest, diff_id, size, raw, blob), meta, True


# --- OCI archive --------------------------------------------------------------------------------


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def _runtime_config(tag: str) -> dict:
    return {
        "User": f"{USER_ID}:{USER_ID}",
        # The image names itself: a scale update in the cluster re-runs the program without a
        # checkout to compute the tag from (see image_ref).
        "Env": [f"{k}={v}" for k, v in {**IMAGE_ENV, SELF_REF_ENV: f"{IMAGE_NAME}:{tag}"}.items()],
        "WorkingDir": WORKDIR,
        "Cmd": [f"{VENV}/bin/serveform", "--help"],
        "Labels": {"org.opencontainers.image.title": IMAGE_NAME, "org.opencontainers.image.version": tag},
    }


def _write_archive(path: Path, name: str, tag: str, layers: Iterable[Layer], image_config: dict) -> None:
    layers = list(layers)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created_by": f"serveform image build: {layer.name} layer ({layer.key})"} for layer in layers],
    }
    config_digest, config_bytes = _blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.digest, "size": layer.size}
            for layer in layers
        ],
    }
    manifest_digest, manifest_bytes = _blob(json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "annotations": {
                    # skopeo and podman read the tag from ref.name; containerd's import the full name.
                    "org.opencontainers.image.ref.name": tag,
                    "io.containerd.image.name": f"docker.io/library/{name}:{tag}",
                },
            }
        ],
    }
    tmp = path.with_suffix(".tmp")

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), 0o644
        import io

        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        add_bytes(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
        add_bytes(tar, "index.json", json.dumps(index, sort_keys=True).encode())
        add_bytes(tar, f"blobs/sha256/{config_digest[7:]}", config_bytes)
        add_bytes(tar, f"blobs/sha256/{manifest_digest[7:]}", manifest_bytes)
        for layer in layers:
            info = tar.gettarinfo(str(layer.path), arcname=f"blobs/sha256/{layer.digest[7:]}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with layer.path.open("rb") as handle:
                tar.addfile(info, handle)
    tmp.replace(path)


def build(root: Path, *, log: Callable[[str], None] = lambda line: print(line, file=sys.stderr)) -> BuildResult:
    """Build (or reuse) this checkout's image; return where its archive and manifest are."""
    if os.geteuid() != 0:
        raise ImageBuildError("serveform image build: debootstrap needs root (run as root, as CI does)")
    t0 = time.monotonic()
    keys = _keys(root)
    tag = hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:12]
    archive = archive_path(tag)
    manifest_path = archive.with_name(f"{IMAGE_NAME}-{tag}.manifest.json")
    rebuilt: list[str] = []
    if not (archive.is_file() and manifest_path.is_file()):
        layers, metas = [], {}
        for name in ("base", "deps", "tools", "app"):
            layer, meta, fresh = _layer(name, keys[name], root, log)
            layers.append(layer)
            metas[name] = meta
            if fresh:
                rebuilt.append(name)
        _write_archive(archive, IMAGE_NAME, tag, layers, _runtime_config(tag))
        contents = {
            "image": f"{IMAGE_NAME}:{tag}",
            "archive": str(archive),
            "archive_bytes": archive.stat().st_size,
            "uncompressed_bytes": sum(layer.uncompressed_size for layer in layers),
            "user": USER_ID,
            "env": IMAGE_ENV,
            "working_dir": WORKDIR,
            "debian": {"suite": SUITE, "mirror": debian_mirror(), "packages": metas["base"].get("debian_packages", [])},
            "python": {"version": PYTHON_VERSION, "venv": VENV, "packages": metas["deps"].get("python_packages", [])},
            "serveform": metas["app"].get("wheel"),
            "binaries": metas["tools"].get("binaries", []),
            "layers": [
                {"name": layer.name, "key": layer.key, "digest": layer.digest, "diff_id": layer.diff_id,
                 "bytes": layer.size, "uncompressed_bytes": layer.uncompressed_size}
                for layer in layers
            ],
        }
        manifest_path.write_text(json.dumps(contents, indent=2) + "\n")
    contents = json.loads(manifest_path.read_text())
    return BuildResult(
        ref=contents["image"], tag=tag, archive=archive, manifest=manifest_path,
        size=contents["archive_bytes"], uncompressed_size=contents["uncompressed_bytes"],
        seconds=time.monotonic() - t0, rebuilt=tuple(rebuilt),
    )


def pause_image(binary: Path) -> tuple[str, Path]:
    """The pod sandbox image of k8s-local's real node (tools/k8s/pause): its ref and OCI archive."""
    tag = _sha256_file(binary)[:12]
    archive = cache_dir() / f"{PAUSE_IMAGE_NAME}-{tag}.oci.tar"
    if not archive.is_file():
        layers = cache_dir() / "layers"
        layers.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=layers) as work:
            stage = Path(work) / "root"
            stage.mkdir()
            shutil.copyfile(binary, stage / "pause")
            (stage / "pause").chmod(0o755)
            blob = Path(work) / "pause.tar.gz"
            digest, diff_id, size, raw = _tar_layer(stage, blob)
            layer = Layer("pause", tag, digest, diff_id, size, raw, blob)
            # 65535: the conventional unprivileged user of pause containers.
            _write_archive(archive, PAUSE_IMAGE_NAME, tag, [layer], {"User": "65535:65535", "Entrypoint": ["/pause"]})
    return f"{PAUSE_IMAGE_NAME}:{tag}", archive


def write_lock(root: Path) -> Path:
    """Resolve serveform[k8s]'s dependencies with pip and pin them in `runtime-requirements.txt`."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        _run("lock (pip resolve)", _python("pip", "install", "--quiet", "--dry-run", "--ignore-installed",
                                           "--python-version", PYTHON_VERSION, "--only-binary=:all:",
                                           "--report", str(report), f"{root}[k8s]"))
        resolved = json.loads(report.read_text())["install"]
    pins = sorted(
        f"{item['metadata']['name']}=={item['metadata']['version']}"
        for item in resolved
        if item["metadata"]["name"].lower() != IMAGE_NAME
    )
    LOCK_FILE.write_text(
        "# The runtime image's Python dependencies, pinned: serveform[k8s] resolved by pip\n"
        "# (`serveform image lock` rewrites this file; the deps layer's key is its hash).\n" + "\n".join(pins) + "\n"
    )
    return LOCK_FILE
