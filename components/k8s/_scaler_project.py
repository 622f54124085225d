"""The project files the scaler's pod needs to run `pulumi up` of this stack.

The scaler runs the project's program with its counts (a scale `up`, which rebuilds the stack
from the last deployment's inputs kept in the stack's state), so its pod needs the project:
`Pulumi.yaml`, the program's `__main__.py`, the stack's config file (its secrets settings) and
every service file the stack deploys. They ride in a ConfigMap (the stack file's secrets are
ciphertext there; the passphrase is in the Secret `scaler-env`). Counts are not in these files:
a restarted scaler pod reads them from the stack's `replicas` output.
"""

from __future__ import annotations

import json
from pathlib import Path

from serveform.stacks.settings import StackSettings

__all__ = ["ProjectFileError", "project_files"]

# The program every serveform project runs (`main:` of Pulumi.yaml).
MAIN_FILE = "__main__.py"


class ProjectFileError(RuntimeError):
    """A file the scaler's pod needs is missing from the project directory; names it."""


def _read(root: Path, relative: str) -> str:
    path = root / relative
    try:
        return path.read_text()
    except OSError as exc:
        raise ProjectFileError(f"{path}: cannot read it for the scaler's project ConfigMap: {exc.strerror or exc}") from None


def project_files(settings: StackSettings, *, images: dict[str, str | None] | None = None) -> dict[str, str]:
    """Relative path → text of every file the scaler's pod needs (no secret in plain text).

    The stack file is the pod's copy: `serveform:k8s` loses `kubeconfig` and `context` (the pod
    reaches the cluster through its ServiceAccount) and gets ``images`` (`runtime_image`) as the
    deploying `up` resolved them, so the scaler's `up` keeps the pods' images and commands even
    where it cannot name the runtime image itself (no checkout in the pod).
    """
    import yaml

    root = Path(settings.project_dir)
    project = yaml.safe_load(_read(root, "Pulumi.yaml")) or {}
    # The pod's python already has serveform and Pulumi: no project virtualenv there.
    runtime = project.get("runtime")
    if isinstance(runtime, dict) and isinstance(runtime.get("options"), dict):
        runtime["options"].pop("virtualenv", None)
    files = {"Pulumi.yaml": json.dumps(project, indent=2, sort_keys=True) + "\n"}
    main = str(project.get("main") or MAIN_FILE)
    files[main if main.endswith(".py") else f"{main.rstrip('/')}/{MAIN_FILE}"] = _read(
        root, main if main.endswith(".py") else f"{main.rstrip('/')}/{MAIN_FILE}"
    )
    config_dir = str(project.get("stackConfigDir") or ".").strip("/")
    stack_file = f"{config_dir}/Pulumi.{settings.stack}.yaml" if config_dir != "." else f"Pulumi.{settings.stack}.yaml"
    files[stack_file] = _pod_stack_file(_read(root, stack_file), images or {})
    for service in settings.services:
        files[str(Path(service))] = _read(root, service)
    return files


def _pod_stack_file(text: str, images: dict[str, str | None]) -> str:
    import yaml

    document = yaml.safe_load(text) or {}
    config = document.setdefault("config", {}) or {}
    k8s = dict(config.get("serveform:k8s") or {})
    for key in ("kubeconfig", "context"):
        k8s.pop(key, None)
    k8s.update({key: value for key, value in images.items() if value})
    config["serveform:k8s"] = k8s
    document["config"] = config
    return yaml.safe_dump(document, sort_keys=False)
