"""Unpack a code archive after checking its SHA-256 (the local backend's step; VMs and pods
do the same with `sha256sum -c` and `tar`, see components/templates/replica/run.sh.j2 and
components/k8s/_code.py)."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from .errors import CodeArchiveError, CodeDigestError

__all__ = ["file_sha256", "unpack"]


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def unpack(archive: Path, sha256: str, destination: Path) -> Path:
    """Check ``archive`` against ``sha256``, then unpack it at ``destination`` (created whole or not at all).

    An existing ``destination`` is kept as it is: it was unpacked from the same digest. Members
    are extracted with tarfile's `data` filter: no absolute paths, no `..`, no links leaving the
    folder, no device files, no owners.
    """
    if destination.is_dir():
        return destination
    try:
        actual = file_sha256(archive)
    except OSError as exc:
        raise CodeArchiveError(f"code archive {archive}: cannot read it: {exc.strerror or exc}") from None
    if actual != sha256:
        raise CodeDigestError(str(archive), sha256, actual)
    destination.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(building, filter="data")
        os.chmod(building, 0o755)
        try:
            building.rename(destination)
        except OSError:
            if not destination.is_dir():  # another replica unpacked the same digest first: keep theirs
                raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return destination
