"""`serveform status`: what a stack runs right now, gathered from wherever each fact lives.

| fact | local | k8s | aws / gcp / azure |
|---|---|---|---|
| URL, model, desired count | stack outputs (`services[i].replicas.count`) | same | same (aws: the auto scaling groups' own desired capacity, read with this host's AWS credentials) |
| published / ready replicas | the gateway's `status.json` (its prober) | Deployment `status.replicas` / `readyReplicas` (Kubernetes API) | the gateway's status endpoint over HTTPS, where reachable |
| restarts | each replica supervisor's record | pods' container restart counts | — |
| request rate, scaler decision | the scaler's `/metrics` and state file | — (the scaler runs in the cluster) | — (it runs on the gateway VM) |
| last update | the stack's history (Pulumi) | same | same |

Every source that cannot be read is named in the result with the reason (``"unreachable:
<why>"``), never silently left out. `collect` returns the stable JSON shape documented in the
README; `render` draws it as a table.
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["STATUS_FORMAT_VERSION", "collect", "fetch_gateway_status", "render"]

STATUS_FORMAT_VERSION = 1
FETCH_TIMEOUT_SECONDS = 5.0
_RPS_METRIC = "serveform_scaler_requests_per_second"


# ---- sources -------------------------------------------------------------------------------


def fetch_gateway_status(address: str, host: str, token: str | None, *, https: bool = True, ca_cert: str | None = None,
                         timeout_seconds: float = FETCH_TIMEOUT_SECONDS) -> dict[str, Any]:
    """GET the gateway's status endpoint (`serveform.gateway.router.STATUS_PATH`) at ``address``
    (``IP:PORT``), naming ``host`` for TLS and routing; raises OSError/ValueError saying why not."""
    from serveform.gateway.router import STATUS_PATH

    import http.client

    ip, _, port = address.rpartition(":")
    headers = {"Host": host, "Authorization": f"Bearer {token}"} if token else {"Host": host}
    if https:
        context = ssl.create_default_context(cafile=ca_cert) if ca_cert else ssl.create_default_context()

        class _Connection(http.client.HTTPSConnection):
            # Connect to the address, but verify and send SNI for the gateway's host name.
            def connect(self) -> None:
                http.client.HTTPConnection.connect(self)
                self.sock = context.wrap_socket(self.sock, server_hostname=host)

        connection: http.client.HTTPConnection = _Connection(ip.strip("[]"), int(port), timeout=timeout_seconds, context=context)
    else:
        connection = http.client.HTTPConnection(ip.strip("[]"), int(port), timeout=timeout_seconds)
    try:
        connection.request("GET", STATUS_PATH, headers=headers)
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise ValueError(f"{host} at {address} answered {response.status} to {STATUS_PATH}")
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError(f"{host} at {address}: {STATUS_PATH} is not a JSON object")
    return document


def _scaler_metrics(address: str) -> dict[str, float]:
    """service -> request rate over its window, from the scaler daemon's /metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=FETCH_TIMEOUT_SECONDS) as response:
        text = response.read().decode()
    rates: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(_RPS_METRIC + "{"):
            labels, _, value = line.partition("} ")
            service = labels.split('service="', 1)[1].split('"', 1)[0]
            rates[service] = float(value)
    return rates


def _iso(timestamp: float | datetime | None) -> str | None:
    if timestamp is None:
        return None
    if isinstance(timestamp, datetime):
        moment = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=timezone.utc)
    else:
        moment = datetime.fromtimestamp(timestamp, tz=timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _why(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and exc.reason:
        return str(exc.reason)
    return str(exc) or type(exc).__name__


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- collecting ----------------------------------------------------------------------------


def collect(engine: Any, *, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The status of ``engine``'s stack (a `serveform.stacks.engine.Engine`) as the JSON shape."""
    from .settings import StackSettings

    outputs = engine.outputs()
    settings = StackSettings.from_config(engine.config(), stack=engine.stack, project_dir=engine.project)
    services = [_service_base(s) for s in outputs.get("services") or []]
    windows = _windows(settings)
    for service in services:
        service["window_seconds"] = windows.get(service["name"])
    gateway_address = (outputs.get("gateway") or {}).get("address") or outputs.get("gateway_address")
    status: dict[str, Any] = {
        "version": STATUS_FORMAT_VERSION,
        "stack": engine.stack,
        "backend": settings.backend,
        "deployed": bool(outputs),
        "last_update": _last_update(engine),
        "gateway": {"address": gateway_address, "reachable": False, "error": None},
        "scaler": {"address": (outputs.get("scaler") or {}).get("address"), "reachable": False, "error": None},
        "services": services,
    }
    if not outputs:
        status["gateway"]["error"] = "the stack has no outputs: it was never deployed (run `serveform up`)"
        status["scaler"]["error"] = status["gateway"]["error"]
        return status
    if settings.backend == "local":
        _local(status, settings)
    elif settings.backend == "k8s":
        _k8s(status, settings, outputs)
        _remote_gateway(status, settings, outputs)
        status["scaler"]["error"] = "the scaler runs in the cluster (Deployment `scaler`); see `serveform logs ... scaler`"
    else:
        if settings.backend == "aws":
            _aws_groups(status, settings)
        _remote_gateway(status, settings, outputs)
        status["scaler"]["error"] = "the scaler runs on the gateway VM; see `serveform logs ... scaler`"
    return status


def _aws_groups(status: dict[str, Any], settings: Any) -> None:
    """Desired counts (and ranges) from the auto scaling groups themselves: on AWS the scaler and
    `serveform scale` set a group's desired capacity directly, so the stack's outputs only know
    the count a group was created with. Read with this host's AWS credentials."""
    from serveform.aws.client import default_credentials
    from serveform.scaler.autoscaling import AutoScalingApplier

    groups = {s["name"]: s["group"] for s in status["services"] if s.get("group")}
    region = settings.aws.region or (settings.regions[0] if settings.regions else None)
    status["groups"] = {"region": region, "reachable": False, "error": None}
    if not groups or not region:
        status["groups"]["error"] = "no groups or no region in the stack's outputs and config"
        return
    try:
        found = AutoScalingApplier(groups, region, credentials=default_credentials).capacities()
    except Exception as exc:  # named in the result, never raised: status shows what it can
        status["groups"]["error"] = f"unreachable: {' '.join(str(exc).split())[:300]}"
        return
    status["groups"]["reachable"] = True
    for service in status["services"]:
        group = found.get(service["name"])
        if group is not None:
            service["replicas"].update(desired=group.desired, min=group.min, max=group.max)


def _service_base(exported: Mapping[str, Any]) -> dict[str, Any]:
    replicas = exported.get("replicas") or {}
    return {
        "name": exported.get("name"),
        "url": exported.get("url"),
        "model": exported.get("model"),
        "group": exported.get("group"),
        "replicas": {
            "min": replicas.get("min"),
            "max": replicas.get("max"),
            "desired": replicas.get("count"),
            "published": None,
            "ready": None,
            "restarts": None,
        },
        "replica_details": [],
        "rps": None,
        "window_seconds": None,
        "scaler": None,
    }


def _windows(settings: Any) -> dict[str, int]:
    """service -> its scaling window, from the service files as they are now."""
    from serveform.translator import CompileContext, TranslatorError, compile_file

    context = CompileContext(backend=settings.backend, domain=settings.domain, regions=settings.regions, require_env=False)
    windows = {}
    for path in settings.service_paths:
        try:
            plan = compile_file(path, context=context).plan
        except (TranslatorError, OSError):
            continue
        if plan.scaling is not None:
            windows[plan.name] = plan.scaling.window_seconds
    return windows


def _last_update(engine: Any) -> dict[str, Any] | None:
    try:
        history = engine.stack_obj.history(page_size=1, page=1)
    except Exception as exc:  # noqa: BLE001 - reported, not fatal: the rest of the status stands
        return {"error": _why(exc)}
    if not history:
        return None
    last = history[0]
    return {
        "kind": str(getattr(last.kind, "value", last.kind)),
        "result": str(getattr(last.result, "value", last.result)),
        "started_at": _iso(last.start_time),
        "ended_at": _iso(last.end_time),
    }


def _local(status: dict[str, Any], settings: Any) -> None:
    from serveform.components.local._replica import read_restarts
    from serveform.gateway.state import read_status
    from serveform.scaler.constants import STATE_FILE_NAME

    gateway_dir = settings.state_dir / "gateway"
    gateway = read_status(gateway_dir)
    readiness: dict[str, Any] = {}
    if gateway is None:
        status["gateway"]["error"] = f"unreachable: no {gateway_dir / 'status.json'} (the gateway is not running)"
    elif not _pid_alive(gateway.get("pid")):
        status["gateway"]["error"] = f"unreachable: the gateway process {gateway.get('pid')} is not running (run `serveform up`)"
    else:
        status["gateway"]["reachable"] = True
        readiness = gateway.get("services") or {}
    for service in status["services"]:
        view = readiness.get(service["name"])
        ready = set(view.get("ready") or ()) if view else set()
        if view is not None:
            service["replicas"]["published"] = len(view.get("published") or ())
            service["replicas"]["ready"] = len(ready)
        elif status["gateway"]["reachable"]:
            service["replicas"]["published"] = service["replicas"]["ready"] = 0
        details, total = [], 0
        for log in sorted((settings.state_dir / "replicas").glob(f"{service['name']}-*.restarts.json")):
            index = log.name.removeprefix(f"{service['name']}-").removesuffix(".restarts.json")
            if not index.isdigit():
                continue
            record = read_restarts(log.with_name(f"{service['name']}-{index}.log")) or {}
            restarts = int(record.get("restarts") or 0)
            total += restarts
            details.append({"replica": int(index), "restarts": restarts, "last_exit": record.get("last_exit"),
                            "running": _pid_alive(record.get("supervisor_pid"))})
        service["replicas"]["restarts"] = total
        service["replica_details"] = sorted(details, key=lambda d: d["replica"])
    _local_scaler(status, settings.state_dir / "scaler" / STATE_FILE_NAME)


def _local_scaler(status: dict[str, Any], state_path: Path) -> None:
    from serveform.scaler.state import StateError, StateStore

    scaler = status["scaler"]
    if scaler["address"] is None:
        scaler["error"] = "the stack runs no scaler (no service has a replica range with `scaling`)"
        return
    try:
        rates = _scaler_metrics(scaler["address"])
        scaler["reachable"] = True
    except (OSError, ValueError) as exc:
        rates = {}
        scaler["error"] = f"unreachable: {scaler['address']}/metrics: {_why(exc)}"
    try:
        records = StateStore(state_path).load().services
    except StateError as exc:
        records = {}
        scaler["error"] = str(exc)
    for service in status["services"]:
        service["rps"] = rates.get(service["name"])
        record = records.get(service["name"])
        if record is not None:
            service["scaler"] = {"desired": record.desired, "applied": record.applied, "reason": record.reason,
                                 "last_scaled_at": _iso(record.last_scaled_at)}


def _remote_gateway(status: dict[str, Any], settings: Any, outputs: Mapping[str, Any]) -> None:
    """Published/ready replicas from the gateway's status endpoint (k8s and VM gateways)."""
    gateway = status["gateway"]
    address = gateway["address"]
    if not address:
        gateway["error"] = "unreachable: the stack exports no gateway address yet"
        return
    https = settings.gateway.tls != "off"
    if not (outputs.get("gateway") or {}).get("address"):  # VM stacks export the bare IP
        port = (settings.gateway.https_port or 443) if https else (settings.gateway.http_port or 80)
        address = f"{address}:{port}"
    gateway["address"] = address
    token = settings.tokens[0].get_secret_value() if settings.tokens else None
    try:
        document = fetch_gateway_status(address, f"gateway.{settings.domain}", token, https=https,
                                        ca_cert=(outputs.get("gateway") or {}).get("ca_cert"))
    except (OSError, ValueError, ssl.SSLError) as exc:
        gateway["error"] = f"unreachable: https://gateway.{settings.domain} at {address}: {_why(exc)}"
        return
    gateway["reachable"] = True
    readiness = document.get("services") or {}
    for service in status["services"]:
        view = readiness.get(service["name"])
        if view is None:
            # A gateway that finds replicas in cluster DNS (k8s) probes none itself: the
            # Kubernetes API's counts stand. On VMs discovery publishes every group.
            continue
        service["replicas"]["published"] = len(view.get("published") or ())
        service["replicas"]["ready"] = len(view.get("ready") or ())


def _k8s(status: dict[str, Any], settings: Any, outputs: Mapping[str, Any]) -> None:
    """Ready replicas per Deployment and restarts per pod, through the Kubernetes API."""
    from .kube import api_client

    namespace = outputs.get("namespace") or settings.k8s.namespace
    try:
        from kubernetes import client as k8s_client

        api = api_client(settings)
        apps, core = k8s_client.AppsV1Api(api), k8s_client.CoreV1Api(api)
        for service in status["services"]:
            deployment = apps.read_namespaced_deployment(service["group"], namespace, _request_timeout=FETCH_TIMEOUT_SECONDS)
            service["replicas"]["published"] = deployment.status.replicas or 0
            service["replicas"]["ready"] = deployment.status.ready_replicas or 0
            selector = ",".join(f"{k}={v}" for k, v in sorted((deployment.spec.selector.match_labels or {}).items()))
            pods = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=FETCH_TIMEOUT_SECONDS).items
            details, total = [], 0
            for pod in sorted(pods, key=lambda p: p.metadata.name):
                restarts = sum(c.restart_count for c in (pod.status.container_statuses or ()))
                total += restarts
                details.append({"pod": pod.metadata.name, "phase": pod.status.phase, "restarts": restarts,
                                "ready": any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or ()))})
            service["replicas"]["restarts"] = total
            service["replica_details"] = details
        status["kubernetes"] = {"namespace": namespace, "reachable": True, "error": None}
        api.close()
    except Exception as exc:  # noqa: BLE001 - the API's errors are many; each is reported as is
        status["kubernetes"] = {"namespace": namespace, "reachable": False, "error": f"unreachable: {_why(exc)}"}


# ---- rendering -----------------------------------------------------------------------------


def _count(value: Any) -> str:
    return "-" if value is None else str(value)


def render(status: Mapping[str, Any]) -> str:
    """A readable table of `collect`'s result."""
    gateway = status["gateway"]
    lines = [f"stack {status['stack']} ({status['backend']})"]
    update = status.get("last_update")
    if update and "error" not in update:
        lines.append(f"last update: {update['kind']} {update['result']}, ended {update['ended_at'] or update['started_at']}")
    elif update:
        lines.append(f"last update: unknown ({update['error']})")
    else:
        lines.append("last update: never")
    lines.append(f"gateway: {gateway['address'] or '-'}" + ("" if gateway["reachable"] else f"  (gateway status {gateway['error']})"))
    kube = status.get("kubernetes")
    if kube:
        lines.append(f"kubernetes: namespace {kube['namespace']}" + ("" if kube["reachable"] else f"  ({kube['error']})"))
    groups = status.get("groups")
    if groups:
        lines.append(f"auto scaling groups: {groups['region'] or '-'}" + ("" if groups["reachable"] else f"  (desired counts from the stack's outputs; groups {groups['error']})"))
    scaler = status["scaler"]
    if scaler["address"] or scaler["error"]:
        lines.append(f"scaler: {scaler['address'] or '-'}" + ("" if scaler["reachable"] and not scaler["error"] else f"  ({scaler['error']})"))
    header = ("SERVICE", "URL", "MODEL", "DESIRED", "PUBLISHED", "READY", "RESTARTS", "RPS", "LAST DECISION")
    rows = [header]
    for service in status["services"]:
        replicas = service["replicas"]
        rps = "-" if service["rps"] is None else f"{service['rps']:.2f}" + (f"/{service['window_seconds']}s" if service["window_seconds"] else "")
        decision = service["scaler"]
        said = "-" if decision is None else f"{decision['desired']} ({decision['reason'] or 'no reason recorded'})"
        rows.append((
            service["name"], service["url"] or "-", service["model"] or "-",
            _count(replicas["desired"]) + (f" [{replicas['min']}..{replicas['max']}]" if replicas["min"] != replicas["max"] else ""),
            _count(replicas["published"]), _count(replicas["ready"]), _count(replicas["restarts"]), rps, said,
        ))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header) - 1)]
    lines.append("")
    for row in rows:
        lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + str(row[-1]))
    if not status["services"]:
        lines.append("(no services)")
    return "\n".join(lines)
