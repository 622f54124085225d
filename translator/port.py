"""`port`: the port the application listens on, or a `LOCAL:CONTAINER` mapping."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from ._base import Spec, kind
from .ranges import short_syntax_schema

__all__ = ["PortMapping"]


class PortMapping(Spec):
    """The port the service listens on, and the port the gateway exposes it on."""

    local_port: Annotated[int | None, Field(gt=0, le=65535, description="The exposed port (`80` unless mapped).")] = None
    container_port: Annotated[int, Field(gt=0, le=65535, description="The port the application listens on.")]

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return short_syntax_schema(
            handler(core_schema), handler, [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string", "pattern": r"^\s*\d+\s*(:\s*\d+\s*)?$"}]
        )

    @classmethod
    def parse(cls, value: Any) -> Any:
        """Parse a service port. Accepted forms:

        - ``8000``: the application listens on 8000, exposed as 80 (dstack 0.22's reading);
        - ``"8080:80"``: `LOCAL:CONTAINER`, exposed as 8080, application on 80;
        - ``{local_port: 8080, container_port: 80}``.
        """
        if isinstance(value, bool):
            raise ValueError(f"expected a port number or `LOCAL:CONTAINER`, got {kind(value)}")
        if isinstance(value, int):
            return {"local_port": 80, "container_port": value}
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d+)\s*(?::\s*(\d+)\s*)?", value)
            if not match:
                raise ValueError(f"invalid port `{value}`: expected a number (`8000`) or `LOCAL:CONTAINER` (`8080:8000`)")
            if match.group(2) is None:
                return {"local_port": 80, "container_port": int(match.group(1))}
            return {"local_port": int(match.group(1)), "container_port": int(match.group(2))}
        if isinstance(value, float):
            if value.is_integer():  # pydantic's lax int, as dstack 0.22 reads `!!float 8000`
                return {"local_port": 80, "container_port": int(value)}
            raise ValueError(f"expected a port number, got `{value}`")
        return value

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return cls.parse(value)
