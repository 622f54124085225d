"""`serveform logs`: a service's replica logs, or the gateway's or the scaler's, wherever they are.

- local: the files the stack writes (`<state dir>/replicas/<service>-<n>.log`, the gateway's
  `gateway.log` and Caddy's `caddy.log`, the scaler's `scaler.log`), printed or followed;
- k8s: the pods' logs through the Kubernetes API (`follow` streams them); a node that runs no
  container (k8s-local's kwok nodes) has no logs to give, and that is said, with the pod named;
- aws / gcp / azure: the VMs are reached with the cloud's own tools, so the exact command to
  run is printed, built from the stack's outputs and settings.

Errors are values: every function returns the lines to print and an exit status, or raises
`LogsError` with a message for the user.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["DAEMONS", "LogsError", "cloud_commands", "follow_files", "k8s_logs", "local_log_files"]

DAEMONS = ("gateway", "scaler")
FOLLOW_POLL_SECONDS = 0.2
TAIL_LINES = 200
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
LOG_REQUEST_TIMEOUT_SECONDS = 30.0
"""The API server asks the node's kubelet for logs; one that never answers must not hang the command."""
_UNITS = {"gateway": "serveform-gateway.service", "scaler": "serveform-scaler.service", "replica": "serveform-replica.service"}


class LogsError(ValueError):
    """The logs asked for do not exist (unknown service, replica out of range); says what does."""


# ---- local -----------------------------------------------------------------------------------


def local_log_files(state_dir: Path, target: str, replica: int | None, services: Mapping[str, int]) -> list[Path]:
    """The log files of ``target`` (a service name, `gateway` or `scaler`) in a local stack."""
    if target == "gateway":
        return [p for p in (state_dir / "gateway" / "gateway.log", state_dir / "gateway" / "caddy.log") if p.exists()] or [state_dir / "gateway" / "gateway.log"]
    if target == "scaler":
        return [state_dir / "scaler" / "scaler.log"]
    if target not in services:
        raise LogsError(f"no service {target!r} in this stack; services: {', '.join(sorted(services)) or 'none'}; or `gateway`, `scaler`")
    count = services[target]
    if replica is not None:
        if not 0 <= replica < max(count, 1) and not (state_dir / "replicas" / f"{target}-{replica}.log").exists():
            raise LogsError(f"service {target!r} has {count} replica(s): --replica 0..{count - 1}")
        return [state_dir / "replicas" / f"{target}-{replica}.log"]
    return [state_dir / "replicas" / f"{target}-{n}.log" for n in range(count)]


def _tail(path: Path, lines: int) -> tuple[list[str], int]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    text = data.decode("utf-8", "replace").splitlines()
    return (text[-lines:] if lines > 0 else []), len(data)


def follow_files(paths: list[Path], out: TextIO, *, lines: int = TAIL_LINES, follow: bool = False,
                 stop: Callable[[], bool] = lambda: False) -> int:
    """Print the last ``lines`` of each file (prefixed with its name when there are several);
    with ``follow``, keep printing what is appended until ``stop()`` or an interrupt."""
    prefix = len(paths) > 1
    offsets: dict[Path, int] = {}
    inodes: dict[Path, int | None] = {}
    missing = []
    for path in paths:
        text, offsets[path] = _tail(path, lines)
        inodes[path] = path.stat().st_ino if path.exists() else None
        if not path.exists():
            missing.append(path)
        for line in text:
            out.write(f"[{path.stem}] {line}\n" if prefix else line + "\n")
    out.flush()
    if missing and not follow:
        for path in missing:
            sys.stderr.write(f"serveform logs: {path} does not exist (not started yet, or removed)\n")
        return 1 if len(missing) == len(paths) else 0
    while follow and not stop():
        for path in paths:
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            if inodes.get(path) != stat.st_ino or stat.st_size < offsets[path]:
                offsets[path], inodes[path] = 0, stat.st_ino  # a new process of the replica: a new file
            if stat.st_size > offsets[path]:
                with open(path, "rb") as handle:
                    handle.seek(offsets[path])
                    chunk = handle.read()
                complete = chunk.rfind(b"\n") + 1
                if complete:
                    offsets[path] += complete
                    for line in chunk[:complete].decode("utf-8", "replace").splitlines():
                        out.write(f"[{path.stem}] {line}\n" if prefix else line + "\n")
                    out.flush()
        time.sleep(FOLLOW_POLL_SECONDS)
    return 0


# ---- Kubernetes ------------------------------------------------------------------------------


def k8s_logs(api: Any, namespace: str, deployment: str, replica: int | None, out: TextIO, *,
             follow: bool = False, lines: int = TAIL_LINES) -> int:
    """Print (or stream) the logs of the Deployment's pods through the Kubernetes API.

    Replica N is the Nth pod by name. A pod whose node cannot serve logs (kwok's simulated nodes
    run no container) is reported on stderr with the API's answer.
    """
    from kubernetes import client as k8s_client

    apps, core = k8s_client.AppsV1Api(api), k8s_client.CoreV1Api(api)
    try:
        spec = apps.read_namespaced_deployment(deployment, namespace).spec
    except k8s_client.ApiException as exc:
        if exc.status == 404:
            raise LogsError(f"no Deployment {deployment!r} in namespace {namespace!r}") from None
        raise
    selector = ",".join(f"{k}={v}" for k, v in sorted((spec.selector.match_labels or {}).items()))
    pods = sorted(core.list_namespaced_pod(namespace, label_selector=selector).items, key=lambda p: p.metadata.name)
    if replica is not None:
        if not 0 <= replica < len(pods):
            raise LogsError(f"Deployment {deployment!r} has {len(pods)} pod(s): --replica 0..{len(pods) - 1}")
        pods = [pods[replica]]
    if not pods:
        sys.stderr.write(f"serveform logs: Deployment {deployment!r} in {namespace!r} has no pods\n")
        return 1
    status = 0
    prefix = len(pods) > 1
    for pod in pods:
        name = pod.metadata.name
        try:
            if follow and len(pods) == 1:
                stream = core.read_namespaced_pod_log(name, namespace, follow=True, tail_lines=lines, _preload_content=False)
                for raw in _stream_lines(stream):
                    out.write(raw + "\n")
                    out.flush()
                continue
            text = core.read_namespaced_pod_log(name, namespace, tail_lines=lines, _request_timeout=LOG_REQUEST_TIMEOUT_SECONDS)
        except Exception as exc:  # noqa: BLE001 - ApiException or the transport's: reported per pod
            node = pod.spec.node_name or "no node yet"
            if isinstance(exc, k8s_client.ApiException):
                body = exc.body if isinstance(exc.body, str) else ""
                why = f"({exc.status}): {_api_message(body.strip() or str(exc.reason))}"
            else:
                why = f"({type(exc).__name__}): {exc}"
            sys.stderr.write(f"serveform logs: pod {namespace}/{name} (node {node}, {pod.status.phase}): the Kubernetes API gave no logs {why}{_simulated(core, node)}\n")
            status = 1
            continue
        for line in (text or "").splitlines():
            out.write(f"[{name}] {line}\n" if prefix else line + "\n")
        out.flush()
    if follow and len(pods) > 1:
        sys.stderr.write("serveform logs: --follow streams one pod; add --replica N\n")
    return status


def _simulated(core: Any, node: str) -> str:
    """A hint when the node is one of kwok's (k8s-local): they run no container, so have no logs."""
    try:
        annotations = core.read_node(node, _request_timeout=LOG_REQUEST_TIMEOUT_SECONDS).metadata.annotations or {}
    except Exception:  # noqa: BLE001 - only a hint; no permission to read nodes is fine
        return ""
    if annotations.get(KWOK_NODE_ANNOTATION) == "fake":
        return f"\n  node {node} is simulated by kwok (k8s-local): its pods run no container, so there are no logs to read"
    return ""


def _api_message(body: str) -> str:
    import json

    try:
        return str(json.loads(body).get("message") or body)
    except (ValueError, AttributeError):
        return body


def _stream_lines(response: Any) -> Iterator[str]:
    pending = b""
    for chunk in response.stream(1024, decode_content=False):
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield line.decode("utf-8", "replace")
    if pending:
        yield pending.decode("utf-8", "replace")


# ---- clouds ----------------------------------------------------------------------------------


def cloud_commands(settings: Any, outputs: Mapping[str, Any], target: str, replica: int | None, follow: bool) -> list[str]:
    """The commands that show ``target``'s logs on a VM stack, one per line, ready to paste."""
    backend, stack = settings.backend, settings.stack
    services = {s["name"]: s for s in outputs.get("services") or []}
    if target not in DAEMONS and target not in services:
        raise LogsError(f"no service {target!r} in this stack; services: {', '.join(sorted(services)) or 'none'}; or `gateway`, `scaler`")
    unit = _UNITS[target] if target in DAEMONS else _UNITS["replica"]
    journal = f"sudo journalctl -u {unit} " + ("-f" if follow else f"-n {TAIL_LINES} --no-pager")
    pick = replica if replica is not None else 0
    lines = []
    if backend == "aws":
        region = settings.aws.region or (settings.regions[0] if settings.regions else "<region>")
        if target in DAEMONS:
            find = (f"aws ec2 describe-instances --region {region} --filters Name=tag:serveform:stack,Values={stack} "
                    "Name=tag:serveform:role,Values=gateway Name=instance-state-name,Values=running "
                    "--query 'Reservations[].Instances[].InstanceId' --output text")
        else:
            find = (f"aws autoscaling describe-auto-scaling-groups --region {region} --auto-scaling-group-names "
                    f"{services[target]['group']} --query 'AutoScalingGroups[0].Instances[{pick}].InstanceId' --output text")
        lines += [
            f"# {target} on AWS: find the instance, then read its journal through SSM Session Manager",
            f"INSTANCE=$({find})",
            f"aws ssm start-session --region {region} --target \"$INSTANCE\" --document-name AWS-StartInteractiveCommand "
            f"--parameters command='{journal}'",
            f"# without SSM: aws ec2 get-console-output --region {region} --instance-id \"$INSTANCE\" --latest --output text",
        ]
    elif backend == "gcp":
        project = settings.gcp.project or "<project>"
        region = settings.gcp.region or (settings.regions[0] if settings.regions else "<region>")
        if target in DAEMONS:
            find = (f"gcloud compute instances list --project {project} "
                    f"--filter='labels.serveform-stack={stack} AND labels.serveform-role=gateway' --format='value(name)'")
        else:
            find = (f"gcloud compute instance-groups managed list-instances {services[target]['group']} --project {project} "
                    f"--region {region} --format='value(instance.basename())' | sed -n {pick + 1}p")
        lines += [
            f"# {target} on GCP: find the instance and its zone, then read its journal over SSH (OS Login)",
            f"INSTANCE=$({find})",
            f"ZONE=$(gcloud compute instances list --project {project} --filter=\"name=$INSTANCE\" --format='value(zone.basename())')",
            f"gcloud compute ssh \"$INSTANCE\" --project {project} --zone \"$ZONE\" -- {journal}",
        ]
    elif backend == "azure":
        group = settings.azure.resource_group or f"serveform-{stack}"
        command = f"journalctl -u {unit} -n {TAIL_LINES} --no-pager"
        if target in DAEMONS:
            lines += [
                f"# {target} on Azure: run journalctl on the gateway VM with run-command (no streaming; repeat to follow)",
                f"VM=$(az vm list -g {group} --query \"[?tags.\\\"serveform-role\\\"=='gateway'].name | [0]\" -o tsv)",
                f"az vm run-command invoke -g {group} -n \"$VM\" --command-id RunShellScript --scripts '{command}' "
                "--query 'value[0].message' -o tsv",
            ]
        else:
            lines += [
                f"# replica {pick} of {target} on Azure: run journalctl on the scale set's instance (no streaming)",
                f"ID=$(az vmss list-instances -g {group} -n {services[target]['group']} --query '[{pick}].instanceId' -o tsv)",
                f"az vmss run-command invoke -g {group} -n {services[target]['group']} --instance-id \"$ID\" "
                f"--command-id RunShellScript --scripts '{command}' --query 'value[0].message' -o tsv",
            ]
    else:
        raise LogsError(f"backend {backend!r}: no log access known")
    if target not in DAEMONS:
        lines.append("# the replica's container itself: sudo docker logs serveform-replica (on the same VM)")
    return lines
