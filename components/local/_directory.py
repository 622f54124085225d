"""A directory owned by the stack (a Pulumi dynamic resource): created by `up`, removed by `destroy`.

The local backend's volumes are directories. `up` never empties one (the resource has nothing
to update but its provider version), so data survives every `up`; only deleting the resource —
`destroy`, or removing the volume from every service — removes the directory and its contents.
A stack that sets `serveform:retainVolumes` keeps them through `destroy` too (the component
passes `retain_on_delete`).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
from pydantic import BaseModel, ConfigDict

from ._process import remove_empty_dirs

__all__ = ["Directory", "DirectoryProvider", "PROVIDER_VERSION"]

PROVIDER_VERSION = "1"
"""Bump when the provider's behaviour changes, so `pulumi preview` shows the change."""


class DirectoryInputs(BaseModel):
    """The JSON inputs of a directory."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider_version: str
    path: str
    cleanup_root: str | None = None


class DirectoryProvider(dynamic.ResourceProvider):
    """mkdir on create, rm -r on delete; a refresh that finds it gone drops it from the state."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        replaces = ["path"] if olds.get("path") != news.get("path") else []
        changed = replaces or [k for k in ("provider_version", "cleanup_root") if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        inputs = DirectoryInputs.model_validate(props)
        Path(inputs.path).mkdir(parents=True, exist_ok=True)
        return dynamic.CreateResult(inputs.path, inputs.model_dump())

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        inputs = DirectoryInputs.model_validate(props)
        if not Path(inputs.path).is_dir():
            return dynamic.ReadResult("", {})
        return dynamic.ReadResult(id_, inputs.model_dump())

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(DirectoryInputs.model_validate(news).model_dump())

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        inputs = DirectoryInputs.model_validate(props)
        path = Path(inputs.path)
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            raise RuntimeError(f"could not remove {path}")
        remove_empty_dirs(path.parent, inputs.cleanup_root)


class Directory(dynamic.Resource, module="serveform-local", name="Directory"):
    """A directory that lives as long as the resource."""

    path: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(DirectoryProvider(), name, props, opts)
