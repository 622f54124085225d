"""`serveform preview|up|refresh|destroy|endpoints|status|logs --stack ENV`: thin wrappers over the engine."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]

_OPERATIONS = {
    "preview": "show what `up` would change",
    "up": "create or update the stack's resources",
    "refresh": "read the real state of the stack's resources into its state",
    "destroy": "delete every resource of the stack",
}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    for name, help_text in _OPERATIONS.items():
        parser = sub.add_parser(name, help=help_text, description=help_text)
        _common(parser)
        if name == "destroy":
            parser.add_argument("--yes", "-y", action="store_true", help="destroy without asking for confirmation (required when stdin is not a terminal)")
        elif name != "preview":
            # `up` and `refresh` never ask; the flag is accepted so `pulumi`-style command lines work.
            parser.add_argument("--yes", "-y", action="store_true", help="accepted for compatibility with `pulumi`; `serveform %s` never asks" % name)
        if name in ("preview", "up", "destroy", "refresh"):
            parser.add_argument("--target", action="append", default=[], metavar="URN", help="limit to these resources")
        parser.set_defaults(func=_operation(name))
    endpoints = sub.add_parser("endpoints", help="show how to reach a stack's services")
    _common(endpoints)
    endpoints.add_argument("--json", action="store_true", help="print one JSON object")
    endpoints.set_defaults(func=_endpoints)
    status = sub.add_parser("status", help="show every service's replicas, readiness, load and scaler decision")
    _common(status)
    status.add_argument("--json", action="store_true", help="print one JSON object (shape: README, `serveform status`)")
    status.set_defaults(func=_status)
    logs = sub.add_parser("logs", help="show a service's replica logs, or the gateway's or the scaler's")
    _common(logs)
    logs.add_argument("target", metavar="SERVICE", help="a service name, or `gateway`, or `scaler`")
    logs.add_argument("--replica", "-r", type=int, default=None, metavar="N", help="only replica N (from 0); default: all")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until interrupted")
    logs.add_argument("--lines", "-n", type=int, default=200, metavar="N", help="how many past lines to show first (200)")
    logs.set_defaults(func=_logs)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", "-s", required=True, help="stack (environment) name: stacks/Pulumi.<stack>.yaml")
    parser.add_argument("--project-dir", type=Path, default=None, help="directory holding Pulumi.yaml")


def _engine(args: argparse.Namespace, *, quiet: bool = False, on_event: Any = None):
    import os

    from .engine import Engine, project_dir

    if args.project_dir is not None:
        os.environ["SERVEFORM_PROJECT_DIR"] = str(args.project_dir.resolve())
    return Engine(stack=args.stack, project=project_dir(), on_output=None if quiet else _print, on_event=on_event)


def _print(line: str) -> None:
    sys.stdout.write(line if line.endswith("\n") else line + "\n")
    sys.stdout.flush()


def _preflight(engine: Any) -> int:
    """Validate stack config and every service file before the engine starts: exit 2 on errors."""
    import os

    from .services import compile_services
    from .settings import StackConfigError, StackSettings

    try:
        settings = StackSettings.from_config(engine.config(), stack=engine.stack, project_dir=engine.project)
    except StackConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    _, reports = compile_services(settings, os.environ)
    for report in reports:
        print(report, file=sys.stderr)
    return 2 if reports else 0


def _operation(name: str):
    def run(args: argparse.Namespace) -> int:
        import contextlib

        from pulumi.automation import errors as auto_errors

        from .progress import TerminalProgress

        # `preview` prints the engine's diff; the others show a progress line on a terminal and
        # only their summary elsewhere (warnings still reach stderr).
        display: Any = contextlib.nullcontext()
        if name == "preview":
            engine = _engine(args)
        elif sys.stdout.isatty():
            display = TerminalProgress(sys.stdout)
            engine = _engine(args, quiet=True, on_event=display.on_event)
        else:
            engine = _engine(args, quiet=True, on_event=_warnings_to_stderr)
        if name == "destroy":
            status = _confirm_destroy(engine, args)
        else:
            status = _preflight(engine)
        if status:
            return status
        kwargs: dict[str, Any] = {}
        if args.target:
            kwargs["target"] = args.target
        try:
            with display:
                result = getattr(engine, name)(**kwargs)
        except auto_errors.CommandError as exc:
            print(f"serveform {name}: the update failed:\n{_error_text(exc)}", file=sys.stderr)
            return 1
        summary = getattr(result, "summary", None)
        if summary is not None and getattr(summary, "resource_changes", None) is not None:
            print(f"serveform {name}: {summary.result}: {json.dumps(summary.resource_changes, sort_keys=True)}")
        elif hasattr(result, "change_summary"):
            print(f"serveform {name}: {json.dumps(result.change_summary, sort_keys=True)}")
        return 0

    return run


def _warnings_to_stderr(event: Any) -> None:
    diagnostic = getattr(event, "diagnostic_event", None)
    if diagnostic is not None and diagnostic.severity == "warning" and not diagnostic.ephemeral:
        where = f"{diagnostic.urn.rsplit('::', 1)[-1]}: " if diagnostic.urn else ""
        print(f"warning: {where}{diagnostic.message.rstrip()}", file=sys.stderr)


def _confirm_destroy(engine: Any, args: argparse.Namespace) -> int:
    """Say what `destroy` deletes and keeps, then ask as Pulumi does, unless ``--yes``; 0 to go on."""
    from .destroy import destroy_summary

    summary = destroy_summary(engine.stack, engine.stack_obj.export_stack().deployment or {}, args.target)
    print(summary.text(), file=sys.stderr if args.yes else sys.stdout)
    if args.yes or not summary.resources:
        return 0
    if not sys.stdin.isatty():
        print(
            f"serveform destroy: refusing to destroy stack {engine.stack!r} without confirmation: stdin is not a "
            "terminal. Pass --yes to destroy without asking.",
            file=sys.stderr,
        )
        return 2
    try:
        answer = input(f"Destroy stack {engine.stack!r}? Type 'yes' to confirm: ")
    except EOFError:
        answer = ""
    if answer.strip().lower() not in ("y", "yes"):
        print("serveform destroy: cancelled; nothing was changed.", file=sys.stderr)
        return 1
    return 0


def _error_text(exc: Exception) -> str:
    text = str(exc)
    # The Automation API wraps the CLI's stderr; keep the lines a person needs.
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith((" code:", "code:"))]
    return "\n".join(lines[-40:])


def _endpoints(args: argparse.Namespace) -> int:
    engine = _engine(args, quiet=True)
    outputs = engine.stack_obj.outputs()
    values = {k: v.value for k, v in outputs.items()}
    if not values:
        print(f"serveform endpoints: stack {args.stack!r} has no outputs; run `serveform up --stack {args.stack}`", file=sys.stderr)
        return 1
    info = _endpoint_info(values)
    if values.get("namespace") and not info["gateway"]["ca_cert"]:
        info["gateway"]["ca_cert"] = _k8s_gateway_ca(engine, values["namespace"])
    if args.json:
        print(json.dumps(info, indent=2, sort_keys=True))
        return 0
    print(_render_endpoints(info))
    return 0


# Where the k8s gateway pod keeps its internal CA's root (components/k8s/_caddy.STATE_DIR).
_K8S_GATEWAY_CA = "/var/lib/serveform-gateway/state/caddy/pki/authorities/local/root.crt"


def _k8s_gateway_ca(engine: Any, namespace: str) -> str | None:
    """The k8s gateway pod's internal root certificate, saved under .serveform/ (None: TLS is not internal or no pod).

    It lives in the pod (a new pod, a new CA), so it is read through the API server on each call.
    """
    from kubernetes import client
    from kubernetes.stream import stream

    from .kube import api_client
    from .settings import StackSettings

    settings = StackSettings.from_config(engine.config(), stack=engine.stack, project_dir=engine.project)
    if settings.gateway.tls != "internal":
        return None
    core = client.CoreV1Api(api_client(settings))
    pods = [p for p in core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=gateway").items
            if p.status.phase == "Running"]
    if not pods:
        return None
    text = stream(core.connect_get_namespaced_pod_exec, pods[0].metadata.name, namespace, command=["cat", _K8S_GATEWAY_CA],
                  stderr=True, stdin=False, stdout=True, tty=False)
    if "BEGIN CERTIFICATE" not in text:
        return None
    path = Path(engine.project) / ".serveform" / "k8s" / engine.stack / "gateway-ca.crt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _endpoint_info(values: dict[str, Any]) -> dict[str, Any]:
    gateway = values.get("gateway") or {}
    services = values.get("services") or []
    return {
        "domain": values.get("domain"),
        "gateway": {"address": gateway.get("address"), "ca_cert": gateway.get("ca_cert")},
        "token": values.get("token"),
        "openai_base_url": values.get("openai_base_url"),
        "services": [
            {"name": s.get("name"), "url": s.get("url"), "auth": s.get("auth", True), "model": s.get("model")}
            for s in services
        ],
    }


def _render_endpoints(info: dict[str, Any]) -> str:
    address = info["gateway"]["address"] or ""
    host, _, port = address.rpartition(":")
    ca = info["gateway"]["ca_cert"]
    token = info["token"] or "<token>"
    lines = [f"gateway: {address}  domain: {info['domain']}"]
    if ca:
        lines.append(f"CA certificate: {ca}")
    for service in info["services"]:
        lines.append(f"- {service['name']}: {service['url']}" + (f"  (model: {service['model']})" if service["model"] else ""))
    for service in info["services"][:1]:
        url = service["url"]
        hostname = url.split("//", 1)[-1].split("/", 1)[0].split(":", 1)[0]
        resolve = f"--resolve {hostname}:{port}:{host or '127.0.0.1'}" if port else ""
        cacert = f"--cacert {ca}" if ca else ""
        auth = f"-H 'Authorization: Bearer {token}'" if service["auth"] else ""
        lines += ["", "Try it:", f"  curl {resolve} {cacert} {auth} {url}/".replace("  ", " ")]
    if info["openai_base_url"]:
        model = next((s["model"] for s in info["services"] if s["model"]), None)
        if model:
            lines += [
                "",
                "With the openai client (run it with .venv/bin/python, which has openai and httpx):",
                _openai_snippet(info["openai_base_url"], token, model, ca, address),
            ]
    return "\n".join(lines)


def _openai_snippet(base_url: str, token: str, model: str, ca: str | None, address: str) -> str:
    # `*.localhost` does not resolve to loopback everywhere, so the snippet connects to the gateway's
    # address and keeps the service host name for SNI and the Host header.
    host = base_url.split("//", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    verify = repr(ca) if ca else "True"
    return "\n".join(
        [
            "import httpx, openai",
            "class _Loopback(httpx.HTTPTransport):",
            "    def handle_request(self, request):",
            f"        request.url = request.url.copy_with(host={address.rpartition(':')[0] or '127.0.0.1'!r})",
            f"        request.extensions['sni_hostname'] = {host!r}",
            "        return super().handle_request(request)",
            f"client = openai.OpenAI(base_url={base_url!r}, api_key={token!r},",
            f"                       http_client=httpx.Client(transport=_Loopback(verify={verify})))",
            f"reply = client.chat.completions.create(model={model!r}, messages=[{{'role': 'user', 'content': 'hello'}}])",
            "print(reply.choices[0].message.content)",
        ]
    )


def _status(args: argparse.Namespace) -> int:
    from .settings import StackConfigError
    from .status import collect, render

    engine = _engine(args, quiet=True)
    try:
        info = collect(engine)
    except StackConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2, sort_keys=True) if args.json else render(info))
    return 0


def _logs(args: argparse.Namespace) -> int:
    from .logs import DAEMONS, LogsError, cloud_commands, follow_files, k8s_logs, local_log_files
    from .settings import StackConfigError, StackSettings

    engine = _engine(args, quiet=True)
    try:
        settings = StackSettings.from_config(engine.config(), stack=engine.stack, project_dir=engine.project)
    except StackConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    outputs = engine.outputs()
    services = {s["name"]: s for s in outputs.get("services") or []}
    if args.replica is not None and args.target in DAEMONS:
        print(f"serveform logs: --replica applies to services, not to the {args.target}", file=sys.stderr)
        return 2
    try:
        if settings.backend == "local":
            counts = {name: int((s.get("replicas") or {}).get("count") or 0) for name, s in services.items()}
            paths = local_log_files(settings.state_dir, args.target, args.replica, counts)
            try:
                return follow_files(paths, sys.stdout, lines=args.lines, follow=args.follow)
            except KeyboardInterrupt:
                return 0
        if settings.backend == "k8s":
            from .kube import api_client

            if args.target not in DAEMONS and args.target not in services:
                raise LogsError(f"no service {args.target!r} in this stack; services: {', '.join(sorted(services)) or 'none'}; or `gateway`, `scaler`")
            deployment = args.target if args.target in DAEMONS else services[args.target]["group"]
            namespace = outputs.get("namespace") or settings.k8s.namespace
            api = api_client(settings)
            try:
                return k8s_logs(api, namespace, deployment, args.replica, sys.stdout, follow=args.follow, lines=args.lines)
            except KeyboardInterrupt:
                return 0
            finally:
                api.close()
        print("\n".join(cloud_commands(settings, outputs, args.target, args.replica, args.follow)))
        return 0
    except LogsError as exc:
        print(f"serveform logs: {exc}", file=sys.stderr)
        return 2
