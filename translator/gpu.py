"""`resources.gpu`: a number, a short string or an object.

Normalised to dstack's own shape: ``{"vendor", "name": [...], "count": {"min", "max"},
"memory": {"min", "max"}, "total_memory", "compute_capability"}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, WithJsonSchema, field_serializer, field_validator, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from .ranges import IntRange, MemoryRange, short_syntax_schema

__all__ = ["GPUSpec", "GPUVendor", "DEFAULT_GPU_COUNT", "parse_vendor"]

GPUVendor = Literal["nvidia", "amd", "google", "intel", "tenstorrent"]
_VENDORS: dict[str, str] = {v: v for v in ("nvidia", "amd", "google", "intel", "tenstorrent")}
_VENDORS.update({"tpu": "google", "tt": "tenstorrent"})  # dstack 0.22's aliases

DEFAULT_GPU_COUNT = IntRange(min=1, max=None)
"""`A100` alone means "one or more A100" in dstack 0.22 (`count` defaults to `1..`)."""


def parse_vendor(token: str) -> str | None:
    """The vendor a token names (case-insensitive, with the `tpu`/`tt` aliases), or None."""
    return _VENDORS.get(token.lower())


class GPUSpec(BaseModel):
    """GPU requirements of every replica."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    vendor: Annotated[
        GPUVendor | None,
        Field(description="The vendor of the GPU/accelerator: `nvidia`, `amd`, `google` (alias `tpu`), `intel`, `tenstorrent`."),
    ] = None
    name: Annotated[
        list[str] | None,
        Field(description="The GPU name or list of names (e.g. `A100` or `[A10G, A100]`); any of them satisfies the spec."),
    ] = None
    count: Annotated[IntRange, Field(description="The number of GPUs, a number or a range (`1..2`). Defaults to `1..`.")] = DEFAULT_GPU_COUNT
    memory: Annotated[
        MemoryRange | None,
        Field(description="The memory of each GPU (e.g. `24GB`), or a range (`24GB..`, `24GB..80GB`)."),
    ] = None
    total_memory: Annotated[
        MemoryRange | None,
        Field(description="The total memory of all GPUs (e.g. `80GB`), or a range."),
    ] = None
    compute_capability: Annotated[
        tuple[int, int] | None,
        WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\d+\.\d+$"}, {"type": "null"}]}, mode="validation"),
        Field(description="The minimum compute capability (e.g. `7.5`)."),
    ] = None

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return short_syntax_schema(handler(core_schema), handler, [{"type": "integer", "minimum": 0}, {"type": "string"}])

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Parse the short syntax. Tokens are separated by `:` (any order, each kind once):

        - a vendor: ``nvidia``, ``amd``, ``google``/``tpu``, ``intel``, ``tenstorrent``/``tt``;
        - names (start with a letter, `,` for alternatives): ``A100``, ``A10G,A100``;
        - a memory size or range (has a unit): ``80GB``, ``24GB..40GB``;
        - a count or range (digits): ``2``, ``1..2``.

        Examples: ``A100``, ``A100:80GB``, ``A100:2``, ``24GB..40GB:2``, ``A100:40GB:2``,
        ``nvidia``, ``80GB:2``, ``L4:1..2``. A bare number (``gpu: 2``) is a count.
        """
        if isinstance(value, bool):
            raise ValueError(f"expected a GPU count, a spec such as `A100:80GB:2` or an object, got the boolean {str(value).lower()}")
        if isinstance(value, int):
            value = str(value)
        if not isinstance(value, str):
            return value
        tokens = value.replace(" ", "").split(":")
        spec: dict[str, Any] = {}

        def put(key: str, item: Any) -> None:
            if key in spec:
                raise ValueError(f"invalid GPU spec `{value}`: more than one {key}")
            spec[key] = item

        for token in tokens:
            if not token:
                raise ValueError(f"invalid GPU spec `{value}`: empty token")
            vendor = parse_vendor(token)
            if vendor:
                put("vendor", vendor)
            elif token[0].isalpha():  # a GPU name always starts with a letter
                names = token.split(",")
                if any(not n for n in names):
                    raise ValueError(f"invalid GPU spec `{value}`: empty GPU name")
                put("name", names)
            elif any(c.isalpha() for c in token):  # a memory size has a unit
                put("memory", token)
            else:
                put("count", token)
        return spec

    @model_validator(mode="before")
    @classmethod
    def _short_syntax(cls, value: Any) -> Any:
        return cls.parse(value)

    @field_validator("vendor", mode="before")
    @classmethod
    def _vendor(cls, value: Any) -> Any:
        if isinstance(value, str):
            vendor = parse_vendor(value)
            if vendor is None:
                raise ValueError(f"unknown GPU vendor `{value}`: expected one of nvidia, amd, google (tpu), intel, tenstorrent")
            return vendor
        return value

    @field_validator("name", mode="before", json_schema_input_type=str | list[str] | None)
    @classmethod
    def _names(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, list):
            value = [value]
        # dstack 0.22 still strips the deprecated `tpu-` prefix from names.
        return [n[4:] if isinstance(n, str) and n.startswith("tpu-") else n for n in value]

    @field_validator("compute_capability", mode="before")
    @classmethod
    def _compute_capability(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, float):
            value = str(value)
        if isinstance(value, str):
            value = value.strip().split(".")
        if isinstance(value, (list, tuple)) and len(value) == 2:
            try:
                return int(value[0]), int(value[1])
            except (TypeError, ValueError):
                pass
        raise ValueError(f"invalid compute capability `{value}`: expected `MAJOR.MINOR` such as `7.5`")

    @field_serializer("compute_capability")
    def _dump_cc(self, value: tuple[int, int] | None) -> list[int] | None:
        return list(value) if value is not None else None
