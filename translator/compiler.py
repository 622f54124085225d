"""Compile a service file: text → YAML with positions → :class:`ServiceSpec` → :class:`ServicePlan`.

Every problem is collected before failing (:class:`TranslatorError` carries them all); fields the
chosen backend cannot honour become warnings that name the field and the backend.
"""

from __future__ import annotations

import json
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from . import _yaml
from ._errors import diagnostics_from_validation_error
from .diagnostics import Diagnostic, TranslatorError, did_you_mean, format_path
from .env import EnvRef
from .files import REPO_DIR, container_path, resolve_workdir, under
from .plan import (
    Backend,
    EnvValue,
    FileMappingPlan,
    GatewayRoutePlan,
    ModelPlan,
    OfferPlan,
    ProbePlan,
    RateLimitPlan,
    RegistryAuthPlan,
    ReplicaBounds,
    ReplicaGroupPlan,
    ResourcesPlan,
    ScalingPlan,
    ServicePlan,
    VolumePlan,
)
from .serving import (
    DEFAULT_PROBE_INTERVAL_SECONDS,
    DEFAULT_PROBE_METHOD,
    DEFAULT_PROBE_READY_AFTER,
    DEFAULT_PROBE_TIMEOUT_SECONDS,
    DEFAULT_PROBE_URL,
    DEFAULT_SCALING_WINDOW_SECONDS,
    OpenAIModelSpec,
    TGIModelSpec,
)
from .spec import (
    DEPRECATED_FIELDS,
    NAME_PATTERN,
    RESERVED_NAME,
    UNSUPPORTED_FIELDS,
    GatewayRef,
    RetrySpec,
    ServiceSpec,
    cross_field_problems,
)
from .volumes import InstanceMountSpec

__all__ = [
    "BASE_IMAGE",
    "CompileContext",
    "CompileResult",
    "DEFAULT_PYTHON_VERSION",
    "compile_file",
    "compile_text",
    "python_setup",
]

# dstack 0.22.5's base image: `dstackai/base:<version>-<base|devel>-ubuntu<release>`; `nvcc`
# selects the `devel` variant, and `python` the interpreter dstack's runner installs with uv.
BASE_IMAGE = "dstackai/base"
BASE_IMAGE_VERSION = "0.16"
BASE_IMAGE_UBUNTU = "24.04"
DIND_IMAGE = "dstackai/dind"
DSTACK_VENV_DIR = "/dstack/venv"
UV_PYTHON_DIR = "/opt/uv/python"
# dstack takes the server's Python; a plan must not depend on who compiles it, so we fix one.
DEFAULT_PYTHON_VERSION = "3.12"
BACKENDS: tuple[str, ...] = typing.get_args(Backend)
DEFAULT_RETRY_DURATION_SECONDS = 3600  # dstack's default when `retry: true`
RETRY_EVENTS = ("no-capacity", "interruption", "error")
MAX_HOSTNAME_LENGTH = 253
OPENAI_MODEL_PROBE_TIMEOUT_SECONDS = 30  # dstack 0.22's default probe of a model service
_SECRET_REF_RE = re.compile(r"\$\{\{\s*secrets\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_SECRET_HEADER_RE = re.compile(r"authorization|cookie|token|key|secret|password", re.IGNORECASE)


def python_setup(python: str) -> tuple[str, ...]:
    """The commands that give a replica on dstack's base image a venv of `python` (see `_python_setup`)."""
    return (
        f"export DSTACK_VENV_DIR={DSTACK_VENV_DIR}",
        # the base image keeps Python builds under /opt/uv/python; uv fetches others
        f'UV_PYTHON_INSTALL_DIR={UV_PYTHON_DIR} uv venv --quiet --seed --python {python} "$DSTACK_VENV_DIR"',
        '. "$DSTACK_VENV_DIR/bin/activate"',
    )


@dataclass(frozen=True)
class CompileContext:
    """Where the service is deployed, and where bare env names get their values."""

    backend: Backend = "local"
    """The stack's backend (`serveform:backend`)."""
    domain: str = "localhost"
    """The gateway's domain (`serveform:domain`); services are `<name>.<domain>`."""
    regions: tuple[str, ...] = ()
    """The stack's regions (`serveform:regions`); empty for all."""
    environ: Mapping[str, str] = field(default_factory=dict)
    """The deploying environment: values of bare `env` names."""
    stack_secrets: Mapping[str, str] = field(default_factory=dict)
    """`serveform:secrets`: values of bare `env` names and `${{ secrets.NAME }}` references."""
    offers_catalog: Path | None = None
    """A gpuhunt offers CSV to use instead of the shipped snapshot."""
    require_env: bool = True
    """False for `validate`/`compile` previews: a missing env value is a warning, not an error."""

    def __post_init__(self) -> None:
        # A context is built by code (stack settings, the CLI), not by users: a wrong one is a bug.
        if self.backend not in BACKENDS:
            raise ValueError(f"CompileContext.backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if isinstance(self.regions, str):
            raise ValueError("CompileContext.regions is a sequence of region names, not a string")
        object.__setattr__(self, "regions", tuple(self.regions))


@dataclass(frozen=True)
class CompileResult:
    """A compiled service file."""

    spec: ServiceSpec
    """The validated, normalised service configuration."""
    plan: ServicePlan
    """The deployment plan."""
    warnings: tuple[Diagnostic, ...] = ()
    """Fields the backend cannot honour, deprecated spellings, defaults worth knowing."""

    def to_json(self) -> dict[str, Any]:
        """`{"file", "name", "spec", "plan", "warnings"}`; secret values appear as `**********`."""
        return {
            "file": self.plan.file,
            "name": self.plan.name,
            "spec": self.spec.model_dump(mode="json"),
            "plan": self.plan.model_dump(mode="json"),
            "warnings": [w.to_json() for w in self.warnings],
        }


def compile_file(path: str | os.PathLike[str], context: CompileContext = CompileContext()) -> CompileResult:
    """Compile one service file; raise :class:`TranslatorError` listing every problem."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as handle:
            # Read one byte past the cap: a 50 MB file is refused without reading it whole.
            raw = handle.read(_yaml.MAX_TEXT_CHARS * 4 + 1)
    except OSError as exc:
        raise TranslatorError([Diagnostic(file, 0, 0, "", f"cannot read the file: {exc.strerror or exc}")]) from None
    if len(raw) > _yaml.MAX_TEXT_CHARS * 4:  # more bytes than the most characters could encode
        raise TranslatorError([_yaml.too_large(file, os.path.getsize(file), "bytes")])
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TranslatorError([Diagnostic(file, 0, 0, "", f"the file is not UTF-8 text (byte {exc.start})")]) from None
    return compile_text(text, file=file, context=context)


def compile_text(text: str, file: str = "<string>", context: CompileContext = CompileContext()) -> CompileResult:
    """Compile the text of a service file; `file` names it in diagnostics and the plan."""
    doc, problems = _yaml.load(text, file)
    if doc is None:
        raise TranslatorError(problems)
    try:
        spec = ServiceSpec.model_validate(doc.data)
    except ValidationError as exc:
        found = [*problems, *diagnostics_from_validation_error(exc, doc, file, ServiceSpec)]
        raise TranslatorError([*found, *_cross_field_diagnostics(doc, file, found)]) from None
    except RecursionError:
        raise TranslatorError([*problems, Diagnostic(file, 0, 0, "", "the document is nested too deeply")]) from None
    if problems:
        raise TranslatorError(problems)
    builder = _PlanBuilder(spec, doc, file, context)
    plan = builder.build()
    if builder.errors:
        raise TranslatorError(builder.errors)
    warnings = sorted(builder.warnings, key=lambda d: (d.line, d.column, d.field, d.message))
    return CompileResult(spec=spec, plan=plan, warnings=tuple(warnings))


@cache
def _known_accelerators() -> dict[str, str]:
    """gpuhunt's accelerator facts: lower-case name → vendor."""
    import gpuhunt

    return {a.name.lower(): a.vendor.value for a in gpuhunt.KNOWN_ACCELERATORS}


@cache
def _known_accelerator_names() -> tuple[str, ...]:
    import gpuhunt

    return tuple(sorted({a.name for a in gpuhunt.KNOWN_ACCELERATORS}))


def _cross_field_diagnostics(doc: _yaml.Document, file: str, found: list[Diagnostic]) -> list[Diagnostic]:
    """The rules between fields, checked on the raw mapping when some field is invalid (pydantic
    skips them then), minus what was already reported."""
    if not isinstance(doc.data, dict) or doc.data.get("type") != "service":
        return []
    reported = {(d.field, d.message) for d in found}
    out = []
    for problem in cross_field_problems(doc.data):
        field_path = format_path(problem.path)
        if (field_path, problem.message) in reported or any(d.field == field_path for d in found):
            continue  # the field's own error says enough
        line, column = doc.position(problem.path)
        out.append(Diagnostic(file, line, column, field_path, problem.message, problem.hint))
    return out


def default_name(file: str) -> str:
    """A stable service name from the file name (`serve.dstack.yml` → `serve`), or its folder's."""
    path = Path(file)
    for candidate in (path.name, path.resolve().parent.name if file != "<string>" else ""):
        stem = re.sub(r"(\.dstack)?\.ya?ml$", "", candidate.lower())
        stem = re.sub(r"[^a-z0-9-]+", "-", stem).strip("-")
        stem = re.sub(r"^[^a-z]+", "", stem)[:41].rstrip("-")
        if re.fullmatch(NAME_PATTERN, stem) and stem != RESERVED_NAME:
            return stem
    return "service"


class _PlanBuilder:
    def __init__(self, spec: ServiceSpec, doc: _yaml.Document, file: str, context: CompileContext) -> None:
        self.spec = spec
        self.doc = doc
        self.file = file
        self.context = context
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    # -- diagnostics

    def _at(self, path: tuple[Any, ...], message: str, *, hint: str | None = None, warning: bool = False) -> None:
        line, column = self.doc.position(path, key=True)
        diagnostic = Diagnostic(self.file, line, column, format_path(path), message, hint, "warning" if warning else "error")
        (self.warnings if warning else self.errors).append(diagnostic)

    def _warn(self, path: tuple[Any, ...], message: str, hint: str | None = None) -> None:
        self._at(path, message, hint=hint, warning=True)

    # -- the plan

    def build(self) -> ServicePlan:
        spec = self.spec
        name = spec.name
        if name is None:
            name = default_name(self.file)
            self._warn((), f"`name` is not set: the service is named `{name}` after its file (dstack would pick a random name)")
        host = f"{name}.{self.context.domain}"
        if len(host) > MAX_HOSTNAME_LENGTH:
            # the gateway's certificate and Caddy site address need a valid DNS name
            self._at(("name",) if spec.name else (), f"`{host}` is longer than a DNS name may be ({MAX_HOSTNAME_LENGTH} characters)")
        self._unsupported_fields()
        group = self._replica_group()
        replicas = self._replicas()
        plan = ServicePlan(
            file=self.file,
            name=name,
            backend=self.context.backend,
            replica_group=group,
            offers=self._offers(),
            spot_policy=spec.spot_policy or "on-demand",
            max_price=spec.max_price,
            replicas=replicas,
            scaling=self._scaling(),
            volumes=self._volumes(),
            route=self._route(name),
            max_duration_seconds=spec.max_duration if isinstance(spec.max_duration, int) else None,
            retry=self._retry(),
            files=self._files(),
        )
        from ._backends import check_backend

        for path, message in check_backend(spec, plan, self.context.backend):
            self._warn(path, message)
        return plan

    def _unsupported_fields(self) -> None:
        for name, reason in UNSUPPORTED_FIELDS.items():
            if name in self.spec.model_fields_set and name in self.doc.data:
                self._warn((name,), f"not supported by serveform and ignored: {reason}")
        for name, reason in DEPRECATED_FIELDS.items():
            if name in self.spec.model_fields_set and name in self.doc.data:
                self._warn((name,), reason)

    def _files(self) -> tuple[FileMappingPlan, ...]:
        """`files` with both ends resolved: local paths from the service file's folder, container
        paths under the working directory. Each local path must exist now (it is archived at deploy)."""
        base = Path(self.file).resolve().parent if self.file != "<string>" else Path.cwd()
        workdir = resolve_workdir(self.spec.working_dir)
        out: list[FileMappingPlan] = []
        for index, mapping in enumerate(self.spec.files):
            local = Path(mapping.local_path).expanduser()
            local = local if local.is_absolute() else base / local
            assert mapping.path is not None  # FileMappingSpec defaults it
            target = container_path(mapping.path, workdir)
            if not (local.is_file() or local.is_dir()):
                self._at(("files", index), f"`{mapping.local_path}` ({local}) is not a file or folder on this machine")
                continue
            if target == "/":
                self._at(("files", index), "cannot copy onto `/`: name a folder in the container")
                continue
            if self.context.backend == "local" and not under(target, REPO_DIR):
                self._at(
                    ("files", index),
                    f"`{target}` is outside {REPO_DIR}: the local backend runs replicas as processes on this machine, "
                    "so files can only go under the working directory (use a relative path)",
                )
                continue
            out.append(FileMappingPlan(local_path=str(local.resolve()), path=target))
        return tuple(out)

    def _image(self) -> tuple[str, str, str | None, list[str]]:
        spec = self.spec
        if spec.docker:
            return DIND_IMAGE, "image", None, ["start-dockerd"]
        if spec.image is not None:
            return spec.image, "image", None, []
        variant = "devel" if spec.nvcc else "base"
        image = f"{BASE_IMAGE}:{BASE_IMAGE_VERSION}-{variant}-ubuntu{BASE_IMAGE_UBUNTU}"
        return image, "python", spec.python or DEFAULT_PYTHON_VERSION, []

    def _python_setup(self, python: str | None) -> tuple[str, ...]:
        """Commands that give the replica dstack's Python: a venv of `python` on the base image.

        dstack's runner does this before a service's commands; serveform's replicas run the image
        directly, so the plan carries it (not for `local`, whose replicas use this machine's Python).
        """
        if python is None or self.context.backend == "local":
            return ()
        return python_setup(python)

    def _replica_group(self) -> ReplicaGroupPlan:
        spec = self.spec
        image, image_from, python, prefix = self._image()
        gpu = spec.resources.gpu
        return ReplicaGroupPlan(
            image=image,
            image_from=image_from,  # type: ignore[arg-type]
            python=python,
            nvcc=bool(spec.nvcc),
            registry_auth=self._registry_auth(),
            entrypoint=spec.entrypoint,
            setup=(*self._python_setup(python), *spec.setup),
            commands=(*prefix, *spec.commands),
            working_dir=spec.working_dir,
            home_dir=spec.home_dir,
            privileged=spec.privileged or bool(spec.docker),
            env=self._env(),
            container_port=spec.port.container_port,
            gpus_num=(gpu.count.min or 0) if gpu is not None else 0,
            resources=self._resources(),
        )

    def _gpu_vendor(self) -> str | None:
        """The GPU vendor: the spec's, else the one vendor gpuhunt knows the named GPUs by.

        Unknown names get a warning with the closest known name: no catalog offer will match them.
        """
        gpu = self.spec.resources.gpu
        if gpu is None:
            return None
        vendors: set[str] = set()
        known = _known_accelerators()
        for index, name in enumerate(gpu.name or ()):
            vendor = known.get(name.lower())
            if vendor is None:
                self._warn(
                    ("resources", "gpu", "name", index),
                    f"`{name}` is not an accelerator gpuhunt knows: no catalog offer will match it",
                    hint=did_you_mean(name, _known_accelerator_names()),
                )
            else:
                vendors.add(vendor)
        if gpu.vendor is not None:
            if vendors and gpu.vendor not in vendors:
                self._warn(("resources", "gpu"), f"the named GPUs are {', '.join(sorted(vendors))}, not {gpu.vendor}: nothing can satisfy both")
            return gpu.vendor
        return vendors.pop() if len(vendors) == 1 else None

    def _resources(self) -> ResourcesPlan:
        r = self.spec.resources
        gpu = r.gpu
        return ResourcesPlan(
            cpu_min=r.cpu.count.min or 0,
            cpu_max=r.cpu.count.max,
            memory_min_gb=r.memory.min or 0.0,
            memory_max_gb=r.memory.max,
            shm_size_gb=r.shm_size,
            disk_min_gb=(r.disk.size.min or 0.0) if r.disk else 0.0,
            disk_max_gb=r.disk.size.max if r.disk else None,
            gpu_vendor=self._gpu_vendor(),
            gpu_names=tuple(gpu.name or ()) if gpu else (),
            gpu_count_min=(gpu.count.min or 0) if gpu else 0,
            gpu_count_max=gpu.count.max if gpu else None,  # `gpu: null`: no requirement either way
            gpu_memory_min_gb=gpu.memory.min if gpu and gpu.memory else None,
            gpu_memory_max_gb=gpu.memory.max if gpu and gpu.memory else None,
            gpu_total_memory_min_gb=gpu.total_memory.min if gpu and gpu.total_memory else None,
            gpu_total_memory_max_gb=gpu.total_memory.max if gpu and gpu.total_memory else None,
            gpu_compute_capability=f"{gpu.compute_capability[0]}.{gpu.compute_capability[1]}" if gpu and gpu.compute_capability else None,
        )

    def _interpolate(self, path: tuple[Any, ...], value: str) -> tuple[str | None, bool]:
        """Resolve `${{ secrets.NAME }}` as dstack's server does for env values and registry
        credentials; `$$` is a literal `$`. Returns (value, uses a secret)."""
        if "$" not in value:
            return value, False
        out: list[str] = []
        missing: list[str] = []
        secret = False
        index = 0
        while index < len(value):
            dollar = value.find("$", index)
            if dollar < 0:
                out.append(value[index:])
                break
            out.append(value[index:dollar])
            if value.startswith("$$", dollar):
                out.append("$")
                index = dollar + 2
            elif value.startswith("${{", dollar):
                closing = value.find("}}", dollar)
                match = _SECRET_REF_RE.fullmatch(value, dollar, closing + 2) if closing >= 0 else None
                if match is None:
                    self._at(path, "invalid reference: expected `${{ secrets.NAME }}` (write `$$` for a literal `$`)")
                    return None, True
                secret = True
                if match.group(1) in self.context.stack_secrets:
                    out.append(self.context.stack_secrets[match.group(1)])
                else:
                    missing.append(match.group(1))
                index = closing + 2
            else:
                out.append("$")
                index = dollar + 1
        for name in missing:
            message = f"`${{{{ secrets.{name} }}}}` has no value: add `{name}` to the stack's `serveform:secrets`"
            self._at(path, message, warning=not self.context.require_env)
        return (None if missing else "".join(out)), secret

    def _env(self) -> dict[str, EnvValue]:
        out: dict[str, EnvValue] = {}
        for key, value in self.spec.env.items():
            path = ("env", key)
            if isinstance(value, EnvRef):
                if value.key in self.context.stack_secrets:
                    out[key] = EnvValue(value=SecretStr(self.context.stack_secrets[value.key]), secret=True, source="stack")
                elif value.key in self.context.environ:
                    out[key] = EnvValue(value=SecretStr(self.context.environ[value.key]), secret=True, source="environment")
                else:
                    if self.context.require_env:
                        message = f"`{key}` has no value: set it in the deploying environment or add it to the stack's `serveform:secrets`"
                    else:
                        message = f"`{key}` has no value in the file: deploying needs it in the environment or in the stack's `serveform:secrets`"
                    self._at(path, message, warning=not self.context.require_env)
                    out[key] = EnvValue(value=None, secret=True, source="environment")
                continue
            resolved, secret = self._interpolate(path, value)
            if secret:
                out[key] = EnvValue(value=SecretStr(resolved) if resolved is not None else None, secret=True, source="stack")
            else:
                out[key] = EnvValue(value=resolved, secret=False, source="file")
        return out

    def _registry_auth(self) -> RegistryAuthPlan | None:
        auth = self.spec.registry_auth
        if auth is None:
            return None
        username, _ = self._interpolate(("registry_auth", "username"), auth.username)
        password, _ = self._interpolate(("registry_auth", "password"), auth.password.get_secret_value())
        return RegistryAuthPlan(username=username or "", password=SecretStr(password or ""))

    def _replicas(self) -> ReplicaBounds:
        replicas = self.spec.replicas
        if replicas is None:
            return ReplicaBounds(min=1, max=1, initial=1)
        low = replicas.min or 0
        high = replicas.max if replicas.max is not None else low
        if high == 0:
            self._warn(("replicas",), "`replicas` is 0: the service is deployed without replicas")
        # dstack starts a service with its minimum; the scaler raises it from there.
        return ReplicaBounds(min=low, max=high, initial=low)

    def _scaling(self) -> ScalingPlan | None:
        scaling = self.spec.scaling
        if scaling is None:
            return None
        return ScalingPlan(
            metric=scaling.metric,
            target=scaling.target,
            scale_up_delay_seconds=scaling.scale_up_delay,
            scale_down_delay_seconds=scaling.scale_down_delay,
            window_seconds=scaling.window if scaling.window is not None else DEFAULT_SCALING_WINDOW_SECONDS,  # type: ignore[arg-type]
        )

    def _volumes(self) -> tuple[VolumePlan, ...]:
        out = []
        for volume in self.spec.volumes:
            if isinstance(volume, InstanceMountSpec):
                out.append(VolumePlan(kind="instance", instance_path=volume.instance_path, path=volume.path, optional=volume.optional))
            else:
                names = (volume.name,) if isinstance(volume.name, str) else tuple(volume.name)
                out.append(VolumePlan(kind="network", names=names, path=volume.path))
        return tuple(out)

    def _model(self) -> ModelPlan | None:
        model = self.spec.model
        if isinstance(model, OpenAIModelSpec):
            return ModelPlan(name=model.name, type=model.type, format="openai", prefix=model.prefix)
        if isinstance(model, TGIModelSpec):
            return ModelPlan(name=model.name, type=model.type, format="tgi", chat_template=model.chat_template, eos_token=model.eos_token)
        return None

    def _probes(self) -> tuple[ProbePlan, ...]:
        probes = self.spec.probes
        model = self.spec.model
        if probes is None:
            if isinstance(model, OpenAIModelSpec):
                # dstack 0.22: a model service without probes is probed with a one-token chat request.
                body = json.dumps({"model": model.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
                return (
                    ProbePlan(
                        method="post",
                        url=model.prefix.rstrip("/") + "/chat/completions",
                        headers={"Content-Type": "application/json"},
                        body=body,
                        timeout_seconds=OPENAI_MODEL_PROBE_TIMEOUT_SECONDS,
                        interval_seconds=DEFAULT_PROBE_INTERVAL_SECONDS,
                        ready_after=DEFAULT_PROBE_READY_AFTER,
                    ),
                )
            return ()
        return tuple(
            ProbePlan(
                method=p.method or DEFAULT_PROBE_METHOD,
                url=p.url or DEFAULT_PROBE_URL,
                headers={h.name: (SecretStr(h.value) if _SECRET_HEADER_RE.search(h.name) else h.value) for h in p.headers},
                body=p.body,
                timeout_seconds=p.timeout if p.timeout is not None else DEFAULT_PROBE_TIMEOUT_SECONDS,
                interval_seconds=p.interval if p.interval is not None else DEFAULT_PROBE_INTERVAL_SECONDS,
                ready_after=p.ready_after if p.ready_after is not None else DEFAULT_PROBE_READY_AFTER,
            )
            for p in probes
        )

    def _route(self, name: str) -> GatewayRoutePlan:
        spec = self.spec
        gateway: str | bool | None
        if isinstance(spec.gateway, GatewayRef):
            gateway = f"{spec.gateway.project}/{spec.gateway.name}" if spec.gateway.project else spec.gateway.name
        else:
            gateway = spec.gateway
        probes = self._probes()
        return GatewayRoutePlan(
            subdomain=name,
            auth=spec.auth,
            https=spec.https if spec.https is not None else True,
            gateway=gateway,
            strip_prefix=spec.strip_prefix,
            model=self._model(),
            probes=probes,
            readiness_path=probes[0].url if probes else DEFAULT_PROBE_URL,
            rate_limits=tuple(
                RateLimitPlan(
                    prefix=limit.prefix,
                    key=limit.key.type,
                    header=getattr(limit.key, "header", None),
                    rps=limit.rps,
                    burst=limit.burst,
                )
                for limit in spec.rate_limits
            ),
        )

    def _retry(self) -> dict[str, object] | None:
        spec = self.spec
        if isinstance(spec.retry, RetrySpec):
            return {
                "on_events": list(spec.retry.on_events or RETRY_EVENTS),
                "duration_seconds": spec.retry.duration if spec.retry.duration is not None else DEFAULT_RETRY_DURATION_SECONDS,
            }
        if spec.retry is True:
            return {"on_events": list(RETRY_EVENTS), "duration_seconds": DEFAULT_RETRY_DURATION_SECONDS}
        if spec.retry is None and spec.retry_policy is not None and spec.retry_policy.retry:
            duration = spec.retry_policy.duration
            return {"on_events": list(RETRY_EVENTS), "duration_seconds": duration if duration is not None else DEFAULT_RETRY_DURATION_SECONDS}
        return None

    def _offers(self) -> tuple[OfferPlan, ...]:
        from .offers import CatalogError, NoOffers, offers_for

        try:
            offers, notes = offers_for(self.spec, self.context)
        except NoOffers as exc:
            path = ("regions",) if self.spec.regions else ("resources",) if "resources" in self.doc.data else ()
            self._at(path, str(exc), hint="widen `resources`, `regions` or `max_price`, or point the stack's `serveform:offersCatalog` at a fresh gpuhunt catalog")
            return ()
        except CatalogError as exc:
            self._at((), f"cannot read the offers catalog: {exc}")
            return ()
        for path, message in notes:
            self._warn(path, message)
        return offers

