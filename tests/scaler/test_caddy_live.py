"""The request selector and the access-log fallback against the pinned Caddy binary, live.

Caddy serves a token check (`respond 401`), a rate limit (429), a route with no upstream (502) and
a healthy route on loopback; the scaler's selector for a plain Caddy with per-host metrics must
count exactly the requests that were not refused, from `/metrics` and from the JSON access log
alike (serveform's own gateway counts in its Caddy module: tests/gateway). This keeps the captured
sample (data/caddy-2.11.9-per-host.prom) honest when Caddy is upgraded.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from serveform.scaler.metrics import AccessLogCounter, HostMap, Selector, read_scrape
from serveform.scaler.window import CounterDeltas

# For a plain Caddy with `metrics { per_host }`: the duration histogram's count carries `code`.
CADDY_PER_HOST_SELECTOR = 'caddy_http_request_duration_seconds_count{code!~"401|429"}'

CADDYFILE = """\
{{
	admin 127.0.0.1:{admin}
	metrics {{
		per_host
		# Without it, Caddy 2.11.9
		# labels a request whose Host header carries a port as host="_other" on plain HTTP.
		observe_catchall_hosts
	}}
	auto_https off
	order rate_limit before basic_auth
}}
(common) {{
	log {{
		output file {log}
		format json
	}}
	@noauth not header Authorization "Bearer tok"
	respond @noauth 401
}}
http://a.localhost:{port} {{
	import common
	rate_limit {{
		zone z {{
			key {{remote_host}}
			events 4
			window 1m
		}}
	}}
	reverse_proxy 127.0.0.1:{dead} {{
		lb_try_duration 200ms
	}}
}}
http://b.localhost:{port} {{
	import common
	respond "ok" 200
}}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def caddy(tmp_path):
    binary = shutil.which("caddy", path=str(Path(sys.executable).parent))
    assert binary, "caddy is missing: tools/setup.sh builds it"
    admin, port, dead = _port(), _port(), _port()
    log = tmp_path / "access.log"
    (tmp_path / "Caddyfile").write_text(CADDYFILE.format(admin=admin, port=port, dead=dead, log=log))
    proc = subprocess.Popen(
        [binary, "run", "--config", str(tmp_path / "Caddyfile"), "--adapter", "caddyfile"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path), "XDG_CONFIG_HOME": str(tmp_path)},
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{admin}/config/", timeout=1)
            break
        except httpx.HTTPError:
            assert proc.poll() is None and time.monotonic() < deadline, "caddy did not start"
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin}/metrics", log
    proc.terminate()
    proc.wait(10)


def test_per_host_selector_counts_what_was_not_refused(caddy):
    base, metrics_url, log = caddy
    hosts = HostMap.of({"a.localhost": "a", "b.localhost": "b"})
    selector = Selector.parse(CADDY_PER_HOST_SELECTOR)
    deltas = {"a": CounterDeltas(), "b": CounterDeltas()}
    access = AccessLogCounter(log)
    access.read()  # start of the tail

    def scrape() -> dict[str, float]:
        s = read_scrape(httpx.get(metrics_url, timeout=5).text, hosts, requests=selector)
        return {svc: deltas[svc].update(s.requests.get(svc, {})) for svc in deltas}

    assert scrape() == {"a": 0, "b": 0}
    token = {"Authorization": "Bearer tok"}
    with httpx.Client(base_url=base, timeout=10) as c:
        a = [c.get("/", headers={"Host": "a.localhost"}).status_code for _ in range(3)]
        a += [c.get("/", headers={"Host": "a.localhost", **token}).status_code for _ in range(5)]
        b = [c.get("/", headers={"Host": "b.localhost:8080", **token}).status_code for _ in range(5)]
        b += [c.get("/", headers={"Host": "b.localhost"}).status_code for _ in range(2)]
    # Refused for auth, refused by the rate limit, and failed for want of an upstream all happened.
    assert set(a) == {401, 429, 502}
    assert b == [200] * 5 + [401] * 2
    counted = {"a": a.count(502), "b": 5}
    assert scrape() == counted
    deadline = time.monotonic() + 10
    while (counts := access.read()) != {"a.localhost": counted["a"], "b.localhost": 5}:
        assert time.monotonic() < deadline, counts
        time.sleep(0.05)
