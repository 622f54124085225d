"""Replica counts: kept in the stack's own outputs, never in the reviewed stack file.

Every `up` of a stack (CI's, a person's `pulumi up`, the scaler's) starts from the counts of
the stack's last deployment, which the program reads back through a StackReference to the
stack itself (`last_deployment`). A count changes only when

- the scaler decides, or a person runs `serveform scale SERVICE N`: both run `up` with a
  `ScaleRequest` in the environment (`SERVEFORM_SCALE`), see `scale_env`;
- the reviewed `replicas` range changes: the count is clamped into the new range;
- a service appears: it starts at its plan's initial count.

`resolve_counts` is that rule, a pure function. Its result is exported as the stack output
`replicas` (`{service: {count, source, set_at}}`), which `preview` shows next to each count's
source, `serveform status` reads and the scaler takes as its starting point.

Why outputs and a self-reference, rather than `ignore_changes` on the group size (what
Terraform users reach for), a separate document in the state backend, stack tags or ESC:
`ignore_changes` hides the count from `preview` and cannot express "clamp into the new range";
tags and ESC are features of Pulumi Cloud (the `file://` and `s3://` backends have neither); a
side document would need its own locking and credentials on every backend. The stack's outputs
live in the stack's own checkpoint, are written under the stack's lock by the very `up` that
applies them, are read with the credentials every `up` already has, and work the same on every
backend Pulumi supports.

A scale `up` changes only counts: it rebuilds the stack from the inputs of the last deployment
(`DeployedInputs`, exported as the secret output `deployment`), not from the working tree, so a
half-edited service file or stack config is never applied by the scaler. The program logs such
edits (`describe_drift`) and leaves them for the next reviewed `up`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr

from serveform.translator.plan import ServicePlan

__all__ = [
    "DEPLOYMENT_OUTPUT",
    "REPLICAS_OUTPUT",
    "SCALE_ENV",
    "DeployedInputs",
    "ReplicaCount",
    "ScaleRequest",
    "counts_from_output",
    "describe_drift",
    "resolve_counts",
]

REPLICAS_OUTPUT = "replicas"
"""Stack output: `{service: {count, source, set_at}}` — the live counts and where each came from."""
DEPLOYMENT_OUTPUT = "deployment"
"""Secret stack output: the last deployment's inputs (`DeployedInputs.to_output`)."""
SCALE_ENV = "SERVEFORM_SCALE"
"""Environment variable carrying a `ScaleRequest` to the program (JSON)."""
_SECRET_MARK = "__serveform_secret__"
_INPUTS_FORMAT_VERSION = 1

Source = Literal["initial", "scaler", "manual", "clamped"]
_SOURCE_TEXT = {
    "initial": "the service's initial count",
    "scaler": "set by the scaler",
    "manual": "set by `serveform scale`",
    "clamped": "clamped into the service's replicas range",
}


@dataclass(frozen=True)
class ReplicaCount:
    """One service's count and its provenance."""

    count: int
    source: Source
    set_at: str | None = None
    """When `source` set it (UTC, ISO 8601); None for an initial count."""

    def to_output(self) -> dict[str, Any]:
        return {"count": self.count, "source": self.source, "set_at": self.set_at}

    def describe(self) -> str:
        when = f" at {self.set_at}" if self.set_at else ""
        return f"{_SOURCE_TEXT[self.source]}{when}"


@dataclass(frozen=True)
class ScaleRequest:
    """Counts to apply in a scale `up`: the scaler's decision or `serveform scale`."""

    counts: Mapping[str, int]
    source: Literal["scaler", "manual"]
    expected: Mapping[str, int] = field(default_factory=dict)
    """Per service, the count the requester believed the stack runs: where the last deployment
    has another (someone scaled it since), that service's count is kept (compare-and-set)."""

    def to_env(self) -> str:
        return json.dumps(
            {
                "counts": {s: int(n) for s, n in sorted(self.counts.items())},
                "source": self.source,
                "expected": {s: int(n) for s, n in sorted(self.expected.items())},
            }
        )

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> ScaleRequest | None:
        """The request in `SERVEFORM_SCALE`, or None; a malformed one is a ValueError naming the variable."""
        raw = environ.get(SCALE_ENV)
        if not raw:
            return None
        try:
            data = json.loads(raw)
            counts = {str(s): int(n) for s, n in dict(data["counts"]).items()}
            expected = {str(s): int(n) for s, n in dict(data.get("expected") or {}).items()}
            source = data.get("source", "manual")
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{SCALE_ENV}: expected {{\"counts\": {{service: count}}, \"source\": ...}}: {exc}") from None
        if source not in ("scaler", "manual"):
            raise ValueError(f"{SCALE_ENV}: source: expected 'scaler' or 'manual', got {source!r}")
        negative = sorted(s for s, n in counts.items() if n < 0)
        if negative:
            raise ValueError(f"{SCALE_ENV}: counts: {', '.join(negative)}: a count is 0 or more")
        return cls(counts=counts, source=source, expected=expected)


def counts_from_output(value: Any) -> dict[str, ReplicaCount]:
    """The `replicas` output of a deployment as `ReplicaCount`s (unknown shapes are skipped)."""
    counts: dict[str, ReplicaCount] = {}
    if not isinstance(value, Mapping):
        return counts
    for service, entry in value.items():
        if not isinstance(entry, Mapping) or entry.get("count") is None:
            continue
        source = entry.get("source")
        counts[str(service)] = ReplicaCount(
            # Stack outputs come back as JSON numbers, floats included.
            count=int(entry["count"]),
            source=source if source in _SOURCE_TEXT else "initial",
            set_at=entry.get("set_at"),
        )
    return counts


def resolve_counts(
    plans: Iterable[ServicePlan],
    previous: Mapping[str, ReplicaCount],
    request: ScaleRequest | None,
    now: datetime,
) -> dict[str, ReplicaCount]:
    """Each service's count for this `up`: requested, else kept, else initial; always in range.

    A requested count is not applied where the request `expected` another count than the last
    deployment runs: someone changed it after the requester decided, and the later word stands.
    """
    stamp = now.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    resolved: dict[str, ReplicaCount] = {}
    for plan in plans:
        low, high = plan.replicas.min, plan.replicas.max
        kept = previous.get(plan.name)
        stale = (
            request is not None
            and plan.name in request.expected
            and kept is not None
            and kept.count != request.expected[plan.name]
        )
        if request is not None and plan.name in request.counts and not stale:
            wanted = ReplicaCount(request.counts[plan.name], request.source, stamp)
        elif kept is not None:
            wanted = kept
        else:
            wanted = ReplicaCount(plan.replicas.initial, "initial")
        if not low <= wanted.count <= high:
            wanted = ReplicaCount(max(low, min(high, wanted.count)), "clamped", stamp)
        resolved[plan.name] = wanted
    return resolved


# ---- the last deployment's inputs ----------------------------------------------------------


@dataclass(frozen=True)
class DeployedInputs:
    """What a deployment was built from: the `serveform:*` config and the compiled plans.

    Plans rather than service files: a plan holds the env values the deploying environment
    supplied (CI's secrets), which a scaler's host does not have. Secret values travel marked,
    inside the secret output `deployment`, and come back as `SecretStr`.
    """

    config: Mapping[str, Any]
    plans: tuple[ServicePlan, ...]

    def to_output(self) -> dict[str, Any]:
        # JSON text, not nested values: a stack output drops nulls inside maps and turns every
        # number into a float, and a plan must come back exactly as it was compiled.
        return {
            "version": _INPUTS_FORMAT_VERSION,
            "config": json.dumps({k: _reveal(v) for k, v in self.config.items()}, sort_keys=True),
            "plans": [json.dumps(_reveal(plan.model_dump(mode="python")), sort_keys=True) for plan in self.plans],
        }

    def relative_to(self, project_dir: str | os.PathLike[str]) -> DeployedInputs:
        """These inputs with service files named relative to the project directory.

        A deployment's record must not depend on where its checkout was: CI's clone, a laptop
        and the scaler pod's project copy all rebuild the same resources from it.
        """
        root = Path(project_dir)
        plans = []
        for plan in self.plans:
            path = Path(plan.file)
            if path.is_absolute() and path.is_relative_to(root):
                plan = plan.model_copy(update={"file": path.relative_to(root).as_posix()})
            plans.append(plan)
        return DeployedInputs(config=self.config, plans=tuple(plans))

    def rebased(self, project_dir: str | os.PathLike[str]) -> DeployedInputs:
        """These inputs with relative service files resolved against this host's project directory."""
        root = Path(project_dir)
        plans = tuple(
            plan if Path(plan.file).is_absolute() else plan.model_copy(update={"file": str(root / plan.file)})
            for plan in self.plans
        )
        return DeployedInputs(config=self.config, plans=plans)

    @classmethod
    def from_output(cls, value: Any) -> DeployedInputs | None:
        """The inputs exported by a deployment, or None when there are none (or of another format)."""
        if not isinstance(value, Mapping) or value.get("version") not in (_INPUTS_FORMAT_VERSION, float(_INPUTS_FORMAT_VERSION)):
            return None
        config = {str(k): _conceal(v) for k, v in json.loads(value.get("config") or "{}").items()}
        plans = tuple(ServicePlan.model_validate(_conceal(json.loads(p))) for p in value.get("plans") or ())
        return cls(config=config, plans=plans)


def describe_drift(deployed: DeployedInputs, config: Mapping[str, Any], plans: Iterable[ServicePlan]) -> list[str]:
    """What the working tree changes against the last deployment, one line per difference."""
    lines: list[str] = []
    for key in sorted(set(deployed.config) | set(config)):
        if _config_value(deployed.config.get(key)) != _config_value(config.get(key)):
            lines.append(f"stack config {key} differs from the last deployment")
    before = {p.name: _reveal(p.model_dump(mode="python")) for p in deployed.plans}
    after = {p.name: _reveal(p.model_dump(mode="python")) for p in plans}
    for name in sorted(set(before) | set(after)):
        if name not in after:
            lines.append(f"service {name} is deployed but no longer in the working tree")
        elif name not in before:
            lines.append(f"service {name} is in the working tree but not deployed")
        elif before[name] != after[name]:
            fields = sorted(k for k in set(before[name]) | set(after[name]) if before[name].get(k) != after[name].get(k))
            lines.append(f"service {name}: {', '.join(fields)} changed in the working tree")
    return lines


def _config_value(value: Any) -> Any:
    """A config value for comparison: objects arrive as JSON text whose spacing and key order vary."""
    value = _reveal(value)
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return {_SECRET_MARK: value.get_secret_value()}
    if isinstance(value, Mapping):
        return {str(k): _reveal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_reveal(v) for v in value]
    return value


def _conceal(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {_SECRET_MARK}:
            return SecretStr(str(value[_SECRET_MARK]))
        return {str(k): _conceal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_conceal(v) for v in value]
    return value
