"""Per-service request-rate windows built from cumulative counters.

Caddy's counters are cumulative per series (one series per host x status code x ...) and restart
at zero when Caddy reloads or restarts. `CounterDeltas` turns successive scrapes of a service's
series into request increments: a series that went down was reset, so its whole new value is
new requests (never a negative rate); a series seen for the first time after the first scrape was
created since, so its whole value is new too; on the very first scrape everything is baseline.

`RequestWindow` keeps (time, cumulative increments) samples of one service, enough to cover its
longest window, and answers "how many requests in the last W seconds, and how much of those W
seconds have we actually observed".
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import replace

from .constants import DEFAULT_WINDOW_SECONDS, WINDOW_HISTORY_SLACK_SECONDS
from .policy import WindowStats

__all__ = ["CounterDeltas", "RequestWindow", "ServiceWindows"]


class CounterDeltas:
    """Increments of a set of cumulative counters between successive observations."""

    def __init__(self) -> None:
        self._last: dict[Hashable, float] = {}
        self._primed = False

    def update(self, values: Mapping[Hashable, float]) -> float:
        """The requests added since the previous call, given every series' current value.

        Series missing from `values` are forgotten: after a reset Caddy only re-creates a series
        when its first request arrives, and then its whole value is new.
        """
        increment = 0.0
        for key, value in values.items():
            if value < 0 or value != value:  # negative or NaN: not a counter reading
                continue
            last = self._last.get(key)
            if last is None:
                if self._primed:
                    increment += value
            elif value >= last:
                increment += value - last
            else:  # the counter restarted from zero
                increment += value
        self._last = {k: v for k, v in values.items() if v >= 0 and v == v}
        self._primed = True
        return increment


class RequestWindow:
    """Cumulative request count over time for one service."""

    def __init__(self, *, history_seconds: float) -> None:
        self._history_seconds = history_seconds
        self._samples: deque[tuple[float, float]] = deque()
        self._total = 0.0

    @property
    def total(self) -> float:
        return self._total

    def record(self, now: float, increment: float) -> None:
        """Add `increment` requests observed at `now` (time must not go backwards)."""
        if self._samples and now < self._samples[-1][0]:
            raise ValueError(f"time went backwards: {now} < {self._samples[-1][0]}")
        self._total += max(increment, 0.0)
        self._samples.append((now, self._total))
        # Keep exactly one sample at or before the start of the longest window.
        horizon = now - self._history_seconds
        while len(self._samples) > 1 and self._samples[1][0] <= horizon:
            self._samples.popleft()

    def stats(self, now: float, window_seconds: int) -> WindowStats | None:
        """Requests in (now - window, now]; None before the first observation."""
        if not self._samples:
            return None
        start = now - window_seconds
        base_time, base_total = self._samples[0]
        for t, total in self._samples:
            if t > start:
                break
            base_time, base_total = t, total
        return WindowStats(
            requests=self._total - base_total,
            window_seconds=window_seconds,
            covered_seconds=max(0.0, now - base_time),
        )


class ServiceWindows:
    """One `CounterDeltas` and one `RequestWindow` per service, fed by whole scrapes."""

    def __init__(self, *, window_seconds: Mapping[str, int] | None = None) -> None:
        self._window_seconds: dict[str, int] = dict(window_seconds or {})
        self._deltas: dict[str, CounterDeltas] = {}
        self._windows: dict[str, RequestWindow] = {}
        self._in_flight: dict[str, float] = {}

    def set_services(self, window_seconds: Mapping[str, int]) -> None:
        """Declare the watched services and their windows; others are forgotten."""
        self._window_seconds = dict(window_seconds)
        for gone in set(self._windows) - set(window_seconds):
            self._windows.pop(gone, None)
            self._deltas.pop(gone, None)
            self._in_flight.pop(gone, None)

    def observe(
        self,
        now: float,
        series: Mapping[str, Mapping[Hashable, float]],
        in_flight: Mapping[str, float] | None = None,
    ) -> None:
        """Record one scrape: for each watched service, its series' current values.

        A watched service absent from `series` had no series at all (no request yet, or Caddy
        restarted): it gets a zero increment so that its window keeps moving. `in_flight` is
        the latest gauge of requests being handled per service (absent = none).
        """
        self._in_flight = {s: float(v) for s, v in (in_flight or {}).items() if s in self._window_seconds}
        for service, window in self._window_seconds.items():
            deltas = self._deltas.setdefault(service, CounterDeltas())
            increment = deltas.update(series.get(service, {}))
            rw = self._windows.get(service)
            if rw is None:
                rw = self._windows[service] = RequestWindow(
                    history_seconds=window + WINDOW_HISTORY_SLACK_SECONDS
                )
            rw.record(now, increment)

    def stats(self, service: str, now: float) -> WindowStats | None:
        window = self._window_seconds.get(service, DEFAULT_WINDOW_SECONDS)
        rw = self._windows.get(service)
        if rw is None:
            return None
        stats = rw.stats(now, window)
        flying = self._in_flight.get(service, 0.0)
        return replace(stats, in_flight=flying) if stats is not None and flying else stats
