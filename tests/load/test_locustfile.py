"""The locustfile drives a real gateway: every user class runs without a failure."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_helpers import TOKENS, ensure_caddy, make_plan, start_gateway  # noqa: E402
from serveform.translator.plan import ModelPlan, ProbePlan  # noqa: E402

LOCUSTFILE = Path(__file__).with_name("locustfile.py")


def test_locust_against_gateway(tmp_path):
    ensure_caddy()
    chat_server = Path(__file__).resolve().parents[2] / "stacks" / "examples" / "chat_server.py"
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    replica = subprocess.Popen([sys.executable, str(chat_server), "--host", "127.0.0.1", "--port", str(port), "--token-delay-ms", "1"])
    gateway = start_gateway(tmp_path / "gw", [make_plan("chat", model=ModelPlan(name="chat-small"), probes=(ProbePlan(url="/health", interval_seconds=1),))])
    try:
        gateway.publish("chat", [type("R", (), {"address": f"127.0.0.1:{port}"})()])
        gateway.wait_ready("chat", 1)
        env = {
            **os.environ,
            "SERVEFORM_LOAD_URL": gateway.url("chat").rstrip("/"),
            "SERVEFORM_LOAD_TOKEN": TOKENS[0],
            "SERVEFORM_LOAD_CA": str(gateway.ca_path),
            "SERVEFORM_LOAD_RPS_PER_USER": "20",
        }
        result = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", "6", "-r", "6", "-t", "5s",
             "--csv", str(tmp_path / "load"), "--only-summary", "PlainUser", "ChatUser", "StreamUser"],
            capture_output=True, text=True, timeout=120, env=env,
        )
        rows = {row["Name"]: row for row in csv.DictReader(open(tmp_path / "load_stats.csv"))}
        for name in ("GET /ping", "POST chat", "POST chat stream", "TTFT", "stream end"):
            assert int(rows[name]["Request Count"]) > 0, (name, result.stderr[-2000:])
            assert int(rows[name]["Failure Count"]) == 0, (name, result.stderr[-2000:])
        # Every stream reported both its first token and its end, and no first token came after
        # its end (the locustfile fails "stream end" for such a request: checked per request above).
        assert rows["TTFT"]["Request Count"] == rows["stream end"]["Request Count"]
        # Over the same requests, locust's medians are order statistics of monotone buckets, so this
        # follows; it once compared TTFT with "POST chat stream", which locust times to the headers.
        assert float(rows["TTFT"]["Median Response Time"]) <= float(rows["stream end"]["Median Response Time"])
    finally:
        assert gateway.stop() == 0
        replica.terminate()
        replica.wait(10)


def test_a_first_token_after_the_end_fails_the_stream():
    """The per-request check the medians rest on, with the locustfile imported as locust would."""
    code = (
        "import locustfile, json\n"
        "fired = []\n"
        "locustfile.report_stream(lambda **kw: fired.append(kw), 10.0, 10.004, 10.005, 3)\n"
        "locustfile.report_stream(lambda **kw: fired.append(kw), 20.0, 20.006, 20.005, 3)\n"
        "print(json.dumps([[f['name'], round(f['response_time'], 3), f['exception'] is not None] for f in fired]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=LOCUSTFILE.parent, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(result.stdout.splitlines()[-1]) == [
        ["TTFT", 4.0, False], ["stream end", 5.0, False],
        ["TTFT", 6.0, False], ["stream end", 5.0, True],
    ]
