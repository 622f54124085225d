"""A service's replica addresses, published to the running gateway (a Pulumi dynamic resource).

The gateway learns addresses without a full Caddy reload: ``serveform.gateway.publish_replicas``
rewrites the service's upstream list in the gateway's state directory and applies it. This
resource depends on every replica's address, so Pulumi orders it after replicas are created
and before removed replicas are deleted: the gateway stops routing to a replica before its
process is stopped, and sees a new one only once it accepts connections.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
from pydantic import BaseModel, ConfigDict

__all__ = ["PROVIDER_VERSION", "Publication", "PublicationProvider"]

PROVIDER_VERSION = "1"
"""Bump when the provider's behaviour changes, so `pulumi preview` shows the change."""


class PublicationInputs(BaseModel):
    """The JSON inputs of a publication."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider_version: str
    gateway_state_dir: str
    gateway_instance: str | None = None
    service: str
    addresses: list[str]


def _publish(state_dir: str, service: str, addresses: list[str]) -> None:
    from serveform.gateway import publish_replicas  # imported here: only the provider process needs it

    publish_replicas(state_dir, service, list(addresses))


class PublicationProvider(dynamic.ResourceProvider):
    """Publishes addresses on create/update and an empty list on delete. Holds no state."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        replaces = [k for k in ("gateway_state_dir", "service") if olds.get(k) != news.get(k)]
        # A new gateway process (replaced, or restarted after `refresh` found it dead) may have
        # lost what was published: a changed instance publishes again.
        changed = replaces or [k for k in ("addresses", "gateway_instance", "provider_version") if olds.get(k) != news.get(k)]
        # Publishing the new list before the old one is emptied would leave the old service name
        # routed to nothing, and emptying after would undo the new list when the names match.
        return dynamic.DiffResult(changes=bool(changed), replaces=replaces, delete_before_replace=True)

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        inputs = PublicationInputs.model_validate(props)
        _publish(inputs.gateway_state_dir, inputs.service, inputs.addresses)
        return dynamic.CreateResult(inputs.service, inputs.model_dump())

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        return dynamic.ReadResult(id_, PublicationInputs.model_validate(props).model_dump())

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        inputs = PublicationInputs.model_validate(news)
        _publish(inputs.gateway_state_dir, inputs.service, inputs.addresses)
        return dynamic.UpdateResult(inputs.model_dump())

    def delete(self, _id: str, props: dict[str, Any]) -> None:
        inputs = PublicationInputs.model_validate(props)
        if Path(inputs.gateway_state_dir).is_dir():  # no gateway state left: nothing routes there
            _publish(inputs.gateway_state_dir, inputs.service, [])


class Publication(dynamic.Resource, module="serveform-local", name="Publication"):
    """The replica addresses of one service, as the gateway routes them."""

    addresses: pulumi.Output[list[str]]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(PublicationProvider(), name, props, opts)
