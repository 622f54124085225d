"""Pure translation of a plan's replica group into Kubernetes pod fields.

No Pulumi runtime here: these functions return plain values (and `pulumi_kubernetes` input
types, which are plain data), so they are tested directly. The components only wire them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydantic import SecretStr

from serveform.translator.plan import ReplicaGroupPlan, ServicePlan

__all__ = [
    "GPU_RESOURCE",
    "K8sPlanError",
    "GpuRequest",
    "gpu_request",
    "labels",
    "split_env",
    "command_and_args",
    "workdir",
    "quantity_gb",
    "docker_config_json",
]

# The extended resource each device plugin advertises, by the plan's vendor names.
GPU_RESOURCE = {
    "nvidia": "nvidia.com/gpu",  # NVIDIA device plugin / GPU operator
    "amd": "amd.com/gpu",  # ROCm device plugin
    "google": "google.com/tpu",  # GKE TPU node pools
    "intel": "gpu.intel.com/i915",  # Intel GPU device plugin
}
# Node labels that GPU feature discovery (NVIDIA GFD, AMD node labeller) puts on GPU nodes.
GPU_PRESENT_LABEL = {"nvidia": "nvidia.com/gpu.present"}
GPU_PRODUCT_LABEL = {"nvidia": "nvidia.com/gpu.product", "amd": "amd.com/gpu.product-name"}
# dstack's base image runs a job's commands with this shell; so do we.
SHELL_ENTRYPOINT = ("/bin/sh", "-c")
# Kubernetes env var names: C identifiers are always safe across images and shells.
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_APP_LABEL = "app.kubernetes.io/name"
_PART_LABEL = "app.kubernetes.io/part-of"
_COMPONENT_LABEL = "app.kubernetes.io/component"
_STACK_LABEL = "serveform.dev/stack"


class K8sPlanError(ValueError):
    """A plan cannot run on Kubernetes as written; the message names the service file and field."""


@dataclass(frozen=True)
class GpuRequest:
    """What one replica asks the scheduler for."""

    resource: str | None
    """The extended resource name (`nvidia.com/gpu`), None for CPU-only services."""
    count: int
    """GPUs per replica."""
    vendor: str | None
    names: tuple[str, ...]
    """Acceptable GPU models (`A100`, `H100`); empty = any."""


def gpu_request(plan: ServicePlan) -> GpuRequest:
    """The GPU resource a replica needs: vendor → device-plugin resource, count = `gpus_num`."""
    group = plan.replica_group
    res = group.resources
    count = group.gpus_num
    if count <= 0:
        return GpuRequest(resource=None, count=0, vendor=None, names=())
    # dstack: a GPU request without a vendor means NVIDIA.
    vendor = res.gpu_vendor or "nvidia"
    resource = GPU_RESOURCE.get(vendor)
    if resource is None:
        raise K8sPlanError(
            f"{plan.file}: error: resources.gpu: vendor {vendor!r} has no Kubernetes device plugin resource "
            f"serveform knows; expected one of {', '.join(sorted(GPU_RESOURCE))}"
        )
    return GpuRequest(resource=resource, count=count, vendor=vendor, names=tuple(res.gpu_names))


def labels(stack: str, service: str, component: str) -> dict[str, str]:
    """The labels every object of a service carries; the selector uses all of them."""
    return {_APP_LABEL: service, _COMPONENT_LABEL: component, _PART_LABEL: "serveform", _STACK_LABEL: stack}


def split_env(plan: ServicePlan) -> tuple[dict[str, str], dict[str, str]]:
    """(plain env, secret env) of a replica group. Secret values are read only here.

    A value is secret when the translator marked it so or it arrived as a SecretStr (taken from
    the deploying environment or `serveform:secrets`). Callers wrap the second map in
    `pulumi.Output.secret` at once.
    """
    plain: dict[str, str] = {}
    secret: dict[str, str] = {}
    for name, env in plan.replica_group.env.items():
        if not _ENV_NAME.match(name):
            raise K8sPlanError(f"{plan.file}: error: env.{name}: not a valid environment variable name")
        if env.value is None:
            raise K8sPlanError(
                f"{plan.file}: error: env.{name}: has no value; set it in the deploying environment or in serveform:secrets"
            )
        if isinstance(env.value, SecretStr):
            secret[name] = env.value.get_secret_value()
        elif env.secret:
            secret[name] = env.value
        else:
            plain[name] = env.value
    return plain, secret


def command_and_args(group: ReplicaGroupPlan) -> tuple[list[str] | None, list[str] | None]:
    """The container's `command` and `args`: the entrypoint (default `/bin/sh -c`) and the script.

    With neither commands nor an entrypoint, the image's own entrypoint and command run.
    """
    script = " && ".join((*group.setup, *group.commands))
    if group.entrypoint:
        # dstack's `entrypoint` is one string split on whitespace, like Docker's shell form.
        return group.entrypoint.split(), ([script] if script else None)
    if script:
        return list(SHELL_ENTRYPOINT), [script]
    return None, None


def workdir(group: ReplicaGroupPlan) -> str | None:
    """The container's working directory; dstack resolves relative ones under /workflow."""
    wd = group.working_dir
    if not wd:
        return None
    if wd in (".", "./"):
        return "/workflow"
    return wd if wd.startswith("/") else "/workflow/" + wd.removeprefix("./")


def quantity_gb(gigabytes: float) -> str:
    """A Kubernetes quantity for a size in GB (plan sizes are GB = GiB, as in dstack): `1.5` → `1536Mi`."""
    mebibytes = round(gigabytes * 1024)
    if mebibytes % 1024 == 0:
        return f"{mebibytes // 1024}Gi"
    return f"{mebibytes}Mi"


def docker_config_json(image_registry: str | None, username: str, password: str) -> str:
    """The `.dockerconfigjson` document of an image pull secret. Call only inside `Output.secret`."""
    import base64
    import json

    server = image_registry or "https://index.docker.io/v1/"
    auth = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return json.dumps({"auths": {server: {"username": username, "password": password, "auth": auth}}}, sort_keys=True)


def image_registry(image: str) -> str | None:
    """The registry host of an image reference; None for Docker Hub (Docker's own rule)."""
    first, sep, _ = image.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first
    return None
