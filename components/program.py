"""The Pulumi program: stack config → compiled services → the backend's components.

`run()` is the whole program. `__main__.py` calls it when the CLI runs the project (plain
`pulumi up`), and `serveform.stacks.engine` passes it as the Automation API's inline program.
Everything that can be wrong with the input is checked before the first resource is registered:
a bad stack config or service file fails the run with the translator's report, and Pulumi
changes nothing.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pulumi
from pulumi.runtime import config as _runtime_config

from serveform.stacks.services import compile_services
from serveform.stacks.settings import CONFIG_NAMESPACE, StackConfigError, StackSettings
from serveform.translator.plan import ServicePlan

__all__ = ["build", "compile_plans", "load_settings", "run"]


def load_settings() -> StackSettings:
    """The `serveform:*` config of the running stack, validated."""
    merged = {**_runtime_config.get_config_env(), **_runtime_config.CONFIG.get()}
    ours = {k: v for k, v in merged.items() if k.startswith(f"{CONFIG_NAMESPACE}:")}
    project = os.environ.get("SERVEFORM_PROJECT_DIR") or os.getcwd()
    return StackSettings.from_config(ours, stack=pulumi.get_stack(), project_dir=Path(project))


def compile_plans(settings: StackSettings) -> list[ServicePlan]:
    """Compile every service file of the stack; all problems of all files are reported at once."""
    results, reports = compile_services(settings, os.environ)
    if reports:
        raise pulumi.RunError("\n".join(reports))
    for result in results:
        for warning in result.warnings:
            pulumi.log.warn(str(warning))
    return [result.plan for result in results]


def build(settings: StackSettings, plans: list[ServicePlan]) -> None:
    """Hand the plans to the stack's backend (`components/<backend>/deploy`)."""
    backend = importlib.import_module(f"serveform.components.{settings.backend}")
    backend.deploy(settings, plans)


def run() -> None:
    """The program: validate everything first, then register resources."""
    try:
        settings = load_settings()
    except StackConfigError as exc:
        raise pulumi.RunError(str(exc)) from None
    build(settings, compile_plans(settings))
