"""What each backend can honour: fields it cannot become warnings naming field and backend.

The table is the one place that knows the backends' limits; the components only wire what
the plan says, so a field missing here would be dropped silently.
"""

from __future__ import annotations

from typing import Any

from .plan import ServicePlan
from .spec import ServiceSpec

__all__ = ["CLOUD_BACKENDS", "check_backend"]

CLOUD_BACKENDS = ("aws", "gcp", "azure")
# serveform backend → the dstack `backends:` value that names it
_DSTACK_NAMES = {"aws": "aws", "gcp": "gcp", "azure": "azure", "k8s": "kubernetes", "local": "local"}

# field → why the backend ignores it; only fields the user actually wrote are reported.
_IGNORED: dict[str, dict[str, str]] = {
    "local": {
        "image": "replicas run as processes on this machine, not in a container image",
        "python": "replicas run with this machine's Python, not dstack's base image",
        "nvcc": "replicas run as processes on this machine, not in dstack's base image",
        "docker": "replicas run as processes on this machine",
        "registry_auth": "no image is pulled",
        "entrypoint": "replicas run `commands` as processes, without a container entrypoint",
        "privileged": "replicas run as processes with the deploying user's rights",
        "spot_policy": "there are no instances to choose",
        "max_price": "there are no instances to choose",
        "instance_types": "there are no instances to choose",
        "regions": "there are no regions",
        "retry": "a failed replica process is not resubmitted",
        "retry_policy": "a failed replica process is not resubmitted",
        "max_duration": "replica processes run until the stack changes",
    },
    "k8s": {
        "spot_policy": "pods are scheduled on the cluster's nodes; node pools decide spot capacity",
        "max_price": "the cluster's nodes are already paid for",
        "instance_types": "pods are scheduled by resources, not instance types",
        "regions": "the cluster is in one place",
        "max_duration": "Deployments run until the stack changes",
        "retry": "Kubernetes restarts failed pods itself",
        "retry_policy": "Kubernetes restarts failed pods itself",
    },
    "aws": {"max_duration": "instances run until the stack changes"},
    "gcp": {"max_duration": "instances run until the stack changes"},
    "azure": {"max_duration": "instances run until the stack changes"},
}


def check_backend(spec: ServiceSpec, plan: ServicePlan, backend: str) -> list[tuple[tuple[Any, ...], str]]:
    """(field path, message) for every written field `backend` cannot honour."""
    notes: list[tuple[tuple[Any, ...], str]] = []
    written = spec.model_fields_set
    for name, reason in _IGNORED.get(backend, {}).items():
        value = getattr(spec, name, None)
        if name in written and value not in (None, False, [], {}):
            notes.append(((name,), f"the `{backend}` backend ignores this field: {reason}"))
    if spec.backends is not None and _DSTACK_NAMES.get(backend) not in spec.backends:
        listed = ", ".join(spec.backends)
        notes.append((("backends",), f"the stack deploys to the `{backend}` backend, which is not in [{listed}]"))
    if backend == "local":
        resources = spec.resources
        if "resources" in written:
            for name in sorted(resources.model_fields_set):
                value = getattr(resources, name)
                if name == "gpu" and (value is None or (value.count.min or 0) == 0):
                    continue
                notes.append((("resources", name), "the `local` backend does not reserve resources: replicas share this machine"))
        volumes_network = [i for i, v in enumerate(plan.volumes) if v.kind == "network"]
        for index in volumes_network:
            notes.append((("volumes", index), "the `local` backend keeps a network volume as a directory under the stack's state directory"))
    if backend in ("local", "k8s"):
        for index, volume in enumerate(plan.volumes):
            if volume.kind == "instance" and backend == "local":
                notes.append((("volumes", index), "the `local` backend passes the instance path to replicas in an environment variable instead of mounting it"))
    for index, volume in enumerate(plan.volumes):
        if len(volume.names) > 1:
            # every backend's components mount `names[0]`; dstack picks the first that exists in the
            # replica's backend/region, which serveform settles at deploy time by creating the first
            notes.append((("volumes", index, "name"), f"serveform mounts the first volume, `{volume.names[0]}`; the other names are not used"))
    if "gateway" in written and spec.gateway is False:
        notes.append((("gateway",), "serveform always routes services through the stack's gateway"))
    elif "gateway" in written and spec.gateway not in (None, True):
        notes.append((("gateway",), "serveform has one gateway per stack; the gateway name is ignored"))
    if "strip_prefix" in written:
        notes.append((("strip_prefix",), "only applies without a gateway (`/proxy/services/...` paths); serveform always serves `<name>.<domain>`"))
    return notes
