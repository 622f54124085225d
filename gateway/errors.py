"""Errors of the gateway package.

    ValueError
    └── GatewayConfigError      the plans or settings cannot be served; lists every Problem
    RuntimeError
    └── CaddyError              Caddy refused a rendered config or failed to start/reload
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CaddyError", "GatewayConfigError", "Problem"]


@dataclass(frozen=True)
class Problem:
    """One reason a service cannot be served: the file it came from, the field, what was expected."""

    file: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: error: {self.field}: {self.message}"


class GatewayConfigError(ValueError):
    """Raised when plans or settings cannot be turned into a gateway config; nothing was applied."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = tuple(problems)
        super().__init__("\n".join(str(p) for p in problems))


class CaddyError(RuntimeError):
    """Raised when Caddy rejects a config (``caddy adapt --validate``) or a reload fails."""

    def __init__(self, message: str, output: str = "") -> None:
        self.output = output
        super().__init__(f"{message}\n{output}".rstrip())
