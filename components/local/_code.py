"""A service's unpacked code (a Pulumi dynamic resource): the archive checked and unpacked by `up`.

The local backend runs replicas from the same archive the other backends ship, unpacked at
`<state dir>/code/<service>-<sha256 prefix>/` (`repo/` is the repository folder, dstack's
`/workflow`), so what runs here is what a VM or pod would run: tracked and untracked files minus
ignored ones, `files` merged in. The folder is named by the digest: a code change creates a new
one, the replicas that run in it are replaced, and the old folder goes once they are gone.
Deleting the resource also removes the archive it was unpacked from when that lies in the
stack's own `.serveform` folder, so `destroy` leaves no file behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
from pydantic import BaseModel, ConfigDict

from serveform.bundle import CodeArchiveError, unpack

from ._process import remove_empty_dirs

__all__ = ["Code", "CodeProvider", "PROVIDER_VERSION"]

PROVIDER_VERSION = "1"
"""Bump when the provider's behaviour changes, so `pulumi preview` shows the change."""

_REPLACE_KEYS = ("sha256", "path")
_UPDATE_KEYS = ("provider_version", "archive", "cleanup_root")


class CodeInputs(BaseModel):
    """The JSON inputs of an unpacked code folder."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider_version: str
    archive: str
    sha256: str
    path: str
    cleanup_root: str | None = None


class CodeProvider(dynamic.ResourceProvider):
    """Check and unpack on create, remove on delete; a refresh that finds the folder gone drops it."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        replaces = [k for k in _REPLACE_KEYS if olds.get(k) != news.get(k)]
        changed = replaces or [k for k in _UPDATE_KEYS if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        inputs = CodeInputs.model_validate(props)
        try:
            unpack(Path(inputs.archive), inputs.sha256, Path(inputs.path))
        except CodeArchiveError as exc:
            raise RuntimeError(str(exc)) from None
        return dynamic.CreateResult(inputs.path, inputs.model_dump())

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        inputs = CodeInputs.model_validate(props)
        if not Path(inputs.path).is_dir():
            return dynamic.ReadResult("", {})
        return dynamic.ReadResult(id_, inputs.model_dump())

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(CodeInputs.model_validate(news).model_dump())

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        inputs = CodeInputs.model_validate(props)
        path = Path(inputs.path)
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise RuntimeError(f"could not remove {path}")
        remove_empty_dirs(path.parent, inputs.cleanup_root)
        archive = Path(inputs.archive)
        root = Path(inputs.cleanup_root) if inputs.cleanup_root else None
        if root is not None and root in archive.parents:
            archive.unlink(missing_ok=True)
            archive.with_name(archive.name.replace(".tar.gz", ".manifest.json")).unlink(missing_ok=True)
            remove_empty_dirs(archive.parent, inputs.cleanup_root)


class Code(dynamic.Resource, module="serveform-local", name="Code"):
    """A service's code archive, unpacked for its replicas."""

    path: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(CodeProvider(), name, props, opts)
