"""State on disk across restarts; the apply worker's coalescing, backoff and never losing a decision."""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping

import pytest

from serveform.scaler.applier import ApplyError, ApplyWorker, StackBusyError
from serveform.scaler.policy import Decision, ScalingOperator
from serveform.scaler.state import ScalerState, ServiceRecord, StateError, StateStore


def _decision(service: str, current: int, target: int, at: float) -> Decision:
    op = ScalingOperator.SCALE_UP if target > current else ScalingOperator.SCALE_DOWN
    return Decision(service=service, operator=op, current=current, target=target, at=at, reason="load")


def test_state_round_trips_across_a_restart(tmp_path):
    store = StateStore(tmp_path / "s" / "state.json")
    assert store.load() == ScalerState()
    state = ScalerState().with_decision(_decision("chat", 1, 3, 1000.5))
    state = state.with_decision(_decision("other", 2, 1, 1001))
    state = state.with_applied({"other": 1})
    store.save(state)
    again = StateStore(tmp_path / "s" / "state.json").load()
    assert again == state
    assert again.get("chat") == ServiceRecord(desired=3, applied=None, last_scaled_at=1000.5, reason="load")
    assert again.pending() == {"chat": 3}
    assert again.get("chat").scale_state().last_scaled_at == 1000.5
    assert list(tmp_path.joinpath("s").iterdir()) == [tmp_path / "s" / "state.json"]  # no temp files left


def test_no_op_decisions_do_not_touch_the_state():
    noop = Decision(service="x", operator=ScalingOperator.NO_OP, current=2, target=2, at=5, reason="steady")
    assert ScalerState().with_decision(noop) == ScalerState()


def test_a_crash_while_writing_leaves_the_old_state(tmp_path, monkeypatch):
    store = StateStore(tmp_path / "state.json")
    store.save(ScalerState().with_decision(_decision("chat", 1, 2, 10)))
    before = (tmp_path / "state.json").read_text()

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr("serveform.scaler.state.os.replace", boom)
    with pytest.raises(OSError):
        store.save(ScalerState().with_decision(_decision("chat", 2, 3, 20)))
    assert (tmp_path / "state.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


@pytest.mark.parametrize(
    "content, message",
    [
        ("{", "not JSON"),
        ('{"version": 99, "services": {}}', "version 1"),
        ('{"version": 1, "services": []}', "services: expected an object"),
        ('{"version": 1, "services": {"a": {"desired": -1}}}', "services.a: desired"),
        ('{"version": 1, "services": {"a": {"desired": 1, "bogus": 2}}}', "services.a"),
    ],
)
def test_bad_state_files_name_file_and_field(tmp_path, content, message):
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(StateError, match=message) as info:
        StateStore(path).load()
    assert str(path) in str(info.value)


# --- the worker -----------------------------------------------------------------------------------


class FakeStack:
    """An applier whose stack is locked for the first `locked` attempts, then fails `failing` times."""

    def __init__(self, locked: int = 0, failing: int = 0) -> None:
        self.locked = locked
        self.failing = failing
        self.config: dict[str, int] = {}
        self.ups: list[dict[str, int]] = []
        self.attempts = 0
        self.gate: threading.Event | None = None
        self.entered = threading.Event()

    def apply(self, counts: Mapping[str, int], *, message: str, expected: Mapping[str, int] | None = None) -> None:
        self.attempts += 1
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.locked:
            self.locked -= 1
            raise StackBusyError("error: the stack is currently locked by 1 lock(s)")
        if self.failing:
            self.failing -= 1
            raise ApplyError("up failed: provider error")
        self.config.update(counts)
        self.ups.append(dict(counts))
        assert "serveform scaler:" in message


def test_locked_stack_backs_off_exponentially_and_applies_in_the_end():
    stack = FakeStack(locked=3, failing=1)
    applied: list[dict[str, int]] = []
    worker = ApplyWorker(stack, on_applied=lambda c: applied.append(dict(c)), backoff_initial_seconds=2, backoff_max_seconds=5, jitter_ratio=0)
    worker.submit({"chat": 3}, reasons={"chat": "load"})
    delays = [worker.run_once() for _ in range(4)]
    assert delays == [2, 4, 5, 5]  # doubled, capped at the maximum
    assert worker.pending() == {"chat": 3}  # still pending: never dropped
    assert worker.run_once() is None
    assert stack.config == {"chat": 3} and applied == [{"chat": 3}]
    assert worker.pending() == {}
    stats = worker.stats()
    assert (stats.attempts, stats.failures, stats.busy, stats.successes) == (5, 4, 3, 1)
    # After a success the backoff starts over.
    stack.locked = 1
    worker.submit({"chat": 2})
    assert worker.run_once() == 2


def test_jitter_stays_within_its_ratio():
    worker = ApplyWorker(FakeStack(locked=100), backoff_initial_seconds=10, backoff_max_seconds=10, jitter_ratio=0.2)
    worker.submit({"a": 1})
    delays = [worker.run_once() for _ in range(50)]
    assert all(8 <= d <= 12 for d in delays) and len(set(delays)) > 1


def test_counts_submitted_during_an_up_coalesce_to_the_newest():
    stack = FakeStack()
    stack.gate = threading.Event()
    worker = ApplyWorker(stack, backoff_initial_seconds=0.01)
    worker.start()
    try:
        worker.submit({"chat": 2})
        assert stack.entered.wait(5)
        # While the first `up` runs, three more decisions arrive for chat, one for another service.
        worker.submit({"chat": 3})
        worker.submit({"chat": 4, "other": 1})
        worker.submit({"chat": 1})
        stack.gate.set()
        assert worker.wait_idle(10)
    finally:
        worker.stop(10)
    assert stack.ups == [{"chat": 2}, {"chat": 1, "other": 1}]
    assert stack.config == {"chat": 1, "other": 1}


def test_stop_lets_the_up_in_flight_finish():
    stack = FakeStack()
    stack.gate = threading.Event()
    worker = ApplyWorker(stack)
    worker.start()
    worker.submit({"chat": 2})
    assert stack.entered.wait(5)
    stopper = threading.Thread(target=worker.stop, args=(10,))
    stopper.start()
    stopper.join(0.2)
    assert stopper.is_alive()  # waiting for the `up`
    stack.gate.set()
    stopper.join(10)
    assert stack.ups == [{"chat": 2}]


def test_state_file_is_json_a_person_can_read(tmp_path):
    store = StateStore(tmp_path / "state.json")
    store.save(ScalerState().with_decision(_decision("chat", 1, 2, 10)))
    data = json.loads((tmp_path / "state.json").read_text())
    assert data == {
        "version": 1,
        "services": {"chat": {"desired": 2, "applied": None, "last_scaled_at": 10, "reason": "load"}},
    }


def test_only_the_lock_of_a_dead_update_on_this_host_is_removed(tmp_path):
    import socket
    import subprocess

    from serveform.scaler.applier import clear_dead_lock

    locks = tmp_path / ".pulumi" / "locks" / "organization" / "proj" / "dev"
    locks.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    (locks / "dead.json").write_text(json.dumps({"pid": dead.pid, "hostname": host, "timestamp": "t"}))
    (locks / "dead.json.attrs").write_text("{}")
    (locks / "elsewhere.json").write_text(json.dumps({"pid": dead.pid, "hostname": "other-host", "timestamp": "t"}))
    (locks / "garbage.json").write_text("{not json")
    other_stack = tmp_path / ".pulumi" / "locks" / "organization" / "proj" / "prod"
    other_stack.mkdir()
    (other_stack / "dead.json").write_text(json.dumps({"pid": dead.pid, "hostname": host}))

    assert clear_dead_lock("s3://bucket", "proj", "dev") is None
    removed = clear_dead_lock(tmp_path.as_uri(), "proj", "dev")
    assert removed == f"pid {dead.pid} at t"
    assert sorted(p.name for p in locks.iterdir()) == ["elsewhere.json", "garbage.json"]
    assert (other_stack / "dead.json").exists()
    assert clear_dead_lock(tmp_path.as_uri(), "proj", "dev") is None
