"""The Pulumi program: stack config → compiled services → the backend's components.

`run()` is the whole program. `__main__.py` calls it when the CLI runs the project (plain
`pulumi up`), and `serveform.stacks.engine` passes it as the Automation API's inline program.
Everything that can be wrong with the input is checked before the first resource is registered:
a bad stack config or service file fails the run with the translator's report, and Pulumi
changes nothing.

Replica counts are not read from the stack file: every run reads the last deployment's counts
back from the stack itself (`serveform.stacks.replicas`). A scale run (`SERVEFORM_SCALE` set, by
the scaler or `serveform scale`) rebuilds the stack from the last deployment's inputs with new
counts, so it never applies an edit of the working tree.
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import config as _runtime_config
from pulumi.runtime.sync_await import _sync_await

from serveform.stacks.replicas import (
    DEPLOYMENT_OUTPUT,
    REPLICAS_OUTPUT,
    DeployedInputs,
    ScaleRequest,
    counts_from_output,
    describe_drift,
    resolve_counts,
)
from serveform.stacks.services import compile_services
from serveform.stacks.settings import CONFIG_NAMESPACE, StackConfigError, StackSettings
from serveform.translator.plan import ServicePlan

__all__ = ["build", "compile_plans", "last_deployment", "load_settings", "run", "stack_config"]


def stack_config() -> dict[str, Any]:
    """The running stack's `serveform:*` config as the engine passes it (objects as JSON text)."""
    merged = {**_runtime_config.get_config_env(), **_runtime_config.CONFIG.get()}
    return {k: v for k, v in merged.items() if k.startswith(f"{CONFIG_NAMESPACE}:")}


def load_settings(config: Mapping[str, Any] | None = None) -> StackSettings:
    """The `serveform:*` config of the running stack (or `config`), validated."""
    project = os.environ.get("SERVEFORM_PROJECT_DIR") or os.getcwd()
    return StackSettings.from_config(
        stack_config() if config is None else config, stack=pulumi.get_stack(), project_dir=Path(project)
    )


def compile_plans(settings: StackSettings) -> list[ServicePlan]:
    """Compile every service file of the stack; all problems of all files are reported at once."""
    results, reports = compile_services(settings, os.environ)
    if reports:
        raise pulumi.RunError("\n".join(reports))
    for result in results:
        for warning in result.warnings:
            pulumi.log.warn(str(warning))
    return [result.plan for result in results]


def last_deployment() -> dict[str, Any]:
    """The outputs of this stack's last deployment ({} before the first one).

    Read through a StackReference to the stack itself: the engine reads the stack's checkpoint
    under the lock this update holds, on any backend, in `preview` too. The value decides how
    many replica resources to register, so it is awaited here rather than used as an Output.
    """
    name = f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
    reference = pulumi.StackReference("last-deployment", stack_name=name)
    outputs = _sync_await(reference.outputs.future())
    return dict(outputs or {})


def build(settings: StackSettings, plans: list[ServicePlan]) -> None:
    """Hand the plans to the stack's backend (`components/<backend>/deploy`)."""
    backend = importlib.import_module(f"serveform.components.{settings.backend}")
    backend.deploy(settings, plans)


def run() -> None:
    """The program: validate everything first, then register resources."""
    try:
        request = ScaleRequest.from_environ()
        config = stack_config()
        if request is None:
            settings = load_settings(config)
    except (StackConfigError, ValueError) as exc:
        raise pulumi.RunError(str(exc)) from None
    previous = last_deployment()
    if request is None:
        plans = compile_plans(settings)
    else:
        settings, plans, config = _deployed_inputs(previous, request, config)
    counts = resolve_counts(plans, counts_from_output(previous.get(REPLICAS_OUTPUT)), request, datetime.now(timezone.utc))
    # On AWS a group holds its own count once created (the scaler and `serveform scale` set its
    # desired capacity; the stack ignores it): the count here is what a new group starts with.
    held = " (a new group starts here; a running group keeps its own desired capacity: `serveform status`)" if settings.backend == "aws" else ""
    for name, count in sorted(counts.items()):
        # Shown by `preview` and `up` under Diagnostics: each count and where it came from.
        pulumi.log.info(f"{name}: {count.count} replica(s), {count.describe()}{held}")
    settings = settings.model_copy(update={"replicas": {name: c.count for name, c in counts.items()}})
    build(settings, plans)
    pulumi.export(REPLICAS_OUTPUT, {name: c.to_output() for name, c in sorted(counts.items())})
    deployed = DeployedInputs(config=config, plans=tuple(plans)).relative_to(settings.project_dir)
    pulumi.export(DEPLOYMENT_OUTPUT, pulumi.Output.secret(deployed.to_output()))


# How this host reaches the deployment, not what is deployed: taken from the running host's
# stack file in a scale run. The in-cluster scaler's copy drops kubeconfig and context (it uses
# its ServiceAccount) and pins the runtime image the deploying `up` resolved from its checkout.
_HOST_KEYS = {"serveform:k8s": ("kubeconfig", "context", "runtime_image")}


def _with_host_keys(deployed: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    config = dict(deployed)
    for key, fields in _HOST_KEYS.items():
        merged, here = _object(config.get(key)), _object(live.get(key))
        for field in fields:
            merged.pop(field, None)
            if field in here:
                merged[field] = here[field]
        if key in config or merged:
            config[key] = json.dumps(merged)
    return config


def _object(value: Any) -> dict[str, Any]:
    """A config object as the engine passes it (JSON text) or as a mapping."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    return dict(value) if isinstance(value, Mapping) else {}


def _deployed_inputs(
    previous: Mapping[str, Any], request: ScaleRequest, live_config: Mapping[str, Any]
) -> tuple[StackSettings, list[ServicePlan], Mapping[str, Any]]:
    """Settings and plans of the last deployment, for a scale run; logs what the working tree changes."""
    deployed = DeployedInputs.from_output(previous.get(DEPLOYMENT_OUTPUT))
    if deployed is None:
        raise pulumi.RunError(
            f"stack {pulumi.get_stack()} has no deployment to scale: run `serveform up --stack {pulumi.get_stack()}` first"
        )
    unknown = sorted(set(request.counts) - {p.name for p in deployed.plans})
    if unknown:
        raise pulumi.RunError(f"cannot scale {', '.join(unknown)}: no such service in the last deployment of stack {pulumi.get_stack()}")
    config = _with_host_keys(deployed.config, live_config)
    try:
        settings = load_settings(config)
        deployed = deployed.rebased(settings.project_dir)
    except StackConfigError as exc:
        raise pulumi.RunError(f"the last deployment's stack config no longer validates: {exc}") from None
    try:
        live = load_settings(live_config)
        live_plans, reports = compile_services(live, os.environ)
        drift = describe_drift(DeployedInputs(config, deployed.plans), live_config, [r.plan for r in live_plans])
        drift += [f"the working tree does not compile: {report}" for report in reports]
    except StackConfigError as exc:
        drift = [f"the working tree's stack config does not validate: {exc}"]
    for line in drift:
        pulumi.log.warn(f"{line}; this scale update applies only replica counts (the next reviewed `up` applies it)")
    return settings, list(deployed.plans), deployed.config
