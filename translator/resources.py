"""`resources`: CPU, memory, shared memory, disk — and the GPU (:mod:`.gpu`) — of every replica."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from ._base import Spec, kind
from .gpu import GPUSpec
from .ranges import IntRange, MemoryRange, short_syntax_schema
from .sizes import MemoryGB

__all__ = ["CPUSpec", "DEFAULT_CPU_COUNT", "DEFAULT_DISK_SIZE_GB", "DEFAULT_MEMORY_GB", "DiskSpec", "ResourcesSpec"]

# Defaults, as dstack 0.22.5 documents and applies them.
DEFAULT_CPU_COUNT = IntRange(min=2, max=None)
DEFAULT_MEMORY_GB = 8.0
DEFAULT_DISK_SIZE_GB = 100.0


class CPUSpec(Spec):
    """CPU requirements."""

    arch: Annotated[Literal["x86", "arm"] | None, Field(description="The CPU architecture: `x86` or `arm`.")] = None
    count: Annotated[IntRange, Field(description="The number of CPU cores, a number or a range. Defaults to `2..`.")] = DEFAULT_CPU_COUNT

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        count_range = {
            "type": "object",
            "properties": {"min": {"type": ["integer", "null"]}, "max": {"type": ["integer", "null"]}},
            "additionalProperties": False,
        }
        return short_syntax_schema(handler(core_schema), handler, [{"type": "integer", "minimum": 0}, {"type": "string"}, count_range])

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Parse the short syntax: a count (``8``), a range (``4..16``), an architecture
        (``arm``) or both separated by `:` (``arm:8``), or a ``{min, max}`` mapping."""
        if isinstance(value, bool):
            raise ValueError(f"expected a CPU count or range, got {kind(value)}")
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            spec: dict[str, Any] = {}
            for token in value.replace(" ", "").split(":"):
                if not token:
                    raise ValueError(f"invalid CPU spec `{value}`: empty token")
                if ".." in token or token.isdigit():
                    if "count" in spec:
                        raise ValueError(f"invalid CPU spec `{value}`: more than one count")
                    spec["count"] = token
                elif token.lower() in ("x86", "arm", "x86_64", "amd64", "arm64", "aarch64"):
                    if "arch" in spec:
                        raise ValueError(f"invalid CPU spec `{value}`: more than one architecture")
                    spec["arch"] = "arm" if token.lower() in ("arm", "arm64", "aarch64") else "x86"
                else:
                    raise ValueError(f"invalid CPU spec `{value}`: expected a count, a range or an architecture (x86, arm)")
            return spec
        if isinstance(value, dict) and value and set(value) <= {"min", "max"}:
            return {"count": value}
        return value

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return cls.parse(value)


class DiskSpec(Spec):
    """Disk requirements."""

    size: Annotated[MemoryRange, Field(description="The disk size (`100GB`) or a range (`100GB..`).")]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return short_syntax_schema(handler(core_schema), handler, [{"type": "number", "minimum": 0}, {"type": "string"}])

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return {"size": value}
        return value


class ResourcesSpec(Spec):
    """Resources of every replica. Sizes are in GB; ranges are `{min, max}`."""

    cpu: Annotated[CPUSpec, Field(description="The CPU requirements: cores (`2..`, `8`) and optionally the architecture (`arm:8`). Defaults to `2..`.")] = CPUSpec()
    memory: Annotated[MemoryRange, Field(description="The RAM size (`8GB`) or range (`8GB..64GB`). Defaults to `8GB..`.")] = MemoryRange(min=DEFAULT_MEMORY_GB, max=None)
    shm_size: Annotated[MemoryGB | None, Field(description="The size of shared memory (e.g. `16GB`), for processes that communicate through it (PyTorch dataloaders).")] = None
    gpu: Annotated[
        GPUSpec | None,
        Field(description="The GPU requirements: a count (`2`), a string (`A100`, `A10G,A100`, `A100:80GB`, `24GB..40GB:2`, `nvidia`, `L4:1..2`) or an object."),
    ] = GPUSpec(count=IntRange(min=0, max=None))
    disk: Annotated[DiskSpec | None, Field(description="The disk size (`200GB`) or range (`100GB..`). Defaults to `100GB..`.")] = DiskSpec(
        size=MemoryRange(min=DEFAULT_DISK_SIZE_GB, max=None)
    )
