"""Sizes (memory, disk, GPU memory) and durations, in dstack's units.

A size is a number of gigabytes (``float``); a duration is a number of seconds (``int``).
Both accept dstack's short strings through a documented ``parse``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, WithJsonSchema

__all__ = ["Duration", "Memory", "MemoryGB", "DurationSeconds", "parse_off_duration"]

_BYTES_PER_UNIT_IN_GB = {"mb": 1 / 1024, "gb": 1.0, "tb": 1024.0}
_SECONDS_PER_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 24 * 3600, "w": 7 * 24 * 3600}
_DURATION_RE = re.compile(r"(\d+) *([smhdw])")


class Memory(float):
    """A size in gigabytes."""

    @classmethod
    def parse(cls, value: Any) -> "Memory":
        """Parse a size. Accepted forms (units are case-insensitive, spaces ignored):

        - a number of gigabytes: ``24``, ``0.5``;
        - ``512MB`` (÷1024), ``24GB``, ``1.5TB`` (×1024) — fractions allowed;
        - a unit-less string: ``"24"`` (gigabytes).

        dstack 0.22 uses binary multiples (1 TB = 1024 GB); so do we.
        """
        if isinstance(value, bool):
            raise ValueError(f"expected a size such as `24GB`, got the boolean {str(value).lower()}")
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            text = value.replace(" ", "").lower()
            factor = 1.0
            for unit, unit_factor in _BYTES_PER_UNIT_IN_GB.items():
                if text.endswith(unit):
                    text, factor = text[: -len(unit)], unit_factor
                    break
            try:
                number = float(text) * factor
            except ValueError:
                raise ValueError(f"invalid size `{value}`: expected a number with an optional unit MB, GB or TB (e.g. `24GB`)") from None
        else:
            raise ValueError(f"expected a size such as `24GB`, got {_kind(value)}")
        if number != number or number in (float("inf"), float("-inf")):
            raise ValueError(f"invalid size `{value}`")
        if number < 0:
            raise ValueError(f"a size cannot be negative, got `{value}`")
        return cls(number)


class Duration(int):
    """A duration in seconds."""

    @classmethod
    def parse(cls, value: Any) -> "Duration":
        """Parse a duration. Accepted forms: a number of seconds (``90``, ``"90"``) or an
        amount with one unit: ``30s``, ``5m``, ``2h``, ``1d``, ``1w``."""
        if isinstance(value, bool):
            raise ValueError(f"expected a duration such as `5m`, got the boolean {str(value).lower()}")
        if isinstance(value, int):
            return cls(value)
        if isinstance(value, float):
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"invalid duration `{value}`")
            return cls(int(value))  # dstack 0.22 truncates fractional seconds
        if isinstance(value, str):
            text = value.strip()
            if text.lstrip("-").isdigit():
                return cls(int(text))
            match = _DURATION_RE.fullmatch(text)
            if match:
                return cls(int(match.group(1)) * _SECONDS_PER_UNIT[match.group(2)])
            raise ValueError(f"invalid duration `{value}`: expected seconds or an amount with a unit s, m, h, d or w (e.g. `5m`)")
        raise ValueError(f"expected a duration such as `5m`, got {_kind(value)}")


def parse_off_duration(value: Any) -> Any:
    """``off``/``false`` → ``"off"``; ``true``/absent → None; otherwise a non-negative duration."""
    if value == "off" or value is False:
        return "off"
    if value is True or value is None:
        return None
    seconds = Duration.parse(value)
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return int(seconds)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "nothing (null)"
    return f"`{value}`"


def _parse_memory(value: Any) -> float:
    return float(Memory.parse(value))


def _parse_duration(value: Any) -> int:
    return int(Duration.parse(value))


MemoryGB = Annotated[
    float,
    BeforeValidator(_parse_memory),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0}, {"type": "string", "pattern": r"^\s*[0-9.]+\s*([mMgGtT][bB])?\s*$"}]}, mode="validation"),
]
"""A size field: written as `24GB`/`512MB`/`1TB`/a number, stored as gigabytes."""

DurationSeconds = Annotated[
    int,
    BeforeValidator(_parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number"}, {"type": "string", "pattern": r"^\s*\d+ *[smhdw]?\s*$"}]}, mode="validation"),
]
"""A duration field: written as `90`/`30s`/`5m`/`2h`/`1d`/`1w`, stored as seconds."""
