"""`serveform scale` and `serveform scaler run | replay`: parse arguments, call the scaler, render.

    serveform scale SERVICE N --stack ENV
    serveform scaler run --stack ENV [--dry-run] [--metrics-url URL] [--interval S] [--listen ADDR]
    serveform scaler replay --service FILE --trace CSV [--json]

`python -m serveform.scaler run|replay ...` is the same command without the `serveform scaler`
prefix (what the systemd unit, the Kubernetes Deployment and the local stack start).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .constants import (
    DEFAULT_HOST_LABEL,
    DEFAULT_IN_FLIGHT_SELECTOR,
    DEFAULT_INTERVAL_SECONDS,
    DEFAULT_LISTEN_ADDRESS,
    DEFAULT_REQUEST_SELECTOR,
)

__all__ = ["add_parsers", "add_scaler_commands"]

_EXIT_BAD_INPUT = 2


def add_parsers(subparsers: argparse._SubParsersAction) -> None:
    """Register `serveform scale` and `serveform scaler ...`."""
    scale = subparsers.add_parser(
        "scale",
        help="set a service's replica count (like kubectl scale); the scaler carries on from it",
        description="Run a scale update of the stack: the last deployment with SERVICE at N replicas. "
        "Nothing of the working tree is applied; the count is kept by every later `up` until the "
        "scaler decides otherwise or the service's replicas range no longer allows it.",
    )
    scale.add_argument("service", help="the service's name")
    scale.add_argument("count", type=_count, help="the replica count (within the service's replicas range)")
    scale.add_argument("--stack", "-s", required=True, help="stack (environment) name: stacks/Pulumi.<stack>.yaml")
    scale.add_argument("--project-dir", type=Path, default=None, help="directory holding Pulumi.yaml")
    scale.set_defaults(func=_scale)
    parser = subparsers.add_parser(
        "scaler",
        help="the autoscaler: run the daemon of a stack, or replay a request trace through a policy",
        description="The autoscaler daemon and its offline replay.",
    )
    sub = parser.add_subparsers(dest="scaler_command", metavar="SUBCOMMAND", required=True)
    add_scaler_commands(sub)


def add_scaler_commands(sub: argparse._SubParsersAction) -> None:
    """Register `run` and `replay` (also used by `python -m serveform.scaler`)."""
    run = sub.add_parser(
        "run",
        help="read Caddy's request rates and keep a stack's replica counts in line with them",
        description="Every few seconds: Caddy metrics -> request-rate windows -> RPS policy -> a scale `up` of the stack.",
    )
    run.add_argument("--stack", required=True, help="the stack to scale (stacks/Pulumi.<stack>.yaml)")
    run.add_argument("--dry-run", action="store_true", help="decide and log, but never run up")
    run.add_argument("--metrics-url", help="Caddy's Prometheus endpoint (default: metrics_url of the gateway's status.json)")
    run.add_argument(
        "--metrics-token-file", type=Path,
        help="a file with the bearer token (or the gateway's JSON token list) for a metrics endpoint that requires one",
    )
    run.add_argument(
        "--gateway-state-dir",
        type=Path,
        help="the gateway's state directory holding status.json (default: the local stack's gateway)",
    )
    run.add_argument("--access-log", type=Path, help="Caddy's JSON access log, used when the metrics have no per-host series")
    run.add_argument("--selector", default=DEFAULT_REQUEST_SELECTOR, help=f"series counted as requests (default: {DEFAULT_REQUEST_SELECTOR})")
    run.add_argument(
        "--in-flight-selector",
        default=DEFAULT_IN_FLIGHT_SELECTOR,
        help=f"gauge of requests being handled, or 'off' (default: {DEFAULT_IN_FLIGHT_SELECTOR})",
    )
    run.add_argument("--host-label", default=DEFAULT_HOST_LABEL, help="the label naming a request's host")
    run.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL_SECONDS, metavar="S", help=f"seconds between evaluations (default {DEFAULT_INTERVAL_SECONDS:g})"
    )
    run.add_argument(
        "--listen", default=DEFAULT_LISTEN_ADDRESS, metavar="ADDR", help=f"host:port of /metrics and /healthz, or 'off' (default {DEFAULT_LISTEN_ADDRESS})"
    )
    run.add_argument("--state", type=Path, help="the state file (default .serveform/scaler/<stack>/scaler-state.json)")
    run.add_argument("--project-dir", type=Path, help="the project directory (default: SERVEFORM_PROJECT_DIR or the checkout)")
    run.add_argument(
        "--aws-groups", type=Path, metavar="FILE",
        help="an AWS gateway VM's discovery.json: set the services' auto scaling groups' desired capacity "
        "with the instance role (Auto Scaling API) instead of running pulumi up",
    )
    run.add_argument(
        "--gateway-config", type=Path, metavar="FILE",
        help="a VM gateway's gateway.json: watch the services it serves (with --aws-groups; no stack state needed)",
    )
    run.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    run.set_defaults(func=_run)

    replay = sub.add_parser(
        "replay",
        help="run a service's scaling policy over a recorded request trace and print its replica count",
        description="Replay a CSV trace of `second,requests` through the service's RPS policy, starting at its minimum.",
    )
    replay.add_argument("--service", required=True, type=Path, help="the service file (.dstack.yml)")
    replay.add_argument("--trace", required=True, type=Path, help="CSV of `second,requests`")
    replay.add_argument("--json", action="store_true", help='one JSON object per second: {"t", "rps", "replicas"}')
    replay.set_defaults(func=_replay)


def _run(args: argparse.Namespace) -> int:
    import asyncio

    from ..stacks.engine import project_dir
    from .daemon import ScalerConfig, default_state_path, run
    from .metrics import MetricsFormatError, Selector

    logging.basicConfig(
        level=getattr(logging, args.log_level),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        Selector.parse(args.selector)
        if args.in_flight_selector != "off":
            Selector.parse(args.in_flight_selector)
    except MetricsFormatError as exc:
        print(f"serveform scaler: error: {exc}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    if args.interval <= 0:
        print("serveform scaler: error: --interval must be > 0", file=sys.stderr)
        return _EXIT_BAD_INPUT
    if args.gateway_config is not None and args.aws_groups is None:
        print("serveform scaler: error: --gateway-config needs --aws-groups (the groups' counts are the starting point)", file=sys.stderr)
        return _EXIT_BAD_INPUT
    for flag, path in (("--aws-groups", args.aws_groups), ("--gateway-config", args.gateway_config)):
        if path is not None and not path.is_file():
            print(f"serveform scaler: error: {flag} {path}: no such file", file=sys.stderr)
            return _EXIT_BAD_INPUT
    project = (args.project_dir or project_dir()).resolve()
    if args.gateway_config is None and not (project / "stacks" / f"Pulumi.{args.stack}.yaml").is_file():
        print(f"serveform scaler: error: {project}/stacks/Pulumi.{args.stack}.yaml: no such stack config", file=sys.stderr)
        return _EXIT_BAD_INPUT
    state = args.state or default_state_path(project, args.stack)
    if args.dry_run:
        # A dry run starts from the real state but never changes it.
        state = state.with_name(state.name + ".dry-run")
        real = args.state or default_state_path(project, args.stack)
        if real.is_file() and not state.exists():
            state.parent.mkdir(parents=True, exist_ok=True)
            state.write_bytes(real.read_bytes())
    config = ScalerConfig(
        stack=args.stack,
        project_dir=project,
        metrics_url=args.metrics_url,
        metrics_token_file=args.metrics_token_file,
        gateway_state_dir=args.gateway_state_dir,
        access_log=args.access_log,
        selector=args.selector,
        in_flight_selector=None if args.in_flight_selector == "off" else args.in_flight_selector,
        host_label=args.host_label,
        interval_seconds=args.interval,
        listen=None if args.listen == "off" else args.listen,
        dry_run=args.dry_run,
        state_path=state,
        aws_groups=args.aws_groups,
        gateway_config=args.gateway_config,
    )
    return asyncio.run(run(config))


def _replay(args: argparse.Namespace) -> int:
    from ..translator import CompileContext, TranslatorError, compile_file
    from .policy import policy_for
    from .replay import TraceError, read_trace, replay

    try:
        plan = compile_file(args.service, CompileContext(require_env=False)).plan
    except TranslatorError as exc:
        print(str(exc), file=sys.stderr)
        return _EXIT_BAD_INPUT
    except OSError as exc:
        print(f"{args.service}: error: {exc.strerror or exc}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    policy = policy_for(plan)
    if policy is None:
        why = "has no `scaling`" if plan.scaling is None else f"has a fixed count ({plan.replicas.min})"
        print(f"{args.service}: error: replicas: service {plan.name!r} {why}, so there is nothing to replay", file=sys.stderr)
        return _EXIT_BAD_INPUT
    try:
        trace = read_trace(args.trace)
    except TraceError as exc:
        print(f"{exc}", file=sys.stderr)
        return _EXIT_BAD_INPUT
    out = sys.stdout
    if args.json:
        for point in replay(policy, trace):
            out.write(json.dumps(point.to_json()) + "\n")
        return 0
    out.write(
        f"# {plan.name}: replicas {policy.min_replicas}..{policy.max_replicas}, target {policy.target_rps:g} rps per replica, "
        f"scale_up_delay {policy.scale_up_delay_seconds:g}s, scale_down_delay {policy.scale_down_delay_seconds:g}s, "
        f"window {policy.window_seconds}s\n"
    )
    out.write(f"{'t':>7} {'rps':>10} {'replicas':>8}  reason\n")
    points = list(replay(policy, trace))
    previous = None
    for i, point in enumerate(points):
        if point.replicas != previous or i == len(points) - 1:
            out.write(f"{point.t:>7} {point.rps:>10.3f} {point.replicas:>8}  {point.reason}\n")
            previous = point.replicas
    peak = max(p.replicas for p in points)
    replica_seconds = sum(p.replicas for p in points)
    out.write(f"# {len(points)} s replayed, peak {peak} replicas, {replica_seconds} replica-seconds\n")
    return 0


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of replicas, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more replicas, got {value}")
    return value


def _scale(args: argparse.Namespace) -> int:
    import os

    import time

    from ..stacks.engine import LOCK_WAIT_SECONDS, project_dir
    from .applier import ApplyError, PulumiApplier, StackBusyError
    from .constants import APPLY_BACKOFF_INITIAL_SECONDS, APPLY_BACKOFF_MAX_SECONDS

    if args.project_dir is not None:
        os.environ["SERVEFORM_PROJECT_DIR"] = str(args.project_dir.resolve())
    project = project_dir()
    from ..stacks.engine import read_stack_file

    try:
        backend = read_stack_file(project, args.stack).get("serveform:backend")
    except FileNotFoundError:
        backend = None  # the update below says what is missing
    if backend == "aws":
        return _scale_aws(args, project)
    applier = PulumiApplier(args.stack, project, source="manual", on_output=_echo)
    try:
        deployed = applier.read_replicas()
    except Exception as exc:
        print(f"serveform scale: cannot read stack {args.stack}: {exc}", file=sys.stderr)
        return 1
    if args.service not in deployed:
        known = ", ".join(sorted(deployed)) or "none"
        print(
            f"serveform scale: stack {args.stack} has no deployed service {args.service!r} (deployed: {known})",
            file=sys.stderr,
        )
        return _EXIT_BAD_INPUT
    # A scaler update (or CI's) may hold the stack's lock: wait it out with backoff, as they do.
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    delay = APPLY_BACKOFF_INITIAL_SECONDS
    while True:
        try:
            applier.apply({args.service: args.count}, message=f"serveform scale {args.service} {args.count}")
            break
        except StackBusyError as exc:
            if time.monotonic() + delay > deadline:
                print(f"serveform scale: {exc}", file=sys.stderr)
                return 1
            print(f"serveform scale: stack {args.stack} is locked by another update; retrying in {delay:.0f} s", file=sys.stderr)
            time.sleep(delay)
            delay = min(delay * 2, APPLY_BACKOFF_MAX_SECONDS)
        except ApplyError as exc:
            print(f"serveform scale: {exc}", file=sys.stderr)
            return 1
    now = applier.read_replicas().get(args.service)
    print(f"serveform scale: {args.service} runs {now} replica(s)" + ("" if now == args.count else f" ({args.count} is outside its replicas range)"))
    return 0


def _scale_aws(args: argparse.Namespace, project: Path) -> int:
    """`serveform scale` on AWS: the group's desired capacity, set with the operator's AWS
    credentials through the Auto Scaling API, as the scaler sets it (the stack never reverts it)."""
    from ..aws.client import default_credentials
    from ..stacks.engine import read_stack_file
    from .applier import ApplyError, PulumiApplier
    from .autoscaling import AutoScalingApplier, region_of

    try:
        outputs = PulumiApplier(args.stack, project).outputs()
    except Exception as exc:
        print(f"serveform scale: cannot read stack {args.stack}: {exc}", file=sys.stderr)
        return 1
    groups = {str(s["name"]): str(s["group"]) for s in outputs.get("services") or [] if s.get("group")}
    if args.service not in groups:
        known = ", ".join(sorted(groups)) or "none"
        print(f"serveform scale: stack {args.stack} has no deployed service {args.service!r} (deployed: {known})", file=sys.stderr)
        return _EXIT_BAD_INPUT
    region = region_of(read_stack_file(project, args.stack))
    if not region:
        print(f"serveform scale: stacks/Pulumi.{args.stack}.yaml: serveform:aws.region: required (the groups' region)", file=sys.stderr)
        return _EXIT_BAD_INPUT
    applier = AutoScalingApplier({args.service: groups[args.service]}, region, credentials=default_credentials, source="manual")
    try:
        now = applier.apply({args.service: args.count}, message=f"serveform scale {args.service} {args.count}")[args.service]
    except ApplyError as exc:
        print(f"serveform scale: {exc}", file=sys.stderr)
        return 1
    print(
        f"serveform scale: {args.service} runs {now} replica(s) (auto scaling group {groups[args.service]})"
        + ("" if now == args.count else f" ({args.count} is outside its replicas range)")
    )
    return 0


def _echo(line: str) -> None:
    sys.stdout.write(line if line.endswith("\n") else line + "\n")
    sys.stdout.flush()
