"""`python -m serveform.gateway run --state-dir DIR`: Caddy, the router, the prober and the DNS responder as one process.

Start order: read and check the config (nothing starts if it is bad), DNS responder, router,
prober, then Caddy on a validated config; `status.json` says the gateway is up. Then:

* published replica files (``replicas/*.json``) are polled every POLL_SECONDS; changes go to
  the prober. Whenever a ready set changes, the ready file (``ready.json``) is rewritten and
  Caddy re-reads it (``POST /serveform/ready``; its ``serveform`` upstream source serves it),
  so once that answers no new request goes to a replica the prober dropped — no Caddy reload.
  The DNS responder answers the same ready sets (for lookups that need DNS);
* SIGHUP (or a changed ``gateway.json`` / secrets file) re-reads the config. Services and
  tokens live in the routes file (and token digests) that the gateway's Caddy modules read:
  a change of services or tokens rewrites those files and asks Caddy to re-read them
  (``POST /serveform/reload`` on its admin endpoint) — no config reload, so no connection is
  cut. Only a change of the gateway's own settings (ports, TLS, limits) renders, adapts,
  validates and reloads Caddy's config. A bad config is logged and the running one stays;
* SIGTERM/SIGINT stop everything: Caddy gets SIGTERM (SIGKILL after STOP_GRACE_SECONDS), the
  router and responder close, and the process exits 0 with no child left. Caddy also carries
  PR_SET_PDEATHSIG, so it dies with the supervisor even on SIGKILL.

The unix sockets (Caddy's admin API, the router) do not live in the state directory: a socket
path must fit sockaddr_un (SOCKET_PATH_MAX_BYTES), which a deep checkout's state directory
overflows ("bind: invalid argument"). They go to a short private runtime directory instead,
`$XDG_RUNTIME_DIR/serveform/<hash>` or `/tmp/serveform-<uid>/<hash>` (hash of the state
directory's path, so one state directory always meets the same sockets), made 0700 and
removed on stop; `status.json` names it (`socket_dir`).

If Caddy exits on its own it is restarted (at most RESTARTS_MAX times in a row, with backoff).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import hashlib
import secrets
import shutil
import ssl
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from . import caddy
from .dns import DnsResponder
from .errors import CaddyError, GatewayConfigError, Problem
from .prober import Prober
from .render import DNS_ENV_PREFIX, render_routes, routes_document
from .router import Router, router_config
from .routes import ServiceRoute, routes_from_plans
from .settings import GatewayRuntime, GatewaySettings
from .state import (
    CONFIG_FILE,
    DNS_OPTIONS_FILE,
    PROBE_HEADERS_FILE,
    REPLICAS_DIR,
    STATUS_FILE,
    TOKENS_FILE,
    read_config,
    read_published,
    write_private,
)

__all__ = ["run"]

POLL_SECONDS = 0.1
MTIME_SETTLE_SECONDS = 1.0
"""A replicas folder changed this recently is re-read at every poll (file times are coarse)."""
PUSH_RETRY_SECONDS = 0.5
"""After a failed hand-over of the ready sets to Caddy (restarting), try again this much later."""
STOP_GRACE_SECONDS = 10.0
START_TIMEOUT_SECONDS = 30.0
RESTARTS_MAX = 5
SOCKET_PATH_MAX_BYTES = 107
"""Longest unix socket path: sockaddr_un.sun_path is 108 bytes on Linux, its NUL included."""
_SOCKET_NAMES = ("caddy-admin.sock", "router.sock")
_LOG = logging.getLogger("serveform.gateway")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The fields of `gateway.json`'s optional "runtime" object a deployment may set: a gateway in a
# Kubernetes pod looks replicas up in the cluster's DNS and serves metrics to the scaler's pod.
RUNTIME_OVERRIDES = ("replica_dns", "srv_lookups", "metrics_address", "metrics_port", "metrics_auth")


def _runtime_overrides(state_dir: Path) -> dict[str, Any]:
    """The "runtime" object of ``gateway.json`` (checked by GatewayRuntime), or nothing."""
    try:
        document = json.loads((state_dir / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # read_config has already reported an unreadable file
    raw = document.get("runtime") if isinstance(document, dict) else None
    if not isinstance(raw, dict):
        return {}
    unknown = sorted(set(raw) - set(RUNTIME_OVERRIDES))
    if unknown:
        raise GatewayConfigError([Problem(str(state_dir / CONFIG_FILE), "runtime", f"unknown field(s) {', '.join(unknown)}; expected {', '.join(RUNTIME_OVERRIDES)}")])
    return dict(raw)


def _private_dir(path: Path) -> bool:
    """Make ``path`` (0700) if missing; True only if it is a directory of ours nobody else can enter."""
    try:
        path.mkdir(mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and not info.st_mode & 0o077


def socket_dir_for(state_dir: Path) -> Path:
    """The short private directory for the sockets of the gateway in ``state_dir`` (made 0700).

    ``$XDG_RUNTIME_DIR/serveform/<hash>`` when that is set and short enough, else
    ``/tmp/serveform-<uid>/<hash>``. A parent that is not ours or is open to others (a shared
    /tmp where someone made the name first) is refused rather than used.
    """
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    longest = max(len(name) for name in _SOCKET_NAMES) + len(digest) + 2
    candidates = []
    if os.environ.get("XDG_RUNTIME_DIR", "").startswith("/"):
        candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / "serveform")
    candidates.append(Path("/tmp") / f"serveform-{os.getuid()}")
    for parent in candidates:
        if len(str(parent).encode()) + longest > SOCKET_PATH_MAX_BYTES or not parent.parent.is_dir():
            continue
        if _private_dir(parent) and _private_dir(parent / digest):
            return parent / digest
    raise GatewayConfigError(
        [Problem(str(state_dir), "<sockets>", f"no private directory for the gateway's sockets among {', '.join(map(str, candidates))} (each must be ours, mode 0700)")]
    )


def _remove_socket_dir(path: Path) -> None:
    # Only this gateway's directory: the 0700 parent stays, since removing it when it looks empty
    # would race with another gateway of the same user that has just made it.
    shutil.rmtree(path, ignore_errors=True)


def _admin_address(settings: GatewaySettings, runtime: GatewayRuntime) -> str:
    return f"unix/{runtime.admin_socket_path}" if settings.admin == "unix" else settings.admin


class _Gateway:
    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.binary = caddy.caddy_binary()
        caddy.check_version(self.binary)
        self.stopping = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.caddy: subprocess.Popen[bytes] | None = None
        self.routes: tuple[ServiceRoute, ...] = ()
        self.settings: GatewaySettings | None = None
        self.generations: dict[str, int] = {}
        self.config_stamp: tuple[Any, ...] = ()
        self.prober = Prober(self._ready_changed)
        self.dns = DnsResponder(self._lookup)
        self.router: Router | None = None
        self.runner: web.AppRunner | None = None
        self.runtime: GatewayRuntime | None = None
        # The secret only the router presents to Caddy's internal listener; Caddy gets its digest.
        self.gateway_secret = secrets.token_urlsafe(32)
        self.caddyfile_text: str | None = None
        self.routes_generation = 0
        self.replicas_mtime: int | None = None
        self.ready_dirty = asyncio.Event()
        self.ready_pusher: asyncio.Task[None] | None = None
        # The ready sets Caddy serves (last ready file it confirmed): what status.json reports.
        self.served_ready: dict[str, list[str]] = {}

    # --- wiring -------------------------------------------------------------------------------

    def _lookup(self, service: str) -> list[tuple[str, int]]:
        return self.prober.ready(service)

    def _ready_changed(self, service: str) -> None:
        # status.json changes once Caddy has the new set (_push_ready), so a reader of status never
        # sees a replica dropped while Caddy may still send it requests.
        self.ready_dirty.set()

    def _write_ready(self) -> dict[str, list[str]]:
        """Write the ready file Caddy's `serveform` upstream source serves; the sets written."""
        assert self.runtime is not None
        fmt = lambda a: f"[{a[0]}]:{a[1]}" if ":" in a[0] else f"{a[0]}:{a[1]}"  # noqa: E731
        services = {r.name: [fmt(a) for a in self.prober.ready(r.name)] for r in self.routes}
        write_private(self.runtime.ready_file, json.dumps({"services": services}, sort_keys=True) + "\n")
        return services

    async def _push_ready(self) -> None:
        """Hand every ready-set change to Caddy, newest state first: changes that arrive while a
        push is under way are coalesced into the next one."""
        while True:
            await self.ready_dirty.wait()
            self.ready_dirty.clear()
            services = self._write_ready()
            if self.caddy is None or self.caddy.poll() is not None or self.settings is None or self.runtime is None:
                self.served_ready = services  # a starting Caddy reads the file when it provisions
                continue
            try:
                await asyncio.to_thread(caddy.admin_post, _admin_address(self.settings, self.runtime), "/serveform/ready")
            except CaddyError as exc:
                _LOG.error("ready replicas not handed to caddy yet, retrying: %s", exc)
                await asyncio.sleep(PUSH_RETRY_SECONDS)
                self.ready_dirty.set()
                continue
            self.served_ready = services
            self._write_status()

    def _stamp(self) -> tuple[Any, ...]:
        stamp = []
        for name in (CONFIG_FILE, TOKENS_FILE, DNS_OPTIONS_FILE, PROBE_HEADERS_FILE):
            try:
                st = (self.state_dir / name).stat()
                stamp.append((name, st.st_mtime_ns, st.st_size))
            except OSError:
                stamp.append((name, None, None))
        return tuple(stamp)

    def _write_status(self) -> None:
        assert self.runtime is not None and self.settings is not None
        snapshot = self.prober.snapshot()
        services = {}
        for name in set(snapshot) | set(self.generations):
            services[name] = {
                **snapshot.get(name, {"published": [], "ready": []}),
                "ready": list(self.served_ready.get(name, [])),  # what Caddy serves now
                "generation": self.generations.get(name, 0),
            }
        status = {
            "pid": os.getpid(),
            "caddy_pid": self.caddy.pid if self.caddy else None,
            "admin": _admin_address(self.settings, self.runtime),
            "metrics_url": f"http://127.0.0.1:{self.runtime.metrics_port}/metrics",
            "internal_url": f"http://127.0.0.1:{self.runtime.internal_port}",
            "dns_port": self.runtime.dns_port,
            "router_socket": str(self.runtime.router_socket_path),
            "socket_dir": str(self.runtime.socket_dir),
            "https_port": self.settings.https_port,
            "http_port": self.settings.http_port,
            "hosts": {r.name: r.host for r in self.routes},
            # The routes file generation Caddy serves (its module re-read it before this was written).
            "routes_generation": self.routes_generation,
            "ca_cert": str(self.runtime.caddy_storage / "pki" / "authorities" / "local" / "root.crt") if self.settings.tls == "internal" else None,
            "services": services,
        }
        write_private(self.state_dir / STATUS_FILE, json.dumps(status, indent=2, sort_keys=True) + "\n")

    def _public_status(self) -> dict[str, Any]:
        """What the router's status endpoint answers: the readiness view, no local paths or pids."""
        snapshot = self.prober.snapshot()
        return {
            "services": {
                name: {
                    **snapshot.get(name, {"published": [], "ready": []}),
                    "ready": list(self.served_ready.get(name, [])),
                    "generation": self.generations.get(name, 0),
                }
                for name in sorted(set(snapshot) | set(self.generations))
            }
        }

    def _write_routes(self, settings: GatewaySettings, routes: tuple[ServiceRoute, ...]) -> int:
        """Write the files the gateway's Caddy modules read; the new routes generation."""
        assert self.runtime is not None
        self.routes_generation = max(self.routes_generation + 1, time.time_ns() // 1000)
        digests = [hashlib.sha256(t.get_secret_value().encode()).hexdigest() for t in settings.tokens]
        write_private(self.runtime.token_hashes_file, json.dumps(digests))
        write_private(self.runtime.secret_hash_file, hashlib.sha256(self.gateway_secret.encode()).hexdigest())
        document = routes_document(settings, routes, self.runtime, generation=self.routes_generation)
        write_private(self.runtime.routes_file, json.dumps(document, indent=1, sort_keys=True) + "\n")
        return self.routes_generation

    def _prepare(self, settings: GatewaySettings, routes: tuple[ServiceRoute, ...]) -> tuple[Path, str]:
        """Render, adapt, fill secrets, validate: the path of a config Caddy can run, and its Caddyfile."""
        assert self.runtime is not None
        caddyfile = self.state_dir / "Caddyfile"
        text = render_routes(settings, routes, self.runtime)
        write_private(caddyfile, text)
        # Only DNS-provider credentials are filled in; tokens never enter Caddy's config.
        filled = {f"{DNS_ENV_PREFIX}{k.upper()}": v.get_secret_value() for k, v in settings.dns_options.items()}
        candidate = self.state_dir / "secrets" / "caddy.next.json"
        write_private(candidate, caddy.fill_secrets(caddy.adapt(self.binary, caddyfile), filled))
        caddy.validate(self.binary, candidate)
        final = self.state_dir / "secrets" / "caddy.json"
        os.replace(candidate, final)
        return final, text

    def _load(self) -> tuple[GatewaySettings, tuple[ServiceRoute, ...]]:
        config = read_config(self.state_dir)
        return config.settings, routes_from_plans(config.settings, config.plans)

    def _apply_routes(self, settings: GatewaySettings, routes: tuple[ServiceRoute, ...]) -> None:
        assert self.runtime is not None
        self.settings, self.routes = settings, routes
        self.prober.set_checks({r.name: r.probes for r in routes})
        config = router_config(
            routes,
            tuple(t.get_secret_value() for t in settings.tokens),
            f"http://127.0.0.1:{self.runtime.internal_port}",
            settings.stream_timeout_seconds,
            settings.body_limit_mb * 1024 * 1024,
            self.gateway_secret,
        )
        if self.router is None:
            self.router = Router(config, status=self._public_status)
        else:
            self.router.update(config)

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.config_stamp = self._stamp()
        settings, routes = self._load()  # a bad config stops here, before anything runs
        await self.dns.start()
        # The runtime object of gateway.json wins over the defaults (a pod's fixed metrics port).
        self.runtime = GatewayRuntime(
            **{
                "state_dir": self.state_dir,
                "socket_dir": socket_dir_for(self.state_dir),
                "dns_port": self.dns.port,
                "internal_port": _free_port(),
                "metrics_port": _free_port(),
                **_runtime_overrides(self.state_dir),
            }
        )
        await self.prober.start()
        self._apply_routes(settings, routes)
        assert self.router is not None
        socket_path = self.runtime.router_socket_path
        socket_path.unlink(missing_ok=True)
        # handler_cancellation: a client that leaves cancels its handler, which closes the request
        # to Caddy's internal listener, which cancels the request to the replica.
        self.runner = web.AppRunner(self.router.app, access_log=None, handle_signals=False, handler_cancellation=True)
        await self.runner.setup()
        await web.UnixSite(self.runner, str(socket_path)).start()
        os.chmod(socket_path, 0o600)
        self._poll_replicas()
        self._write_ready()
        self.ready_pusher = asyncio.create_task(self._push_ready())
        self._write_routes(settings, routes)
        config_path, self.caddyfile_text = await asyncio.to_thread(self._prepare, settings, routes)
        self._start_caddy(config_path)
        await self._wait_listening(settings)
        self.ready_dirty.set()  # whatever became ready while Caddy started
        await self._wait_certificates(settings, routes)
        self._write_status()
        _LOG.info("gateway up: %s", ", ".join(r.host for r in routes) or "no services")

    def _start_caddy(self, config_path: Path) -> None:
        assert self.runtime is not None
        # A Caddy killed outright leaves its socket behind, and a stale socket fails the bind.
        self.runtime.admin_socket_path.unlink(missing_ok=True)
        self.caddy = caddy.start(self.binary, config_path, self.state_dir, self.state_dir / "caddy.log")

    async def _wait_listening(self, settings: GatewaySettings) -> None:
        assert self.runtime is not None
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        port = self.runtime.metrics_port
        while time.monotonic() < deadline:
            if self.caddy is not None and self.caddy.poll() is not None:
                raise CaddyError(f"caddy exited with {self.caddy.returncode}; see {self.state_dir / 'caddy.log'}", self._caddy_errors())
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                return
            except OSError:
                await asyncio.sleep(0.05)
        raise CaddyError(f"caddy did not start listening within {START_TIMEOUT_SECONDS:g} s")

    def _caddy_errors(self) -> str:
        try:
            lines = (self.state_dir / "caddy.log").read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join([line for line in lines if '"level":"error"' in line or line.startswith("Error")][-3:])

    async def _wait_certificates(self, settings: GatewaySettings, routes: tuple[ServiceRoute, ...]) -> None:
        """With the internal CA, certificates are issued in the background right after a load:
        report the gateway up only once every HTTPS host completes a handshake. (ACME modes can
        take minutes and are not waited for.)"""
        if settings.tls != "internal":
            return
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        hosts = [r.host for r in routes if r.https] + [settings.router_host]
        address = settings.bind[0] if settings.bind else "127.0.0.1"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for host in hosts:
            while True:
                try:
                    _reader, writer = await asyncio.open_connection(address, settings.https_port, ssl=context, server_hostname=host)
                    writer.close()
                    break
                except (OSError, ssl.SSLError):
                    if time.monotonic() > deadline:
                        raise CaddyError(f"no certificate for {host} within {START_TIMEOUT_SECONDS:g} s") from None
                    await asyncio.sleep(0.05)

    def _poll_replicas(self, *, force: bool = False) -> None:
        # Publishing replaces a file in the replicas folder, which changes the folder's mtime: an
        # unchanged, settled mtime means nothing to read (the poll runs 10 times a second, and the
        # gateway shares its machine with the traffic it serves). File times are coarse (a clock
        # tick), so a folder changed within the last MTIME_SETTLE_SECONDS is read anyway.
        try:
            mtime = (self.state_dir / REPLICAS_DIR).stat().st_mtime_ns
        except OSError:
            mtime = None
        settled = mtime is not None and time.time_ns() - mtime > MTIME_SETTLE_SECONDS * 1e9
        if not force and settled and mtime == self.replicas_mtime:
            return
        self.replicas_mtime = mtime
        published = read_published(self.state_dir)
        changed = False
        for service, (generation, addresses) in published.items():
            if self.generations.get(service) != generation:
                self.prober.set_published(service, addresses)
                self.generations[service] = generation
                changed = True
        if changed and self.caddy is not None:
            self._write_status()

    async def reload(self) -> None:
        try:
            settings, routes = self._load()
            assert self.runtime is not None and self.settings is not None
            if render_routes(settings, routes, self.runtime) != self.caddyfile_text:
                # The gateway's own settings changed: only then is Caddy's config reloaded.
                config_path, text = await asyncio.to_thread(self._prepare, settings, routes)
                await asyncio.to_thread(caddy.reload, self.binary, config_path, _admin_address(self.settings, self.runtime), self.state_dir)
                self.caddyfile_text = text
            # Routes go live before the router learns a new model, and a removed service stops
            # being routed by Caddy before the router forgets it: nothing is routed to nowhere.
            self._write_routes(settings, routes)
            await asyncio.to_thread(caddy.admin_post, _admin_address(settings, self.runtime), "/serveform/reload")
        except (GatewayConfigError, CaddyError) as exc:
            _LOG.error("config not applied, the previous one keeps serving:\n%s", exc)
            return
        self._apply_routes(settings, routes)
        self._poll_replicas(force=True)
        try:
            await self._wait_certificates(settings, routes)
        except CaddyError as exc:
            _LOG.error("%s", exc)
        self._write_status()
        _LOG.info("config reloaded")

    async def serve(self) -> None:
        restarts = 0
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(self.stopping.wait(), POLL_SECONDS)
                break
            except asyncio.TimeoutError:
                pass
            self._poll_replicas()
            stamp = self._stamp()
            if stamp != self.config_stamp:
                self.config_stamp = stamp
                self.reload_requested.set()
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                await self.reload()
            if self.caddy is not None and self.caddy.poll() is not None:
                restarts += 1
                _LOG.error("caddy exited with %s (restart %d of %d)", self.caddy.returncode, restarts, RESTARTS_MAX)
                if restarts > RESTARTS_MAX:
                    raise CaddyError(f"caddy keeps exiting; see {self.state_dir / 'caddy.log'}")
                await asyncio.sleep(min(2**restarts * 0.1, 5))
                self._start_caddy(self.state_dir / "secrets" / "caddy.json")  # reads the routes and ready files at start
                self.ready_dirty.set()
                self._write_status()

    async def stop(self) -> None:
        if self.ready_pusher is not None:
            self.ready_pusher.cancel()
            await asyncio.gather(self.ready_pusher, return_exceptions=True)
        if self.caddy is not None and self.caddy.poll() is None:
            self.caddy.terminate()
            try:
                await asyncio.to_thread(self.caddy.wait, STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                self.caddy.kill()
                await asyncio.to_thread(self.caddy.wait)
        await self.prober.close()
        if self.runner is not None:
            await self.runner.cleanup()
        await self.dns.close()
        if self.runtime is not None and self.runtime.socket_dir is not None:
            _remove_socket_dir(self.runtime.socket_dir)
        (self.state_dir / STATUS_FILE).unlink(missing_ok=True)


async def _run(state_dir: Path) -> int:
    gateway = _Gateway(state_dir)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stopping.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reload_requested.set)
    try:
        await gateway.start()
        await gateway.serve()
    finally:
        await gateway.stop()
    return 0


def run(state_dir: str | os.PathLike[str]) -> int:
    """Run the gateway in ``state_dir`` until SIGTERM/SIGINT; the process exit code."""
    root = Path(state_dir).resolve()
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(root, 0o700)
    try:
        return asyncio.run(_run(root))
    except GatewayConfigError as exc:
        _LOG.error("%s", exc)
        return 2
    except CaddyError as exc:
        _LOG.error("%s", exc)
        return 1
