"""A generated bearer token (a Pulumi dynamic resource whose only output is a secret).

A stack with no `serveform:tokens` still gets an authenticated gateway: the token is made once
by `create`, kept encrypted in this machine's stack state, and never written to the repository.
`serveform endpoints` shows it.
"""

from __future__ import annotations

import secrets
import uuid
from typing import Any

import pulumi
import pulumi.dynamic as dynamic
from pydantic import BaseModel, ConfigDict

__all__ = ["PROVIDER_VERSION", "TOKEN_BYTES", "Token", "TokenProvider"]

PROVIDER_VERSION = "1"
"""Bump when the provider's behaviour changes, so `pulumi preview` shows the change."""
TOKEN_BYTES = 32
"""Randomness of a generated token (256 bits, URL-safe base64 text)."""


class TokenInputs(BaseModel):
    """The JSON inputs of a token."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    provider_version: str


class TokenProvider(dynamic.ResourceProvider):
    """Generates the token on create; nothing to update or delete outside the state."""

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        changed = olds.get("provider_version") != news.get("provider_version")
        return dynamic.DiffResult(changes=changed, replaces=[], delete_before_replace=False)

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        inputs = TokenInputs.model_validate(props)
        value = secrets.token_urlsafe(TOKEN_BYTES)
        # The id is plaintext in the state: it must say nothing about the value.
        return dynamic.CreateResult(f"token-{uuid.uuid4().hex}", {**inputs.model_dump(), "value": value})

    def read(self, id_: str, props: dict[str, Any]) -> dynamic.ReadResult:
        return dynamic.ReadResult(id_, {**TokenInputs.model_validate(props).model_dump(), "value": props["value"]})

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult({**TokenInputs.model_validate(news).model_dump(), "value": olds["value"]})

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class Token(dynamic.Resource, module="serveform-local", name="Token"):
    """A random bearer token; `value` is a Pulumi secret."""

    value: pulumi.Output[str]

    def __init__(self, name: str, props: dict[str, Any], opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(
            TokenProvider(),
            name,
            {**props, "value": None},
            pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(additional_secret_outputs=["value"])),
        )
