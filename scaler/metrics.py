"""Request counts per service from the gateway: its Prometheus text, or Caddy's JSON access log.

Prometheus: serveform's gateway counts requests per service in its own Caddy module
(`serveform_requests_total{service,host}`, refusals never counted, one series per served
service); a plain Caddy 2.11 with `metrics { per_host }` serves per-host histograms instead. A
`Selector` (a PromQL-style instant selector, ``name{label="v",label!~"re"}``) picks the series that
are requests the scaler should count; `HostMap` maps a series' host to a service. Which metric
and which labels separate refused requests is a property of the server, so the selector is
configuration (`--selector`); `constants.DEFAULT_REQUEST_SELECTOR` is the one that fits
serveform's gateway.

Access log: where Caddy has no per-host metrics (Debian's 2.6), `AccessLogCounter` tails Caddy's
JSON access log and keeps a cumulative count per host of the requests whose status is not
excluded, so both sources feed the same counter-to-window logic.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from .constants import ACCESS_LOG_READ_LIMIT_BYTES, DEFAULT_EXCLUDED_STATUS_CODES, DEFAULT_HOST_LABEL

__all__ = [
    "AccessLogCounter",
    "HostMap",
    "MetricsFormatError",
    "Sample",
    "Scrape",
    "Selector",
    "normalise_host",
    "parse_prometheus_text",
    "read_scrape",
    "series_by_service",
]

Labels = tuple[tuple[str, str], ...]


class MetricsFormatError(ValueError):
    """A metrics text or selector that cannot be parsed; says the line and what was expected."""


@dataclass(frozen=True)
class Sample:
    """One line of the Prometheus text format."""

    name: str
    labels: Labels
    value: float

    def label(self, name: str) -> str | None:
        for key, value in self.labels:
            if key == name:
                return value
        return None


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_]*"
_SAMPLE_HEAD = re.compile(rf"\s*({_NAME})\s*")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_labels(text: str, pos: int, *, where: str, operators: bool) -> tuple[list[tuple[str, str, str]], int]:
    """Parse `{a="x",b!~"y"}` starting at text[pos] == "{"; returns (name, op, value) and the end."""
    assert text[pos] == "{"
    pos += 1
    items: list[tuple[str, str, str]] = []
    label_re = re.compile(rf"\s*({_LABEL_NAME})\s*(=~|!~|!=|=)\s*\"" if operators else rf"\s*({_LABEL_NAME})\s*(=)\s*\"")
    while True:
        while pos < len(text) and text[pos] in " \t,":
            pos += 1
        if pos >= len(text):
            raise MetricsFormatError(f"{where}: unterminated label set, expected '}}'")
        if text[pos] == "}":
            return items, pos + 1
        m = label_re.match(text, pos)
        if not m:
            raise MetricsFormatError(f"{where}: expected label=\"value\" at column {pos + 1}")
        pos = m.end()
        value: list[str] = []
        while True:
            if pos >= len(text):
                raise MetricsFormatError(f"{where}: unterminated label value")
            ch = text[pos]
            if ch == "\\" and pos + 1 < len(text):
                value.append(_ESCAPES.get(text[pos + 1], "\\" + text[pos + 1]))
                pos += 2
            elif ch == '"':
                pos += 1
                break
            else:
                value.append(ch)
                pos += 1
        items.append((m.group(1), m.group(2), "".join(value)))


def parse_prometheus_text(text: str, *, names: Iterable[str] | None = None) -> Iterator[Sample]:
    """The samples of a Prometheus text exposition (version 0.0.4), in order.

    `names`, when given, skips every other metric cheaply (lines are split before parsing).
    Comments, blank lines and the optional timestamp are ignored; a line that is not a sample
    raises `MetricsFormatError` naming its line number.
    """
    wanted = frozenset(names) if names is not None else None
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line or line.startswith("#") or line.isspace():
            continue
        head = _SAMPLE_HEAD.match(line)
        if not head:
            raise MetricsFormatError(f"metrics line {lineno}: expected a metric name")
        name = head.group(1)
        if wanted is not None and name not in wanted:
            continue
        pos = head.end()
        labels: Labels = ()
        if pos < len(line) and line[pos] == "{":
            items, pos = _parse_labels(line, pos, where=f"metrics line {lineno}", operators=False)
            labels = tuple((k, v) for k, _, v in items)
        rest = line[pos:].split()
        if not rest:
            raise MetricsFormatError(f"metrics line {lineno}: {name} has no value")
        try:
            value = float(rest[0])
        except ValueError:
            raise MetricsFormatError(f"metrics line {lineno}: {name}: {rest[0]!r} is not a number") from None
        yield Sample(name, labels, value)


@dataclass(frozen=True)
class _Matcher:
    label: str
    op: str
    value: str

    def matches(self, actual: str) -> bool:
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        # PromQL regex matchers are anchored at both ends.
        hit = re.fullmatch(self.value, actual) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    """Which series count as requests: a metric name plus label matchers (`=`, `!=`, `=~`, `!~`)."""

    metric: str
    matchers: tuple[_Matcher, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Parse a PromQL instant selector.

        Accepted forms: ``name``; ``name{}``; ``name{label="value", other!="v", code=~"2..",
        code!~"401|429"}``. A label absent from a series matches as the empty string, as in PromQL.
        """
        text = text.strip()
        head = re.match(_NAME, text)
        if not head:
            raise MetricsFormatError(f"selector {text!r}: expected a metric name first")
        matchers: list[_Matcher] = []
        pos = head.end()
        if pos < len(text) and text[pos] == "{":
            items, pos = _parse_labels(text, pos, where=f"selector {text!r}", operators=True)
            for label, op, value in items:
                if op in ("=~", "!~"):
                    try:
                        re.compile(value)
                    except re.error as exc:
                        raise MetricsFormatError(f"selector {text!r}: label {label}: bad regex: {exc}") from None
                matchers.append(_Matcher(label, op, value))
        if text[pos:].strip():
            raise MetricsFormatError(f"selector {text!r}: unexpected {text[pos:].strip()!r} after the labels")
        return cls(head.group(0), tuple(matchers))

    def matches(self, sample: Sample) -> bool:
        if sample.name != self.metric:
            return False
        return all(m.matches(sample.label(m.label) or "") for m in self.matchers)

    def __str__(self) -> str:
        inner = ",".join(f'{m.label}{m.op}{json.dumps(m.value)}' for m in self.matchers)
        return f"{self.metric}{{{inner}}}" if inner else self.metric


def normalise_host(host: str) -> str:
    """Lower case, no port, no trailing dot: how a Host header names a service's route."""
    host = host.strip().lower()
    if host.startswith("["):  # [v6]:port
        end = host.find("]")
        host = host[: end + 1] if end >= 0 else host
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


@dataclass(frozen=True)
class HostMap:
    """Which service a request host belongs to: `<subdomain>.<domain>` → service name."""

    hosts: Mapping[str, str]

    @classmethod
    def of(cls, hosts: Mapping[str, str]) -> HostMap:
        return cls({normalise_host(h): s for h, s in hosts.items()})

    def service(self, host: str | None) -> str | None:
        return self.hosts.get(normalise_host(host)) if host else None


@dataclass(frozen=True)
class Scrape:
    """What one scrape says about the watched services."""

    requests: dict[str, dict[Hashable, float]]
    """Per service, its selected request counters (series labels → cumulative value)."""
    in_flight: dict[str, float]
    """Per service, requests being handled right now (held ones included)."""
    per_host: bool
    """Whether any selected series carried the host label: False for a Caddy without
    `metrics { per_host }`, where the access log must be used instead."""


def read_scrape(
    text: str,
    hosts: HostMap,
    *,
    requests: Selector,
    in_flight: Selector | None = None,
    host_label: str = DEFAULT_HOST_LABEL,
) -> Scrape:
    """Each watched service's request counters and in-flight requests from one Prometheus text."""
    counters: dict[str, dict[Hashable, float]] = {}
    flying: dict[str, float] = {}
    per_host = False
    names = {requests.metric} | ({in_flight.metric} if in_flight else set())
    for sample in parse_prometheus_text(text, names=names):
        is_request = requests.matches(sample)
        is_flight = in_flight is not None and in_flight.matches(sample)
        if not (is_request or is_flight):
            continue
        host = sample.label(host_label)
        if host is not None and is_request:
            per_host = True
        service = hosts.service(host)
        if service is None:
            continue
        if is_request:
            counters.setdefault(service, {})[sample.labels] = sample.value
        if is_flight and sample.value > 0:
            flying[service] = flying.get(service, 0.0) + sample.value
    return Scrape(counters, flying, per_host)


def series_by_service(
    text: str, selector: Selector, hosts: HostMap, *, host_label: str = DEFAULT_HOST_LABEL
) -> dict[str, dict[Hashable, float]]:
    """Each service's selected series (labels → value) from one scrape."""
    return read_scrape(text, hosts, requests=selector, host_label=host_label).requests


class AccessLogCounter:
    """Cumulative requests per host read from Caddy's JSON access log, tailing it across rotations.

    Starts at the end of the file (earlier lines are history, not new load). A file that shrank or
    was replaced (new inode) is read again from its start. Lines that are not JSON access entries
    are skipped; refused statuses (`excluded_status`) are not counted.
    """

    def __init__(self, path: str | os.PathLike[str], *, excluded_status: Iterable[int] = DEFAULT_EXCLUDED_STATUS_CODES) -> None:
        self.path = Path(path)
        self.excluded_status = frozenset(excluded_status)
        self._counts: dict[str, int] = {}
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""
        self._started = False

    def read(self) -> dict[str, int]:
        """Read what was appended since the last call; returns cumulative counts per host."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return dict(self._counts)
        if not self._started:
            self._started = True
            self._inode, self._offset = st.st_ino, st.st_size
            return dict(self._counts)
        if st.st_ino != self._inode or st.st_size < self._offset:
            self._inode, self._offset, self._partial = st.st_ino, 0, b""
        if st.st_size > self._offset:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                chunk = fh.read(ACCESS_LOG_READ_LIMIT_BYTES)
            self._offset += len(chunk)
            data = self._partial + chunk
            lines = data.split(b"\n")
            self._partial = lines.pop()  # an unfinished last line waits for the next read
            for line in lines:
                self._count_line(line)
        return dict(self._counts)

    def _count_line(self, line: bytes) -> None:
        try:
            entry = json.loads(line)
            status = int(entry.get("status", 0))
            host = entry["request"]["host"]
        except (ValueError, KeyError, TypeError, AttributeError):
            return
        if status in self.excluded_status or not isinstance(host, str):
            return
        host = normalise_host(host)
        self._counts[host] = self._counts.get(host, 0) + 1

    def series_by_service(self, hosts: HostMap) -> dict[str, dict[Hashable, float]]:
        """The same shape as `series_by_service`: one series per host."""
        out: dict[str, dict[Hashable, float]] = {}
        for host, count in self.read().items():
            service = hosts.service(host)
            if service is not None:
                out.setdefault(service, {})[("access_log", host)] = float(count)
        return out
