"""What can go wrong with a service's code archive.

    ValueError
     └── CodeArchiveError       the code cannot be archived or unpacked (names the file or archive)
          ├── CodeTooLargeError  the files add up to more than the cap (`serveform:code.max_bytes`)
          └── CodeDigestError    an archive's bytes do not match the SHA-256 the plan names
"""

from __future__ import annotations

__all__ = ["CodeArchiveError", "CodeDigestError", "CodeTooLargeError"]


class CodeArchiveError(ValueError):
    """The service's code cannot be archived or unpacked; the message names the file or archive."""


class CodeTooLargeError(CodeArchiveError):
    """The files to ship add up to more than the cap; carries the service file, sizes and the biggest files."""

    def __init__(self, service_file: str, size: int, cap: int, biggest: list[tuple[str, int]]) -> None:
        self.service_file = service_file
        self.size = size
        self.cap = cap
        self.biggest = biggest
        listed = ", ".join(f"{path} ({_human(n)})" for path, n in biggest)
        super().__init__(
            f"{service_file}: error: code archive: the files to ship add up to {_human(size)} ({size} bytes), "
            f"more than the cap of {_human(cap)} ({cap} bytes); biggest: {listed}. "
            "Add what replicas do not need to .dstackignore (or .gitignore), or raise serveform:code.max_bytes"
        )


class CodeDigestError(CodeArchiveError):
    """An archive's SHA-256 is not the one expected (changed or truncated since it was built)."""

    def __init__(self, archive: str, expected: str, actual: str) -> None:
        self.archive = archive
        self.expected = expected
        self.actual = actual
        super().__init__(f"code archive {archive}: sha256 mismatch: expected {expected}, got {actual}")


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
