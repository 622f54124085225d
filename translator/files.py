"""`files`: local files and folders copied into every replica (dstack 0.19's `files`).

Each entry maps a path on the deploying machine to a path in the container:

- ``LOCAL:PATH`` or ``{local_path: LOCAL, path: PATH}``;
- ``LOCAL`` alone: the same path in the container (relative: under the working directory).

A relative LOCAL is taken from the service file's folder and ``~`` is the deploying user's home,
as dstack resolves them; a relative PATH lies under the working directory (dstack: under
`working_dir`, itself under the repository folder ``/workflow``). The files travel in the
service's code archive (``serveform.bundle``) and are unpacked at PATH on every backend.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import Field, field_validator, model_validator

from ._base import Spec, kind

__all__ = ["FileMappingSpec", "REPO_DIR", "container_path", "parse_file_mapping", "resolve_workdir", "under"]

REPO_DIR = "/workflow"
"""Where dstack mounts the repository in a replica, and where serveform unpacks it (dstack 0.19)."""

# A PATH reaches shell scripts (sh_quote), bind mounts (`docker -v SRC:DEST`, where `:` and `,`
# split the option) and Kubernetes mountPaths: refuse what those cannot carry.
_FORBIDDEN_IN_PATH = (":", ",", "\n", "\r", "\0")


class FileMappingSpec(Spec):
    """One local file or folder copied into every replica."""

    local_path: Annotated[
        str,
        Field(min_length=1, description="The file or folder on the deploying machine; relative paths are from the service file's folder, `~` is your home."),
    ]
    path: Annotated[
        str | None,
        Field(description="Where it appears in the container; relative paths are under the working directory. Defaults to `local_path`."),
    ] = None

    @field_validator("local_path")
    @classmethod
    def _local_path(cls, value: str) -> str:
        if "\0" in value:
            raise ValueError("a path cannot contain NUL")
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value:
            raise ValueError("empty path")
        bad = [c for c in _FORBIDDEN_IN_PATH if c in value]
        if bad:
            raise ValueError(f"`{value}`: a container path cannot contain {', '.join(repr(c) for c in bad)}")
        if ".." in PurePosixPath(value).parts:
            raise ValueError(f"`..` is not allowed in a container path: `{value}`")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_path(cls, data: Any) -> Any:
        # dstack 0.22: a LOCAL alone appears at the same path (`~` would name another home there).
        if isinstance(data, dict) and data.get("path") is None and isinstance(data.get("local_path"), str):
            local = data["local_path"]
            if local.startswith("~"):
                raise ValueError(f"`{local}` starts with `~`: give the container path too (`{local}:/path`)")
            data = {**data, "path": local}
        return data


def parse_file_mapping(value: Any) -> Any:
    """Parse a `files` entry. Accepted forms:

    - ``LOCAL:PATH`` (``data/prompts:/opt/prompts``, ``.env:.env``);
    - ``LOCAL`` (``requirements.txt``: the same path, relative ones under the working directory);
    - ``{local_path: LOCAL, path: PATH}`` (``path`` optional, as in the short form).
    """
    if isinstance(value, str):
        local, sep, path = value.partition(":")
        if sep and ":" in path:
            raise ValueError(f"invalid file mapping `{value}`: expected `LOCAL:PATH` or `LOCAL` (one `:`)")
        return {"local_path": local, "path": path} if sep else {"local_path": local}
    if not isinstance(value, dict):
        raise ValueError(f"expected `LOCAL:PATH`, `LOCAL` or a mapping, got {kind(value)}")
    return value


def container_path(path: str, workdir: str) -> str:
    """The absolute container path of a mapping's PATH: relative ones are under ``workdir``."""
    joined = PurePosixPath(workdir) / path  # an absolute `path` replaces `workdir`
    return str(PurePosixPath(*joined.parts))


def resolve_workdir(working_dir: str | None) -> str:
    """The container's working directory: dstack resolves `working_dir` under ``REPO_DIR`` (default `.`)."""
    return container_path(working_dir or ".", REPO_DIR).rstrip("/") or "/"


def under(path: str, folder: str) -> bool:
    """Whether the absolute ``path`` is ``folder`` or inside it."""
    return PurePosixPath(path) == PurePosixPath(folder) or PurePosixPath(folder) in PurePosixPath(path).parents
