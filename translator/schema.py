"""The JSON Schema of `type: service` files (`serveform schema`), for editors and CI linters.

It describes what a file may contain — short syntaxes included (`replicas: 1..4`,
`gpu: A100:80GB:2`, `port: "8080:80"`) — with every field's description. Rules the schema
language cannot say (`scaling` needs a range, `image` excludes `python`) are checked by
`serveform validate`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from .spec import ServiceSpec

__all__ = ["JSON_SCHEMA_DIALECT", "service_json_schema"]

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


@cache
def _schema() -> dict[str, Any]:
    schema = ServiceSpec.model_json_schema(mode="validation")
    # `type` has a default in the model (dstack's shape) but a file must say what it is.
    schema["required"] = sorted({*schema.get("required", []), "type"})
    return {"$schema": JSON_SCHEMA_DIALECT, "title": "serveform service (.dstack.yml, type: service)", **{k: v for k, v in schema.items() if k != "title"}}


def service_json_schema() -> dict[str, Any]:
    """A fresh copy of the schema (draft 2020-12)."""
    import copy

    return copy.deepcopy(_schema())
