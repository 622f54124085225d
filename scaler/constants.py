"""Every tunable of the scaler, in one place, with its unit in its name.

The policy's own defaults (`scale_up_delay` 300 s, `scale_down_delay` 600 s, `window` 60 s) match
dstack 0.22's `scaling` defaults; the translator fills them into the plan, so the scaler only
repeats them here for plans built by hand (tests, `replay` of a bare ScalingPlan).
"""

from __future__ import annotations

__all__ = [
    "ACCESS_LOG_READ_LIMIT_BYTES",
    "AT_ZERO_INTERVAL_SECONDS",
    "APPLY_BACKOFF_INITIAL_SECONDS",
    "APPLY_BACKOFF_JITTER_RATIO",
    "APPLY_BACKOFF_MAX_SECONDS",
    "DEFAULT_EXCLUDED_STATUS_CODES",
    "DEFAULT_HOST_LABEL",
    "DEFAULT_IN_FLIGHT_SELECTOR",
    "DEFAULT_INTERVAL_SECONDS",
    "DEFAULT_LISTEN_ADDRESS",
    "DEFAULT_METRICS_URL",
    "DEFAULT_REQUEST_SELECTOR",
    "DEFAULT_SCALE_DOWN_DELAY_SECONDS",
    "DEFAULT_SCALE_UP_DELAY_SECONDS",
    "DEFAULT_WINDOW_SECONDS",
    "HEALTHY_TICK_INTERVALS",
    "METRICS_BODY_LIMIT_BYTES",
    "METRICS_FETCH_TIMEOUT_SECONDS",
    "SCALER_TARGETS_OUTPUT",
    "SERVICE_CATALOG_REFRESH_SECONDS",
    "STATE_FILE_NAME",
    "STATE_FORMAT_VERSION",
    "WINDOW_CHOICES_SECONDS",
    "WINDOW_HISTORY_SLACK_SECONDS",
]

# --- policy -----------------------------------------------------------------------------------
DEFAULT_SCALE_UP_DELAY_SECONDS = 300
DEFAULT_SCALE_DOWN_DELAY_SECONDS = 600
# dstack's `scaling.window` choices; the translator rejects anything else.
WINDOW_CHOICES_SECONDS = (30, 60, 300)
DEFAULT_WINDOW_SECONDS = 60

# --- windows ----------------------------------------------------------------------------------
# History kept beyond the longest window, so the sample that starts a window is never pruned.
WINDOW_HISTORY_SLACK_SECONDS = 30

# --- metrics ----------------------------------------------------------------------------------
# Where the scaler reads request counts when the stack names no gateway (the gateway's status.json
# names its own metrics_url).
DEFAULT_METRICS_URL = "http://127.0.0.1:2019/metrics"
# serveform's gateway counts requests per service in its own Caddy module (tools/caddy/serveform,
# metrics.go): one series per served service, so unknown Host headers never add series. Requests
# refused for auth (401) or by a rate limit (429) are answered by that module and never counted;
# a request held while a service has no replica ends as 503 and does count. This is the
# gateway's metrics contract (serveform.gateway docstring). The access-log reader (a Caddy
# without the module) leaves the refused statuses out itself:
DEFAULT_EXCLUDED_STATUS_CODES = (401, 429)
DEFAULT_REQUEST_SELECTOR = "serveform_requests_total"
DEFAULT_HOST_LABEL = "host"
# Requests being handled now, per host: a request held while a service is at zero replicas shows
# here long before it ends and is counted by the selector above.
DEFAULT_IN_FLIGHT_SELECTOR = "serveform_requests_in_flight"
METRICS_FETCH_TIMEOUT_SECONDS = 5.0
# A scrape larger than this is refused rather than parsed (100 services x 12 codes is ~1 MiB).
METRICS_BODY_LIMIT_BYTES = 32 * 1024 * 1024
# Per tick, at most this much of the access log is read; the rest is read on the next ticks.
ACCESS_LOG_READ_LIMIT_BYTES = 64 * 1024 * 1024

# --- daemon -----------------------------------------------------------------------------------
DEFAULT_INTERVAL_SECONDS = 5.0
# While a watched service is at zero replicas the daemon looks this often: a request held by the
# gateway waits for the scaler's next look plus an `up`, so this bounds the first part.
AT_ZERO_INTERVAL_SECONDS = 1.0
# Loopback only: the scaler's endpoints carry no auth.
DEFAULT_LISTEN_ADDRESS = "127.0.0.1:9465"
# /healthz fails when no tick succeeded within this many intervals.
HEALTHY_TICK_INTERVALS = 3
# How often the stack config file is re-read for added or removed services.
SERVICE_CATALOG_REFRESH_SECONDS = 30.0

# --- applier ----------------------------------------------------------------------------------
# A stack output the program may export, {service: [URN or URN glob, ...]}: when present, `up`
# is limited to those resources (and their dependents); otherwise the whole stack is updated.
SCALER_TARGETS_OUTPUT = "scalerTargets"
APPLY_BACKOFF_INITIAL_SECONDS = 2.0
APPLY_BACKOFF_MAX_SECONDS = 120.0
APPLY_BACKOFF_JITTER_RATIO = 0.2

# --- state ------------------------------------------------------------------------------------
STATE_FILE_NAME = "scaler-state.json"
STATE_FORMAT_VERSION = 1
