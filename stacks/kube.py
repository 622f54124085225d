"""A Kubernetes API client for a `k8s` stack, from its `serveform:k8s` settings (for the CLI's reads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["api_client", "kubeconfig_path"]


def kubeconfig_path(settings: Any) -> str | None:
    """`serveform:k8s.kubeconfig` as an absolute path (relative ones are from the project root);
    None: the client's default ($KUBECONFIG, else ~/.kube/config), as the Pulumi provider does."""
    configured = settings.k8s.kubeconfig
    if not configured:
        return None
    path = Path(configured).expanduser()
    return str(path if path.is_absolute() else Path(settings.project_dir) / path)


def api_client(settings: Any):
    """A `kubernetes.client.ApiClient` for the stack's cluster and context."""
    from kubernetes import config

    return config.new_client_from_config(config_file=kubeconfig_path(settings), context=settings.k8s.context)
