"""The scaler's memory on disk: per service, the count it decided, the count the stack has, and
when it last scaled.

A restarted scaler reads this file and carries on: delays keep counting from the saved
`last_scaled_at` (wall-clock seconds, since monotonic clocks do not survive a restart), and a
decision that was made but not yet applied (`desired != applied`) is applied again, so none is
lost. Writes are atomic (a temporary file in the same directory, fsync, rename): a crash leaves
the old file or the new one, never half of one. The file holds no secrets.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from .constants import STATE_FORMAT_VERSION
from .policy import Decision, ScaleState

__all__ = ["ScalerState", "ServiceRecord", "StateError", "StateStore"]


class StateError(ValueError):
    """The state file exists but cannot be read as scaler state; names the file and the problem."""


@dataclass(frozen=True, kw_only=True)
class ServiceRecord:
    """What the scaler knows about one service."""

    desired: int
    """The count last decided."""
    applied: int | None = None
    """The count last written to the stack by a successful `up`; None if never."""
    last_scaled_at: float | None = None
    """When `desired` last changed (wall-clock seconds); None if the scaler never changed it."""
    reason: str = ""
    """Why `desired` is what it is (the last decision's reason)."""

    @property
    def pending(self) -> bool:
        return self.applied != self.desired

    def scale_state(self) -> ScaleState:
        return ScaleState(replicas=self.desired, last_scaled_at=self.last_scaled_at)


@dataclass(frozen=True)
class ScalerState:
    """Every service's record; immutable, updated by returning a new value."""

    services: Mapping[str, ServiceRecord] = field(default_factory=dict)

    def get(self, service: str) -> ServiceRecord | None:
        return self.services.get(service)

    def with_record(self, service: str, record: ServiceRecord) -> ScalerState:
        return ScalerState({**self.services, service: record})

    def with_decision(self, decision: Decision) -> ScalerState:
        """Record a decision that changes the count (others leave the state as it is)."""
        if not decision.changes:
            return self
        old = self.services.get(decision.service)
        new = decision.next_state(ScaleState(replicas=decision.current))
        record = ServiceRecord(
            desired=new.replicas,
            applied=old.applied if old else None,
            last_scaled_at=new.last_scaled_at,
            reason=decision.reason,
        )
        return self.with_record(decision.service, record)

    def with_applied(self, counts: Mapping[str, int]) -> ScalerState:
        """Mark counts as written to the stack."""
        services = dict(self.services)
        for service, count in counts.items():
            old = services.get(service)
            services[service] = replace(old, applied=count) if old else ServiceRecord(desired=count, applied=count)
        return ScalerState(services)

    def pending(self) -> dict[str, int]:
        """Decided counts the stack does not have yet."""
        return {s: r.desired for s, r in self.services.items() if r.pending}

    def to_json(self) -> dict[str, object]:
        return {
            "version": STATE_FORMAT_VERSION,
            "services": {name: asdict(rec) for name, rec in sorted(self.services.items())},
        }

    @classmethod
    def from_json(cls, data: object, *, where: str = "<state>") -> ScalerState:
        if not isinstance(data, dict) or data.get("version") != STATE_FORMAT_VERSION:
            raise StateError(f"{where}: expected a scaler state object with version {STATE_FORMAT_VERSION}")
        services = data.get("services")
        if not isinstance(services, dict):
            raise StateError(f"{where}: services: expected an object")
        out: dict[str, ServiceRecord] = {}
        for name, raw in services.items():
            try:
                rec = ServiceRecord(**raw)
                if not isinstance(rec.desired, int) or rec.desired < 0:
                    raise TypeError("desired must be a non-negative integer")
                if rec.applied is not None and (not isinstance(rec.applied, int) or rec.applied < 0):
                    raise TypeError("applied must be a non-negative integer or null")
            except TypeError as exc:
                raise StateError(f"{where}: services.{name}: {exc}") from None
            out[name] = rec
        return cls(out)


class StateStore:
    """Loads and atomically saves `ScalerState` at one path."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> ScalerState:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return ScalerState()
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StateError(f"{self.path}: not JSON: {exc}") from None
        return ScalerState.from_json(data, where=str(self.path))

    def save(self, state: ScalerState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(state.to_json(), fh, indent=2, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        # Make the rename itself durable.
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
