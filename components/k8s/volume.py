"""`Volume` on Kubernetes: a service's network volume as a PersistentVolumeClaim.

A dstack network volume is a named disk that outlives the run. Here it becomes a claim named
after the volume, in the stack's namespace. Two ways to back it:

- `host_path` set (single-node and test clusters, k8s-local): a static `hostPath`
  PersistentVolume `<namespace>-<volume>` under that directory, pre-bound to the claim
  (`claimRef` + `volumeName`), so no provisioner is needed and nothing else can take it;
- otherwise the claim asks the cluster's `storage_class` (or its default class) to provision.

With `retain` (stack config `serveform:retainVolumes`, the default) the objects are left in the
cluster when the stack drops them (static volumes always have reclaim policy `Retain`), so the
data survives `destroy` and a later `up` can bind it again. A static volume's data stays on
the node in any case: Kubernetes does not delete hostPath directories.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from ._pod import labels as _labels

__all__ = ["VOLUME_TYPE", "Volume", "VolumeArgs"]

VOLUME_TYPE = "serveform:k8s:Volume"
# A network volume attaches to one node at a time (dstack: one instance), like a cloud disk.
ACCESS_MODES = ["ReadWriteOnce"]


@dataclass(frozen=True, kw_only=True)
class VolumeArgs:
    """Inputs of a Kubernetes `Volume`."""

    volume_name: str
    """The volume's name in the service file; also the claim's name."""
    namespace: pulumi.Input[str]
    """The namespace of the claim."""
    stack: str
    """The stack name, part of the labels."""
    size_gb: int
    """Requested size in GB (GiB)."""
    storage_class: str | None = None
    """Storage class for a provisioned claim; None = the cluster's default class."""
    host_path: str | None = None
    """Directory on the node that backs a static volume; None = provisioned by the storage class."""
    retain: bool = True
    """Keep the claim (and static volume, with reclaim policy Retain) when the stack drops it."""


class Volume(pulumi.ComponentResource):
    """One network volume: a PersistentVolumeClaim, and its static PersistentVolume if asked."""

    claim_name: pulumi.Output[str]
    """Name of the PersistentVolumeClaim that replicas mount."""
    persistent_volume_name: pulumi.Output[str] | None
    """Name of the static PersistentVolume, when `host_path` is set."""

    def __init__(self, name: str, args: VolumeArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(VOLUME_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self, retain_on_delete=args.retain)
        labels = _labels(args.stack, args.volume_name, "volume")
        size = f"{args.size_gb}Gi"
        volume_name: pulumi.Input[str] | None = None
        storage_class: str | None = args.storage_class
        self.persistent_volume_name = None
        if args.host_path is not None:
            pv_name = pulumi.Output.concat(args.namespace, "-", args.volume_name)
            pv = k8s.core.v1.PersistentVolume(
                f"{name}-pv",
                metadata=k8s.meta.v1.ObjectMetaArgs(name=pv_name, labels=labels),
                spec=k8s.core.v1.PersistentVolumeSpecArgs(
                    capacity={"storage": size},
                    access_modes=ACCESS_MODES,
                    # Kubernetes cannot delete hostPath data; Pulumi deletes the object unless retained.
                    persistent_volume_reclaim_policy="Retain",
                    # An empty class: only claims that name this volume bind it, never a provisioner.
                    storage_class_name="",
                    host_path=k8s.core.v1.HostPathVolumeSourceArgs(
                        path=pulumi.Output.from_input(args.namespace).apply(
                            lambda ns: posixpath.join(args.host_path, ns, args.volume_name)
                        ),
                        type="DirectoryOrCreate",
                    ),
                    claim_ref=k8s.core.v1.ObjectReferenceArgs(namespace=args.namespace, name=args.volume_name),
                ),
                opts=child,
            )
            volume_name = pv.metadata.name
            storage_class = ""
            self.persistent_volume_name = pv.metadata.name
        claim = k8s.core.v1.PersistentVolumeClaim(
            f"{name}-claim",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.volume_name,
                namespace=args.namespace,
                labels=labels,
                # A claim nobody mounts yet stays Pending until its first pod: do not wait for Bound.
                annotations={"pulumi.com/skipAwait": "true"},
            ),
            spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                access_modes=ACCESS_MODES,
                resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": size}),
                storage_class_name=storage_class,
                volume_name=volume_name,
            ),
            opts=child,
        )
        self.claim_name = claim.metadata.name
        outputs: dict[str, object] = {"claim_name": self.claim_name}
        if self.persistent_volume_name is not None:
            outputs["persistent_volume_name"] = self.persistent_volume_name
        self.register_outputs(outputs)
