"""Parsing Caddy's Prometheus text and access log; selectors; counter resets in windows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from serveform.scaler.constants import DEFAULT_IN_FLIGHT_SELECTOR, DEFAULT_REQUEST_SELECTOR
from serveform.scaler.metrics import (
    AccessLogCounter,
    HostMap,
    MetricsFormatError,
    Selector,
    normalise_host,
    parse_prometheus_text,
    read_scrape,
)
from serveform.scaler.window import CounterDeltas, RequestWindow, ServiceWindows

DATA = Path(__file__).parent / "data"
# Captured from Caddy 2.11.9 (metrics { per_host }) serving tests/scaler/data/caddy-2.11.9-sample.Caddyfile:
# a.localhost: 2 x 401 (no token), 1 x 502 (no upstream), 4 x 429 (rate limit); b.localhost: 3 x 200, 1 x 401.
CADDY_TEXT = (DATA / "caddy-2.11.9-per-host.prom").read_text()
HOSTS = HostMap.of({"a.localhost": "a", "b.localhost": "b"})
# The selector for a plain Caddy with `metrics { per_host }` (serveform's gateway counts in its own
# module instead, see test_gateway_contract_sample): the duration histogram's count carries `code`.
CADDY_PER_HOST_SELECTOR = 'caddy_http_request_duration_seconds_count{code!~"401|429"}'


def _requests(text: str, selector: str = DEFAULT_REQUEST_SELECTOR) -> dict[str, float]:
    scrape = read_scrape(text, HOSTS, requests=Selector.parse(selector))
    return {svc: sum(series.values()) for svc, series in scrape.requests.items()}


def test_per_host_selector_on_real_caddy_text_leaves_out_auth_and_rate_limit_refusals():
    assert _requests(CADDY_TEXT, CADDY_PER_HOST_SELECTOR) == {"a": 1.0, "b": 3.0}


def test_requests_total_has_no_status_so_it_would_count_refusals():
    # Why the default is the duration histogram's count: this counter includes 401 and 429.
    assert _requests(CADDY_TEXT, "caddy_http_requests_total") == {"a": 7.0, "b": 4.0}


def test_selector_is_configurable():
    assert _requests(CADDY_TEXT, 'caddy_http_request_duration_seconds_count{code="200"}') == {"b": 3.0}
    assert _requests(CADDY_TEXT, 'caddy_http_request_duration_seconds_count{code=~"4.."}') == {"a": 6.0, "b": 1.0}
    assert _requests(CADDY_TEXT, 'caddy_http_request_duration_seconds_count{code!="429",server="srv0"}') == {
        "a": 3.0,
        "b": 4.0,
    }
    # A label the series lacks matches as "" (PromQL).
    assert _requests(CADDY_TEXT, 'caddy_http_request_duration_seconds_count{nope=""}') == {"a": 7.0, "b": 4.0}


def test_gateway_contract_sample():
    # The gateway's documented shape (tools/caddy/serveform/metrics.go): one series per served
    # service, refusals never counted, the router host absent; a host label may carry a port.
    text = "\n".join(
        [
            "# TYPE serveform_requests_total counter",
            'serveform_requests_total{service="chat",host="chat.example.com"} 17',
            'serveform_requests_total{service="web",host="Web.Example.com:443"} 4',
            "# TYPE serveform_requests_in_flight gauge",
            'serveform_requests_in_flight{service="chat",host="chat.example.com"} 3',
            'serveform_requests_in_flight{service="web",host="web.example.com"} 0',
            "serveform_routes_generation 12",
        ]
    )
    hosts = HostMap.of({"chat.example.com": "chat", "web.example.com": "web"})
    scrape = read_scrape(
        text, hosts, requests=Selector.parse(DEFAULT_REQUEST_SELECTOR), in_flight=Selector.parse(DEFAULT_IN_FLIGHT_SELECTOR)
    )
    assert sum(scrape.requests["chat"].values()) == 17 and sum(scrape.requests["web"].values()) == 4
    assert scrape.in_flight == {"chat": 3.0}
    assert scrape.per_host


def test_caddy_without_per_host_metrics_is_detected():
    text = 'caddy_http_request_duration_seconds_count{code="200",handler="subroute",method="GET",server="srv0"} 3\n'
    scrape = read_scrape(text, HOSTS, requests=Selector.parse(CADDY_PER_HOST_SELECTOR))
    assert scrape.per_host is False and scrape.requests == {}


def test_prometheus_text_details():
    text = "\n".join(
        [
            "# HELP x help with \\ backslash",
            "",
            'm{a="q\\"uote",b="back\\\\slash",c="new\\nline"} 1.5e3 1700000000000',
            "m 2",
            "m{} +Inf",
            'm{a="x",} NaN',
        ]
    )
    samples = list(parse_prometheus_text(text))
    assert samples[0].labels == (("a", 'q"uote'), ("b", "back\\slash"), ("c", "new\nline"))
    assert samples[0].value == 1500.0
    assert samples[1].labels == () and samples[1].value == 2
    assert samples[2].value == float("inf")
    assert samples[3].label("a") == "x" and samples[3].value != samples[3].value


@pytest.mark.parametrize(
    "line, message",
    [
        ('m{a="x"', "unterminated"),
        ("m{a=x} 1", 'expected label="value"'),
        ("m{a=\"x\"}", "has no value"),
        ('m{a="x"} one', "not a number"),
        ("{a=\"x\"} 1", "expected a metric name"),
    ],
)
def test_bad_metrics_lines_name_the_line(line, message):
    with pytest.raises(MetricsFormatError, match=message) as info:
        list(parse_prometheus_text("ok 1\n" + line))
    assert "line 2" in str(info.value)


@pytest.mark.parametrize(
    "text, message",
    [("", "metric name"), ('m{code=~"("}', "bad regex"), ('m{code="1"} extra', "unexpected"), ("m{code}", "expected")],
)
def test_bad_selectors(text, message):
    with pytest.raises(MetricsFormatError, match=message):
        Selector.parse(text)


def test_selector_round_trips_through_str():
    s = Selector.parse('caddy_x{code!~"401|429", server = "public"}')
    assert Selector.parse(str(s)) == s


def test_regex_matchers_are_anchored():
    s = Selector.parse('m{code=~"40"}')
    assert not s.matches(next(parse_prometheus_text('m{code="401"} 1')))
    assert s.matches(next(parse_prometheus_text('m{code="40"} 1')))


@pytest.mark.parametrize(
    "host, expected",
    [("A.Example.COM", "a.example.com"), ("a.example.com:8443", "a.example.com"), ("a.example.com.", "a.example.com"), ("[::1]:443", "[::1]")],
)
def test_normalise_host(host, expected):
    assert normalise_host(host) == expected


# --- counters and windows -----------------------------------------------------------------------


def test_counter_deltas_baseline_then_increments():
    d = CounterDeltas()
    assert d.update({"x": 100, "y": 5}) == 0  # the first scrape is history
    assert d.update({"x": 110, "y": 5}) == 10
    assert d.update({"x": 110, "y": 5, "z": 3}) == 3  # a new series started at zero since


def test_counter_decrease_is_a_reset_never_negative():
    d = CounterDeltas()
    d.update({"x": 100})
    assert d.update({"x": 4}) == 4  # Caddy reloaded: 4 new requests, not -96
    assert d.update({}) == 0  # all series gone after a restart: nothing new
    assert d.update({"x": 2}) == 2  # re-created by its first request


def test_request_window_counts_and_coverage():
    w = RequestWindow(history_seconds=90)
    assert w.stats(0, 60) is None
    w.record(0, 0)
    for t in range(5, 125, 5):
        w.record(t, 10)  # 2 rps
    s = w.stats(120, 60)
    assert s.requests == 120 and s.rps == 2 and s.covered_seconds == 60
    early = RequestWindow(history_seconds=90)
    early.record(100, 0)
    early.record(105, 50)
    s = early.stats(105, 60)
    assert s.requests == 50 and s.covered_seconds == 5 and not s.full
    with pytest.raises(ValueError, match="backwards"):
        early.record(104, 1)


def test_request_window_prunes_but_keeps_the_window_start():
    w = RequestWindow(history_seconds=70)
    for t in range(0, 10_000, 5):
        w.record(t, 1)
    assert len(w._samples) <= 70 // 5 + 2
    assert w.stats(9995, 60).requests == 12


def test_service_windows_with_a_reset_and_in_flight():
    sw = ServiceWindows(window_seconds={"a": 30, "b": 60})
    sw.observe(0, {"a": {"s1": 1000}, "b": {}})
    sw.observe(10, {"a": {"s1": 1300}, "b": {"s2": 7}}, {"b": 2})
    sw.observe(20, {"a": {"s1": 60}, "b": {"s2": 7}})  # a's Caddy reloaded
    a = sw.stats("a", 20)
    assert a.requests == 300 + 60 and a.window_seconds == 30 and a.in_flight == 0
    b = sw.stats("b", 10)
    assert b.requests == 7
    assert sw.stats("b", 20).in_flight == 0  # the gauge is the latest scrape's
    sw.set_services({"a": 30})
    assert sw.stats("b", 20) is None


# --- access log fallback --------------------------------------------------------------------------


def test_access_log_counts_appended_entries_without_refusals(tmp_path):
    log = tmp_path / "access.log"
    sample = (DATA / "caddy-2.11.9-access.jsonl").read_text()  # one 401, one 502, on a.localhost
    log.write_text(sample)
    counter = AccessLogCounter(log)
    assert counter.series_by_service(HOSTS) == {}  # what was there before the start is history
    with log.open("a") as fh:
        fh.write(sample)
        fh.write("not json\n")
        entry = json.loads(sample.splitlines()[1])
        entry["request"]["host"] = "B.localhost:8443"
        entry["status"] = 200
        fh.write(json.dumps(entry) + "\n")
        entry["status"] = 429
        fh.write(json.dumps(entry) + "\n")
        fh.write('{"request": {"host": "b.localhost"}, "status": 200')  # unfinished line
    assert counter.read() == {"a.localhost": 1, "b.localhost": 1}
    with log.open("a") as fh:
        fh.write("}\n")
    assert counter.series_by_service(HOSTS) == {"a": {("access_log", "a.localhost"): 1.0}, "b": {("access_log", "b.localhost"): 2.0}}


def test_access_log_rotation_is_followed(tmp_path):
    log = tmp_path / "access.log"
    line = json.dumps({"request": {"host": "a.localhost"}, "status": 200}) + "\n"
    log.write_text(line * 3)
    counter = AccessLogCounter(log)
    counter.read()
    os.rename(log, tmp_path / "access.log.1")
    log.write_text(line * 2)  # a new file: read from its start
    assert counter.read() == {"a.localhost": 2}
    log.write_text(line)  # truncated in place
    assert counter.read() == {"a.localhost": 3}
    log.unlink()
    assert counter.read() == {"a.localhost": 3}
