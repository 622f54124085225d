"""Ranges: ``1..4``, ``0..``, ``..80GB``, ``24GB..80GB`` or a single value.

A range is stored as ``{"min", "max"}`` with ``None`` for an open end — the shape dstack's
own parser produces, so tooling written for dstack reads ours.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, WithJsonSchema, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from .sizes import Memory

__all__ = ["IntRange", "MemoryRange", "short_syntax_schema"]


def short_syntax_schema(schema: JsonSchemaValue, handler: GetJsonSchemaHandler, forms: list[JsonSchemaValue]) -> JsonSchemaValue:
    """In the validation schema (what editors check files against), a model written in a short
    syntax is also valid: `{"anyOf": [<object>, *forms]}`. Serialisation keeps the object."""
    if handler.mode != "validation":
        return schema
    return {**{k: v for k, v in schema.items() if k in ("title", "description")}, "anyOf": [{k: v for k, v in schema.items() if k not in ("title", "description")}, *forms]}


class _Range(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    _what: ClassVar[str] = "value"
    _short_forms: ClassVar[list[JsonSchemaValue]] = []

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return short_syntax_schema(handler(core_schema), handler, cls._short_forms)

    @classmethod
    def _bound(cls, value: Any) -> Any:
        raise NotImplementedError

    @classmethod
    def parse(cls, value: Any) -> dict[str, Any]:
        """Parse a range. Accepted forms:

        - a single value ``N`` (min = max = N);
        - ``A..B`` (inclusive), ``A..`` (at least A), ``..B`` (at most B); spaces are ignored;
        - a mapping ``{min: A, max: B}`` with either key optional.
        """
        if isinstance(value, str) and ".." in value:
            text = value.replace(" ", "")
            parts = text.split("..")
            if len(parts) != 2:
                raise ValueError(f"invalid range `{value}`: expected `MIN..MAX`, `MIN..` or `..MAX`")
            low, high = parts
            return {"min": cls._bound(low) if low else None, "max": cls._bound(high) if high else None}
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            bound = cls._bound(value)
            return {"min": bound, "max": bound}
        if isinstance(value, dict):
            unknown = set(value) - {"min", "max"}
            if unknown:
                return value  # pydantic reports the unknown keys with their positions
            return {k: (cls._bound(v) if v is not None else None) for k, v in value.items()}
        raise ValueError(f"expected a {cls._what} or a range such as `{cls._example}`, got {_kind(value)}")

    _example: ClassVar[str] = "1..4"

    @model_validator(mode="before")
    @classmethod
    def _parse_short_syntax(cls, value: Any) -> Any:
        return cls.parse(value)

    @model_validator(mode="after")
    def _check_order(self) -> "_Range":
        low, high = self.min, self.max  # type: ignore[attr-defined]
        if low is None and high is None:
            raise ValueError("invalid empty range `..`")
        if low is not None and high is not None and low > high:
            raise ValueError(f"invalid range order `{self}`: the minimum is greater than the maximum")
        return self

    _unit: ClassVar[str] = ""

    def __str__(self) -> str:
        low, high = self.min, self.max  # type: ignore[attr-defined]
        low_s = "" if low is None else _fmt(low) + self._unit
        high_s = "" if high is None else _fmt(high) + self._unit
        return low_s if low == high else f"{low_s}..{high_s}"


class IntRange(_Range):
    """A range of whole numbers (CPU cores, GPUs, replicas)."""

    min: Annotated[int | None, WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}, mode="validation")] = None
    max: Annotated[int | None, WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "string"}, {"type": "null"}]}, mode="validation")] = None
    _what: ClassVar[str] = "whole number"
    _example: ClassVar[str] = "1..4"
    _short_forms: ClassVar[list[JsonSchemaValue]] = [
        {"type": "integer"},
        {"type": "string", "pattern": r"^\s*(-?\d+)?\s*(\.\.\s*(-?\d+)?)?\s*$"},
    ]

    @classmethod
    def _bound(cls, value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"expected a whole number, got the boolean {str(value).lower()}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        raise ValueError(f"expected a whole number, got `{value}`")


class MemoryRange(_Range):
    """A range of sizes in gigabytes (``24GB..80GB``)."""

    min: Annotated[float | None, WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}, mode="validation")] = None
    max: Annotated[float | None, WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string"}, {"type": "null"}]}, mode="validation")] = None
    _what: ClassVar[str] = "size"
    _unit: ClassVar[str] = "GB"
    _example: ClassVar[str] = "24GB..80GB"
    _short_forms: ClassVar[list[JsonSchemaValue]] = [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^[0-9. ]*([mMgGtT][bB])?\s*(\.\.[0-9. ]*([mMgGtT][bB])?)?\s*$"},
    ]

    @classmethod
    def _bound(cls, value: Any) -> float:
        return float(Memory.parse(value))


def _fmt(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return f"`{value}`"
