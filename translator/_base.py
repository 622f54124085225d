"""What every spec model shares: dstack's model config and errors that carry a sub-path.

    ValueError
     ├── FieldError        one problem at a sub-path of the value being validated
     └── MultiFieldError   several of them, found by one validator, all reported
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

__all__ = ["FieldError", "MultiFieldError", "Spec", "kind", "raise_all"]


class FieldError(ValueError):
    """A validation error about a sub-field (list item, other field) of the value validated."""

    def __init__(self, path: tuple[str | int, ...], message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.message = message
        self.hint = hint


class MultiFieldError(ValueError):
    """Several problems found at once by one validator (all reported)."""

    def __init__(self, problems: list[FieldError]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


def raise_all(problems: list[FieldError]) -> None:
    """Raise every problem found (one FieldError, or all of them together)."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise MultiFieldError(problems)


class Spec(BaseModel):
    # dstack's CoreModel: unknown keys are errors; YAML numbers reach str fields as strings.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def kind(value: Any) -> str:
    """How a wrong value is named in a message: `a mapping`, `null`, `` `x` ``."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    return f"`{value}`"
