"""serveform.scaler: Caddy's request rates in, a stack's replica counts out.

Run time data flow: Caddy's Prometheus text (or JSON access log) → `metrics` (per-service
counters) → `window` (request rate over the service's `scaling.window`) → `policy` (a pure
`(now, window stats, saved state) -> Decision`) → `state` (on disk) → `applier` (one worker per
stack: a scale `pulumi up` with the decided counts; on AWS `autoscaling`, the groups' desired
capacity through the Auto Scaling API). `daemon` runs that loop; `deploy` says how
it runs on a gateway host (systemd), in Kubernetes and on the local stack. The scaler never
builds resources and never imports `serveform.components`.

Public surface::

    RpsPolicy, Decision, ScalingOperator, ScaleState, WindowStats, policy_for
    Selector, HostMap, read_scrape, parse_prometheus_text, AccessLogCounter
    ServiceWindows, StateStore, ScalerState
    Applier, ApplyWorker, PulumiApplier, AutoScalingApplier, ApplyError, StackBusyError
    Scaler, ScalerConfig, run
    replay, read_trace
    render_unit, kubernetes_deployment, spawn_local, scaler_argv
"""

from .applier import Applier, ApplyError, ApplyWorker, PulumiApplier, StackBusyError
from .autoscaling import AutoScalingApplier
from .daemon import Scaler, ScalerConfig, WatchedService, run
from .deploy import kubernetes_deployment, render_unit, scaler_argv, spawn_local
from .metrics import AccessLogCounter, HostMap, Selector, parse_prometheus_text, read_scrape
from .policy import Decision, RpsPolicy, ScaleState, ScalingOperator, WindowStats, policy_for
from .replay import read_trace, replay
from .state import ScalerState, StateStore
from .window import ServiceWindows

__all__ = [
    "AccessLogCounter",
    "Applier",
    "ApplyError",
    "ApplyWorker",
    "AutoScalingApplier",
    "Decision",
    "HostMap",
    "PulumiApplier",
    "RpsPolicy",
    "ScaleState",
    "Scaler",
    "ScalerConfig",
    "ScalerState",
    "ScalingOperator",
    "Selector",
    "ServiceWindows",
    "StackBusyError",
    "StateStore",
    "WatchedService",
    "WindowStats",
    "kubernetes_deployment",
    "parse_prometheus_text",
    "policy_for",
    "read_scrape",
    "read_trace",
    "render_unit",
    "replay",
    "run",
    "scaler_argv",
    "spawn_local",
]
