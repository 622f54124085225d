"""Active readiness checks of every published replica; only ready replicas are served.

Caddy runs no active health checks on dynamic upstreams (its maintainers: "when using
`dynamic`, the health decision is the dynamic module's responsibility"), and its own checks
cannot send dstack's default probe (a POST with a JSON body) anyway. So the gateway probes:
each replica gets its own loop that runs the service's checks (method, path, headers, body,
timeout), counts consecutive successes, and reports the replica ready after `ready_after` of
them and not ready at the first failure. A replica that is not ready yet is checked every
STARTING_INTERVAL_SECONDS so that scale-from-zero waits no longer than it must; a ready one at
the service's interval.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import aiohttp

from .routes import ProbeCheck

__all__ = ["Prober", "STARTING_INTERVAL_SECONDS"]

STARTING_INTERVAL_SECONDS = 0.5
_LOG = logging.getLogger("serveform.gateway.prober")

Address = tuple[str, int]


def _url(address: Address, path: str) -> str:
    ip, port = address
    host = f"[{ip}]" if ":" in ip else ip
    return f"http://{host}:{port}{path}"


class Prober:
    """Keeps, per service, the published replicas that pass their checks.

    ``on_change`` is called (synchronously, on the event loop) whenever a service's ready set changes.
    """

    def __init__(self, on_change: Callable[[str], None], *, sleep: Callable[[float], asyncio.Future] | None = None) -> None:
        self._on_change = on_change
        self._sleep = sleep or asyncio.sleep
        self._checks: dict[str, tuple[ProbeCheck, ...]] = {}
        self._published: dict[str, tuple[Address, ...]] = {}
        self._tasks: dict[tuple[str, Address], asyncio.Task[None]] = {}
        self._ready: dict[str, set[Address]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        # One connection per check: a replica's keep-alive pool must not hide that it stopped accepting.
        self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0))

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()

    def ready(self, service: str) -> list[Address]:
        """The ready replicas of ``service``, in published order."""
        ready = self._ready.get(service, set())
        return [a for a in self._published.get(service, ()) if a in ready]

    def snapshot(self) -> dict[str, dict[str, list[str]]]:
        fmt = lambda a: f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"  # noqa: E731
        return {
            service: {"published": [fmt(a) for a in published], "ready": [fmt(a) for a in self.ready(service)]}
            for service, published in self._published.items()
        }

    def set_checks(self, checks: dict[str, tuple[ProbeCheck, ...]]) -> None:
        """The checks of every served service (after a config load); restarts loops whose checks changed."""
        old = self._checks
        self._checks = dict(checks)
        for service in set(old) | set(checks):
            if old.get(service) != checks.get(service):
                self._restart(service)

    def set_published(self, service: str, addresses: Sequence[Address]) -> None:
        """The published replicas of ``service``; starts loops for new ones, drops removed ones at once."""
        new = tuple(dict.fromkeys(addresses))
        old = self._published.get(service, ())
        self._published[service] = new
        removed = set(old) - set(new)
        for address in removed:
            task = self._tasks.pop((service, address), None)
            if task is not None:
                task.cancel()
        if removed & self._ready.get(service, set()):
            self._ready[service] -= removed
            self._on_change(service)
        for address in new:
            if (service, address) not in self._tasks and service in self._checks:
                self._tasks[(service, address)] = asyncio.create_task(self._loop(service, address))

    def _restart(self, service: str) -> None:
        for (svc, address), task in list(self._tasks.items()):
            if svc == service:
                task.cancel()
                del self._tasks[(svc, address)]
        if self._ready.pop(service, None):
            self._on_change(service)
        self.set_published(service, self._published.get(service, ()))

    def _mark(self, service: str, address: Address, ready: bool) -> None:
        current = self._ready.setdefault(service, set())
        if (address in current) == ready:
            return
        if ready:
            current.add(address)
        else:
            current.discard(address)
        _LOG.info("replica %s of %s is %s", address, service, "ready" if ready else "not ready")
        self._on_change(service)

    async def _check(self, address: Address, check: ProbeCheck) -> bool:
        assert self._session is not None
        try:
            async with self._session.request(
                check.method,
                _url(address, check.path),
                headers=dict(check.headers),
                data=check.body,
                timeout=aiohttp.ClientTimeout(total=check.timeout_seconds),
                allow_redirects=False,
            ) as response:
                await response.read()
                return 200 <= response.status < 300
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
            return False

    async def _loop(self, service: str, address: Address) -> None:
        checks = self._checks[service]
        needed = max(c.ready_after for c in checks)
        interval = min(c.interval_seconds for c in checks)
        streak = 0
        while True:
            results = await asyncio.gather(*(self._check(address, c) for c in checks))
            if all(results):
                streak += 1
                if streak >= needed:
                    self._mark(service, address, True)
            else:
                streak = 0
                self._mark(service, address, False)
            ready = address in self._ready.get(service, set())
            await self._sleep(interval if ready else min(interval, STARTING_INTERVAL_SECONDS))
