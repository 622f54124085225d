"""Problems found in a service file, reported as values.

    Exception
     └── TranslatorError   the file cannot be compiled; ``.diagnostics`` lists every problem

A :class:`Diagnostic` is one problem (or warning) with its file, line, column and field
path. The translator collects all of them before failing, so a user fixes a file in one
round. Messages never quote secret values: a field that may hold one (``registry_auth``,
``env``, probe headers) is reported by name only.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["Diagnostic", "Severity", "TranslatorError", "did_you_mean", "format_path"]

Severity = Literal["error", "warning"]


def format_path(path: Sequence[str | int]) -> str:
    """`("resources", "gpu", "count")` → `resources.gpu.count`; list indices as `[n]`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """The closest known spelling of a misspelt key, as a hint, or None."""
    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean `{match[0]}`?" if match else None


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One problem in a service file."""

    file: str
    """The service file (as given by the user)."""
    line: int
    """1-based line; 0 when the problem concerns the whole file."""
    column: int
    """1-based column; 0 when unknown."""
    field: str
    """The field path, e.g. `resources.gpu.count` or `env[2]`; empty for the whole document."""
    message: str
    """What was found and what was expected. Never contains a secret value."""
    hint: str | None = None
    """A suggestion, e.g. "did you mean `replicas`?"."""
    severity: Severity = "error"

    def format(self) -> str:
        """`file:line:col: error: field: message (hint)`, the shape compilers and editors parse."""
        where = self.file
        if self.line:
            where += f":{self.line}:{self.column or 1}"
        text = f"{where}: {self.severity}: "
        if self.field:
            text += f"{self.field}: "
        text += self.message
        if self.hint:
            text += f" ({self.hint})"
        return text

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "field": self.field,
            "severity": self.severity,
            "message": self.message,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        return self.format()


class TranslatorError(Exception):
    """A service file cannot be compiled; carries every problem found, sorted by position."""

    def __init__(self, diagnostics: Iterable[Diagnostic]) -> None:
        self.diagnostics: tuple[Diagnostic, ...] = tuple(
            sorted(diagnostics, key=lambda d: (d.file, d.line, d.column, d.field, d.message))
        )
        super().__init__(self.report())

    def report(self) -> str:
        """The formatted report: one line per problem."""
        return "\n".join(d.format() for d in self.diagnostics)

    def __str__(self) -> str:
        return self.report()
