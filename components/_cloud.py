"""Pulumi-side helpers shared by the VM backends' `deploy` functions (AWS, GCP, Azure).

Each backend's `deploy(settings, plans)` runs in two phases: first it checks the stack settings
and plans and computes every plain value (raising `pulumi.RunError` naming the config key or
service field — nothing is registered yet), then it registers components. The helpers here
belong to both phases: `preflight` ends the first, and `register` is the second — the
volumes, the gateway and one group per service, in that order, then the exports — with the
backend's components built by the constructors it passes in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict, TypeVar

import pulumi

from serveform.stacks.settings import StackConfigError, StackSettings, policy_problems
from serveform.translator.plan import ServicePlan

from ._vm import (
    DEFAULT_VOLUME_SIZE_GB,
    Capacity,
    Cloud,
    DiscoveryTarget,
    GatewayBoot,
    SecretRef,
    VmConfigError,
    capacity,
    scaler_env_document,
    scaler_runs_up,
)

__all__ = [
    "GatewayCommon",
    "GatewayGroupRef",
    "VmGatewayArgs",
    "GroupCommon",
    "VolumeCommon",
    "check_plans",
    "checked",
    "code_asset",
    "code_object_key",
    "desired_replicas",
    "export_services",
    "gateway_artifacts",
    "gateway_caddyfile",
    "gateway_document",
    "gateway_settings",
    "model_endpoint",
    "network_volumes",
    "on_runtime_image",
    "package_spec",
    "preflight",
    "project_files",
    "register",
    "require",
    "runtime_image_problems",
    "scaler_unit",
    "service_url",
    "tokens_secret",
    "without_python_setup",
]

T = TypeVar("T")
G = TypeVar("G", bound=pulumi.ComponentResource)
V = TypeVar("V", bound=pulumi.ComponentResource)

# Service names become group, disk and DNS names on every cloud: one DNS label, 40 characters at
# most so that `serveform-<stack>-<service>` stays inside Azure's and GCP's 63-character limits.
_DNS_LABEL = re.compile(r"^[a-z]([a-z0-9-]{0,38}[a-z0-9])?$")

# A cloud gateway serves the standard ports (the local backend uses unprivileged ones).
CLOUD_HTTP_PORT = 80
CLOUD_HTTPS_PORT = 443


def require(settings: StackSettings, problems: list[tuple[str, str]], key: str, value: T | None, message: str) -> T | None:
    """Record a missing required setting under its config key (``serveform:aws.region``)."""
    if value in (None, "", ()):
        problems.append((key, message))
    return value


# `serveform:<cloud>.python_image: runtime`: services that name `python:` run in serveform's
# runtime image, whose Python (Debian bookworm's, `serveform.image.build.PYTHON_VERSION`) is theirs.
RUNTIME_IMAGE = "runtime"
RUNTIME_PYTHON = "3.11"


def runtime_image_problems(
    plans: Sequence[ServicePlan], key: str, python_image: str | None, runtime_image: str | None
) -> list[tuple[str, str]]:
    """What stops `python_image: runtime` (key: the cloud's settings key, `serveform:aws`)."""
    if python_image != RUNTIME_IMAGE:
        return []
    problems: list[tuple[str, str]] = []
    if not runtime_image:
        problems.append((f"{key}.runtime_image", "required with python_image: runtime (the runtime image as the VMs pull it, "
                         "e.g. REGISTRY/serveform@sha256:...; `serveform image push REGISTRY` puts it there)"))
    for plan in plans:
        python = plan.replica_group.python
        if plan.replica_group.image_from == "python" and python and python != RUNTIME_PYTHON:
            problems.append((f"{key}.python_image", f"runtime: the runtime image has Python {RUNTIME_PYTHON}, "
                             f"but {plan.file} asks for python: {python!r}"))
    return problems


def without_python_setup(plan: ServicePlan) -> ServicePlan:
    """The plan without dstack's venv setup: the runtime image's Python is already the replica's."""
    from serveform.translator.compiler import python_setup

    group = plan.replica_group
    prefix = python_setup(group.python) if group.python else ()
    if group.setup[: len(prefix)] != prefix:
        return plan
    return plan.model_copy(update={"replica_group": group.model_copy(update={"setup": group.setup[len(prefix):]})})


def on_runtime_image(plan: ServicePlan, image: str) -> ServicePlan:
    """A `python:` plan run in serveform's runtime image: that image, without dstack's venv setup.

    dstack's setup makes a fresh venv on its base image, where the chat example's aiohttp is
    missing; the runtime image's Python already has it (as on Kubernetes with `python_image: runtime`).
    """
    if plan.replica_group.image_from != "python":
        return plan
    plan = without_python_setup(plan)
    return plan.model_copy(update={"replica_group": plan.replica_group.model_copy(update={"image": image})})


def checked(settings: StackSettings, problems: Sequence[tuple[str, str]], compute: Callable[[], T]) -> T:
    """Raise every recorded problem at once as a `pulumi.RunError`, else run ``compute``.

    ``compute`` may raise `VmConfigError` (a plan that cannot be wired); it becomes a
    `pulumi.RunError` too, so the program stops before any resource is registered.
    """
    if problems:
        raise pulumi.RunError(str(StackConfigError(settings.stack, list(problems))))
    try:
        return compute()
    except VmConfigError as exc:
        raise pulumi.RunError(str(exc)) from None


def check_plans(settings: StackSettings, plans: Sequence[ServicePlan], backend: str, problems: list[tuple[str, str]]) -> None:
    """Every plan compiled for this backend; service names fit the cloud's resource names."""
    if settings.backend != backend:
        problems.append(("serveform:backend", f"is {settings.backend!r}, but the {backend} backend was asked to deploy"))
    for plan in plans:
        if plan.backend != backend:
            problems.append(("serveform:services", f"{plan.file}: compiled for backend {plan.backend!r}, not {backend!r}"))
        if not _DNS_LABEL.match(plan.name):
            problems.append(("serveform:services", f"{plan.file}: name {plan.name!r}: expected a DNS label (a-z, 0-9, '-')"))
    problems.extend(policy_problems(settings, plans))


def tokens_secret(settings: StackSettings) -> pulumi.Output[str] | None:
    """The bearer tokens as one JSON list, a Pulumi secret from the start."""
    if not settings.tokens:
        return None
    return pulumi.Output.secret(json.dumps([t.get_secret_value() for t in settings.tokens]))


def desired_replicas(settings: StackSettings, plan: ServicePlan) -> int:
    """The count the program resolved for this run (`serveform.stacks.replicas`), in bounds."""
    count = settings.replicas.get(plan.name, plan.replicas.initial)
    return max(plan.replicas.min, min(plan.replicas.max, count))


def service_url(settings: StackSettings, plan: ServicePlan) -> str:
    scheme = "http" if settings.gateway.tls == "off" or plan.route.https is False else "https"
    return f"{scheme}://{plan.route.subdomain}.{settings.domain}"


def model_endpoint(settings: StackSettings, plan: ServicePlan) -> str | None:
    """dstack's OpenAI-compatible endpoint: `https://gateway.<domain>/v1` for services with a model."""
    if plan.route.model is None:
        return None
    scheme = "http" if settings.gateway.tls == "off" else "https"
    return f"{scheme}://gateway.{settings.domain}{plan.route.model.prefix}"


def export_services(
    settings: StackSettings, plans: Iterable[ServicePlan], groups: Mapping[str, pulumi.Input[str]]
) -> None:
    """The `services` and `domain` stack outputs, in the shape every backend exports.

    `services` is a list of `{name, url, auth, model, model_endpoint, group, replicas: {min, max,
    count}}`; `serveform endpoints` reads it.
    """
    services = [
        {
            "name": plan.name,
            "url": service_url(settings, plan),
            "auth": plan.route.auth,
            "model": plan.route.model.name if plan.route.model else None,
            "model_endpoint": model_endpoint(settings, plan),
            "group": groups[plan.name],
            "replicas": {"min": plan.replicas.min, "max": plan.replicas.max, "count": desired_replicas(settings, plan)},
        }
        for plan in plans
    ]
    pulumi.export("services", services)
    pulumi.export("domain", settings.domain)


def preflight(
    settings: StackSettings,
    plans: Sequence[ServicePlan],
    backend: Cloud,
    problems: list[tuple[str, str]],
    *,
    region: str | None = None,
    zone: str | None = None,
) -> dict[str, Capacity]:
    """End a VM backend's checks: the plans, every recorded problem at once, capacity, the gateway's routes.

    Returns each service's capacity in ``region`` (and ``zone``); raises `pulumi.RunError`
    before any resource is registered.
    """
    check_plans(settings, plans, backend, problems)
    caps = checked(settings, problems, lambda: {p.name: capacity(p, backend, region=region, zone=zone) for p in plans})
    # The gateway package checks every route (and renders the Caddyfile) before anything is registered.
    gateway_caddyfile(settings, plans)
    return caps


def network_volumes(plans: Iterable[ServicePlan]) -> list[str]:
    """The network volumes the services mount, by name, once each, in order of first use."""
    names: dict[str, None] = {}
    for plan in plans:
        for mount in plan.volumes:
            if mount.kind == "network":
                names.setdefault(mount.names[0])
    return list(names)


class VolumeCommon(TypedDict):
    """The `VolumeArgs` fields every VM backend shares, as `register` computes them."""

    size_gb: int
    retain: bool


class GatewayCommon(TypedDict):
    """The `GatewayArgs` fields every VM backend shares, as `register` computes them."""

    stack: str
    domain: str
    gateway_document: dict[str, object]
    groups: dict[str, Any]
    tokens: pulumi.Output[str] | None
    dns_provider: str | None
    package_spec: str
    scaler_unit: str | None
    project_files: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class GatewayGroupRef:
    """One service's group (auto scaling group, managed instance group, scale set) as the gateway
    discovers and scales it."""

    group_name: str
    """The group's (fixed) name."""
    port: int
    """The service port on each replica."""
    scaled: bool = False
    """Whether the service autoscales (the gateway's scaler changes its group's size)."""


@dataclass(frozen=True, kw_only=True)
class VmGatewayArgs:
    """The inputs every VM backend's `GatewayArgs` shares (the fields of `GatewayCommon`); each
    cloud's `GatewayArgs` adds where and how its VM runs."""

    stack: str
    """The stack name, for tags and names."""
    domain: str
    """Services answer at `<service>.<domain>`; the DNS record is `*.<domain>`."""
    gateway_document: dict[str, object]
    """`gateway.json` of the gateway host (settings and plans, no secrets), from `gateway_document`."""
    groups: Mapping[str, GatewayGroupRef]
    """Service name → its group."""
    tokens: pulumi.Input[str] | None = None
    """The bearer tokens as a JSON list: a Pulumi secret, stored in the cloud's secret store
    (Secrets Manager, Secret Manager, Key Vault)."""
    dns_provider: str | None = None
    """The ACME DNS provider (`serveform:gateway.dns_provider`)."""
    package_spec: str = "serveform"
    """What the gateway host installs with pip."""
    scaler_unit: str | None = None
    """The scaler's systemd unit, when a service autoscales."""
    project_files: dict[str, str] = field(default_factory=dict)
    """Project files the scaler on the host needs (`project_files`)."""
    scaler_environment: Mapping[str, str] | None = None
    """The scaler's environment (state backend URL, passphrase), stored in the cloud's secret store
    and fetched at boot into /etc/serveform/scaler.env; None: taken from the deploying environment."""

    def scaler_env(self) -> str | None:
        """The scaler's environment document to store as a secret; None when nothing autoscales."""
        return scaler_env_document(self.scaler_unit, self.scaler_environment)

    def targets(self, cloud: Cloud, **where: str) -> tuple[DiscoveryTarget, ...]:
        """One discovery target per group, in service order; ``where`` locates the groups
        (``region``, ``project``, ``resource_group``)."""
        return tuple(
            DiscoveryTarget(service=s, port=g.port, cloud=cloud, group=g.group_name, **where)
            for s, g in sorted(self.groups.items())
        )

    def boot(
        self,
        cloud: Cloud,
        targets: tuple[DiscoveryTarget, ...],
        *,
        tokens_secret: SecretRef | None,
        scaler_env_secret: SecretRef | None,
        dns_options: dict[str, str],
        identity: str | None = None,
    ) -> GatewayBoot:
        """The gateway VM's cloud-init inputs: these args plus the cloud's resolved references."""
        return GatewayBoot(
            cloud=cloud,
            stack=self.stack,
            domain=self.domain,
            gateway_document=self.gateway_document,
            targets=targets,
            tokens_secret=tokens_secret,
            scaler_env_secret=scaler_env_secret,
            identity=identity,
            dns_provider=self.dns_provider,
            package_spec=self.package_spec,
            scaler_unit=self.scaler_unit,
            project_files=self.project_files,
            dns_options=dns_options,
        )


class GroupCommon(TypedDict):
    """The `GpuInstanceGroupArgs` fields every VM backend shares, as `register` computes them."""

    plan: ServicePlan
    capacity: Capacity
    stack: str
    group_name: str
    desired: int
    code_url: pulumi.Input[str] | None


def code_object_key(plan: ServicePlan) -> str:
    """The artifact store's key of a service's code archive: `code/<service>/<sha256>.tar.gz`.

    Named by the digest, so an object is never rewritten: a code change is a new object (and new
    user data), an unchanged tree the same one.
    """
    if plan.code is None:
        raise ValueError(f"{plan.file}: the plan has no code archive")
    return f"code/{plan.name}/{plan.code.sha256}.tar.gz"


def code_asset(plan: ServicePlan) -> pulumi.FileAsset:
    """The plan's code archive as a Pulumi asset, for the object that the artifact store keeps under `code_object_key`.

    The file exists where the archive was built (the deploying machine). A scale update on a
    gateway VM or in a cluster rebuilds the stack from the last deployment's plans without it:
    give that object `ignore_changes` on its source — its key is the digest, so its bytes
    cannot differ.
    """
    if plan.code is None:
        raise ValueError(f"{plan.file}: the plan has no code archive")
    return pulumi.FileAsset(plan.code.archive)


def register(
    settings: StackSettings,
    plans: Sequence[ServicePlan],
    caps: Mapping[str, Capacity],
    *,
    group_name: Callable[[str, str], str],
    group_ref: Callable[..., Any],
    volume: Callable[[str, VolumeCommon], V],
    gateway: Callable[[GatewayCommon], G],
    group: Callable[[GroupCommon, G, dict[str, V]], Any],
    code_store: Callable[[ServicePlan], pulumi.Input[str]] | None = None,
) -> None:
    """Register a VM backend's components and export its endpoints.

    The backend passes its constructors: ``group_name(stack, service)`` its fixed group names,
    ``group_ref(group_name=, port=, scaled=)`` its `GatewayGroupRef`, ``volume(name, common)`` one
    network volume's component, ``gateway(common)`` the gateway's and ``group(common, gateway,
    volumes)`` one service's group (given the plan's network volumes by name). Every group
    component has a ``group_name`` output and the gateway ``address`` and ``dns_name``.
    """
    common = VolumeCommon(size_gb=DEFAULT_VOLUME_SIZE_GB, retain=settings.retain_volumes)
    volumes = {name: volume(name, common) for name in network_volumes(plans)}
    # Group names are fixed (`serveform-<stack>-<service>`), so the gateway's discovery and role
    # know them before the groups exist, and the groups can admit the gateway's security group.
    names = {plan.name: group_name(settings.stack, plan.name) for plan in plans}
    gw = gateway(
        GatewayCommon(
            stack=settings.stack,
            domain=settings.domain,
            gateway_document=gateway_document(settings, plans),
            groups={
                p.name: group_ref(group_name=names[p.name], port=p.replica_group.container_port, scaled=p.scaling is not None)
                for p in plans
            },
            tokens=tokens_secret(settings),
            dns_provider=settings.gateway.dns_provider,
            package_spec=package_spec(plans),
            scaler_unit=scaler_unit(settings, plans),
            project_files=project_files(settings, plans),
        )
    )
    code_urls: dict[str, pulumi.Input[str] | None] = {}
    for plan in plans:
        if plan.code is not None and code_store is not None:
            code_urls[plan.name] = code_store(plan)
        elif plan.code is not None:
            # TODO(issue 14): the stack's artifact store (item 1) uploads it; until then the VMs run without it.
            pulumi.log.warn(
                f"{plan.file}: the code archive is not shipped to {settings.backend} replicas yet "
                "(no artifact store): commands that run files of the repository will not find them"
            )
    groups = {
        plan.name: group(
            GroupCommon(
                plan=plan,
                capacity=caps[plan.name],
                stack=settings.stack,
                group_name=names[plan.name],
                desired=desired_replicas(settings, plan),
                code_url=code_urls.get(plan.name),
            ),
            gw,
            {m.names[0]: volumes[m.names[0]] for m in plan.volumes if m.kind == "network"},
        )
        for plan in plans
    }
    export_services(settings, plans, {name: g.group_name for name, g in groups.items()})
    pulumi.export("gateway_address", gw.address)
    pulumi.export("gateway_dns_name", gw.dns_name)


def gateway_artifacts(cloud: Cloud):
    """What the gateway VM runs on ``cloud`` (`serveform.image.vm`), built (or found cached) from this
    checkout; a `pulumi.RunError` when a build is missing.

    The scaler's `up` on the gateway VM (``SERVEFORM_VM_ARTIFACTS`` set) keeps the artifacts it
    booted from: it has no checkout to build them from, and the same digests keep its user data.
    """
    import os

    from serveform.image import ImageBuildError
    from serveform.image import vm

    from ._vm import VM_ARTIFACTS_ENV

    try:
        if os.environ.get(VM_ARTIFACTS_ENV):
            return vm.shipped_artifacts(os.environ[VM_ARTIFACTS_ENV])
        # The Pulumi CLI only where the scaler runs `up` on the VM (not AWS).
        return vm.gateway_artifacts(cloud=cloud, pulumi=scaler_runs_up(cloud))
    except ImageBuildError as exc:
        raise pulumi.RunError(f"the gateway VM's artifacts: {exc}") from None


def gateway_settings(settings: StackSettings):
    """The gateway's settings for a VM gateway: ports 80/443 on every interface, admin API on a socket."""
    from serveform.gateway import GatewaySettings

    config = settings.gateway
    return GatewaySettings(
        domain=settings.domain,
        tls=config.tls,
        dns_provider=config.dns_provider,
        acme_email=config.acme_email,
        http_port=config.http_port or CLOUD_HTTP_PORT,
        https_port=config.https_port or CLOUD_HTTPS_PORT,
        body_limit_mb=config.body_limit_mb,
        stream_timeout_seconds=config.stream_timeout_seconds,
        replica_wait_seconds=config.replica_wait_seconds,
        allow_plain_http=config.allow_plain_http,
        tokens=settings.tokens,
    )


def gateway_document(settings: StackSettings, plans: Sequence[ServicePlan]) -> dict[str, object]:
    """`<state_dir>/gateway.json` of a VM gateway, in the gateway package's layout.

    Secrets stay out: tokens go to the tokens file, which the host fetches from the secret
    store at boot; secret env values in the plans serialise as `**********`.
    """
    from serveform.gateway.state import DNS_OPTIONS_FILE, TOKENS_FILE

    from ._vm import GATEWAY_METRICS_PORT

    return {
        "settings": gateway_settings(settings).model_dump(mode="json", exclude={"tokens", "dns_options"}),
        # Caddy's metrics on a fixed loopback port: the scaler runs as another user and cannot
        # read status.json, where a random port would be named.
        "runtime": {"metrics_port": GATEWAY_METRICS_PORT},
        # Service files by their project-relative path, and no code archive (its path is the
        # deploying machine's): the boot document must not change with the checkout folder of
        # whoever deploys (a changed boot document replaces the gateway VM).
        "plans": [
            json.loads(plan.model_copy(update={"file": _relative(plan.file, settings.project_dir)}).model_dump_json(exclude={"code"}))
            for plan in plans
        ],
        "tokens_file": TOKENS_FILE,
        "dns_options_file": DNS_OPTIONS_FILE,
    }


def _relative(path: str, root: str) -> str:
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(path).name


def gateway_caddyfile(settings: StackSettings, plans: Sequence[ServicePlan]) -> str:
    """The Caddyfile the gateway will serve; rendering it checks every route before anything is registered."""
    from serveform.gateway import GatewayConfigError, render_caddyfile

    try:
        return render_caddyfile(gateway_settings(settings), list(plans))
    except GatewayConfigError as exc:
        raise pulumi.RunError(str(exc)) from None


def package_spec(plans: Sequence[ServicePlan]) -> str:
    """What the gateway host installs: serveform at this version, with the cloud SDKs when the scaler runs `pulumi up` there."""
    from serveform import __version__

    extra = "[cloud]" if any(p.scaling for p in plans) else ""
    return f"serveform{extra}=={__version__}"


def scaler_unit(settings: StackSettings, plans: Sequence[ServicePlan]) -> str | None:
    """The scaler's systemd unit (the scaler package's template) when any service autoscales.

    On AWS the scaler sets its groups' desired capacity itself (Auto Scaling's API, the instance
    role), from the boot document's gateway.json and discovery.json: no project copy, Pulumi or
    state credentials on the VM. GCP and Azure still apply counts with a scale `pulumi up`.
    """
    if not any(p.scaling for p in plans):
        return None
    from serveform.scaler import render_unit

    from ._vm import GATEWAY_CONFIG_DIR, GATEWAY_METRICS_PORT, SCALER_USER, VM_ARTIFACTS_ENV, VM_ARTIFACTS_FILE

    metrics_url = f"http://127.0.0.1:{GATEWAY_METRICS_PORT}/metrics"
    if not scaler_runs_up(settings.backend):
        return render_unit(
            stack=settings.stack,
            user=SCALER_USER,
            metrics_url=metrics_url,
            aws_groups=f"{GATEWAY_CONFIG_DIR}/discovery.json",
            gateway_config=f"{GATEWAY_CONFIG_DIR}/gateway.json",
        )
    return render_unit(
        stack=settings.stack,
        user=SCALER_USER,
        metrics_url=metrics_url,
        # Its `up` keeps the artifacts the VM booted from (no checkout here to build them from).
        environment={VM_ARTIFACTS_ENV: VM_ARTIFACTS_FILE},
    )


def project_files(settings: StackSettings, plans: Sequence[ServicePlan]) -> dict[str, str]:
    """What the scaler on the gateway host needs of the project: Pulumi.yaml, the stack file, the services.

    The scaler's `up` rebuilds the stack from the last deployment's inputs (kept in the stack's
    state), so these files are the program and the stack's secrets settings; replica counts are
    not in them, and the gateway's boot document does not change (nor replace the VM) when it scales.
    None on AWS, whose scaler runs no `up` (`scaler_unit`).
    """
    if not any(p.scaling for p in plans) or not scaler_runs_up(settings.backend):
        return {}
    import yaml

    root = Path(settings.project_dir)
    files: dict[str, str] = {}
    project_file = root / "Pulumi.yaml"
    if not project_file.exists():
        return {}
    files["Pulumi.yaml"] = project_file.read_text()
    project = yaml.safe_load(files["Pulumi.yaml"]) or {}
    stack_file = root / project.get("stackConfigDir", ".") / f"Pulumi.{settings.stack}.yaml"
    if stack_file.exists():
        document = yaml.safe_load(stack_file.read_text()) or {}
        files[stack_file.relative_to(root).as_posix()] = yaml.safe_dump(document, sort_keys=True)
    for plan in plans:
        relative = _relative(plan.file, settings.project_dir)
        if not (root / relative).is_file():
            continue  # a service file outside the project: the host cannot have it
        files[relative] = (root / relative).read_text()
    return files
