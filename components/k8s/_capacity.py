"""The capacity pre-flight: refuse a service no node can hold before registering anything.

A pod asking for more `nvidia.com/gpu` than any node has stays Pending forever, and Pulumi's
rollout wait would only give up after its timeout. Reading the nodes' allocatable resources
first turns that into an immediate, named error at `preview` and `up`.

`check` is pure (nodes and plans in, problems out); `read_nodes` is the one place that talks
to the cluster, through the kubeconfig and context of the stack config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from serveform.translator.plan import ServicePlan

from ._pod import GPU_PRODUCT_LABEL, gpu_request

__all__ = ["NodeFacts", "CapacityError", "check", "matching_products", "read_nodes"]

REQUEST_TIMEOUT_SECONDS = 15


class CapacityError(RuntimeError):
    """The cluster could not be read; the message says which kubeconfig and context were used."""


@dataclass(frozen=True)
class NodeFacts:
    """What the pre-flight needs to know about one node."""

    name: str
    allocatable: Mapping[str, str] = field(default_factory=dict)
    """Allocatable resources as quantities (`{"nvidia.com/gpu": "8", "cpu": "32"}`)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    unschedulable: bool = False


def _count(quantity: str | None) -> int:
    # Extended resources (GPUs) are whole numbers; anything else is not a GPU count.
    try:
        return int(quantity or 0)
    except ValueError:
        return 0


def matching_products(plan: ServicePlan, nodes: Sequence[NodeFacts]) -> tuple[str, ...]:
    """Product-label values of nodes whose GPU model is one the service accepts.

    Feature discovery labels nodes with full product names (`NVIDIA-A100-SXM4-80GB`); the
    service names models (`A100`). A model matches a product when it is one of the product's
    dash-separated words, case-insensitively (so `A10` does not match `A100`).
    """
    request = gpu_request(plan)
    label = GPU_PRODUCT_LABEL.get(request.vendor or "")
    if not request.names or label is None:
        return ()
    wanted = {n.upper() for n in request.names}
    found = set()
    for node in nodes:
        product = node.labels.get(label)
        if product and wanted & set(product.upper().replace("_", "-").split("-")):
            found.add(product)
    return tuple(sorted(found))


def check(plans: Sequence[ServicePlan], nodes: Sequence[NodeFacts]) -> list[str]:
    """One message per service whose replica fits on no schedulable node (GPU count and model)."""
    problems = []
    schedulable = [n for n in nodes if not n.unschedulable]
    for plan in plans:
        request = gpu_request(plan)
        if request.resource is None:
            continue
        best = max((_count(n.allocatable.get(request.resource)) for n in schedulable), default=0)
        if best < request.count:
            where = f"the most any schedulable node has is {best}" if best else "no schedulable node has any"
            problems.append(
                f"{plan.file}: error: resources.gpu: each replica of {plan.name!r} needs {request.count} "
                f"{request.resource}, but {where}; lower the GPU count or add a node that has them"
            )
            continue
        if request.names and request.vendor in GPU_PRODUCT_LABEL:
            products = set(matching_products(plan, schedulable))
            label = GPU_PRODUCT_LABEL[request.vendor]
            fits = [
                n for n in schedulable
                if n.labels.get(label) in products and _count(n.allocatable.get(request.resource)) >= request.count
            ]
            if not fits:
                problems.append(
                    f"{plan.file}: error: resources.gpu: no schedulable node has {request.count} "
                    f"{'/'.join(request.names)} GPU(s) (node label {label})"
                )
    return problems


def read_nodes(kubeconfig: str | None, context: str | None) -> list[NodeFacts]:
    """The cluster's nodes, read with the stack's kubeconfig and context."""
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    where = f"kubeconfig {kubeconfig or '(default)'}, context {context or '(current)'}"
    try:
        api_client = config.new_client_from_config(config_file=kubeconfig, context=context)
    except (ConfigException, OSError) as exc:
        raise CapacityError(f"serveform:k8s: cannot load {where}: {exc}") from None
    try:
        with api_client:
            items = client.CoreV1Api(api_client).list_node(_request_timeout=REQUEST_TIMEOUT_SECONDS).items
    except client.ApiException as exc:
        raise CapacityError(
            f"serveform:k8s: listing nodes with {where} failed ({exc.status} {exc.reason}); grant `list nodes` "
            "or set serveform:k8s.check_capacity to false"
        ) from None
    except Exception as exc:  # urllib3 connection errors and the like
        raise CapacityError(f"serveform:k8s: cannot reach the cluster of {where}: {type(exc).__name__}") from None
    return [
        NodeFacts(
            name=node.metadata.name,
            allocatable=dict(node.status.allocatable or {}),
            labels=dict(node.metadata.labels or {}),
            unschedulable=bool(node.spec.unschedulable),
        )
        for node in items
    ]
