"""`env`: a list of `NAME=value` / bare `NAME` entries, or a mapping."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import Field

from ._base import FieldError, Spec, kind, raise_all

__all__ = ["ENV_ENTRY_RE", "ENV_NAME_RE", "EnvRef", "parse_env"]

ENV_ENTRY_RE = re.compile(r"^([a-zA-Z_][a-zA-Z0-9_]*)(=.*)?$", re.DOTALL)
ENV_NAME_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class EnvRef(Spec):
    """An environment variable without a value in the file: it comes from the deploying
    environment or from the stack's `serveform:secrets` (dstack's `EnvSentinel`)."""

    key: Annotated[str, Field(description="The variable's name.")]


def parse_env(value: Any) -> dict[str, str | EnvRef]:
    """Parse `env`. Accepted forms:

    - a list of ``NAME=value`` (value may be empty or contain `=`) and bare ``NAME`` entries;
    - a mapping ``NAME: value`` (numbers become strings).

    A bare ``NAME`` has no value in the file: it is taken at compile time from the deploying
    environment or the stack's secrets. Values are never echoed in errors.
    """
    result: dict[str, str | EnvRef] = {}
    problems: list[FieldError] = []
    if isinstance(value, list):
        for index, entry in enumerate(value):
            if isinstance(entry, (int, float)) and not isinstance(entry, bool):
                entry = str(entry)
            if not isinstance(entry, str):
                problems.append(FieldError((index,), f"expected `NAME=value` or `NAME`, got {kind(entry)}"))
                continue
            match = ENV_ENTRY_RE.match(entry)
            if match is None:
                name = entry.split("=", 1)[0]
                problems.append(
                    FieldError(
                        (index,),
                        f"invalid variable name `{name}`: expected `NAME=value` or `NAME`, the name made of letters, digits and `_`, not starting with a digit",
                    )
                )
                continue
            name = match.group(1)
            if name in result:
                problems.append(FieldError((index,), f"duplicate environment variable `{name}`"))
                continue
            result[name] = entry[len(name) + 1 :] if "=" in entry else EnvRef(key=name)
        raise_all(problems)
        return result
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                problems.append(FieldError((str(name),), f"the variable name must be a string, got {kind(name)}"))
            elif not ENV_NAME_RE.match(name):
                problems.append(FieldError((name,), f"invalid variable name `{name}`: letters, digits and `_`, not starting with a digit"))
            elif isinstance(item, EnvRef):
                result[name] = item
            elif isinstance(item, dict) and set(item) == {"key"} and isinstance(item["key"], str):
                result[name] = EnvRef(key=item["key"])  # dstack's dumped sentinel shape
            elif isinstance(item, str):
                result[name] = item
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                result[name] = str(item)
            else:
                found = "a mapping" if isinstance(item, dict) else "a list" if isinstance(item, list) else "null" if item is None else "a boolean"
                problems.append(FieldError((name,), f"expected a string or number value, got {found}"))
        raise_all(problems)
        return result
    raise ValueError(f"expected a list of `NAME=value` entries or a mapping, got {kind(value)}")
