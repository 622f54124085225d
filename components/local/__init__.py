"""The `local` backend: a stack deployed onto this machine as processes, through Pulumi.

`deploy(settings, plans)` registers, for a stack whose `serveform:backend` is `local`:

- a `Gateway` (Caddy + the OpenAI router) on loopback, serving `<service>.<domain>`;
- a generated bearer token (`gateway-token`, a Pulumi secret) when `serveform:tokens` is empty;
- a `Volume` per network volume name, shared by the services that mount it;
- a `ReplicaGroup` per service, with the count the program resolved (`serveform.stacks.replicas`:
  the last deployment's, the scaler's or `serveform scale`'s), clamped to the plan's bounds;
- a `Scaler` (the scaler daemon, applying its counts with `up` on this stack) when some
  service has a replica range and a scaling policy.

and exports how to reach the stack (`serveform endpoints` reads these): `domain`, `gateway`
(`address`, `ca_cert`), `token` (secret), `openai_base_url`, and `services`, a list of
`{name, url, auth, model, model_endpoint, group, replicas: {min, max, count}, addresses}`.

Everything lives under the stack's state directory (`serveform:local.state_dir`, default
`<project>/.serveform/local/<stack>`): replica logs, volumes, the gateway's config and storage.
`destroy` removes all of it, volumes too (unless the stack sets `serveform:retainVolumes: true`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pulumi

from serveform.translator.plan import ServicePlan

from .gateway import Gateway, GatewayArgs
from .replica_group import ReplicaGroup, ReplicaGroupArgs
from .scaler import Scaler, ScalerArgs
from .volume import Volume, VolumeArgs

if TYPE_CHECKING:
    from serveform.stacks.settings import StackSettings

__all__ = [
    "Gateway",
    "GatewayArgs",
    "ReplicaGroup",
    "ReplicaGroupArgs",
    "Scaler",
    "ScalerArgs",
    "Volume",
    "VolumeArgs",
    "deploy",
    "gateway_settings",
    "replica_count",
]


def replica_count(settings: "StackSettings", plan: ServicePlan) -> int:
    """The count the program resolved for this run, clamped to the plan's bounds."""
    wanted = settings.replicas.get(plan.name, plan.replicas.initial)
    return max(plan.replicas.min, min(plan.replicas.max, wanted))


def gateway_settings(settings: "StackSettings"):
    """The gateway's settings for a local stack: loopback only, unprivileged ports, the admin API on a socket."""
    from serveform.gateway.settings import GatewaySettings
    from serveform.stacks.settings import LOCAL_HTTP_PORT, LOCAL_HTTPS_PORT

    config = settings.gateway
    return GatewaySettings(
        domain=settings.domain,
        tls=config.tls,
        dns_provider=config.dns_provider,
        acme_email=config.acme_email,
        http_port=config.http_port or LOCAL_HTTP_PORT,
        https_port=config.https_port or LOCAL_HTTPS_PORT,
        bind=("127.0.0.1",),
        body_limit_mb=config.body_limit_mb,
        stream_timeout_seconds=config.stream_timeout_seconds,
        replica_wait_seconds=config.replica_wait_seconds,
        allow_plain_http=config.allow_plain_http,
        tokens=settings.tokens,
    )


def deploy(settings: "StackSettings", plans: Sequence[ServicePlan]) -> None:
    """Register the local stack's components and export its endpoints."""
    from serveform.gateway.routes import routes_from_plans

    state_dir = settings.state_dir
    project_dir = str(Path(settings.project_dir))
    cleanup_root = _cleanup_root(settings)
    gw_settings = gateway_settings(settings)
    # Fails with every problem of every service before a single resource is registered; a
    # RunError shows the message alone, without a traceback of the program.
    try:
        routes = {route.name: route for route in routes_from_plans(gw_settings, plans)}
    except ValueError as exc:
        raise pulumi.RunError(str(exc)) from None

    if settings.tokens:
        tokens = pulumi.Output.secret([t.get_secret_value() for t in settings.tokens])
    else:
        from ._token import PROVIDER_VERSION, Token

        generated = Token("gateway-token", {"provider_version": PROVIDER_VERSION})
        tokens = pulumi.Output.secret(generated.value).apply(lambda value: [value])
    gateway = Gateway(
        "gateway",
        GatewayArgs(
            settings=gw_settings,
            plans=tuple(plans),
            tokens=tokens,
            state_dir=str(state_dir / "gateway"),
            project_dir=project_dir,
            cleanup_root=cleanup_root,
        ),
    )

    volumes: dict[str, Volume] = {}
    for plan in plans:
        for volume in plan.volumes:
            if volume.kind == "network" and volume.names and volume.names[0] not in volumes:
                name = volume.names[0]
                volumes[name] = Volume(
                    f"volume-{name}",
                    VolumeArgs(
                        volume_name=name,
                        state_dir=str(state_dir),
                        retain_on_destroy=settings.retain_volumes,
                        cleanup_root=cleanup_root,
                    ),
                )

    services = []
    for plan in plans:
        mounts: dict[str, pulumi.Input[str]] = {}
        for volume in plan.volumes:
            if volume.kind == "network" and volume.names:
                mounts[volume.path] = volumes[volume.names[0]].path
            elif volume.instance_path is not None:
                mounts[volume.path] = volume.instance_path
        count = replica_count(settings, plan)
        group = ReplicaGroup(
            plan.name,
            ReplicaGroupArgs(
                plan=plan,
                replicas=count,
                project_dir=project_dir,
                state_dir=str(state_dir),
                gateway_state_dir=gateway.state_dir,
                gateway_instance=gateway.instance,
                volume_dirs=mounts,
                ready_timeout_seconds=float(settings.local.ready_timeout_seconds),
                cleanup_root=cleanup_root,
            ),
        )
        services.append(_service_export(gw_settings, plan, routes.get(plan.name), group, count))

    # One scaler per stack, and only when it has something to decide (a range with a policy).
    if any(plan.scaling is not None and plan.replicas.min < plan.replicas.max for plan in plans):
        scaler = Scaler(
            "scaler",
            ScalerArgs(
                stack=settings.stack,
                project_dir=project_dir,
                state_dir=str(state_dir / "scaler"),
                gateway_state_dir=str(state_dir / "gateway"),
                environment_names=tuple(
                    name for plan in plans for name, env in plan.replica_group.env.items() if env.source == "environment"
                ),
                cleanup_root=cleanup_root,
            ),
            pulumi.ResourceOptions(depends_on=[gateway]),
        )
        pulumi.export("scaler", {"address": scaler.address})

    pulumi.export("domain", settings.domain)
    pulumi.export("gateway", {"address": gateway.address, "ca_cert": gateway.ca_cert, "domain": settings.domain})
    pulumi.export("token", pulumi.Output.secret(tokens).apply(lambda values: values[0]))
    pulumi.export("openai_base_url", _base_url(gw_settings, gw_settings.router_host) + "/v1")
    pulumi.export("services", services)


def _cleanup_root(settings: "StackSettings") -> str:
    """How far up `destroy` may remove directories the stack made once they are empty.

    The default state directory `<project>/.serveform/local/<stack>` was made with `local/` and
    `.serveform/` on demand, so those go too when nothing else (another stack, the Pulumi state
    backend) is in them; a configured state directory elsewhere is removed, its parents are not.
    """
    dot = Path(settings.project_dir) / ".serveform"
    state_dir = settings.state_dir
    return str(dot if dot in state_dir.parents else state_dir)


def _base_url(settings, host: str, https: bool | None = None) -> str:
    if https is None:
        https = settings.tls != "off"
    scheme, port, default = ("https", settings.https_port, 443) if https else ("http", settings.http_port, 80)
    return f"{scheme}://{host}" + ("" if port == default else f":{port}")


def _service_export(settings, plan: ServicePlan, route, group: ReplicaGroup, count: int) -> dict:
    model = plan.route.model
    # A service the gateway does not publish (`gateway: false`) has no URL.
    url = _base_url(settings, route.host, route.https) if route is not None else None
    return {
        "name": plan.name,
        "url": url,
        "auth": plan.route.auth,
        "model": model.name if model else None,
        # Models are served by the gateway's OpenAI-compatible router, whatever their format.
        "model_endpoint": _base_url(settings, settings.router_host) + "/v1" if model else None,
        "group": plan.name,
        "replicas": {"min": plan.replicas.min, "max": plan.replicas.max, "count": count},
        "addresses": group.addresses,
    }
