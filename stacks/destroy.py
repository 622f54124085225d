"""What `serveform destroy` is about to do, read from the stack's state before it asks.

Every backend's network volume is a component of type ``serveform:<backend>:Volume`` whose
children carry Pulumi's ``retainOnDelete`` when the stack sets `serveform:retainVolumes` (see
`stacks.settings`). The state says, per volume, what will happen, even when the stack file was
edited since the last `up` — the last deployment decides, not the file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["DestroySummary", "VolumeFate", "destroy_summary"]

_VOLUME_TYPE_SUFFIX = ":Volume"
_NOT_COUNTED = ("pulumi:pulumi:Stack", "pulumi:providers:")


@dataclass(frozen=True)
class VolumeFate:
    """One volume of the stack and whether `destroy` deletes it."""

    name: str
    type: str
    kept: bool
    where: str | None
    """Where its data lives, when the state says (a local directory, a disk id)."""


@dataclass(frozen=True)
class DestroySummary:
    stack: str
    resources: int
    """Resources that `destroy` deletes or forgets (the stack and its providers not counted)."""
    volumes: tuple[VolumeFate, ...]
    targeted: bool = False
    """Only the resources named with `--target` (and their children)."""

    def text(self) -> str:
        if not self.resources:
            return f"Stack {self.stack!r} has no resources: nothing to destroy."
        if self.targeted:
            lines = [f"Destroying the targeted resources of stack {self.stack!r} deletes {self.resources} resource(s)."]
        else:
            lines = [f"Destroying stack {self.stack!r} deletes its {self.resources} resources."]
        deleted = [v for v in self.volumes if not v.kept]
        kept = [v for v in self.volumes if v.kept]
        if not self.volumes:
            lines.append("It has no volumes.")
        if deleted:
            lines.append("Volumes DELETED with their data (serveform:retainVolumes is false):")
            lines += [f"  - {_describe(v)}" for v in deleted]
        if kept:
            lines.append("Volumes KEPT (serveform:retainVolumes is true; Pulumi forgets them, the data stays):")
            lines += [f"  - {_describe(v)}" for v in kept]
        return "\n".join(lines)


def _describe(volume: VolumeFate) -> str:
    return volume.name + (f" ({volume.where})" if volume.where else "")


def destroy_summary(stack: str, deployment: Mapping[str, Any], targets: Sequence[str] = ()) -> DestroySummary:
    """The summary for ``deployment``, the `deployment` object of `pulumi stack export`; with
    ``targets`` (URNs, as `destroy --target` takes them), only those resources and their children."""
    resources = [r for r in deployment.get("resources") or () if isinstance(r, dict)]
    if targets:
        wanted = set(targets)
        by_urn = {r.get("urn"): r for r in resources}

        def targeted(resource: dict[str, Any]) -> bool:
            while resource is not None:
                if resource.get("urn") in wanted:
                    return True
                resource = by_urn.get(resource.get("parent"))
            return False

        resources = [r for r in resources if targeted(r)]
    children: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        if resource.get("parent"):
            children.setdefault(resource["parent"], []).append(resource)

    def descendants(urn: str) -> list[dict[str, Any]]:
        out = []
        for child in children.get(urn, ()):
            out.append(child)
            out.extend(descendants(child["urn"]))
        return out

    volumes = []
    for resource in resources:
        kind = str(resource.get("type", ""))
        if not (kind.startswith("serveform:") and kind.endswith(_VOLUME_TYPE_SUFFIX)):
            continue
        parts = [resource, *descendants(resource["urn"])]
        custom = [r for r in parts if r.get("custom")]
        kept = bool(custom) and all(r.get("retainOnDelete") for r in custom)
        volumes.append(VolumeFate(name=resource["urn"].rsplit("::", 1)[-1], type=kind, kept=kept, where=_where(parts)))
    counted = [r for r in resources if not str(r.get("type", "")).startswith(_NOT_COUNTED)]
    return DestroySummary(stack=stack, resources=len(counted), volumes=tuple(sorted(volumes, key=lambda v: v.name)), targeted=bool(targets))


def _where(parts: list[dict[str, Any]]) -> str | None:
    for resource in parts:
        outputs = resource.get("outputs") or {}
        if isinstance(outputs.get("path"), str):
            return outputs["path"]
    for resource in parts:
        if resource.get("custom") and resource.get("id"):
            return str(resource["id"])
    return None
