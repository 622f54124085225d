"""`volumes`: network volumes (`name:/path`) and instance volumes (`/host/path:/path`)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Any, Union

from pydantic import Discriminator, Field, Tag, field_validator

from ._base import Spec, kind

__all__ = ["InstanceMountSpec", "VolumeMountSpec", "VolumeSpec", "parse_volume"]


def _check_mount_path(value: str) -> str:
    if not value:
        raise ValueError("empty path")
    path = PurePosixPath(value)
    if not path.is_absolute():
        raise ValueError(f"the path must be absolute, got `{value}`")
    if ".." in path.parts:
        raise ValueError(f"`..` is not allowed in a mount path: `{value}`")
    return str(path)


class VolumeMountSpec(Spec):
    """A network volume mounted into every replica."""

    name: Annotated[
        str | list[str],
        Field(description="The network volume name, or a list of names (one is mounted: the first available in the replica's backend/region)."),
    ]
    path: Annotated[str, Field(description="The absolute path inside the container.")]

    _path = field_validator("path")(classmethod(lambda cls, v: _check_mount_path(v)))

    @field_validator("name")
    @classmethod
    def _names(cls, value: str | list[str]) -> str | list[str]:
        names = [value] if isinstance(value, str) else value
        if not names:
            raise ValueError("at least one volume name is required")
        for name in names:
            if not re.fullmatch(r"[a-z][a-z0-9-]{0,40}", name):
                raise ValueError(f"invalid volume name `{name}`: lowercase letters, digits and `-`, starting with a letter, at most 41 characters")
        return value


class InstanceMountSpec(Spec):
    """A directory of the instance (host) mounted into the replica."""

    instance_path: Annotated[str, Field(description="The absolute path on the instance.")]
    path: Annotated[str, Field(description="The absolute path inside the container.")]
    optional: Annotated[bool, Field(description="Run without the volume on backends that have no instance volumes.")] = False

    _instance_path = field_validator("instance_path")(classmethod(lambda cls, v: _check_mount_path(v)))
    _path = field_validator("path")(classmethod(lambda cls, v: _check_mount_path(v)))


def parse_volume(value: Any) -> Any:
    """Parse a volume entry. Accepted forms:

    - short, network volume: ``my-volume:/data`` (source without `/`);
    - short, instance volume: ``/mnt/cache:/root/.cache`` (source with `/`);
    - long: ``{name: my-volume, path: /data}`` or ``{instance_path: /mnt, path: /data, optional: true}``.
    """
    if isinstance(value, str):
        parts = value.split(":")
        if len(parts) != 2:
            raise ValueError(f"invalid volume `{value}`: expected `NAME:/path` or `/instance/path:/path`")
        source, dest = parts
        if "/" in source:
            return {"instance_path": source, "path": dest}
        return {"name": source, "path": dest}
    if not isinstance(value, dict):
        raise ValueError(f"expected `NAME:/path`, `/instance/path:/path` or a mapping, got {kind(value)}")
    return value


def _volume_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "instance" if "instance_path" in value else "network"
    return "instance" if isinstance(value, InstanceMountSpec) else "network"


VolumeSpec = Annotated[
    Union[Annotated[VolumeMountSpec, Tag("network")], Annotated[InstanceMountSpec, Tag("instance")]],
    Discriminator(_volume_kind),
]
