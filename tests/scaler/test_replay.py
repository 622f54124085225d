"""`serveform scaler replay`: the policy over a recorded trace, through the real CLI entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from serveform.cli import main
from serveform.scaler.policy import RpsPolicy
from serveform.scaler.replay import TraceError, parse_trace, replay

SERVICE = """\
type: service
name: tuned
image: python:3.11
commands: [python -m http.server 8000]
port: 8000
replicas: {replicas}
scaling:
  metric: rps
  target: 10
  scale_up_delay: 20s
  scale_down_delay: 40s
"""


def _files(tmp_path: Path, rows: list[tuple[int, float]], replicas: str = "1..3") -> tuple[Path, Path]:
    service = tmp_path / "tuned.dstack.yml"
    service.write_text(SERVICE.format(replicas=replicas))
    trace = tmp_path / "trace.csv"
    trace.write_text("second,requests\n" + "".join(f"{t},{r}\n" for t, r in rows))
    return service, trace


def test_replay_json_follows_the_policy(tmp_path, capsys):
    # 25 rps for 100 s, then silence for 200 s.
    service, trace = _files(tmp_path, [(t, 25) for t in range(100)] + [(299, 0)])
    assert main(["scaler", "replay", "--service", str(service), "--trace", str(trace), "--json"]) == 0
    points = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["t"] for p in points] == list(range(300))
    assert set(points[0]) == {"t", "rps", "replicas"}
    replicas = [p["replicas"] for p in points]
    assert replicas[0] == 1  # starts at the minimum
    # Window 60 s (the default): 25 requests in the first second is 25/60 rps -> 1 replica.
    # The rate passes 10 rps at t=24 (25*25/60 = 10.4): never scaled before, so at once to 2.
    assert replicas.index(2) == 24
    # 3 wanted from t=48 (49*25/60 > 20), held by scale_up_delay (20 s since t=24) until t=44 ...
    first_three = replicas.index(3)
    assert first_three == 48 and points[48]["rps"] == pytest.approx(49 * 25 / 60)
    assert max(replicas) == 3
    # ... and back to 1 once the window drained (t=159) and scale_down_delay had passed.
    last_down = max(t for t, n in enumerate(replicas) if n == 3)
    assert replicas[-1] == 1
    assert all(n >= 1 for n in replicas)
    # Never changes more often than the delays allow.
    changes = [t for t in range(1, 300) if replicas[t] != replicas[t - 1]]
    for earlier, later in zip(changes, changes[1:]):
        assert later - earlier >= 20
    assert last_down > 100


def test_replay_text_and_scale_to_zero(tmp_path, capsys):
    service, trace = _files(tmp_path, [(0, 0), (10, 1), (200, 0)], replicas="0..2")
    assert main(["scaler", "replay", "--service", str(service), "--trace", str(trace)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# tuned: replicas 0..2, target 10 rps per replica")
    lines = [line.split() for line in out.splitlines() if not line.startswith("#")][1:]
    # From zero at once on the first request (t=10); back to zero after window + delay.
    assert lines[0][:3] == ["0", "0.000", "0"]
    assert lines[1][:3] == ["10", "0.017", "1"]
    assert lines[2][0] == "70" and lines[2][2] == "0"  # window drained at 70, 60 s after 10 > 40 s delay


def test_replay_module_entry_point(tmp_path):
    service, trace = _files(tmp_path, [(0, 600)])
    out = subprocess.run(
        [sys.executable, "-m", "serveform.scaler", "replay", "--service", str(service), "--trace", str(trace), "--json"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert json.loads(out) == {"t": 0, "rps": 10.0, "replicas": 1}


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "no rows"),
        ("second,count\n1,2\n", "header must be `second,requests`"),
        ("1,2,3\n", ":1: expected two columns"),
        ("1,2\n1,3\n", ":2: second: must increase"),
        ("1,2\nx,3\n", ":2: second: expected a whole number"),
        ("1,-2\n", "requests: must be a finite number >= 0"),
        ("1,nan\n", "requests: must be a finite number >= 0"),
        ("1,many\n", "requests: expected a number"),
    ],
)
def test_bad_traces_name_file_line_and_field(text, message):
    with pytest.raises(TraceError, match=message) as info:
        parse_trace(text, file="t.csv")
    assert str(info.value).startswith("t.csv")


def test_replay_cli_bad_input_exits_2(tmp_path, capsys):
    service, trace = _files(tmp_path, [(0, 1)])
    trace.write_text("second,requests\n0,x\n")
    assert main(["scaler", "replay", "--service", str(service), "--trace", str(trace)]) == 2
    assert f"{trace}:2: requests" in capsys.readouterr().err
    fixed = tmp_path / "fixed.dstack.yml"
    fixed.write_text(SERVICE.split("replicas:")[0] + "replicas: 2\n")
    trace.write_text("0,1\n")
    assert main(["scaler", "replay", "--service", str(fixed), "--trace", str(trace)]) == 2
    assert "has no `scaling`" in capsys.readouterr().err
    bad = tmp_path / "bad.dstack.yml"
    bad.write_text("type: service\nname: x\nport: nope\n")
    assert main(["scaler", "replay", "--service", str(bad), "--trace", str(trace)]) == 2
    assert "bad.dstack.yml" in capsys.readouterr().err


def test_replay_gaps_are_quiet_seconds():
    p = RpsPolicy(service="s", min_replicas=1, max_replicas=5, target_rps=1, window_seconds=30, scale_up_delay_seconds=0, scale_down_delay_seconds=0)
    points = list(replay(p, {0: 30, 100: 0}))
    assert len(points) == 101
    assert points[0].replicas == 1 and points[29].rps == 1.0 and points[30].rps == 0
