"""`serveform image build|ref|push|pause|node|lock`: the runtime image of the gateway, scaler and CPU services."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    image = sub.add_parser("image", help="build, name or push serveform's runtime image")
    verbs = image.add_subparsers(dest="image_command", metavar="VERB", required=True)
    build = verbs.add_parser("build", help="build the image (cached per layer) as an OCI archive in ~/.cache/serveform/images")
    _root(build)
    build.add_argument("--json", action="store_true", help="print one JSON object (ref, archive, manifest, sizes)")
    build.set_defaults(func=_build)
    ref = verbs.add_parser("ref", help="print the image reference this checkout builds (serveform:<tag>), building nothing")
    _root(ref)
    ref.set_defaults(func=_ref)
    push = verbs.add_parser(
        "push", help="copy the built image to REGISTRY/serveform:<tag> with skopeo; print REGISTRY/serveform@sha256:… (for serveform:aws.runtime_image)"
    )
    _root(push)
    push.add_argument("registry", help="registry and repository prefix, e.g. ghcr.io/acme or 123456789012.dkr.ecr.us-east-1.amazonaws.com")
    push.add_argument("--dest-tls-verify", choices=("true", "false"), default="true", help="verify the registry's TLS certificate")
    push.set_defaults(func=_push)
    pause = verbs.add_parser("pause", help="build k8s-local's pod sandbox image from the pause binary; print REF ARCHIVE")
    pause.add_argument("binary", type=Path, help="the static pause binary (tools/k8s/build.sh pause)")
    pause.set_defaults(func=_pause)
    node = verbs.add_parser(
        "node", help="build both images k8s-local's real node imports; print them as shell assignments (RUNTIME_REF, …)"
    )
    _root(node)
    node.add_argument("--pause", type=Path, required=True, help="the static pause binary (tools/k8s/build.sh pause)")
    node.set_defaults(func=_node)
    lock = verbs.add_parser("lock", help="re-pin the image's Python dependencies (image/runtime-requirements.txt)")
    _root(lock)
    lock.set_defaults(func=_lock)


def _root(parser: argparse.ArgumentParser) -> None:
    from .build import source_root

    parser.add_argument("--project-dir", type=Path, default=source_root(), help="the serveform checkout (default: the one serveform runs from)")


def _build(args: argparse.Namespace) -> int:
    from .build import ImageBuildError, build

    try:
        result = build(args.project_dir.resolve())
    except ImageBuildError as exc:
        print(f"serveform: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"ref": result.ref, "archive": str(result.archive), "manifest": str(result.manifest),
                          "bytes": result.size, "uncompressed_bytes": result.uncompressed_size,
                          "seconds": round(result.seconds, 1), "rebuilt_layers": list(result.rebuilt)}))
    else:
        print(f"{result.ref}: {result.archive} ({result.size / 2**20:.0f} MiB, {result.uncompressed_size / 2**20:.0f} MiB "
              f"unpacked; rebuilt: {', '.join(result.rebuilt) or 'nothing'}; {result.seconds:.0f} s)")
        print(f"contents: {result.manifest}")
    return 0


def _ref(args: argparse.Namespace) -> int:
    from .build import ImageBuildError, image_ref

    try:
        print(image_ref(args.project_dir.resolve()))
    except ImageBuildError as exc:
        print(f"serveform: error: {exc}", file=sys.stderr)
        return 1
    return 0


def push_command(archive: Path, registry: str, tag: str, *, tls_verify: str = "true", digest_file: Path | None = None) -> list[str]:
    """The skopeo line that copies the archive to REGISTRY/serveform:TAG (the README shows it).

    ``digest_file``: where skopeo writes the pushed manifest's digest.
    """
    from .build import IMAGE_NAME

    return ["skopeo", "copy", f"--dest-tls-verify={tls_verify}", *([f"--digestfile={digest_file}"] if digest_file else []),
            f"oci-archive:{archive}", f"docker://{registry.rstrip('/')}/{IMAGE_NAME}:{tag}"]


def _push(args: argparse.Namespace) -> int:
    import subprocess

    from .build import ImageBuildError, archive_path, image_tag

    try:
        tag = image_tag(args.project_dir.resolve())
    except ImageBuildError as exc:
        print(f"serveform: error: {exc}", file=sys.stderr)
        return 1
    archive = archive_path(tag)
    if not archive.is_file():
        print(f"serveform: error: {archive}: not built; run `serveform image build` (make image) first", file=sys.stderr)
        return 1
    import tempfile

    from .build import IMAGE_NAME

    with tempfile.TemporaryDirectory(prefix="serveform-push-") as folder:
        digest_file = Path(folder) / "digest"
        argv = push_command(archive, args.registry, tag, tls_verify=args.dest_tls_verify, digest_file=digest_file)
        print(" ".join(argv), file=sys.stderr)
        try:
            code = subprocess.run(argv, stdout=sys.stderr).returncode
        except FileNotFoundError:
            print("serveform: error: skopeo is not installed (apt-get install skopeo; tools/k8s/host-packages.sh image)", file=sys.stderr)
            return 1
        if code != 0:
            return code
        # The reference a stack pins (serveform:aws.runtime_image): the digest, not the movable tag.
        print(f"{args.registry.rstrip('/')}/{IMAGE_NAME}@{digest_file.read_text().strip()}")
    return 0


def _pause(args: argparse.Namespace) -> int:
    from .build import pause_image

    ref, archive = pause_image(args.binary)
    print(ref, archive)
    return 0


def _node(args: argparse.Namespace) -> int:
    """One process for what a node start needs: every extra Python start is a second on a busy host."""
    import shlex

    from .build import ImageBuildError, build, pause_image

    try:
        result = build(args.project_dir.resolve())
    except ImageBuildError as exc:
        print(f"serveform: error: {exc}", file=sys.stderr)
        return 1
    print(f"{result.ref}: {result.archive} (rebuilt: {', '.join(result.rebuilt) or 'nothing'}; {result.seconds:.0f} s)", file=sys.stderr)
    pause_ref, pause_archive = pause_image(args.pause)
    values = {"RUNTIME_REF": result.ref, "RUNTIME_ARCHIVE": str(result.archive), "PAUSE_REF": pause_ref, "PAUSE_ARCHIVE": str(pause_archive)}
    print("".join(f"{name}={shlex.quote(value)}\n" for name, value in values.items()), end="")
    return 0


def _lock(args: argparse.Namespace) -> int:
    from .build import write_lock

    print(write_lock(args.project_dir.resolve()))
    return 0
