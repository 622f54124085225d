"""Drives the real Pulumi CLI for one stack through the Automation API.

The program runs inline (the SDK serves it to the engine itself, so no language host binary is
needed); the workspace is the project directory, so the stack config is the reviewed file
`stacks/Pulumi.<stack>.yaml` and plain `pulumi` commands in the same directory see the same
stacks.

Defaults that let a new user run with no account:
- state in a `file://` backend under `<project>/.serveform/state` (``PULUMI_BACKEND_URL`` wins);
- a passphrase secrets provider. ``PULUMI_CONFIG_PASSPHRASE`` (or ``_FILE``) wins. Only a stack of
  the local backend whose state is a `file://` directory on this machine falls back to a fixed,
  published passphrase, which protects nothing and is documented as such: such a stack holds
  nothing that leaves loopback, and its state is readable by this user only. The choice is never
  made by the stack's name. Any other stack without a passphrase, a `secretsprovider` in its
  stack file or a Pulumi Cloud backend stops with `PassphraseRequired`, naming the stack and what
  to set.

A `file://` state directory on this machine is kept private: the directory tree 0700 and every
file 0600, checked before and after each operation (so an existing tree written by an older
release is fixed at the next command).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "LOCAL_PASSPHRASE",
    "PULUMI_VERSION",
    "Engine",
    "PassphraseRequired",
    "find_pulumi",
    "project_dir",
    "read_stack_file",
    "secure_state_dir",
    "workspace_env",
]

PULUMI_VERSION = "3.259.0"
LOCK_WAIT_SECONDS = 600.0
LOCK_RETRY_INITIAL_SECONDS = 2.0
LOCK_RETRY_MAX_SECONDS = 30.0
LOCAL_PASSPHRASE = "serveform-local-only"
_LOCAL_BACKENDS = ("local",)
# Backends whose own secrets provider applies when the stack file names none (Pulumi Cloud).
_SERVICE_BACKEND_SCHEMES = ("https://", "http://")
_PRIVATE_DIR_MODE = 0o700
_PRIVATE_FILE_MODE = 0o600


class PassphraseRequired(RuntimeError):
    """A stack needs a secrets passphrase (or provider) and its environment gives none."""

    def __init__(self, stack: str, backend: object, backend_url: str) -> None:
        self.stack = stack
        where = "a state on this machine" if backend_url.startswith("file://") else f"the state backend {backend_url.split('?')[0]}"
        super().__init__(
            f"stack {stack!r} (stacks/Pulumi.{stack}.yaml, serveform:backend {backend or 'unset'}, {where}) needs a "
            "secrets passphrase: set PULUMI_CONFIG_PASSPHRASE or PULUMI_CONFIG_PASSPHRASE_FILE (a file readable only "
            "by you), or give the stack a secrets provider (`secretsprovider: awskms://...`, `gcpkms://...`, "
            "`azurekeyvault://...` in its stack file). The published passphrase "
            f"{LOCAL_PASSPHRASE!r} is used only for the local backend with a file:// state on this machine"
        )


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
        env["PULUMI_BACKEND_URL"] = (project / ".serveform" / "state").as_uri()
    state = _local_state_dir(env["PULUMI_BACKEND_URL"])
    if state is not None:
        secure_state_dir(state)
    if "PULUMI_CONFIG_PASSPHRASE" in os.environ:
        env["PULUMI_CONFIG_PASSPHRASE"] = os.environ["PULUMI_CONFIG_PASSPHRASE"]
    elif "PULUMI_CONFIG_PASSPHRASE_FILE" in os.environ:
        env["PULUMI_CONFIG_PASSPHRASE_FILE"] = os.environ["PULUMI_CONFIG_PASSPHRASE_FILE"]
    else:
        stack_file = _stack_file_or_empty(project, stack)
        backend = (stack_file.get("config") or {}).get("serveform:backend")
        if backend in _LOCAL_BACKENDS and state is not None:
            env["PULUMI_CONFIG_PASSPHRASE"] = LOCAL_PASSPHRASE
        elif not _has_secrets_provider(stack_file, env["PULUMI_BACKEND_URL"]):
            raise PassphraseRequired(stack, backend, env["PULUMI_BACKEND_URL"])
    return env


def _stack_file_or_empty(project: Path, stack: str) -> dict[str, Any]:
    path = project / "stacks" / f"Pulumi.{stack}.yaml"
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def _has_secrets_provider(stack_file: Mapping[str, Any], backend_url: str) -> bool:
    """True when the stack encrypts with a KMS (its stack file says so) or Pulumi Cloud's own provider."""
    provider = str(stack_file.get("secretsprovider") or "")
    if provider and not provider.startswith("passphrase"):
        return True
    return not provider and backend_url.startswith(_SERVICE_BACKEND_SCHEMES)


def _local_state_dir(backend_url: str) -> Path | None:
    """The directory of a `file://` backend on this machine; None for any other backend."""
    from urllib.parse import unquote, urlparse

    url = urlparse(backend_url)
    if url.scheme != "file" or url.netloc not in ("", "localhost"):
        return None
    return Path(unquote(url.path)).expanduser()


def secure_state_dir(path: Path) -> None:
    """Create `path` as 0700 and make every directory below it 0700 and every file 0600.

    The state holds the stack's secrets (encrypted) and, in checkpoints, history and backups,
    plain outputs; another local user must read none of it. Files owned by someone else (a
    shared state directory) are left alone rather than failing the operation.
    """
    path.mkdir(parents=True, exist_ok=True, mode=_PRIVATE_DIR_MODE)
    uid = os.getuid()
    _chmod_own(path, _PRIVATE_DIR_MODE, uid)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            _chmod_own(Path(root) / name, _PRIVATE_DIR_MODE, uid)
        for name in files:
            _chmod_own(Path(root) / name, _PRIVATE_FILE_MODE, uid)


def _chmod_own(path: Path, mode: int, uid: int) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return  # removed meanwhile (a lock released by a concurrent command)
    if info.st_uid != uid or path.is_symlink() or (info.st_mode & 0o777) == mode:
        return
    try:
        path.chmod(mode)
    except FileNotFoundError:
        pass


@dataclass
class Engine:
    """One stack of the project, with the real CLI behind it."""

    stack: str
    project: Path
    on_output: Callable[[str], None] | None = None
    on_event: Callable[[Any], None] | None = None
    """Gets the engine's structured events (`pulumi.automation.events.EngineEvent`) of up/refresh/destroy."""
    lock_wait_seconds: float = LOCK_WAIT_SECONDS
    """How long up/refresh/destroy wait, with backoff, for another update's lock (the scaler's, CI's)."""

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
        with self._private_state():
            return self.stack_obj.preview(on_output=self.on_output, diff=True, **kwargs)

    def up(self, **kwargs: Any):
        return self._updating(self.stack_obj.up, **kwargs)

    def refresh(self, **kwargs: Any):
        return self._updating(self.stack_obj.refresh, **self._provider_settings(kwargs))

    def destroy(self, **kwargs: Any):
        return self._updating(self.stack_obj.destroy, **self._provider_settings(kwargs))

    def _provider_settings(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """refresh/destroy of a k8s stack run the program, so its provider reaches the cluster as
        this host does: the state holds the provider settings of the last update, and the
        in-cluster scaler's updates store none (its ServiceAccount, no kubeconfig)."""
        backend = (_stack_file_or_empty(self.project, self.stack).get("config") or {}).get("serveform:backend")
        if backend == "k8s":
            kwargs.setdefault("run_program", True)
        return kwargs

    def _updating(self, operation: Callable[..., Any], **kwargs: Any):
        """Run an update; while another update holds the stack's lock, wait with backoff.

        The scaler's updates and CI's serialise on the lock: CI's `up` must wait out a scale
        update, not fail on it (the scaler backs off the same way, `serveform.scaler.applier`).
        """
        deadline = time.monotonic() + self.lock_wait_seconds
        delay = LOCK_RETRY_INITIAL_SECONDS
        while True:
            try:
                with self._private_state():
                    return operation(on_output=self.on_output, on_event=self.on_event, **kwargs)
            except self._auto.ConcurrentUpdateError:
                if time.monotonic() + delay > deadline:
                    raise
                message = f"stack {self.stack} is locked by another update; retrying in {delay:.0f} s"
                if self.on_output is not None:
                    self.on_output(message)
                time.sleep(delay)
                delay = min(delay * 2, LOCK_RETRY_MAX_SECONDS)

    @contextlib.contextmanager
    def _private_state(self):
        """The CLI writes checkpoints, history and backups with its umask; tighten them after."""
        state = _local_state_dir(self._workspace_options.env_vars.get("PULUMI_BACKEND_URL", ""))
        try:
            yield
        finally:
            if state is not None:
                secure_state_dir(state)

    def outputs(self) -> Mapping[str, Any]:
        return {k: v.value for k, v in self.stack_obj.outputs().items()}

    def scale(self, counts: Mapping[str, int], *, source: str = "manual", **kwargs: Any):
        """A scale `up` (see serveform.stacks.replicas): the last deployment with these counts."""
        from .replicas import SCALE_ENV, ScaleRequest

        # The inline program runs in this process: the request reaches it through os.environ.
        os.environ[SCALE_ENV] = ScaleRequest(counts=dict(counts), source=source).to_env()
        try:
            return self.up(**kwargs)
        finally:
            os.environ.pop(SCALE_ENV, None)
