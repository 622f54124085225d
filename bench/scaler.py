"""Scaler benchmarks, measured in one run and printed as numbers and ratios.

1. Cost of the daemon (`python -m serveform.scaler run --dry-run`, default intervals, real
   process, real HTTP on loopback): CPU and resident memory while idle (one `0..4` service, no
   traffic: it sits at zero, so the daemon looks every second) and while watching 100 services
   whose Caddy-shaped counters grow every scrape (a synthetic metrics endpoint with 100 hosts x
   4 status codes with histogram buckets, plus in-flight gauges).
2. Reaction on the local stack (real Pulumi, Caddy, gateway, replicas; locust for load): the
   time from a load step to the new replica serving, split into the time to the decision and
   the time of the `up` that starts the replica, and the time a first request waits at zero
   replicas.

    .venv/bin/python bench/scaler.py [--skip-stack] [--seconds 30]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _rss_mb(pid: int) -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20


class _SyntheticCaddy:
    """Caddy-shaped /metrics for N hosts whose counters grow with time."""

    def __init__(self, hosts: list[str], rps_per_host: float) -> None:
        self.hosts, self.rps, self.started = hosts, rps_per_host, time.monotonic()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = outer.text().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def text(self) -> str:
        elapsed = time.monotonic() - self.started
        # The gateway's shape (tools/caddy/serveform/metrics.go): refusals are never counted.
        lines = ["# TYPE serveform_requests_total counter"]
        for i, host in enumerate(self.hosts):
            ok = int(elapsed * self.rps * (1 + i % 7))
            lines.append(f'serveform_requests_total{{service="s{i}",host="{host}"}} {ok + ok // 50}')
        lines.append("# TYPE serveform_requests_in_flight gauge")
        for i, host in enumerate(self.hosts):
            lines.append(f'serveform_requests_in_flight{{service="s{i}",host="{host}"}} {i % 2}')
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.server.shutdown()


def _decisions(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith("serveform_scaler_decisions_total{"))


def _project(base: Path, services: int) -> Path:
    (base / "stacks").mkdir(parents=True)
    files = []
    for i in range(services):
        name = f"svc-{i:03d}"
        (base / f"{name}.dstack.yml").write_text(
            f"type: service\nname: {name}\nimage: python:3.11\ncommands: [python -m http.server 8000]\nport: 8000\n"
            "replicas: 0..4\nscaling:\n  metric: rps\n  target: 5\n  scale_up_delay: 30s\n  scale_down_delay: 60s\n"
        )
        files.append(f"{name}.dstack.yml")
    (base / "stacks" / "Pulumi.bench.yaml").write_text(
        json.dumps({"config": {"serveform:backend": "local", "serveform:domain": "localhost", "serveform:services": files}}) + "\n"
    )
    return base


def _measure_daemon(services: int, seconds: float, rps_per_host: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        project = _project(Path(tmp) / "project", services)
        caddy = _SyntheticCaddy([f"svc-{i:03d}.localhost" for i in range(services)], rps_per_host)
        listen = f"127.0.0.1:{_free_port()}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "serveform.scaler", "run", "--stack", "bench", "--project-dir", str(project),
             "--metrics-url", caddy.url, "--listen", listen, "--dry-run", "--log-level", "WARNING"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            import httpx

            deadline = time.monotonic() + 120
            while True:  # started, services compiled, first tick done
                assert proc.poll() is None, proc.stderr.read().decode()
                try:
                    if httpx.get(f"http://{listen}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "the scaler never became healthy"
                time.sleep(0.2)
            startup_cpu = _cpu_seconds(proc.pid)
            decisions0 = _decisions(httpx.get(f"http://{listen}/metrics", timeout=5).text)
            t0, c0 = time.monotonic(), _cpu_seconds(proc.pid)
            peak = _rss_mb(proc.pid)
            while time.monotonic() - t0 < seconds:
                time.sleep(0.5)
                peak = max(peak, _rss_mb(proc.pid))
            elapsed, cpu = time.monotonic() - t0, _cpu_seconds(proc.pid) - c0
            decisions = _decisions(httpx.get(f"http://{listen}/metrics", timeout=5).text) - decisions0
            ticks = max(1.0, decisions / services)
            return {
                "services": services,
                "cpu_percent": 100 * cpu / elapsed,
                "rss_mb": _rss_mb(proc.pid),
                "peak_rss_mb": peak,
                "startup_cpu_s": startup_cpu,
                "scrape_kb": len(caddy.text()) / 1024,
                "decisions": decisions,
                "cpu_ms_per_tick": 1000 * cpu / ticks,
                "ticks": ticks,
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            caddy.close()


def _stack_reaction() -> dict[str, float]:
    """A load step on a real local stack until the second replica serves."""
    spec = importlib.util.spec_from_file_location("_stacks_fixtures", ROOT / "tests" / "stacks" / "conftest.py")
    fixtures = sys.modules.setdefault("_stacks_fixtures", importlib.util.module_from_spec(spec))
    spec.loader.exec_module(fixtures)
    with tempfile.TemporaryDirectory() as tmp:
        project = fixtures.make_project(Path(tmp), "bench")
        project.write_service(
            text=(
                "type: service\nname: chat\nenv: [MODEL_NAME=chat-small, CHAT_TOKEN_DELAY_MS=1]\n"
                f"commands: ['python {fixtures.CHAT_SERVER} --port 8000']\nport: 8000\n"
                "probes: [{type: http, url: /health, interval: 1s}]\n"
                "replicas: 0..2\nscaling: {metric: rps, target: 2, scale_up_delay: 0s, scale_down_delay: 10m, window: 30s}\n"
            )
        )
        load = None
        try:
            project.ok(project.serveform("up", "--yes"))
            e = project.endpoints()
            client = project.client("chat.localhost", token=e["token"], ca_cert=e["gateway"]["ca_cert"], timeout=120)
            address = json.loads(project.ok(project.pulumi("stack", "output", "scaler", "--json")).stdout)["address"]
            import httpx

            project.wait_for(lambda: httpx.get(f"http://{address}/healthz", timeout=5).status_code == 200, 60, "scaler")
            t0 = time.monotonic()
            assert client.get("/health").status_code == 200
            from_zero = time.monotonic() - t0
            state_path = project.state_dir / "scaler" / "scaler-state.json"
            project.wait_for(lambda: json.loads(state_path.read_text())["services"]["chat"]["applied"] == 1, 60, "up recorded")

            env = {
                **project.env,
                "SERVEFORM_LOAD_URL": f"https://chat.localhost:{project.https_port}",
                "SERVEFORM_LOAD_TOKEN": e["token"],
                "SERVEFORM_LOAD_CA": e["gateway"]["ca_cert"],
                "SERVEFORM_LOAD_RPS_PER_USER": "5",
            }
            step_wall, step = time.time(), time.monotonic()
            load = subprocess.Popen(
                [sys.executable, "-m", "locust", "-f", str(ROOT / "tests" / "load" / "locustfile.py"), "PlainUser",
                 "--headless", "-u", "4", "-r", "4", "-t", "180s", "--only-summary"],
                cwd=project.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            project.wait_for(lambda: "chat/1" in project.serving_replicas(client, requests=10), 180, "second replica serving")
            serving = time.monotonic() - step
            decided = json.loads(state_path.read_text())["services"]["chat"]["last_scaled_at"] - step_wall
            return {"from_zero_first_request_s": from_zero, "step_to_decision_s": decided, "step_to_serving_s": serving}
        finally:
            if load is not None and load.poll() is None:
                load.send_signal(signal.SIGINT)
                load.wait(30)
            project.pulumi("destroy", "--yes")
            for pid in fixtures.processes_mentioning(str(project.root)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measuring time per daemon run")
    parser.add_argument("--skip-stack", action="store_true", help="skip the local-stack reaction benchmark")
    args = parser.parse_args()

    idle = _measure_daemon(1, args.seconds, rps_per_host=0)
    busy = _measure_daemon(100, args.seconds, rps_per_host=3)
    for label, r in (("idle, 1 service", idle), ("100 services", busy)):
        print(
            f"scaler {label:>16}: cpu {r['cpu_percent']:.2f}% of a core, rss {r['rss_mb']:.1f} MB (peak {r['peak_rss_mb']:.1f}), "
            f"{r['cpu_ms_per_tick']:.1f} ms cpu per tick ({r['ticks']:.0f} ticks), startup cpu {r['startup_cpu_s']:.2f}s, "
            f"scrape {r['scrape_kb']:.0f} KiB"
        )
    print(
        f"ratio 100 services / idle: cpu x{busy['cpu_percent'] / max(idle['cpu_percent'], 1e-6):.1f}, "
        f"rss x{busy['rss_mb'] / idle['rss_mb']:.2f}"
    )
    if not args.skip_stack:
        r = _stack_reaction()
        print(f"local stack: first request at zero replicas answered after {r['from_zero_first_request_s']:.1f}s")
        print(
            f"local stack: load step -> decision {r['step_to_decision_s']:.1f}s, -> new replica serving {r['step_to_serving_s']:.1f}s "
            f"(up + readiness {r['step_to_serving_s'] - r['step_to_decision_s']:.1f}s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
