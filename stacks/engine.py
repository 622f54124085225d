"""Drives the real Pulumi CLI for one stack through the Automation API.

The program runs inline (the SDK serves it to the engine itself, so no language host binary is
needed); the workspace is the project directory, so the stack config is the reviewed file
`stacks/Pulumi.<stack>.yaml` and plain `pulumi` commands in the same directory see the same
stacks.

Defaults that let a new user run with no account:
- state in a `file://` backend under `<project>/.serveform/state` (``PULUMI_BACKEND_URL`` wins);
- a passphrase secrets provider. ``PULUMI_CONFIG_PASSPHRASE`` (or ``_FILE``) wins; stacks whose
  backend stays on this machine (local, k8s-local) fall back to a fixed, published passphrase,
  which protects nothing and is documented as such: everything they hold stays on loopback.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "LOCAL_PASSPHRASE",
    "PULUMI_VERSION",
    "Engine",
    "find_pulumi",
    "project_dir",
    "read_stack_file",
    "workspace_env",
]

PULUMI_VERSION = "3.259.0"
LOCAL_PASSPHRASE = "serveform-local-only"
_LOCAL_BACKENDS = ("local",)
_LOCAL_STACKS = ("dev", "k8s")


def project_dir() -> Path:
    """The directory holding Pulumi.yaml: ``SERVEFORM_PROJECT_DIR``, else the checkout root."""
    configured = os.environ.get("SERVEFORM_PROJECT_DIR")
    if configured:
        return Path(configured).resolve()
    return Path(__file__).resolve().parents[1]


def find_pulumi() -> Path:
    """The Pulumi CLI: next to this Python (.venv/bin), on PATH, or in the setup cache."""
    candidates = [Path(sys.executable).parent / "pulumi"]
    on_path = shutil.which("pulumi")
    if on_path:
        candidates.append(Path(on_path))
    cache = Path(os.environ.get("SERVEFORM_CACHE", Path.home() / ".cache" / "serveform"))
    candidates.append(cache / f"pulumi-v{PULUMI_VERSION}" / "bin" / "pulumi")
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError("the Pulumi CLI was not found; run tools/setup.sh (or `make setup`)")


def read_stack_file(project: Path, stack: str) -> dict[str, Any]:
    """The `config:` of `stacks/Pulumi.<stack>.yaml` as written (secure values stay encrypted)."""
    path = project / "stacks" / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such stack config (stacks are configured in stacks/Pulumi.<stack>.yaml)")
    data = yaml.safe_load(path.read_text()) or {}
    return dict(data.get("config") or {})


def workspace_env(project: Path, stack: str) -> dict[str, str]:
    """Environment for the CLI and for the program's dynamic providers."""
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": os.pathsep.join([bin_dir, str(find_pulumi().parent), os.environ.get("PATH", "")]),
        # The dynamic-provider shim must run the Python that has the SDK and serveform.
        "PULUMI_PYTHON_CMD": sys.executable,
        "PULUMI_SKIP_UPDATE_CHECK": "1",
        "PULUMI_BACKEND_URL": os.environ.get("PULUMI_BACKEND_URL", ""),
        "SERVEFORM_PROJECT_DIR": str(project),
    }
    if not env["PULUMI_BACKEND_URL"]:
        state = project / ".serveform" / "state"
        state.mkdir(parents=True, exist_ok=True)
        env["PULUMI_BACKEND_URL"] = state.as_uri()
    if "PULUMI_CONFIG_PASSPHRASE" in os.environ:
        env["PULUMI_CONFIG_PASSPHRASE"] = os.environ["PULUMI_CONFIG_PASSPHRASE"]
    elif "PULUMI_CONFIG_PASSPHRASE_FILE" in os.environ:
        env["PULUMI_CONFIG_PASSPHRASE_FILE"] = os.environ["PULUMI_CONFIG_PASSPHRASE_FILE"]
    elif _is_local_only(project, stack):
        env["PULUMI_CONFIG_PASSPHRASE"] = LOCAL_PASSPHRASE
    return env


def _is_local_only(project: Path, stack: str) -> bool:
    try:
        backend = read_stack_file(project, stack).get("serveform:backend")
    except FileNotFoundError:
        return False
    return backend in _LOCAL_BACKENDS or stack in _LOCAL_STACKS


@dataclass
class Engine:
    """One stack of the project, with the real CLI behind it."""

    stack: str
    project: Path
    on_output: Callable[[str], None] | None = None
    on_event: Callable[[Any], None] | None = None
    """Gets the engine's structured events (`pulumi.automation.events.EngineEvent`) of up/refresh/destroy."""

    def __post_init__(self) -> None:
        from pulumi import automation as auto

        self._auto = auto
        env = workspace_env(self.project, self.stack)
        os.environ.update({k: v for k, v in env.items() if k.startswith(("PULUMI_", "SERVEFORM_"))})
        command = auto.PulumiCommand(root=str(find_pulumi().parent.parent), skip_version_check=False)
        self._workspace_options = auto.LocalWorkspaceOptions(
            work_dir=str(self.project), env_vars=env, pulumi_command=command
        )

    def _select(self):
        from serveform.components.program import run  # the program itself; imported only to run it

        return self._auto.create_or_select_stack(
            stack_name=self.stack,
            project_name="serveform",
            program=run,
            opts=self._workspace_options,
        )

    @property
    def stack_obj(self):
        if not hasattr(self, "_stack"):
            self._stack = self._select()
        return self._stack

    def config(self) -> dict[str, Any]:
        """The stack's config with secrets decrypted, as `{key: value}`."""
        return {k: v.value for k, v in self.stack_obj.get_all_config().items()}

    def preview(self, **kwargs: Any):
        return self.stack_obj.preview(on_output=self.on_output, diff=True, **kwargs)

    def up(self, **kwargs: Any):
        return self.stack_obj.up(on_output=self.on_output, on_event=self.on_event, **kwargs)

    def refresh(self, **kwargs: Any):
        return self.stack_obj.refresh(on_output=self.on_output, on_event=self.on_event, **kwargs)

    def destroy(self, **kwargs: Any):
        return self.stack_obj.destroy(on_output=self.on_output, on_event=self.on_event, **kwargs)

    def outputs(self) -> Mapping[str, Any]:
        return {k: v.value for k, v in self.stack_obj.outputs().items()}

    def set_replicas(self, counts: Mapping[str, int]) -> None:
        """Write `serveform:replicas.<service>` (the scaler's key) for the given services."""
        for service, count in sorted(counts.items()):
            self.stack_obj.set_config(
                f"serveform:replicas.{service}", self._auto.ConfigValue(value=str(int(count))), path=True
            )
