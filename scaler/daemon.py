"""The scaler daemon: every few seconds, Caddy's metrics → windows → policy → applier.

`Scaler` is the synchronous core with an injected clock: `observe` a scrape, `evaluate` the
policies, hand changes to the `ApplyWorker`, persist the state. `run` wraps it in an asyncio loop
that scrapes Caddy over HTTP (or tails its access log), re-reads the stack's service list now and
then, and serves `/metrics` and `/healthz` on loopback.

Which services: those of the stack's last deployment (its `deployment` output: the compiled
plans and config it was built from), each watched if it has `scaling` and a replica range; before
a first deployment, the service files the stack config lists. A route's host is
`<name>.<serveform:domain>`, as the gateway serves it. Counts start from the deployment's
`replicas` output, so a `serveform scale` becomes the scaler's new starting point.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .applier import Applier, ApplyWorker
from .constants import (
    AT_ZERO_INTERVAL_SECONDS,
    DEFAULT_HOST_LABEL,
    DEFAULT_IN_FLIGHT_SELECTOR,
    DEFAULT_INTERVAL_SECONDS,
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_REQUEST_SELECTOR,
    HEALTHY_TICK_INTERVALS,
    METRICS_BODY_LIMIT_BYTES,
    METRICS_FETCH_TIMEOUT_SECONDS,
    SERVICE_CATALOG_REFRESH_SECONDS,
    STATE_FILE_NAME,
)
from .metrics import AccessLogCounter, HostMap, Selector, read_scrape
from .policy import Decision, RpsPolicy, ScaleState, ScalingOperator, policy_for
from .state import ScalerState, ServiceRecord, StateStore
from .window import ServiceWindows

__all__ = [
    "ScalerConfig",
    "Scaler",
    "WatchedService",
    "default_state_path",
    "load_gateway_services",
    "load_services",
    "run",
]

log = logging.getLogger("serveform.scaler")


@dataclass(frozen=True, kw_only=True)
class WatchedService:
    """A service the scaler manages."""

    name: str
    host: str
    """The route's host, `<name>.<domain>`, as it appears in Caddy's `host` label."""
    policy: RpsPolicy
    configured: int | None = None
    """The count the stack's last deployment runs (its `replicas` output), if deployed."""
    initial: int = 0
    """The count the stack runs before its first deployment (the plan's `replicas.initial`)."""

    @property
    def deployed(self) -> int:
        return self.configured if self.configured is not None else self.initial


def load_services(
    project_dir: str | os.PathLike[str], stack: str, outputs: Mapping[str, object] | None = None
) -> tuple[list[WatchedService], list[str]]:
    """The stack's scaled services, and one message per service file that failed to compile.

    `outputs` are the stack's outputs: the services and counts of its last deployment. Without
    a deployment (None, or no `deployment` output) the working tree's stack file is read.
    """
    from ..stacks.replicas import DEPLOYMENT_OUTPUT, REPLICAS_OUTPUT, DeployedInputs, counts_from_output

    outputs = outputs or {}
    deployed = DeployedInputs.from_output(outputs.get(DEPLOYMENT_OUTPUT))
    if deployed is not None:
        deployed = deployed.rebased(project_dir)
    counts = counts_from_output(outputs.get(REPLICAS_OUTPUT))
    if deployed is not None:
        plans, problems = list(deployed.plans), []
        domain = str(deployed.config.get("serveform:domain") or "localhost")
    else:
        plans, problems, domain = _working_tree_plans(Path(project_dir), stack)
    services: list[WatchedService] = []
    for plan in plans:
        policy = policy_for(plan)
        if policy is None:
            continue
        deployed_count = counts.get(plan.name)
        services.append(
            WatchedService(
                name=plan.name,
                host=f"{plan.route.subdomain}.{domain}",
                policy=policy,
                configured=deployed_count.count if deployed_count is not None else None,
                initial=plan.replicas.initial,
            )
        )
    return services, problems


def load_gateway_services(path: str | os.PathLike[str], counts: Mapping[str, int]) -> tuple[list[WatchedService], list[str]]:
    """The scaled services of a VM gateway's `gateway.json` (the plans and domain it serves, as
    deployed), each starting from ``counts`` (its group's desired capacity); one message per plan
    that does not load.

    What the scaler on an AWS gateway VM watches: the deployment wrote that file, so it needs
    neither the stack's state nor a copy of the project.
    """
    from ..translator.plan import ServicePlan

    data = json.loads(Path(path).read_text())
    domain = str(data["settings"]["domain"])
    services: list[WatchedService] = []
    problems: list[str] = []
    for raw in data.get("plans") or ():
        try:
            plan = ServicePlan.model_validate(raw)
        except ValueError as exc:
            problems.append(f"{path}: plan {raw.get('name') if isinstance(raw, dict) else '?'}: {exc}")
            continue
        policy = policy_for(plan)
        if policy is None:
            continue
        services.append(
            WatchedService(
                name=plan.name,
                host=f"{plan.route.subdomain}.{domain}",
                policy=policy,
                configured=counts.get(plan.name),
                initial=plan.replicas.initial,
            )
        )
    return services, problems


def _working_tree_plans(project: Path, stack: str) -> tuple[list, list[str], str]:
    from ..stacks.engine import read_stack_file
    from ..translator import CompileContext, TranslatorError, compile_file

    config = read_stack_file(project, stack)
    domain = str(config.get("serveform:domain") or "localhost")
    backend = str(config.get("serveform:backend") or "local")
    regions = config.get("serveform:regions") or ()
    context = CompileContext(backend=backend, domain=domain, regions=tuple(regions), require_env=False)
    plans, problems = [], []
    for rel in config.get("serveform:services") or ():
        try:
            plans.append(compile_file(project / str(rel), context).plan)
        except TranslatorError as exc:
            problems.append(str(exc))
        except OSError as exc:
            problems.append(f"{rel}: {exc}")
    return plans, problems, domain


def default_state_path(project_dir: str | os.PathLike[str], stack: str) -> Path:
    """`<project>/.serveform/scaler/<stack>/scaler-state.json` (kept out of git by .gitignore)."""
    return Path(project_dir) / ".serveform" / "scaler" / stack / STATE_FILE_NAME


class Scaler:
    """Windows, policies and state of one stack's services; no I/O but the state file."""

    def __init__(
        self,
        *,
        store: StateStore,
        worker: ApplyWorker | None,
        clock: Callable[[], float] = time.time,
        dry_run: bool = False,
    ) -> None:
        self._store = store
        self._worker = worker
        self._clock = clock
        self.dry_run = dry_run
        self._state = store.load()
        # The worker thread marks counts applied while the loop records decisions.
        self._lock = threading.RLock()
        self._services: dict[str, WatchedService] = {}
        self._windows = ServiceWindows()
        self._last: dict[str, Decision] = {}
        self._logged: dict[str, tuple[object, ...]] = {}
        self._resumed: set[str] = set()
        self.decisions_total: dict[tuple[str, str], int] = {}
        self.last_tick_at: float | None = None

    @property
    def state(self) -> ScalerState:
        return self._state

    @property
    def services(self) -> Mapping[str, WatchedService]:
        return self._services

    def host_map(self) -> HostMap:
        return HostMap.of({s.host: s.name for s in self._services.values()})

    def set_services(self, services: Iterable[WatchedService]) -> None:
        """Watch exactly these services; reconcile each with the saved state."""
        with self._lock:
            self._set_services(services)

    def _set_services(self, services: Iterable[WatchedService]) -> None:
        self._services = {s.name: s for s in services}
        self._windows.set_services({s.name: s.policy.window_seconds for s in self._services.values()})
        state = self._state
        for service in self._services.values():
            record = state.get(service.name)
            if record is None:
                continue
            if not record.pending and record.applied != service.deployed and service.configured is not None:
                # Someone else set the count (`serveform scale`, a narrowed range, a restored stack):
                # the deployment is the truth and the scaler's new starting point.
                log.info(
                    "%s: the stack runs %d replicas, not the %s the scaler applied; following the stack",
                    service.name,
                    service.deployed,
                    record.applied,
                )
                # Its delays count from now: a person's count holds at least one delay.
                state = state.with_record(service.name, _followed(service.deployed, self._clock()))
        if state is not self._state:
            self._save(state)
        # Decisions saved but not applied before a restart are handed to the worker once; later
        # re-reads of the stack file must not re-announce what the worker already holds.
        pending = {s: n for s, n in self._state.pending().items() if s in self._services and s not in self._resumed}
        self._resumed.update(self._services)
        if pending and self._worker is not None and not self.dry_run:
            log.info("resuming decisions not yet applied: %s", ", ".join(f"{s}={n}" for s, n in sorted(pending.items())))
            self._worker.submit(pending, reasons={s: self._state.services[s].reason for s in pending})

    def any_at_zero(self) -> bool:
        """Whether some watched service has no replica (its first request must be noticed fast)."""
        with self._lock:
            return any(self.scale_state(name).replicas == 0 for name in self._services)

    def scale_state(self, name: str) -> ScaleState:
        record = self._state.get(name)
        if record is not None:
            return record.scale_state()
        return ScaleState(replicas=self._services[name].deployed)

    def observe(self, now: float, requests: Mapping[str, Mapping], in_flight: Mapping[str, float] | None = None) -> None:
        self._windows.observe(now, requests, in_flight)

    def evaluate(self, now: float | None = None) -> list[Decision]:
        """Run every policy; changes are saved, then handed to the worker (unless dry-run)."""
        now = self._clock() if now is None else now
        with self._lock:
            return self._evaluate(now)

    def _evaluate(self, now: float) -> list[Decision]:
        decisions = []
        state = self._state
        changes: dict[str, int] = {}
        reasons: dict[str, str] = {}
        expected: dict[str, int] = {}
        for name, service in sorted(self._services.items()):
            decision = service.policy.decide(now, self._windows.stats(name, now), self.scale_state(name))
            decisions.append(decision)
            self._last[name] = decision
            key = (name, decision.operator.value)
            self.decisions_total[key] = self.decisions_total.get(key, 0) + 1
            self._log(decision)
            if decision.changes:
                state = state.with_decision(decision)
                changes[name] = decision.target
                reasons[name] = decision.reason
                expected[name] = decision.current
        if changes:
            # Persist before applying: a crash after this line resumes the decision at start.
            self._save(state)
            if self._worker is not None and not self.dry_run:
                self._worker.submit(changes, reasons=reasons, expected=expected)
        self.last_tick_at = now
        return decisions

    def mark_applied(self, counts: Mapping[str, int]) -> None:
        """The worker's callback: the stack runs these counts now.

        A count other than the one decided was set by someone else after the decision (the
        update kept it): the scaler follows it, and its delays count from now.
        """
        with self._lock:
            state = self._state.with_applied(counts)
            for service, count in counts.items():
                record = state.get(service)
                if record is not None and record.desired != count:
                    log.info("%s: the stack kept %d replicas set outside the scaler; following it", service, count)
                    state = state.with_record(service, _followed(count, self._clock()))
            self._save(state)

    def _save(self, state: ScalerState) -> None:
        self._state = state
        self._store.save(state)

    def _log(self, decision: Decision) -> None:
        # Every change is logged; a held or steady decision only when its gist changes, so a
        # quiet service does not write a line per tick.
        gist = (decision.operator, decision.current, decision.target, decision.wanted, decision.reason.split(" (")[0])
        if decision.changes:
            log.info(
                "%s %s: %d -> %d: %s%s",
                "would" if self.dry_run else "decided",
                decision.service,
                decision.current,
                decision.target,
                decision.reason,
                " (dry run)" if self.dry_run else "",
            )
        elif self._logged.get(decision.service) != gist:
            log.info("%s stays at %d: %s", decision.service, decision.current, decision.reason)
        self._logged[decision.service] = gist

    def metrics_text(self, *, scrapes: int = 0, scrape_errors: int = 0) -> str:
        """The daemon's own metrics, Prometheus text format 0.0.4."""
        lines: list[str] = []

        def family(name: str, kind: str, help_: str, samples: Iterable[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{labels} {value:g}" if isinstance(value, (int, float)) else f"{name}{labels} {value}")

        def svc(name: str, **extra: str) -> str:
            items = {"service": name, **extra}
            return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in items.items()) + "}"

        names = sorted(self._services)
        family("serveform_scaler_desired_replicas", "gauge", "Replicas the scaler decided.",
               [(svc(n), self.scale_state(n).replicas) for n in names])
        family("serveform_scaler_applied_replicas", "gauge", "Replicas last applied to the stack (-1: never).",
               [(svc(n), _applied(self._state.get(n))) for n in names])
        family("serveform_scaler_wanted_replicas", "gauge", "Replicas the current load asks for, before delays.",
               [(svc(n), d.wanted) for n in names if (d := self._last.get(n)) and d.wanted is not None])
        family("serveform_scaler_requests_per_second", "gauge", "Request rate over the service's window.",
               [(svc(n), d.rps) for n in names if (d := self._last.get(n)) and d.rps is not None])
        family("serveform_scaler_decisions_total", "counter", "Policy evaluations by outcome.",
               [(svc(s, operator=op), c) for (s, op), c in sorted(self.decisions_total.items())])
        family("serveform_scaler_scrapes_total", "counter", "Metric scrapes attempted.", [("", scrapes)])
        family("serveform_scaler_scrape_errors_total", "counter", "Metric scrapes that failed.", [("", scrape_errors)])
        if self._worker is not None:
            st = self._worker.stats()
            family("serveform_scaler_apply_attempts_total", "counter", "Stack updates attempted.", [("", st.attempts)])
            family("serveform_scaler_apply_failures_total", "counter", "Stack updates that failed.", [("", st.failures)])
            family("serveform_scaler_apply_locked_total", "counter", "Stack updates refused: stack locked.", [("", st.busy)])
            family("serveform_scaler_apply_pending", "gauge", "Services with a count not yet applied.", [("", len(st.pending))])
            family("serveform_scaler_apply_running", "gauge", "1 while a stack update runs.", [("", int(st.running))])
        if self.last_tick_at is not None:
            family("serveform_scaler_last_tick_timestamp_seconds", "gauge", "When the policies last ran.",
                   [("", self.last_tick_at)])
        cpu = time.process_time()
        family("process_cpu_seconds_total", "counter", "CPU time of the scaler process.", [("", cpu)])
        rss = _rss_bytes()
        if rss is not None:
            family("process_resident_memory_bytes", "gauge", "Resident memory of the scaler process.", [("", rss)])
        return "\n".join(lines) + "\n"


def _followed(count: int, now: float) -> ServiceRecord:
    return ServiceRecord(
        desired=count,
        applied=count,
        last_scaled_at=now,
        reason="count set outside the scaler (serveform scale or a range change)",
    )


def _summary(services: Iterable[WatchedService], limit: int = 10) -> str:
    items = [f"{s.name} ({s.host}, {s.policy.min_replicas}..{s.policy.max_replicas})" for s in services]
    if not items:
        return "none"
    more = f", and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _applied(record: ServiceRecord | None) -> int:
    return -1 if record is None or record.applied is None else record.applied


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True, kw_only=True)
class ScalerConfig:
    """How one daemon runs (the flags of `serveform scaler run`)."""

    stack: str
    project_dir: Path
    metrics_url: str | None = None
    """Caddy's Prometheus endpoint; None: the `metrics_url` of the gateway's status.json."""
    gateway_state_dir: Path | None = None
    """Where the gateway writes status.json; None: the local stack's gateway directory."""
    metrics_token_file: Path | None = None
    """The gateway's tokens file (a JSON list) or a file holding one token: sent as a bearer token
    to a metrics listener that requires one (a gateway pod's, which other pods can reach)."""
    access_log: Path | None = None
    """Caddy's JSON access log: the fallback when its metrics have no per-host series."""
    selector: str = DEFAULT_REQUEST_SELECTOR
    in_flight_selector: str | None = DEFAULT_IN_FLIGHT_SELECTOR
    host_label: str = DEFAULT_HOST_LABEL
    interval_seconds: float = DEFAULT_INTERVAL_SECONDS
    listen: str | None = DEFAULT_LISTEN_ADDRESS
    """`host:port` of /metrics and /healthz (port 0: any free port); None: no endpoints."""
    dry_run: bool = False
    state_path: Path | None = None
    services: Sequence[WatchedService] | None = field(default=None)
    """Fixed services (tests); None: read from the stack config and refreshed."""
    aws_groups: Path | None = None
    """A VM gateway's discovery.json: apply counts to its AWS auto scaling groups directly
    (`AutoScalingApplier`, the instance role's credentials) instead of a `pulumi up`."""
    gateway_config: Path | None = None
    """A VM gateway's gateway.json: the services to watch (instead of the stack's outputs), each
    starting from its group's desired capacity. Needs `aws_groups`."""


class _Endpoint:
    """Finds Caddy's metrics URL: fixed, or from the gateway's status.json (it moves on restart)."""

    def __init__(self, config: ScalerConfig) -> None:
        self._fixed = config.metrics_url
        self._state_dir = config.gateway_state_dir
        if self._fixed is None and self._state_dir is None:
            self._state_dir = config.project_dir / ".serveform" / "local" / config.stack / "gateway"

    def url(self) -> str | None:
        if self._fixed:
            return self._fixed
        from ..gateway.state import read_status

        status = read_status(self._state_dir) if self._state_dir else None
        url = status.get("metrics_url") if isinstance(status, dict) else None
        return str(url) if url else None


async def run(
    config: ScalerConfig,
    *,
    applier: Applier | None = None,
    clock: Callable[[], float] = time.time,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[str | None], None] | None = None,
) -> int:
    """Run until `stop` is set (or SIGTERM/SIGINT); returns an exit status."""
    import aiohttp
    from aiohttp import web

    from .applier import PulumiApplier

    if config.gateway_config is not None and config.aws_groups is None and applier is None:
        raise ValueError("gateway_config needs aws_groups: the groups' counts are the starting point")
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests): the caller sets `stop`

    store = StateStore(config.state_path or default_state_path(config.project_dir, config.stack))
    worker: ApplyWorker | None = None
    scaler_ref: list[Scaler] = []
    # On an AWS gateway VM: what sets the groups' desired capacity also reads it (the counts the
    # services start from), in a dry run too.
    groups = None
    if applier is None and config.aws_groups is not None:
        from ..aws.client import instance_credentials
        from .autoscaling import AutoScalingApplier, groups_from_discovery

        names, region = groups_from_discovery(config.aws_groups)
        groups = AutoScalingApplier(names, region, credentials=instance_credentials)
    if not config.dry_run:
        applier = applier or groups or PulumiApplier(config.stack, config.project_dir, on_output=_pulumi_log)
        worker = ApplyWorker(applier, on_applied=lambda counts: scaler_ref[0].mark_applied(counts))
    if groups is None and config.gateway_config is not None:
        groups = applier  # a test's applier stands in for the groups
    scaler = Scaler(store=store, worker=worker, clock=clock, dry_run=config.dry_run)
    scaler_ref.append(scaler)
    requests_selector = Selector.parse(config.selector)
    in_flight_selector = Selector.parse(config.in_flight_selector) if config.in_flight_selector else None
    access_log = AccessLogCounter(config.access_log) if config.access_log else None
    endpoint = _Endpoint(config)
    counters = {"scrapes": 0, "errors": 0}
    healthy_after = HEALTHY_TICK_INTERVALS * config.interval_seconds

    reader = applier if isinstance(applier, PulumiApplier) else None
    if reader is None and config.services is None and config.gateway_config is None:
        reader = PulumiApplier(config.stack, config.project_dir)

    def load() -> None:
        if config.services is not None:
            scaler.set_services(config.services)
            return
        if config.gateway_config is not None:
            # Without the groups' counts the scaler would start from guesses: watch nothing yet,
            # and try again at the next refresh of the catalog.
            services, problems = load_gateway_services(config.gateway_config, groups.read_replicas())
            for problem in problems:
                log.error("service skipped: %s", problem)
            scaler.set_services(services)
            return
        try:
            outputs = reader.outputs() if reader is not None else None
        except Exception as exc:  # never deployed, or the backend is unreachable for now
            log.warning("cannot read the outputs of stack %s (using its stack file): %s", config.stack, _short(exc))
            outputs = None
        services, problems = load_services(config.project_dir, config.stack, outputs)
        for problem in problems:
            log.error("service file skipped: %s", problem)
        scaler.set_services(services)

    try:
        await asyncio.to_thread(load)
    except Exception as exc:  # the cloud API unreachable for now: the next refresh tries again
        log.error("cannot read the services of stack %s yet: %s", config.stack, _short(exc))
    log.info(
        "watching %d service(s) of stack %s: %s%s",
        len(scaler.services),
        config.stack,
        _summary(scaler.services.values()),
        " [dry run]" if config.dry_run else "",
    )
    if worker is not None:
        worker.start()

    async def metrics_handler(_request: web.Request) -> web.Response:
        text = scaler.metrics_text(scrapes=counters["scrapes"], scrape_errors=counters["errors"])
        return web.Response(text=text, content_type="text/plain", charset="utf-8", headers={"X-Format": "0.0.4"})

    async def healthz_handler(_request: web.Request) -> web.Response:
        last = scaler.last_tick_at
        ok = last is not None and clock() - last <= healthy_after
        body = {"ok": ok, "last_tick_at": last, "services": len(scaler.services)}
        return web.json_response(body, status=200 if ok else 503)

    runner = None
    bound: str | None = None
    if config.listen:
        app = web.Application()
        app.router.add_get("/metrics", metrics_handler)
        app.router.add_get("/healthz", healthz_handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, _, port = config.listen.rpartition(":")
        site = web.TCPSite(runner, host.strip("[]") or "127.0.0.1", int(port))
        await site.start()
        sock = site._server.sockets[0].getsockname()  # the real port when 0 was asked for
        bound = f"{sock[0]}:{sock[1]}"
        log.info("serving /metrics and /healthz on http://%s", bound)
    if on_ready is not None:
        on_ready(bound)

    timeout = aiohttp.ClientTimeout(total=METRICS_FETCH_TIMEOUT_SECONDS)
    next_catalog = time.monotonic() + SERVICE_CATALOG_REFRESH_SECONDS
    fallback_warned = False
    try:
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while not stop.is_set():
                started = time.monotonic()
                if config.services is None and started >= next_catalog:
                    next_catalog = started + SERVICE_CATALOG_REFRESH_SECONDS
                    try:
                        await asyncio.to_thread(load)
                    except Exception as exc:  # a broken edit of the stack file must not stop scaling
                        log.error("re-reading stack %s failed, keeping the services I have: %s", config.stack, exc)
                hosts = scaler.host_map()
                counters["scrapes"] += 1
                requests: Mapping[str, Mapping] | None = None
                in_flight: Mapping[str, float] = {}
                try:
                    url = endpoint.url()
                    per_host = False
                    if url:
                        body = await _fetch(http, url, _metrics_headers(config.metrics_token_file))
                        scrape = read_scrape(
                            body.decode("utf-8", "replace"),
                            hosts,
                            requests=requests_selector,
                            in_flight=in_flight_selector,
                            host_label=config.host_label,
                        )
                        per_host = scrape.per_host
                        requests, in_flight = scrape.requests, scrape.in_flight
                    if access_log is not None and not per_host:
                        if not fallback_warned:
                            log.warning("no per-host request metrics; counting requests from %s", access_log.path)
                            fallback_warned = True
                        requests = access_log.series_by_service(hosts)
                    if requests is None:
                        raise ValueError("no metrics endpoint yet (the gateway has not written status.json)")
                except Exception as exc:
                    counters["errors"] += 1
                    log.warning("scrape failed: %s", exc)
                else:
                    now = clock()
                    scaler.observe(now, requests, in_flight)
                    scaler.evaluate(now)
                elapsed = time.monotonic() - started
                interval = config.interval_seconds
                if scaler.any_at_zero():
                    interval = min(interval, AT_ZERO_INTERVAL_SECONDS)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=max(0.0, interval - elapsed))
                except asyncio.TimeoutError:
                    pass
    finally:
        if runner is not None:
            await runner.cleanup()
        if worker is not None:
            # An `up` in flight finishes (never interrupted); anything still pending is in the state file.
            await asyncio.to_thread(worker.stop, 600)
    return 0


def _metrics_headers(token_file: Path | None) -> dict[str, str]:
    """The Authorization header from `token_file`, read at every scrape (tokens rotate); {} without one."""
    if token_file is None:
        return {}
    text = token_file.read_text().strip()
    if text.startswith("["):
        tokens = json.loads(text)
        if not tokens or not isinstance(tokens[0], str):
            raise ValueError(f"{token_file}: expected a JSON list of tokens")
        text = tokens[0]
    return {"Authorization": f"Bearer {text}"}


async def _fetch(http, url: str, headers: Mapping[str, str] | None = None) -> bytes:
    """The whole body of `url`, refused beyond METRICS_BODY_LIMIT_BYTES."""
    chunks: list[bytes] = []
    size = 0
    async with http.get(url, headers=dict(headers or {})) as resp:
        resp.raise_for_status()
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > METRICS_BODY_LIMIT_BYTES:
                raise ValueError(f"{url}: metrics larger than {METRICS_BODY_LIMIT_BYTES} bytes")
            chunks.append(chunk)
    return b"".join(chunks)


def _short(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _pulumi_log(line: str) -> None:
    line = line.rstrip()
    if line:
        log.debug("pulumi: %s", line)
