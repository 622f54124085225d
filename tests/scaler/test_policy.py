"""The RPS policy, rule by rule, with an explicit clock (`now` is just a number here)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serveform.scaler.policy import RpsPolicy, ScaleState, ScalingOperator, WindowStats, policy_for
from serveform.translator.plan import (
    GatewayRoutePlan,
    ReplicaBounds,
    ReplicaGroupPlan,
    ResourcesPlan,
    ScalingPlan,
    ServicePlan,
)

UP, DOWN = 30, 60


def policy(min_replicas: int = 1, max_replicas: int = 4, target: float = 10, window: int = 60) -> RpsPolicy:
    return RpsPolicy(
        service="svc",
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        target_rps=target,
        scale_up_delay_seconds=UP,
        scale_down_delay_seconds=DOWN,
        window_seconds=window,
    )


def stats(rps: float, window: int = 60, covered: float | None = None, in_flight: float = 0) -> WindowStats:
    return WindowStats(
        requests=rps * window,
        window_seconds=window,
        covered_seconds=window if covered is None else covered,
        in_flight=in_flight,
    )


def test_target_tracking_is_ceil_of_rps_over_target():
    p = policy(max_replicas=10)
    assert p.decide(1000, stats(25), ScaleState(replicas=1)).target == 3
    assert p.decide(1000, stats(30), ScaleState(replicas=1)).target == 3  # exactly 3 per replica
    assert p.decide(1000, stats(30.01), ScaleState(replicas=1)).target == 4
    # 0.3 / 0.1 is 2.9999999999999996 in floating point: still 3 replicas, not 3 rounded up to 4
    assert policy(max_replicas=10, target=0.1).decide(1000, stats(0.3), ScaleState(replicas=1)).target == 3


def test_clamped_to_the_range():
    p = policy(min_replicas=2, max_replicas=4)
    up = p.decide(1000, stats(1000), ScaleState(replicas=2))
    assert (up.operator, up.target, up.wanted) == (ScalingOperator.SCALE_UP, 4, 4)
    down = p.decide(1000, stats(0), ScaleState(replicas=4))
    assert (down.operator, down.target) == (ScalingOperator.SCALE_DOWN, 2)


def test_never_scaled_service_scales_without_delay():
    d = policy().decide(5, stats(35), ScaleState(replicas=1, last_scaled_at=None))
    assert (d.operator, d.target) == (ScalingOperator.SCALE_UP, 4)


def test_scale_up_waits_for_scale_up_delay_since_last_scaling():
    p = policy()
    state = ScaleState(replicas=2, last_scaled_at=1000)
    held = p.decide(1000 + UP - 0.5, stats(35), state)
    assert (held.operator, held.target, held.wanted) == (ScalingOperator.NO_OP, 2, 4)
    assert "scale_up_delay" in held.reason
    done = p.decide(1000 + UP, stats(35), state)
    assert (done.operator, done.target) == (ScalingOperator.SCALE_UP, 4)


def test_scale_down_waits_for_scale_down_delay_since_last_scaling():
    p = policy()
    state = ScaleState(replicas=3, last_scaled_at=1000)
    held = p.decide(1000 + DOWN - 1, stats(5), state)
    assert (held.operator, held.target) == (ScalingOperator.NO_OP, 3)
    assert "scale_down_delay" in held.reason
    # The scale-up delay having passed is irrelevant for a scale-down.
    assert UP < DOWN - 1
    done = p.decide(1000 + DOWN, stats(5), state)
    assert (done.operator, done.target) == (ScalingOperator.SCALE_DOWN, 1)


def test_delays_count_from_the_last_scaling_in_either_direction():
    # A scale-down at t=1000 also holds the next scale-up for scale_up_delay (dstack semantics).
    p = policy()
    state = ScaleState(replicas=1, last_scaled_at=1000)
    assert p.decide(1000 + UP - 1, stats(25), state).target == 1
    assert p.decide(1000 + UP, stats(25), state).target == 3


def test_scale_down_needs_a_full_window_of_observation():
    p = policy()
    state = ScaleState(replicas=3, last_scaled_at=None)
    held = p.decide(1000, stats(0, covered=20), state)
    assert (held.operator, held.target) == (ScalingOperator.NO_OP, 3)
    assert "window observed for only 20s" in held.reason
    assert p.decide(1000, stats(0, covered=60), state).target == 1
    # An under-filled window still scales up: it can only under-count.
    assert p.decide(1000, stats(35, covered=5), ScaleState(replicas=1)).target == 4


def test_scale_to_zero_when_idle_and_min_is_zero():
    p = policy(min_replicas=0)
    d = p.decide(2000, stats(0), ScaleState(replicas=1, last_scaled_at=2000 - DOWN))
    assert (d.operator, d.target) == (ScalingOperator.SCALE_DOWN, 0)


def test_from_zero_scales_up_at_once_on_the_first_request():
    p = policy(min_replicas=0)
    first = WindowStats(requests=1, window_seconds=60, covered_seconds=60)
    # Scaled to zero one second ago: the scale-up delay does not apply from zero.
    d = p.decide(1001, first, ScaleState(replicas=0, last_scaled_at=1000))
    assert (d.operator, d.target) == (ScalingOperator.SCALE_UP, 1)
    assert "zero" in d.reason
    # A burst goes straight to what it needs.
    assert p.decide(1001, stats(35), ScaleState(replicas=0, last_scaled_at=1000)).target == 4


def test_from_zero_a_held_request_in_flight_is_demand():
    p = policy(min_replicas=0)
    held = stats(0, in_flight=1)
    d = p.decide(1001, held, ScaleState(replicas=0, last_scaled_at=1000))
    assert (d.operator, d.target) == (ScalingOperator.SCALE_UP, 1)
    # No request at all: stays at zero.
    assert p.decide(1001, stats(0), ScaleState(replicas=0, last_scaled_at=1000)).target == 0
    # In flight at one replica is not extra demand (it counts when it ends).
    assert p.decide(1001, stats(0, in_flight=5), ScaleState(replicas=1, last_scaled_at=0)).target == 0


def test_out_of_range_count_is_clamped_at_once_whatever_the_delay():
    p = policy(min_replicas=1, max_replicas=3)
    hi = p.decide(1000, stats(0), ScaleState(replicas=7, last_scaled_at=999))
    assert (hi.operator, hi.target) == (ScalingOperator.SCALE_DOWN, 3)
    lo = p.decide(1000, None, ScaleState(replicas=0, last_scaled_at=999))
    assert (lo.operator, lo.target) == (ScalingOperator.SCALE_UP, 1)


def test_no_stats_no_change():
    d = policy().decide(1000, None, ScaleState(replicas=2))
    assert (d.operator, d.target, d.rps) == (ScalingOperator.NO_OP, 2, None)


def test_next_state_records_the_time_of_a_change_only():
    p = policy()
    state = ScaleState(replicas=1, last_scaled_at=10)
    steady = p.decide(500, stats(5), state)
    assert steady.next_state(state) == state
    up = p.decide(500, stats(25), state)
    assert up.next_state(state) == ScaleState(replicas=3, last_scaled_at=500)


def test_bad_policies_are_refused():
    with pytest.raises(ValueError, match="range"):
        policy(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="target"):
        policy(target=0)


def _plan(replicas: ReplicaBounds, scaling: ScalingPlan | None) -> ServicePlan:
    return ServicePlan(
        file="svc.dstack.yml",
        name="svc",
        backend="local",
        replica_group=ReplicaGroupPlan(
            image="python:3.11", container_port=8000, resources=ResourcesPlan(cpu_min=1, memory_min_gb=1, disk_min_gb=10)
        ),
        replicas=replicas,
        scaling=scaling,
        route=GatewayRoutePlan(subdomain="svc"),
    )


def test_policy_for_a_plan():
    plan = _plan(
        ReplicaBounds(min=0, max=5, initial=0),
        ScalingPlan(target=2.5, scale_up_delay_seconds=7, scale_down_delay_seconds=9, window_seconds=30),
    )
    p = policy_for(plan)
    assert p == RpsPolicy(
        service="svc",
        min_replicas=0,
        max_replicas=5,
        target_rps=2.5,
        scale_up_delay_seconds=7,
        scale_down_delay_seconds=9,
        window_seconds=30,
    )
    assert policy_for(_plan(ReplicaBounds(min=2, max=2, initial=2), ScalingPlan(target=1))) is None
    assert policy_for(_plan(ReplicaBounds(min=1, max=3, initial=1), None)) is None


# --- properties -------------------------------------------------------------------------------

_steps = st.lists(
    st.tuples(st.floats(min_value=0, max_value=120), st.floats(min_value=0, max_value=500), st.floats(0, 1)),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    bounds=st.tuples(st.integers(0, 6), st.integers(0, 6)).map(sorted).filter(lambda b: b[1] >= 1),
    target=st.floats(min_value=0.1, max_value=50),
    up=st.integers(0, 200),
    down=st.integers(0, 400),
    start=st.integers(-3, 9),
    steps=_steps,
)
def test_counts_stay_in_range_and_do_not_move_inside_their_delays(bounds, target, up, down, start, steps):
    p = RpsPolicy(
        service="svc",
        min_replicas=bounds[0],
        max_replicas=bounds[1],
        target_rps=target,
        scale_up_delay_seconds=up,
        scale_down_delay_seconds=down,
        window_seconds=60,
    )
    state = ScaleState(replicas=max(start, 0), last_scaled_at=None)
    now = 1_000.0
    for dt, rps, covered in steps:
        now += dt
        d = p.decide(now, stats(rps, covered=60 * covered * 1.2), state)
        was_in_range = p.min_replicas <= state.replicas <= p.max_replicas
        assert p.min_replicas <= d.target <= p.max_replicas
        if was_in_range and d.changes:
            since = math.inf if state.last_scaled_at is None else now - state.last_scaled_at
            if d.target > state.replicas and state.replicas > 0:
                assert since >= up
            if d.target < state.replicas:
                assert since >= down
        state = d.next_state(state)
        assert p.min_replicas <= state.replicas <= p.max_replicas
