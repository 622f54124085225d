"""Benchmark of the gateway's data path: serveform's gateway against direct, bare Caddy and SkyServe.

One run, the same replicas for every path:

* small response — two nginx replicas answering a 2-byte body (the anchors in FACTS.md use the
  same shape); requests per second at saturation (`wrk -t2 -c64`), and p50/p99 latency at a
  fixed moderate rate (wrk paced with a Lua `delay()`);
* streamed chat completion — two replicas of stacks/examples/chat_server.py streaming 16 tokens
  10 ms apart; time to first token and to the end at a fixed rate, measured by an asyncio client.

Paths: direct to one replica; bare Caddy (`reverse_proxy` least_conn, same binary, minimal
config: the ceiling for our design); serveform's gateway (bearer auth, request counting, dynamic
upstreams and readiness probes all on; plain HTTP so that every path speaks the same protocol,
plus its HTTPS stream figures, direct and through the OpenAI router, for information); and SkyServe's load balancer (skypilot 0.14.1, least_load,
in its own virtualenv under ~/.cache/serveform/bench, fed by a stub controller).

The breakdown adds serveform's features to bare Caddy one at a time on the same replicas (first
the gateway's logging: no reverse_proxy logger, which spares a log context built per request; dynamic
upstreams: the ready replicas of the gateway's prober, served by its `serveform` upstream source,
then the gateway module's host routing and request counting, then its bearer-token check, then
the body limit, retries and stream timeout of the gateway's proxy, then the whole gateway as
deployed: its server timeouts, error routes and the other sites and servers), and prints what
each step costs in proxy CPU per request.

Goals (issue 15): >= 0.95 of bare Caddy in req/s and in CPU per request; (issue 5) < 1 ms added p50 at the fixed rate, far ahead
of SkyServe, and streams with no added buffering (time to first token close to direct).

    python bench/gateway.py                    # about 10 minutes; --quick for a shorter, noisier run
    python bench/gateway.py --saturation-only  # the saturation rounds, the breakdown and the ratios (~7 min)

wrk and nginx come from Debian: the script installs them with apt-get when missing (services are
not started: RUNLEVEL=1). All traffic stays on loopback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from aiohttp import web
from pydantic import SecretStr

ROOT = Path(__file__).resolve().parents[1]
CHAT_SERVER = ROOT / "stacks" / "examples" / "chat_server.py"
CACHE = Path(os.environ.get("SERVEFORM_CACHE", Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "serveform")) / "bench"
SKYPILOT_VERSION = "0.14.1"
TOKEN = "bench-token-0123456789abcdef0123456789abcdef"
SATURATION_CONNECTIONS = 64
SATURATION_SECONDS = 6
SATURATION_ROUNDS = 8
FIXED_RATE_RPS = 200
FIXED_RATE_CONNECTIONS = 4
STREAM_TOKENS = 16
STREAM_TOKEN_DELAY_MS = 10
STREAM_RATE_PER_SECOND = 10


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, headers: dict[str, str] | None = None, timeout: float = 60, ok=lambda status: status < 500) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            request = urllib.request.Request(url, headers=headers or {})
            with urllib.request.urlopen(request, timeout=2) as response:
                if ok(response.status):
                    return
        except urllib.error.HTTPError as exc:
            if ok(exc.code):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.1)


# --- tools -----------------------------------------------------------------------------------------


def ensure_debian_tools() -> None:
    missing = [pkg for tool, pkg in (("wrk", "wrk"), ("nginx", "nginx-light")) if not shutil.which(tool) and not Path(f"/usr/sbin/{tool}").exists()]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "RUNLEVEL": "1"}  # RUNLEVEL=1: do not start services
    print(f"[bench] installing {', '.join(missing)} from Debian", file=sys.stderr)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env)


def skyserve_python() -> str:
    venv = CACHE / f"skyserve-{SKYPILOT_VERSION}"
    python = venv / "bin" / "python"
    if not (venv / ".installed").exists():
        print(f"[bench] installing skypilot=={SKYPILOT_VERSION} into {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"skypilot=={SKYPILOT_VERSION}"], check=True)
        (venv / ".installed").write_text(SKYPILOT_VERSION)
    return str(python)


# --- processes -------------------------------------------------------------------------------------


class Processes:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(argv, stdout=log, stderr=log, env={**os.environ, **(env or {})}, cwd=ROOT)
        log.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_nginx(procs: Processes, port: int) -> None:
    prefix = procs.workdir / f"nginx-{port}"
    (prefix / "logs").mkdir(parents=True)
    conf = prefix / "nginx.conf"
    conf.write_text(
        f"""worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body; proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi; uwsgi_temp_path {prefix}/uwsgi; scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{port};
        location / {{ default_type text/plain; return 200 "ok"; }}
    }}
}}
"""
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    procs.start(f"nginx-{port}", [nginx, "-p", str(prefix), "-c", str(conf), "-g", "daemon off;"])
    wait_http(f"http://127.0.0.1:{port}/")


def start_chat(procs: Processes, port: int, ident: str) -> None:
    procs.start(
        f"chat-{ident}",
        [sys.executable, str(CHAT_SERVER), "--host", "127.0.0.1", "--port", str(port), "--token-delay-ms", str(STREAM_TOKEN_DELAY_MS)],
        env={"SERVEFORM_REPLICA_ID": ident},
    )
    wait_http(f"http://127.0.0.1:{port}/health")


# Caddy's default log without reverse_proxy's logger, as serveform's gateway runs it
# (gateway/templates/global.caddy.j2): reverse_proxy then builds no log context per request.
NO_PROXY_LOG = "\tlog default {\n\t\texclude http.handlers.reverse_proxy\n\t}\n"


def start_bare_caddy(
    procs: Processes, small_port: int, chat_port: int, small: list[int], chat: list[int], *, name: str = "bare", proxy_log: bool = True
) -> int:
    from serveform.gateway.caddy import caddy_binary

    config = procs.workdir / f"{name}.Caddyfile"
    config.write_text(
        "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n" + ("" if proxy_log else NO_PROXY_LOG) + "}\n"
        f"http://:{small_port} {{\n\tbind 127.0.0.1\n\treverse_proxy {' '.join(f'127.0.0.1:{p}' for p in small)} {{\n\t\tlb_policy least_conn\n\t}}\n}}\n"
        f"http://:{chat_port} {{\n\tbind 127.0.0.1\n\treverse_proxy {' '.join(f'127.0.0.1:{p}' for p in chat)} {{\n\t\tlb_policy least_conn\n\t\tflush_interval -1\n\t}}\n}}\n"
    )
    env = {"XDG_DATA_HOME": str(procs.workdir / f"{name}-data"), "XDG_CONFIG_HOME": str(procs.workdir / f"{name}-config")}
    proc = procs.start(f"{name}-caddy", [caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"], env=env)
    wait_http(f"http://127.0.0.1:{small_port}/")
    return proc.pid


def start_serveform(procs: Processes, http_port: int, https_port: int, small: list[int], chat: list[int]) -> Path:
    from serveform.gateway import GatewaySettings, publish_replicas, read_status, write_config
    from serveform.translator.plan import (
        GatewayRoutePlan, ModelPlan, ProbePlan, ReplicaBounds, ReplicaGroupPlan, ResourcesPlan, ServicePlan,
    )

    def plan(name: str, **route) -> ServicePlan:
        return ServicePlan(
            file=f"bench/{name}.dstack.yml", name=name, backend="local",
            replica_group=ReplicaGroupPlan(image="x", container_port=8000, resources=ResourcesPlan(cpu_min=1, memory_min_gb=1, disk_min_gb=1)),
            replicas=ReplicaBounds(min=1, max=2, initial=2), route=GatewayRoutePlan(subdomain=name, **route),
        )

    state = procs.workdir / "serveform"
    settings = GatewaySettings(
        domain="localhost", tls="internal", http_port=http_port, https_port=https_port, bind=("127.0.0.1",),
        tokens=(SecretStr(TOKEN),), replica_wait_seconds=10,
    )
    plans = [
        plan("small-plain", https=False, probes=(ProbePlan(url="/", interval_seconds=5),)),
        plan("chat-plain", https=False, probes=(ProbePlan(url="/health", interval_seconds=5),)),
        plan("chat", model=ModelPlan(name="chat-small"), probes=(ProbePlan(url="/health", interval_seconds=5),)),
    ]
    write_config(state, settings, plans)
    procs.start("serveform-gateway", [sys.executable, "-m", "serveform.gateway", "run", "--state-dir", str(state)])
    deadline = time.monotonic() + 60
    while not (read_status(state) or {}).get("caddy_pid"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the serveform gateway did not start; see {procs.workdir}/serveform-gateway.log")
        time.sleep(0.1)
    publish_replicas(state, "small-plain", [f"127.0.0.1:{p}" for p in small])
    publish_replicas(state, "chat-plain", [f"127.0.0.1:{p}" for p in chat])
    publish_replicas(state, "chat", [f"127.0.0.1:{p}" for p in chat])
    while any(len(read_status(state)["services"][s]["ready"]) < 2 for s in ("small-plain", "chat-plain", "chat")):
        if time.monotonic() > deadline:
            raise RuntimeError("serveform replicas never became ready")
        time.sleep(0.1)
    return state


# Each step adds one of serveform's features to bare Caddy, on the same replicas, so that the
# difference between consecutive steps is what that feature costs per request.
BREAKDOWN_STEPS = (
    "bare caddy", "bare caddy, no proxy log", "+ dynamic upstreams", "+ gate: host routing, counting", "+ bearer token",
    "+ body limit, retries, stream timeout", "serveform",
)


def start_breakdown_caddy(procs: Processes, state: Path, small_service: str) -> tuple[int, dict[str, tuple[str, dict[str, str]]]]:
    """One Caddy with a site per intermediate step (the first and last steps are the other paths).

    The steps read a routes file and a ready file of their own, shaped like the gateway's
    (gateway/render.py `routes_document`, gateway/supervisor.py `_write_ready`), with the replicas
    the gateway's prober found ready."""
    import hashlib

    from serveform.gateway import read_status
    from serveform.gateway.caddy import caddy_binary

    status = read_status(state)
    work = procs.workdir / "breakdown"
    (work / "secrets").mkdir(parents=True)
    hashes = work / "secrets" / "token_hashes.json"
    hashes.write_text(json.dumps([hashlib.sha256(TOKEN.encode()).hexdigest()]))
    ready = work / "ready.json"
    replicas = status["services"][small_service]["ready"]
    ready.write_text(json.dumps({"services": {"open": replicas, "auth": replicas}}))
    routes = work / "routes.json"
    service = {"https": False, "srv": "", "rate_limits": []}
    routes.write_text(json.dumps({
        "generation": 1, "router_host": "gateway.localhost", "https_port": 443, "tls_off": True,
        "token_hashes_file": str(hashes), "secret_hash_file": "", "ready_file": str(ready),
        "services": [{**service, "name": "open", "host": "open.localhost", "auth": False},
                     {**service, "name": "auth", "host": "auth.localhost", "auth": True}],
    }))
    dynamic, gated, limited = free_port(), free_port(), free_port()

    def proxy(limits: str = "") -> str:
        return (f"\treverse_proxy {{\n\t\tdynamic serveform {{\n\t\t\troutes_file {routes}\n\t\t}}\n"
                f"\t\tlb_policy least_conn\n{limits}\t}}\n")

    gate = f"\tserveform_gate service_http {{\n\t\troutes_file {routes}\n\t}}\n"
    # What gateway/templates/proxy.caddy.j2 adds beyond the replica choice (the bench's gateway settings).
    limits = ("\t\tlb_try_duration 10s\n\t\tlb_try_interval 250ms\n\t\tlb_retry_match {\n\t\t\tmethod GET HEAD OPTIONS\n\t\t}\n"
              "\t\ttransport http {\n\t\t\tread_timeout 3600s\n\t\t}\n")

    config = work / "Caddyfile"
    config.write_text(
        "{\n\tadmin off\n\tauto_https off\n\tpersist_config off\n" + NO_PROXY_LOG + "}\n"
        f"http://:{dynamic} {{\n\tbind 127.0.0.1\n{proxy()}}}\n"
        f"http://:{gated} {{\n\tbind 127.0.0.1\n{gate}{proxy()}}}\n"
        f"http://:{limited} {{\n\tbind 127.0.0.1\n\trequest_body {{\n\t\tmax_size 64MB\n\t}}\n{gate}{proxy(limits)}}}\n"
    )
    env = {"XDG_DATA_HOME": str(work / "data"), "XDG_CONFIG_HOME": str(work / "config")}
    proc = procs.start("breakdown-caddy", [caddy_binary(), "run", "--config", str(config), "--adapter", "caddyfile"], env=env)
    wait_http(f"http://127.0.0.1:{dynamic}/", headers={"Host": "open.localhost"}, timeout=30, ok=lambda s: s == 200)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    return proc.pid, {
        "+ dynamic upstreams": (f"http://127.0.0.1:{dynamic}/", {"Host": "open.localhost"}),
        "+ gate: host routing, counting": (f"http://127.0.0.1:{gated}/", {"Host": "open.localhost"}),
        "+ bearer token": (f"http://127.0.0.1:{gated}/", {"Host": "auth.localhost", **auth}),
        "+ body limit, retries, stream timeout": (f"http://127.0.0.1:{limited}/", {"Host": "auth.localhost", **auth}),
    }


async def _stub_controller(port: int, replicas: list[int]) -> web.AppRunner:
    async def sync(request: web.Request) -> web.Response:
        return web.json_response({"replica_info": {f"http://127.0.0.1:{p}": {} for p in replicas}})

    app = web.Application()
    app.router.add_post("/controller/load_balancer_sync", sync)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


def start_skyserve(procs: Processes, python: str, lb_port: int, controller_port: int) -> int:
    return procs.start(
        f"skyserve-{lb_port}",
        [python, "-m", "sky.serve.load_balancer", "--controller-addr", f"http://127.0.0.1:{controller_port}",
         "--load-balancer-port", str(lb_port), "--load-balancing-policy", "least_load"],
    ).pid


# --- measurements ------------------------------------------------------------------------------------

_PACE_LUA = "local d = tonumber(os.getenv('BENCH_DELAY_MS')); function delay() return d end\n"


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def _cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(") ", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime, in clock ticks
    return total / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str, headers: dict[str, str], seconds: int, connections: int, pace_ms: float | None = None,
    workdir: Path | None = None, pids: list[int] | None = None,
) -> dict[str, float]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s"]
    for key, value in headers.items():
        argv += ["-H", f"{key}: {value}"]
    env = dict(os.environ)
    if pace_ms is not None:
        assert workdir is not None
        script = workdir / "pace.lua"
        script.write_text(_PACE_LUA)
        argv += ["-s", str(script)]
        env["BENCH_DELAY_MS"] = str(pace_ms)
    cpu_before = _cpu_seconds(pids) if pids else 0.0
    out = subprocess.run([*argv, url], capture_output=True, text=True, env=env, timeout=seconds + 60).stdout
    cpu = _cpu_seconds(pids) - cpu_before if pids else float("nan")
    result = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}  # type: ignore[union-attr]
    requests = float(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    # CPU time the proxy spent per request: robust on a busy machine where req/s is not.
    result["cpu_us"] = cpu * 1e6 / requests if requests else float("nan")
    for pct in ("50", "99"):
        match = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = _ms(match.group(1)) if match else float("nan")
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    result["errors"] = float(errors.group(1)) if errors else 0.0
    if socket_errors:
        result["errors"] += sum(int(n) for n in re.findall(r"\d+", socket_errors.group(1)))
    return result


async def _streams(url: str, headers: dict[str, str], count: int, rate: float, sni: str | None = None, ca: Path | None = None) -> dict[str, float]:
    import ssl

    ssl_context = ssl.create_default_context(cafile=str(ca)) if ca else None
    body = {"model": "chat-small", "messages": [{"role": "user", "content": " ".join(f"w{i}" for i in range(STREAM_TOKENS))}], "stream": True}
    ttft: list[float] = []
    total: list[float] = []
    failures = 0

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal failures
        started = time.perf_counter()
        first = None
        try:
            extra = {"server_hostname": sni} if sni else {}
            async with session.post(url, json=body, headers=headers, ssl=ssl_context if ssl_context else True, **extra) as response:
                if response.status != 200:
                    failures += 1
                    return
                async for line in response.content:
                    line = line.strip()
                    if line == b"data: [DONE]":
                        break
                    if first is None and line.startswith(b"data:"):
                        choices = json.loads(line[5:]).get("choices") or [{}]
                        if choices[0].get("delta", {}).get("content"):
                            first = time.perf_counter()
        except aiohttp.ClientError:
            failures += 1
            return
        end = time.perf_counter()
        if first is None:
            failures += 1
            return
        ttft.append((first - started) * 1000)
        total.append((end - started) * 1000)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(one(session)))
            await asyncio.sleep(1 / rate)
        await asyncio.gather(*tasks)

    def pct(values: list[float], q: float) -> float:
        if not values:
            return float("nan")
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]

    return {
        "ttft_p50": pct(ttft, 0.5), "ttft_p99": pct(ttft, 0.99), "end_p50": pct(total, 0.5), "end_p99": pct(total, 0.99),
        "failures": float(failures), "mean_end": statistics.fmean(total) if total else float("nan"),
    }


def streams(url: str, headers: dict[str, str], count: int, rate: float, sni: str | None = None, ca: Path | None = None) -> dict[str, float]:
    return asyncio.run(_streams(url, headers, count, rate, sni, ca))


# --- report ----------------------------------------------------------------------------------------------


def _ratio(value: float, base: float) -> str:
    return f"{value / base:6.3f}" if base and base == base and value == value else "   n/a"


def _round_ratios(sf: list[dict[str, float]], bare: list[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Per round, serveform against bare Caddy: (lowest, highest) of each goal's ratio."""
    rps = [s["rps"] / b["rps"] for s, b in zip(sf, bare) if b["rps"]]
    cpu = [b["cpu_us"] / s["cpu_us"] for s, b in zip(sf, bare) if s["cpu_us"]]
    return {"rps": (min(rps), max(rps)) if rps else (float("nan"),) * 2, "cpu": (min(cpu), max(cpu)) if cpu else (float("nan"),) * 2}


def report_saturation(small: dict[str, dict[str, float]], spreads: dict[str, dict[str, tuple[float, float]]]) -> None:
    direct, bare = "direct", "bare caddy"
    print("\nsmall response (2 B), saturation: wrk -t2 -c%d (median of interleaved rounds)" % SATURATION_CONNECTIONS)
    print(f"  {'path':<34}{'req/s':>10}{'errors':>8}{'x direct':>10}{'x bare caddy':>14}{'proxy CPU us/req':>18}{'x bare caddy':>14}")
    for name, r in small.items():
        print(
            f"  {name:<34}{r['rps']:>10.0f}{r['errors']:>8.0f}{_ratio(r['rps'], small[direct]['rps']):>10}{_ratio(r['rps'], small[bare]['rps']):>14}"
            f"{r.get('cpu_us', float('nan')):>18.1f}{_ratio(r.get('cpu_us', float('nan')), small[bare].get('cpu_us', float('nan'))):>14}"
        )
    print("\nbreakdown: what each feature costs (same run; cost = CPU per request of a step minus the step before)")
    print(f"  {'step':<34}{'req/s':>10}{'CPU us/req':>12}{'cost us/req':>13}{'% of bare':>11}")
    previous = None
    for step in BREAKDOWN_STEPS:
        r = small[step]
        cost = r["cpu_us"] - previous["cpu_us"] if previous else float("nan")
        share = 100 * cost / small[bare]["cpu_us"] if previous else float("nan")
        print(f"  {step:<34}{r['rps']:>10.0f}{r['cpu_us']:>12.1f}{cost:>13.1f}{share:>10.1f}%")
        previous = r
    sf = "serveform"
    print("\ngoals (issue 15: >= 0.95 of bare caddy with auth, counting and readiness on)")
    for base, spread in spreads.items():
        print(f"  serveform / {base}, req/s:{' ' * (34 - len(base))}{_ratio(small[sf]['rps'], small[base]['rps'])}"
              f"   (rounds: {spread['rps'][0]:.3f} .. {spread['rps'][1]:.3f})")
        print(f"  {base} / serveform, CPU per request:{' ' * (24 - len(base))}{_ratio(small[base]['cpu_us'], small[sf]['cpu_us'])}"
              f"   (rounds: {spread['cpu'][0]:.3f} .. {spread['cpu'][1]:.3f})")
    print("  (against bare caddy with the gateway's logging, the ratios are what serveform's own features cost)")


def report(small: dict[str, dict[str, float]], paced: dict[str, dict[str, float]], stream: dict[str, dict[str, float]]) -> None:
    direct, bare, sf = "direct", "bare caddy", "serveform"
    print(f"\nsmall response, fixed rate ~{FIXED_RATE_RPS} req/s ({FIXED_RATE_CONNECTIONS} paced connections)")
    print(f"  {'path':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'+p50 vs direct':>16}{'+p50 vs bare':>14}")
    for name, r in paced.items():
        print(
            f"  {name:<22}{r['rps']:>9.0f}{r['p50']:>9.3f}{r['p99']:>9.3f}"
            f"{r['p50'] - paced[direct]['p50']:>16.3f}{r['p50'] - paced[bare]['p50']:>14.3f}"
        )
    print(f"\nstreamed chat completion ({STREAM_TOKENS} tokens, {STREAM_TOKEN_DELAY_MS} ms apart), {STREAM_RATE_PER_SECOND} streams/s")
    print(f"  {'path':<22}{'TTFT p50':>10}{'TTFT p99':>10}{'end p50':>10}{'end p99':>10}{'fail':>6}{'TTFT x direct':>15}{'TTFT x bare':>13}")
    for name, r in stream.items():
        print(
            f"  {name:<22}{r['ttft_p50']:>10.2f}{r['ttft_p99']:>10.2f}{r['end_p50']:>10.2f}{r['end_p99']:>10.2f}{r['failures']:>6.0f}"
            f"{_ratio(r['ttft_p50'], stream[direct]['ttft_p50']):>15}{_ratio(r['ttft_p50'], stream[bare]['ttft_p50']):>13}"
        )
    print(f"  added p50 at fixed rate < 1 ms:       {paced[sf]['p50'] - paced[direct]['p50']:.3f} ms (vs direct), {paced[sf]['p50'] - paced[bare]['p50']:.3f} ms (vs bare caddy)")
    print(f"  throughput vs skyserve lb:            {_ratio(small[sf]['rps'], small['skyserve lb']['rps'])} x")
    print(f"  stream TTFT p50 vs direct:            +{stream[sf]['ttft_p50'] - stream[direct]['ttft_p50']:.2f} ms; end p50 +{stream[sf]['end_p50'] - stream[direct]['end_p50']:.2f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description="gateway benchmark")
    parser.add_argument("--quick", action="store_true", help="3 s runs instead of 10 s")
    parser.add_argument("--no-skyserve", action="store_true", help="skip SkyServe's load balancer")
    parser.add_argument(
        "--rounds", type=int, default=None, help=f"interleaved saturation rounds (default {SATURATION_ROUNDS}, 1 with --quick)"
    )
    parser.add_argument("--saturation-only", action="store_true", help="only the saturation rounds, the breakdown and the ratios")
    args = parser.parse_args()
    seconds = 3 if args.quick else 10
    saturation_seconds = 3 if args.quick else SATURATION_SECONDS
    args.rounds = args.rounds or (1 if args.quick else SATURATION_ROUNDS)
    stream_count = 30 if args.quick else 100

    ensure_debian_tools()
    sky_python = None if args.no_skyserve or args.saturation_only else skyserve_python()
    workdir = Path(tempfile.mkdtemp(prefix="serveform-bench-"))
    procs = Processes(workdir)
    runners: list[web.AppRunner] = []
    loop = asyncio.new_event_loop()
    try:
        small_ports = [free_port(), free_port()]
        chat_ports = [free_port(), free_port()]
        for port in small_ports:
            start_nginx(procs, port)
        for i, port in enumerate(chat_ports):
            start_chat(procs, port, f"c{i}")
        bare_small, bare_chat = free_port(), free_port()
        bare_pid = start_bare_caddy(procs, bare_small, bare_chat, small_ports, chat_ports)
        quiet_small = free_port()
        quiet_pid = start_bare_caddy(procs, quiet_small, free_port(), small_ports, chat_ports, name="quiet", proxy_log=False)
        sf_http, sf_https = free_port(), free_port()
        state = start_serveform(procs, sf_http, sf_https, small_ports, chat_ports)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        from serveform.gateway import read_status

        pids: dict[str, list[int]] = {"direct": [], "bare caddy": [bare_pid], "bare caddy, no proxy log": [quiet_pid], "serveform": [read_status(state)["caddy_pid"]]}

        breakdown_pid, breakdown = start_breakdown_caddy(procs, state, "small-plain")
        for step in breakdown:
            pids[step] = [breakdown_pid]
        targets: dict[str, tuple[str, dict[str, str]]] = {
            "direct": (f"http://127.0.0.1:{small_ports[0]}/", {}),
            "bare caddy": (f"http://127.0.0.1:{bare_small}/", {}),
            "bare caddy, no proxy log": (f"http://127.0.0.1:{quiet_small}/", {}),
            **breakdown,
            "serveform": (f"http://127.0.0.1:{sf_http}/", {"Host": "small-plain.localhost", **auth}),
        }
        stream_targets: dict[str, tuple[str, dict[str, str]]] = {
            "direct": (f"http://127.0.0.1:{chat_ports[0]}/v1/chat/completions", {}),
            "bare caddy": (f"http://127.0.0.1:{bare_chat}/v1/chat/completions", {}),
            "serveform": (f"http://127.0.0.1:{sf_http}/v1/chat/completions", {"Host": "chat-plain.localhost", **auth}),
        }
        if sky_python:
            sky_small, sky_chat = free_port(), free_port()
            ctl_small, ctl_chat = free_port(), free_port()
            runners.append(loop.run_until_complete(_stub_controller(ctl_small, small_ports)))
            runners.append(loop.run_until_complete(_stub_controller(ctl_chat, chat_ports)))
            # The controller stubs answer from this thread's loop while the benchmark runs.
            import threading

            threading.Thread(target=loop.run_forever, daemon=True).start()
            pids["skyserve lb"] = [start_skyserve(procs, sky_python, sky_small, ctl_small)]
            start_skyserve(procs, sky_python, sky_chat, ctl_chat)
            # SkyServe's balancer first syncs with its controller after 5 s.
            wait_http(f"http://127.0.0.1:{sky_small}/", timeout=90, ok=lambda s: s == 200)
            wait_http(f"http://127.0.0.1:{sky_chat}/health", timeout=90, ok=lambda s: s == 200)
            targets["skyserve lb"] = (f"http://127.0.0.1:{sky_small}/", {})
            stream_targets["skyserve lb"] = (f"http://127.0.0.1:{sky_chat}/v1/chat/completions", {})

        small: dict[str, dict[str, float]] = {}
        paced: dict[str, dict[str, float]] = {}
        # The machine is shared: interleave the paths over several short rounds and keep each
        # one's median, so that a burst of someone else's load does not land on one path only;
        # each round starts one path further on, so no path always runs right after another.
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
        names = list(targets)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                url, headers = targets[name]
                if name == "skyserve lb" and rounds[name]:
                    continue  # two orders of magnitude slower: one round says enough
                print(f"[bench] saturation round {round_index + 1}/{args.rounds}: {name}", file=sys.stderr)
                rounds[name].append(wrk(url, headers, saturation_seconds, SATURATION_CONNECTIONS, pids=pids.get(name) or None))
        for name, results in rounds.items():
            small[name] = {key: statistics.median(r[key] for r in results) for key in results[0]}
        spreads = {base: _round_ratios(rounds["serveform"], rounds[base]) for base in ("bare caddy", "bare caddy, no proxy log")}
        load = os.getloadavg()
        print(f"\nserveform gateway benchmark ({time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} CPUs, "
              f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end of the saturation rounds, state in {state})")
        report_saturation(small, spreads)
        if args.saturation_only:
            return 0
        for step in (*breakdown, "bare caddy, no proxy log"):
            del targets[step]
        pace_ms = 1000.0 * FIXED_RATE_CONNECTIONS / FIXED_RATE_RPS
        for name, (url, headers) in targets.items():
            print(f"[bench] fixed rate: {name}", file=sys.stderr)
            paced[name] = wrk(url, headers, seconds, FIXED_RATE_CONNECTIONS, pace_ms=pace_ms, workdir=workdir)
        stream: dict[str, dict[str, float]] = {}
        for name, (url, headers) in stream_targets.items():
            print(f"[bench] streams: {name}", file=sys.stderr)
            stream[name] = streams(url, headers, stream_count, STREAM_RATE_PER_SECOND)
        # For information: the same through TLS, on the service route and through the OpenAI router.
        ca = state / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        for name, host in (("serveform https", "chat.localhost"), ("serveform https router", "gateway.localhost")):
            print(f"[bench] streams: {name}", file=sys.stderr)
            url = f"https://127.0.0.1:{sf_https}/v1/chat/completions"
            stream[name] = streams(url, {"Host": host, **auth}, stream_count, STREAM_RATE_PER_SECOND, sni=host, ca=ca)
        if "skyserve lb" not in small:
            small["skyserve lb"] = paced["skyserve lb"] = {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"), "errors": 0.0, "cpu_us": float("nan")}
        report(small, paced, stream)
    finally:
        procs.stop_all()
        for runner in runners:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
