"""A service's code archive on Kubernetes: a Secret holding it, an init container that checks and
unpacks it, and the mounts that put it at `/workflow` (and at each `files` target elsewhere).

Pure helpers (plain values), wired by `gpu_instance_group`. Why a Secret: it is what a pod can
read without any store outside the cluster, it lives as long as the Deployment needs it, and
code may hold what only its owner should read. A Secret holds at most 1 MiB, so the archive must
fit (`.dstackignore` trims it). Its name carries the digest and it is immutable: a code change
creates a new one and rolls the pods (the pod template also names the digest in an annotation).

The init container runs serveform's own image (coreutils and GNU tar, which refuses absolute
names and `..`), as the non-root user with everything dropped, and fails with one line naming
the archive and both digests when the bytes are not the plan's.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from serveform.translator.plan import ServicePlan

from ._pod import K8sPlanError

__all__ = [
    "ARCHIVE_KEY",
    "CODE_ANNOTATION",
    "MAX_SECRET_BYTES",
    "check_size",
    "init_script",
    "secret_data",
    "secret_name",
]

MAX_SECRET_BYTES = 1024 * 1024 - 4096
"""Largest archive a Secret carries: the API server refuses Secrets over 1 MiB (less room for the key)."""
ARCHIVE_KEY = "code.tar.gz"
CODE_ANNOTATION = "serveform.dev/code-sha256"
ARCHIVE_MOUNT = "/serveform/archive"
UNPACK_MOUNT = "/serveform/code"


def check_size(plan: ServicePlan) -> None:
    """Refuse an archive no Secret can hold, naming the service file, the size and the fix."""
    code = plan.code
    if code is not None and code.size_bytes > MAX_SECRET_BYTES:
        raise K8sPlanError(
            f"{plan.file}: error: code archive: {code.size_bytes} bytes compressed, more than the "
            f"{MAX_SECRET_BYTES} bytes a Kubernetes Secret holds; list what replicas do not need in .dstackignore"
        )


def secret_name(plan: ServicePlan) -> str:
    """`<service>-code-<sha256 prefix>`: a new name, so a new object, for every new archive."""
    assert plan.code is not None
    return f"{plan.name}-code-{plan.code.sha256[:12]}"


def secret_data(plan: ServicePlan) -> dict[str, str]:
    """The Secret's `data`: the archive's bytes, base64.

    A scale update inside the cluster rebuilds the stack from the last deployment's plans and has
    no checkout, so no archive: it gets `{}`, and the component's `ignore_changes` keeps the
    stored bytes — the name is the digest, so they cannot be other than these.
    """
    assert plan.code is not None
    path = Path(plan.code.archive)
    if not path.is_file():
        return {}
    return {ARCHIVE_KEY: base64.b64encode(path.read_bytes()).decode("ascii")}


def init_script(plan: ServicePlan) -> str:
    """The init container's `sh -c` script: check the digest, then unpack into the shared folder."""
    assert plan.code is not None
    sha = plan.code.sha256  # 64 hex digits (CodePlan's pattern): safe inside single quotes
    archive = f"{ARCHIVE_MOUNT}/{ARCHIVE_KEY}"
    return (
        "set -eu\n"
        f"actual=$(sha256sum {archive} | cut -d' ' -f1)\n"
        f"if [ \"$actual\" != '{sha}' ]; then\n"
        f"  echo \"serveform: code archive {secret_name(plan)}: sha256 mismatch: expected {sha}, got $actual\" | tee /dev/termination-log >&2\n"
        "  exit 1\n"
        "fi\n"
        f"tar -xzf {archive} -C {UNPACK_MOUNT} --no-same-owner --no-same-permissions\n"
    )


def container_mounts(plan: ServicePlan, volume: str) -> list[dict[str, Any]]:
    """The replica container's mounts of the unpacked code: `repo/` at the repository folder, each mount at its path."""
    assert plan.code is not None
    mounts = [{"name": volume, "mount_path": plan.code.repo_dir, "sub_path": "repo"}]
    mounts += [{"name": volume, "mount_path": m.path, "sub_path": m.member} for m in plan.code.mounts]
    return mounts
