"""Replaying a recorded request trace through a service's policy, second by second.

The trace is a CSV of `second,requests` (requests that arrived during that second; a header line
is allowed, seconds missing in between had no requests). The service starts at its minimum, the
policy runs once per second on the window it would have seen, and every change takes effect at
once (a real stack needs the time of an `up` on top).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .policy import RpsPolicy, ScaleState
from .window import RequestWindow

__all__ = ["ReplayPoint", "TraceError", "read_trace", "replay"]

# Traces longer than this are refused: a day at one row per second.
_MAX_TRACE_SECONDS = 86_400


class TraceError(ValueError):
    """A trace file that is not `second,requests` CSV; names the file, line and field."""


@dataclass(frozen=True)
class ReplayPoint:
    """The replica count at one second of the trace."""

    t: int
    rps: float
    """Requests per second over the service's window at `t`."""
    replicas: int
    reason: str

    def to_json(self) -> dict[str, object]:
        return {"t": self.t, "rps": round(self.rps, 6), "replicas": self.replicas}


def read_trace(path: str | os.PathLike[str]) -> dict[int, float]:
    """`{second: requests}` from a CSV file; raises `TraceError` naming the line of the first problem."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise TraceError(f"{path}: {exc.strerror or exc}") from None
    return parse_trace(text, file=str(path))


def parse_trace(text: str, *, file: str = "<trace>") -> dict[int, float]:
    trace: dict[int, float] = {}
    last: int | None = None
    for lineno, row in enumerate(csv.reader(io.StringIO(text)), 1):
        cells = [c.strip() for c in row]
        if not cells or all(not c for c in cells) or cells[0].startswith("#"):
            continue
        if len(cells) != 2:
            raise TraceError(f"{file}:{lineno}: expected two columns `second,requests`, got {len(cells)}")
        if lineno == 1 and not _is_number(cells[0]):
            if [c.lower() for c in cells] != ["second", "requests"]:
                raise TraceError(f"{file}:1: header must be `second,requests`, got `{','.join(cells)}`")
            continue
        try:
            second = int(cells[0])
        except ValueError:
            raise TraceError(f"{file}:{lineno}: second: expected a whole number, got {cells[0]!r}") from None
        try:
            requests = float(cells[1])
        except ValueError:
            raise TraceError(f"{file}:{lineno}: requests: expected a number, got {cells[1]!r}") from None
        if second < 0:
            raise TraceError(f"{file}:{lineno}: second: must be >= 0, got {second}")
        if not requests >= 0 or requests == float("inf"):
            raise TraceError(f"{file}:{lineno}: requests: must be a finite number >= 0, got {cells[1]}")
        if last is not None and second <= last:
            raise TraceError(f"{file}:{lineno}: second: must increase, {second} follows {last}")
        if second > _MAX_TRACE_SECONDS:
            raise TraceError(f"{file}:{lineno}: second: traces are limited to {_MAX_TRACE_SECONDS} s")
        trace[second] = requests
        last = second
    if not trace:
        raise TraceError(f"{file}: no rows; expected `second,requests` lines")
    return trace


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def replay(policy: RpsPolicy, trace: Mapping[int, float] | Iterable[tuple[int, float]]) -> Iterator[ReplayPoint]:
    """The replica count at every second from the trace's first to its last."""
    rows = dict(trace)
    if not rows:
        return
    start, end = min(rows), max(rows)
    window = RequestWindow(history_seconds=policy.window_seconds + 1)
    # Before the trace the service was idle for a whole window (known, not unobserved).
    window.record(start - 1 - policy.window_seconds, 0.0)
    state = ScaleState(replicas=policy.min_replicas)
    for t in range(start, end + 1):
        window.record(t, rows.get(t, 0.0))
        stats = window.stats(t, policy.window_seconds)
        decision = policy.decide(float(t), stats, state)
        state = decision.next_state(state)
        yield ReplayPoint(t=t, rps=stats.rps if stats else 0.0, replicas=state.replicas, reason=decision.reason)
