"""The daemon: real HTTP on loopback (a scripted Caddy metrics endpoint, the scaler's own
/metrics and /healthz), a fake stack behind the Applier seam, an injected clock."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from serveform.scaler.applier import ApplyWorker, StackBusyError
from serveform.scaler.daemon import Scaler, ScalerConfig, WatchedService, load_services, run
from serveform.scaler.policy import RpsPolicy
from serveform.scaler.state import StateStore

HOST = "chat.localhost"


def _service(min_replicas: int = 0, configured: int | None = None) -> WatchedService:
    return WatchedService(
        name="chat",
        host=HOST,
        policy=RpsPolicy(
            service="chat",
            min_replicas=min_replicas,
            max_replicas=3,
            target_rps=10,
            scale_up_delay_seconds=30,
            scale_down_delay_seconds=60,
            window_seconds=30,
        ),
        configured=configured,
        initial=min_replicas,
    )


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeStack:
    def __init__(self, busy: bool = False) -> None:
        self.busy = busy
        self.config: dict[str, int] = {}
        self.ups: list[dict[str, int]] = []
        self.lock = threading.Lock()

    def apply(self, counts: Mapping[str, int], *, message: str, expected: Mapping[str, int] | None = None) -> None:
        if self.busy:
            raise StackBusyError("locked")
        with self.lock:
            self.config.update(counts)
            self.ups.append(dict(counts))


class FakeCaddy:
    """Serves Caddy-shaped Prometheus text whose counters the test sets."""

    def __init__(self) -> None:
        self.ok = 0
        self.other = 12345
        self.in_flight = 0
        self.scrapes = 0
        self.padding = 0

    def text(self) -> str:
        filler = [f'serveform_other_metric{{host="h{i}.localhost"}} {i}' for i in range(self.padding)]
        return "\n".join(
            filler
            + [
                "# TYPE serveform_requests_total counter",
                f'serveform_requests_total{{service="chat",host="{HOST}"}} {self.ok}',
                f'serveform_requests_total{{service="other",host="other.localhost"}} {self.other}',
                f'serveform_requests_in_flight{{service="chat",host="{HOST}"}} {self.in_flight}',
                "",
            ]
        )

    async def __aenter__(self) -> str:
        async def metrics(_request):
            self.scrapes += 1
            return web.Response(text=self.text())

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/metrics"

    async def __aexit__(self, *exc) -> None:
        await self._runner.cleanup()


async def _until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Daemon:
    """Runs `run()` in the test's loop; restartable on the same state file."""

    def __init__(self, config: ScalerConfig, stack: FakeStack, clock: Clock) -> None:
        self.config, self.stack, self.clock = config, stack, clock
        self.stop = asyncio.Event()
        self.address: str | None = None
        self.ready = asyncio.Event()

    async def __aenter__(self) -> Daemon:
        def on_ready(address):
            self.address = address
            self.ready.set()

        self.task = asyncio.create_task(run(self.config, applier=self.stack, clock=self.clock, stop=self.stop, on_ready=on_ready))
        await asyncio.wait_for(self.ready.wait(), 10)
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        assert await asyncio.wait_for(self.task, 20) == 0

    async def get(self, path: str) -> httpx.Response:
        async with httpx.AsyncClient() as client:
            return await client.get(f"http://{self.address}{path}")


def _config(tmp_path: Path, metrics_url: str, **kw) -> ScalerConfig:
    return ScalerConfig(
        stack="test",
        project_dir=tmp_path,
        metrics_url=metrics_url,
        interval_seconds=0.05,
        listen="127.0.0.1:0",
        state_path=tmp_path / "state.json",
        services=kw.pop("services", [_service()]),
        **kw,
    )


async def test_from_zero_up_and_back_down_through_the_daemon(tmp_path):
    caddy, stack, clock = FakeCaddy(), FakeStack(), Clock()
    async with caddy as url, Daemon(_config(tmp_path, url), stack, clock) as d:
        await _until(lambda: caddy.scrapes >= 2, what="scrapes")
        assert stack.ups == []
        health = await d.get("/healthz")
        assert health.status_code == 200 and health.json()["services"] == 1

        # A request held at zero replicas (in flight, not yet counted) scales up at once.
        caddy.in_flight = 1
        await _until(lambda: stack.ups == [{"chat": 1}], what="scale from zero")
        caddy.in_flight = 0

        # Another service's requests do not count (the gateway never counts refusals at all).
        caddy.other += 100_000
        clock.now += 40
        await _until(lambda: caddy.scrapes >= 8, what="more scrapes")
        assert stack.ups == [{"chat": 1}]

        # 25 rps over the 30 s window wants 3 replicas; the scale-up delay (30 s) has passed.
        start = caddy.scrapes
        await _until(lambda: caddy.scrapes > start + 1, what="a scrape")
        caddy.ok += 750
        await _until(lambda: stack.ups[-1] == {"chat": 3}, what="scale up to 3")

        text = (await d.get("/metrics")).text
        assert 'serveform_scaler_desired_replicas{service="chat"} 3' in text
        assert 'serveform_scaler_applied_replicas{service="chat"} 3' in text
        assert 'serveform_scaler_decisions_total{service="chat",operator="scale_up"} 2' in text
        assert "process_resident_memory_bytes" in text

        # Load gone: after the window empties and scale_down_delay (60 s) passes, back to zero.
        clock.now += 61
        await _until(lambda: stack.ups[-1] == {"chat": 0}, what="scale to zero")
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["services"]["chat"]["desired"] == 0 and state["services"]["chat"]["applied"] == 0


async def test_a_large_scrape_is_read_whole(tmp_path):
    # Several MB arrive in many chunks; the counted series come last.
    caddy, stack, clock = FakeCaddy(), FakeStack(), Clock()
    caddy.padding = 60_000
    assert len(caddy.text()) > 3_000_000
    async with caddy as url, Daemon(_config(tmp_path, url), stack, clock) as d:
        await _until(lambda: caddy.scrapes >= 2, what="scrapes")
        caddy.in_flight = 1
        await _until(lambda: stack.ups == [{"chat": 1}], what="scale from zero")
        assert "serveform_scaler_scrape_errors_total 0\n" in (await d.get("/metrics")).text


async def test_restart_resumes_an_unapplied_decision_and_keeps_delays(tmp_path):
    caddy, clock = FakeCaddy(), Clock()
    locked = FakeStack(busy=True)
    async with caddy as url:
        async with Daemon(_config(tmp_path, url), locked, clock):
            await _until(lambda: caddy.scrapes >= 2, what="scrapes")
            caddy.in_flight = 1
            await _until(lambda: StateStore(tmp_path / "state.json").load().pending() == {"chat": 1}, what="decision saved")
        # Killed while the stack was locked: the decision is on disk, not in the stack.
        assert locked.ups == []
        caddy.in_flight = 0
        free = FakeStack()
        async with Daemon(_config(tmp_path, url), free, clock):
            await _until(lambda: free.ups == [{"chat": 1}], what="resumed decision")
            seen = caddy.scrapes
            await _until(lambda: caddy.scrapes >= seen + 2, what="the restarted daemon's first scrape")
            # The delay since that decision still holds after the restart: 25 rps, 10 s later.
            clock.now += 10
            caddy.ok += 750
            seen = caddy.scrapes
            await _until(lambda: caddy.scrapes >= seen + 3, what="scrapes")
            assert free.ups == [{"chat": 1}]
            clock.now += 21
            await _until(lambda: free.ups[-1] == {"chat": 3}, what="scale up after the delay")


async def test_dry_run_decides_but_never_applies(tmp_path, caplog):
    caddy, stack, clock = FakeCaddy(), FakeStack(), Clock()
    caplog.set_level("INFO", logger="serveform.scaler")
    async with caddy as url, Daemon(_config(tmp_path, url, dry_run=True), stack, clock) as d:
        await _until(lambda: caddy.scrapes >= 2, what="scrapes")
        caddy.in_flight = 1
        await _until(lambda: "would chat: 0 -> 1" in caplog.text, what="a dry-run decision")
        assert "(dry run)" in caplog.text
        assert "apply_attempts" not in (await d.get("/metrics")).text
    assert stack.ups == []


async def test_healthz_fails_when_scrapes_fail(tmp_path):
    stack, clock = FakeStack(), Clock()
    async with Daemon(_config(tmp_path, "http://127.0.0.1:9/metrics"), stack, clock) as d:
        response = await d.get("/healthz")
        assert response.status_code == 503 and response.json()["ok"] is False
        text = (await d.get("/metrics")).text
        assert "serveform_scaler_scrape_errors_total 0\n" not in text
        assert "serveform_scaler_scrape_errors_total" in text


def test_scaler_core_follows_a_count_someone_else_wrote(tmp_path):
    store = StateStore(tmp_path / "state.json")
    first = Scaler(store=store, worker=None, clock=Clock())
    first.set_services([_service(min_replicas=1, configured=1)])
    first.observe(1000, {"chat": {"s": 0}})
    first.observe(1001, {"chat": {"s": 900}})
    [decision] = first.evaluate(1001)
    assert decision.target == 3
    first.mark_applied({"chat": 3})
    # A person ran `serveform scale chat 2`: the restarted scaler follows the deployment, and
    # its delays count from when it noticed, so the person's count holds at least one delay.
    second = Scaler(store=store, worker=None, clock=Clock(1500.0))
    second.set_services([_service(min_replicas=1, configured=2)])
    assert second.scale_state("chat").replicas == 2
    assert second.scale_state("chat").last_scaled_at == 1500.0


def test_a_decision_the_stack_did_not_take_is_followed(tmp_path):
    # The scale `up` kept a count someone set after the decision (compare-and-set in the program):
    # the worker reports what the stack runs and the scaler carries on from that.
    store = StateStore(tmp_path / "state.json")
    clock = Clock()

    class KeepsTwo:
        def __init__(self):
            self.expected = []

        def apply(self, counts, *, message, expected=None):
            self.expected.append(dict(expected or {}))
            return {"chat": 2}  # `serveform scale chat 2` ran between the decision and this `up`

    applier = KeepsTwo()
    scaler_ref = []
    worker = ApplyWorker(applier, on_applied=lambda counts: scaler_ref[0].mark_applied(counts))
    scaler = Scaler(store=store, worker=worker, clock=clock)
    scaler_ref.append(scaler)
    scaler.set_services([_service(min_replicas=1, configured=1)])
    scaler.observe(1000, {"chat": {"s": 0}})
    scaler.observe(1001, {"chat": {"s": 900}})
    clock.now = 1001
    [decision] = scaler.evaluate(1001)
    assert decision.target == 3
    clock.now = 1002
    assert worker.run_once() is None
    assert applier.expected == [{"chat": 1}]  # what the scaler believed the stack ran
    record = scaler.state.get("chat")
    assert (record.desired, record.applied, record.last_scaled_at) == (2, 2, 1002)
    assert worker.pending() == {}


def _write_services(root):
    (root / "stacks").mkdir()
    (root / "svc").mkdir()
    (root / "svc" / "chat.dstack.yml").write_text(
        "type: service\nname: chat\nimage: python:3.11\ncommands: [python -m http.server 8000]\nport: 8000\n"
        "replicas: 0..4\nscaling:\n  metric: rps\n  target: 2.5\n  scale_up_delay: 10s\n  scale_down_delay: 1m\n"
    )
    (root / "svc" / "fixed.dstack.yml").write_text(
        "type: service\nname: fixed\nimage: python:3.11\ncommands: [x]\nport: 8000\nreplicas: 2\n"
    )
    (root / "svc" / "broken.dstack.yml").write_text("type: service\nname: broken\nport: nope\n")
    (root / "stacks" / "Pulumi.t.yaml").write_text(
        "config:\n  serveform:backend: local\n  serveform:domain: example.test\n"
        "  serveform:services: [svc/chat.dstack.yml, svc/fixed.dstack.yml, svc/broken.dstack.yml]\n"
    )


def test_load_services_from_a_stack_config_before_a_first_deployment(tmp_path):
    _write_services(tmp_path)
    services, problems = load_services(tmp_path, "t")
    assert [s.name for s in services] == ["chat"]
    chat = services[0]
    assert chat.host == "chat.example.test" and chat.configured is None and chat.deployed == 0
    assert (chat.policy.min_replicas, chat.policy.max_replicas, chat.policy.target_rps) == (0, 4, 2.5)
    assert (chat.policy.scale_up_delay_seconds, chat.policy.scale_down_delay_seconds) == (10, 60)
    assert len(problems) == 1 and "broken.dstack.yml" in problems[0]


def test_load_services_follows_the_last_deployment_not_the_working_tree(tmp_path):
    from serveform.stacks.replicas import DeployedInputs
    from serveform.translator import CompileContext, compile_file

    _write_services(tmp_path)
    context = CompileContext(backend="local", domain="deployed.test", require_env=False)
    deployed_plan = compile_file(tmp_path / "svc" / "chat.dstack.yml", context).plan
    # Edited after the deployment: another target and range; the scaler keeps to what is deployed.
    (tmp_path / "svc" / "chat.dstack.yml").write_text(
        "type: service\nname: chat\nimage: python:3.11\ncommands: [x]\nport: 8000\n"
        "replicas: 1..9\nscaling:\n  metric: rps\n  target: 99\n"
    )
    inputs = DeployedInputs(config={"serveform:domain": "deployed.test"}, plans=(deployed_plan,))
    outputs = {
        "deployment": inputs.to_output(),
        "replicas": {"chat": {"count": 3.0, "source": "manual", "set_at": "2026-12-06T01:00:00Z"}},
    }
    services, problems = load_services(tmp_path, "t", outputs)
    assert problems == []
    [chat] = services
    assert chat.host == "chat.deployed.test" and chat.configured == 3 and chat.deployed == 3
    assert (chat.policy.max_replicas, chat.policy.target_rps) == (4, 2.5)


def test_run_refuses_bad_selector(tmp_path, capsys):
    from serveform.cli import main

    (tmp_path / "stacks").mkdir()
    (tmp_path / "stacks" / "Pulumi.t.yaml").write_text("config: {}\n")
    code = main(["scaler", "run", "--stack", "t", "--project-dir", str(tmp_path), "--selector", "m{code=~'x'}"])
    assert code == 2
    assert "selector" in capsys.readouterr().err
    assert main(["scaler", "run", "--stack", "nope", "--project-dir", str(tmp_path)]) == 2
    assert "Pulumi.nope.yaml: no such stack config" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _quiet_aiohttp(caplog):
    caplog.set_level("ERROR", logger="aiohttp.access")


async def test_a_service_at_zero_is_watched_more_often(tmp_path):
    from serveform.scaler.constants import AT_ZERO_INTERVAL_SECONDS

    caddy, stack, clock = FakeCaddy(), FakeStack(), Clock()
    config = ScalerConfig(
        stack="test",
        project_dir=tmp_path,
        metrics_url=None,
        interval_seconds=30,
        listen=None,
        state_path=tmp_path / "state.json",
        services=[_service(min_replicas=0)],
    )
    async with caddy as url:
        config = dataclasses.replace(config, metrics_url=url)
        async with Daemon(config, stack, clock):
            started = time.monotonic()
            await _until(lambda: caddy.scrapes >= 3, timeout=3 * AT_ZERO_INTERVAL_SECONDS + 5, what="fast scrapes at zero")
            assert time.monotonic() - started < 30  # not the 30 s interval
            caddy.in_flight = 1
            await _until(lambda: stack.ups == [{"chat": 1}], timeout=AT_ZERO_INTERVAL_SECONDS + 5, what="scale from zero")
            seen = caddy.scrapes
            await asyncio.sleep(3 * AT_ZERO_INTERVAL_SECONDS)
            assert caddy.scrapes <= seen + 1  # at one replica, back to the normal interval


def test_pending_decisions_are_resumed_once(tmp_path):
    from serveform.scaler.applier import ApplyWorker

    store = StateStore(tmp_path / "state.json")
    first = Scaler(store=store, worker=None, clock=Clock())
    first.set_services([_service()])
    first.observe(1000, {"chat": {}}, {"chat": 1})
    assert first.evaluate(1000)[0].target == 1
    assert store.load().pending() == {"chat": 1}

    stack = FakeStack()
    worker = ApplyWorker(stack)
    second = Scaler(store=store, worker=worker, clock=Clock())
    second.set_services([_service()])
    assert worker.pending() == {"chat": 1}
    assert worker.run_once() is None
    second.mark_applied({"chat": 1})
    second.set_services([_service()])  # the periodic re-read of the stack file
    assert worker.pending() == {} and stack.ups == [{"chat": 1}]
