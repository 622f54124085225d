"""The RPS scaling policy: `(now, window stats, saved state) -> decision`, and nothing else.

The rules follow dstack 0.22's RPS autoscaler (`scaling: {metric: rps, target}`):

- desired = ceil(rps / target), rps being the requests of the service's window divided by the
  window's length, clamped to the service's `replicas` range;
- a scale-up waits until `scale_up_delay` has passed since the service's last scaling, a
  scale-down until `scale_down_delay` has; a service never scaled before waits for neither;
- a service at zero replicas scales up at once on its first request (the gateway holds that
  request meanwhile, so a request in flight counts as demand), whatever the delay;
- a count outside the range (the range changed, or someone edited the stack) is brought back into
  it at once: the policy never leaves the range.

One rule is ours, after SkyServe's habit of not acting on partial evidence: a scale-down also
waits until the window is full of observed history. A scaler that just (re)started has seen a
few seconds of traffic and would otherwise read the under-filled window as a drop in load.
Scale-ups need no such guard: an under-filled window can only under-count.

The policy reads no clock and holds no state: the caller passes `now` (seconds, any epoch, the
same one as `last_scaled_at`) and the state from the last decision, and applies
`Decision.next_state` itself. That keeps it testable with any clock and lets a restarted daemon
carry on from the saved state.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace

from ..translator.plan import ServicePlan
from .constants import (
    DEFAULT_SCALE_DOWN_DELAY_SECONDS,
    DEFAULT_SCALE_UP_DELAY_SECONDS,
    DEFAULT_WINDOW_SECONDS,
)

__all__ = [
    "Decision",
    "RpsPolicy",
    "ScaleState",
    "ScalingOperator",
    "WindowStats",
    "policy_for",
]

# ceil(30.000000000000004) must stay 30: rps/target is rounded to this many digits first.
_RATIO_DIGITS = 9


class ScalingOperator(str, enum.Enum):
    """What a decision does to the replica count."""

    SCALE_UP = "scale_up"
    SCALE_DOWN = "scale_down"
    NO_OP = "no_op"


@dataclass(frozen=True, kw_only=True)
class WindowStats:
    """Requests of one service over its window, as the window tracker saw them."""

    requests: float
    """Requests counted in the window (refused ones excluded)."""
    window_seconds: int
    """The window's length (the service's `scaling.window`)."""
    covered_seconds: float
    """How much of the window the scaler has actually observed (less after a start)."""
    in_flight: float = 0.0
    """Requests the gateway holds right now (not yet counted: a request counts when it ends)."""

    @property
    def rps(self) -> float:
        """Requests per second over the whole window (dstack divides by the window, too)."""
        return self.requests / self.window_seconds

    @property
    def full(self) -> bool:
        return self.covered_seconds >= self.window_seconds


@dataclass(frozen=True, kw_only=True)
class ScaleState:
    """What the policy remembers about a service between decisions."""

    replicas: int
    """The count last decided (the one the stack is, or is being, updated to)."""
    last_scaled_at: float | None = None
    """When the count last changed; None if the scaler never changed it."""


@dataclass(frozen=True, kw_only=True)
class Decision:
    """The outcome of one evaluation: a plain value another part executes."""

    service: str
    operator: ScalingOperator
    current: int
    """The count before this decision."""
    target: int
    """The count after it (equal to `current` for NO_OP)."""
    at: float
    """The `now` the decision was made at."""
    reason: str
    """One line saying why, for the log."""
    rps: float | None = None
    """The request rate the decision was based on; None without stats."""
    wanted: int | None = None
    """The count the load asks for (clamped), before delays; None without stats."""

    @property
    def changes(self) -> bool:
        return self.target != self.current

    def next_state(self, state: ScaleState) -> ScaleState:
        """The state after applying this decision: a change records its time as the last scaling."""
        if not self.changes:
            return state
        return replace(state, replicas=self.target, last_scaled_at=self.at)


@dataclass(frozen=True, kw_only=True)
class RpsPolicy:
    """Target tracking on requests per second per replica, within `[min_replicas, max_replicas]`."""

    service: str
    min_replicas: int
    max_replicas: int
    target_rps: float
    """Requests per second one replica should serve (dstack `scaling.target`)."""
    scale_up_delay_seconds: float = DEFAULT_SCALE_UP_DELAY_SECONDS
    scale_down_delay_seconds: float = DEFAULT_SCALE_DOWN_DELAY_SECONDS
    window_seconds: int = DEFAULT_WINDOW_SECONDS

    def __post_init__(self) -> None:
        if not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError(f"{self.service}: replicas range {self.min_replicas}..{self.max_replicas} is empty")
        if self.max_replicas < 1:
            raise ValueError(f"{self.service}: a scaled service needs at least one replica at most")
        if not self.target_rps > 0:
            raise ValueError(f"{self.service}: scaling.target must be > 0, got {self.target_rps}")
        if self.scale_up_delay_seconds < 0 or self.scale_down_delay_seconds < 0:
            raise ValueError(f"{self.service}: scaling delays must be >= 0")
        if self.window_seconds <= 0:
            raise ValueError(f"{self.service}: scaling window must be > 0")

    @classmethod
    def from_plan(cls, plan: ServicePlan) -> RpsPolicy:
        """The policy of a planned service; the plan must have `scaling`."""
        if plan.scaling is None:
            raise ValueError(f"{plan.file}: service {plan.name!r} has no `scaling`, so the scaler does not manage it")
        return cls(
            service=plan.name,
            min_replicas=plan.replicas.min,
            max_replicas=plan.replicas.max,
            target_rps=plan.scaling.target,
            scale_up_delay_seconds=plan.scaling.scale_up_delay_seconds,
            scale_down_delay_seconds=plan.scaling.scale_down_delay_seconds,
            window_seconds=plan.scaling.window_seconds,
        )

    def clamp(self, count: int) -> int:
        return min(max(count, self.min_replicas), self.max_replicas)

    def wanted(self, rps: float) -> int:
        """ceil(rps / target), clamped to the range."""
        return self.clamp(math.ceil(round(rps / self.target_rps, _RATIO_DIGITS)))

    def decide(self, now: float, stats: WindowStats | None, state: ScaleState) -> Decision:
        current = state.replicas

        def decision(target: int, reason: str, rps: float | None = None, wanted: int | None = None) -> Decision:
            if target > current:
                operator = ScalingOperator.SCALE_UP
            elif target < current:
                operator = ScalingOperator.SCALE_DOWN
            else:
                operator = ScalingOperator.NO_OP
            return Decision(
                service=self.service,
                operator=operator,
                current=current,
                target=target,
                at=now,
                reason=reason,
                rps=rps,
                wanted=wanted,
            )

        if current != self.clamp(current):
            return decision(
                self.clamp(current),
                f"{current} replicas is outside the range {self.min_replicas}..{self.max_replicas}",
                stats.rps if stats else None,
            )
        if stats is None:
            return decision(current, "no request metrics yet")

        rps = stats.rps
        desired = self.wanted(rps)
        if current == 0 and desired == 0 and stats.in_flight > 0:
            # The first request of an idle service is held by the gateway and counts only when it
            # ends, so at zero a held request is demand enough for one replica.
            desired = self.clamp(1)
        since = None if state.last_scaled_at is None else now - state.last_scaled_at
        load = f"{rps:.3g} rps over {self.window_seconds}s, target {self.target_rps:g} per replica"
        if desired > current:
            if current == 0:
                return decision(desired, f"requests while at zero replicas: scale up at once ({load})", rps, desired)
            if since is not None and since < self.scale_up_delay_seconds:
                left = self.scale_up_delay_seconds - since
                return decision(
                    current,
                    f"wants {desired} ({load}); scale_up_delay {self.scale_up_delay_seconds:g}s holds for {left:.0f}s more",
                    rps,
                    desired,
                )
            return decision(desired, load, rps, desired)
        if desired < current:
            if not stats.full:
                return decision(
                    current,
                    f"wants {desired} ({load}); window observed for only {stats.covered_seconds:.0f}s",
                    rps,
                    desired,
                )
            if since is not None and since < self.scale_down_delay_seconds:
                left = self.scale_down_delay_seconds - since
                return decision(
                    current,
                    f"wants {desired} ({load}); scale_down_delay {self.scale_down_delay_seconds:g}s holds for {left:.0f}s more",
                    rps,
                    desired,
                )
            return decision(desired, load, rps, desired)
        return decision(current, f"at target ({load})", rps, desired)


def policy_for(plan: ServicePlan) -> RpsPolicy | None:
    """The policy of a service, or None when the scaler leaves it alone (no `scaling`, fixed count)."""
    if plan.scaling is None or plan.replicas.min == plan.replicas.max:
        return None
    return RpsPolicy.from_plan(plan)
