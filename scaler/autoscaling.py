"""Applying counts to AWS auto scaling groups directly, the way AWS's own target tracking does.

On AWS each service is an auto scaling group whose desired capacity the stack creates once and
then leaves alone (`ignore_changes`): the scaler sets it with Auto Scaling's `SetDesiredCapacity`
(`HonorCooldown` false: the scaler's own delays are the cooldown) and reads it back with
`DescribeAutoScalingGroups`. So the gateway VM's scaler needs neither the Pulumi CLI, nor the
stack's state, nor its passphrase (which opens every secret of the stack); CI's `up` and the
scaler never contend for the stack's lock; and the role it runs with may do exactly that:
set the desired capacity of the stack's groups, and describe.

`AutoScalingApplier` is an `Applier` (the `ApplyWorker` drives it as it drives `PulumiApplier`)
and the daemon's starting point (`read_replicas`). `serveform scale` on an AWS stack uses it with
the operator's credentials; the scaler on the gateway VM with the instance role's (IMDSv2).

Compare-and-set: a change carries the count the scaler believed the group had; where the group
has another (someone ran `serveform scale`, or AWS clamped it into a new range), the group's
count is kept and returned. Auto Scaling has no conditional write, so a change made between the
read and the write (milliseconds) is the one race left; the daemon follows whatever it reads next.

Error tree::

    ApplyError (serveform.scaler.applier)   a call failed or a group is missing; retried
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..aws.client import AUTOSCALING_API_VERSION, AwsError, Credentials, local_name, query_call
from .applier import ApplyError

__all__ = ["AutoScalingApplier", "GroupCapacity", "groups_from_discovery", "region_of"]

log = logging.getLogger("serveform.scaler.autoscaling")

_SERVICE = "autoscaling"


@dataclass(frozen=True)
class GroupCapacity:
    """One auto scaling group's size as Auto Scaling reports it."""

    desired: int
    min: int
    max: int


def groups_from_discovery(path: str | Path) -> tuple[dict[str, str], str]:
    """Service -> group name, and the region, from a gateway VM's discovery.json (its AWS targets)."""
    data = json.loads(Path(path).read_text())
    targets = [t for t in data.get("targets", []) if t.get("cloud") == "aws"]
    regions = {t["region"] for t in targets}
    if len(regions) != 1:
        raise ValueError(f"{path}: expected the AWS groups of one region, found regions {sorted(regions) or 'none'}")
    return {t["service"]: t["group"] for t in targets}, regions.pop()


def region_of(config: Mapping[str, object]) -> str | None:
    """The AWS region of a stack's config (`serveform:aws.region`, else the first of `serveform:regions`)."""
    aws = config.get("serveform:aws")
    if isinstance(aws, str):
        aws = json.loads(aws)
    regions = config.get("serveform:regions")
    if isinstance(regions, str):
        regions = json.loads(regions)
    return (aws or {}).get("region") or (list(regions or [None])[0])


class AutoScalingApplier:
    """Sets and reads the desired capacity of one stack's auto scaling groups."""

    def __init__(
        self,
        groups: Mapping[str, str],
        region: str,
        *,
        credentials: Callable[[], Credentials],
        source: str = "scaler",
    ) -> None:
        """``groups``: service -> group name; ``credentials`` is called before each call
        (instance credentials rotate); ``source`` is who decides ("scaler", or "manual")."""
        self.groups = dict(groups)
        self.region = region
        self._credentials = credentials
        self._source = source

    def _call(self, action: str, params: Mapping[str, str]):
        return query_call(_SERVICE, self.region, action, params, version=AUTOSCALING_API_VERSION, credentials=self._credentials())

    def capacities(self) -> dict[str, GroupCapacity]:
        """Each service's group as Auto Scaling has it; a service whose group does not exist is left out."""
        by_group = {g: s for s, g in self.groups.items()}
        found: dict[str, GroupCapacity] = {}
        names = sorted(by_group)
        # DescribeAutoScalingGroups takes at most 100 names a call (and pages within them).
        for start in range(0, len(names), 100):
            params = {f"AutoScalingGroupNames.member.{i}": n for i, n in enumerate(names[start:start + 100], 1)}
            while True:
                root = self._call("DescribeAutoScalingGroups", params)
                for group in _elements(root, "AutoScalingGroups"):
                    fields = {local_name(c): (c.text or "") for c in group}
                    service = by_group.get(fields.get("AutoScalingGroupName", ""))
                    if service is not None:
                        found[service] = GroupCapacity(
                            desired=int(fields["DesiredCapacity"]), min=int(fields["MinSize"]), max=int(fields["MaxSize"])
                        )
                token = next((e.text for e in root.iter() if local_name(e) == "NextToken" and e.text), None)
                if not token:
                    break
                params = {**params, "NextToken": token}
        return found

    def read_replicas(self) -> dict[str, int]:
        """Each service's desired capacity now (the daemon's starting point)."""
        return {s: c.desired for s, c in self.capacities().items()}

    def apply(
        self, counts: Mapping[str, int], *, message: str, expected: Mapping[str, int] | None = None
    ) -> dict[str, int]:
        """Set each group's desired capacity (clamped into the group's range, as Auto Scaling
        requires); return the counts the groups have afterwards."""
        try:
            current = self.capacities()
        except (AwsError, OSError, ValueError, LookupError) as exc:
            raise ApplyError(f"DescribeAutoScalingGroups in {self.region}: {exc}") from None
        result: dict[str, int] = {}
        for service, count in sorted(counts.items()):
            group = self.groups.get(service)
            if group is None or service not in current:
                raise ApplyError(f"service {service}: no auto scaling group {group or '(unknown)'} in {self.region}")
            now = current[service]
            if expected and service in expected and now.desired != expected[service]:
                log.info("%s: group %s runs %d, not the %d decided from; keeping it", service, group, now.desired, expected[service])
                result[service] = now.desired
                continue
            target = max(now.min, min(now.max, int(count)))
            if target != now.desired:
                try:
                    self._call(
                        "SetDesiredCapacity",
                        {"AutoScalingGroupName": group, "DesiredCapacity": str(target), "HonorCooldown": "false"},
                    )
                except (AwsError, OSError, LookupError) as exc:
                    raise ApplyError(f"SetDesiredCapacity {group}={target}: {exc}") from None
                log.info("%s: group %s desired capacity %d -> %d (%s, %s)", service, group, now.desired, target, self._source, message)
            result[service] = target
        return result


def _elements(root, container: str):
    """The `member` children of every element named ``container`` (the Query protocol's lists)."""
    for element in root.iter():
        if local_name(element) == container:
            yield from (m for m in element if local_name(m) == "member")
