"""pydantic's ValidationError → our diagnostics, each with file, line, column and field path.

pydantic's locations include union tags and validator names that are not YAML keys; they
are dropped by walking the location against the loaded data. Messages are rewritten into
"what was found, what was expected" and never quote a value under a secret-bearing field.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError

from ._yaml import Document
from .diagnostics import Diagnostic, did_you_mean, format_path

__all__ = ["diagnostics_from_validation_error", "is_secret_path"]

# Fields whose values may be secrets: never echoed in a message.
_SECRET_ROOTS = ("registry_auth", "env")
_SECRET_LEAVES = ("headers", "body", "password")

_TYPE_NOUNS = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "a boolean (`true` or `false`)",
    "bool_parsing": "a boolean (`true` or `false`)",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "tuple_type": "a list",
}


def is_secret_path(path: tuple[Any, ...]) -> bool:
    return bool(path) and (path[0] in _SECRET_ROOTS or any(p in _SECRET_LEAVES for p in path))


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"the boolean `{str(value).lower()}`"
    if isinstance(value, (int, float)):
        return f"the number `{value}`"
    text = str(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"`{text}`"


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation can hold (through Optional, list, dict, Annotated, unions)."""
    found: list[type[BaseModel]] = []
    stack = [annotation]
    while stack:
        item = stack.pop()
        if isinstance(item, type) and issubclass(item, BaseModel):
            found.append(item)
            continue
        origin = typing.get_origin(item)
        if origin is typing.Annotated:
            stack.append(typing.get_args(item)[0])
        elif origin in (typing.Union, types.UnionType, list, tuple, dict):
            stack.extend(typing.get_args(item))
    return found


def _fields_at(root: type[BaseModel], loc: tuple[Any, ...]) -> set[str]:
    """Field names allowed at a pydantic location (for "did you mean")."""
    candidates: list[type[BaseModel]] = [root]
    for part in loc:
        nxt: list[type[BaseModel]] = []
        for model in candidates:
            field = model.model_fields.get(part) if isinstance(part, str) else None
            if field is not None:
                nxt.extend(_models_in(field.annotation))
        if nxt:
            candidates = nxt
    return {name for model in candidates for name in model.model_fields}


@functools.cache
def _field_paths(root: type[BaseModel]) -> dict[str, tuple[str, ...]]:
    """Every field name of the model tree → the dotted paths it has (`gpu` → `resources.gpu`)."""
    paths: dict[str, list[str]] = {}

    def visit(model: type[BaseModel], prefix: str, depth: int) -> None:
        if depth > 4:
            return
        for name, info in model.model_fields.items():
            dotted = f"{prefix}{name}"
            paths.setdefault(name, []).append(dotted)
            for inner in _models_in(info.annotation):
                visit(inner, dotted + ".", depth + 1)

    visit(root, "", 0)
    return {name: tuple(dict.fromkeys(found)) for name, found in paths.items()}


def _elsewhere(root: type[BaseModel], name: str, field: str) -> str | None:
    """A hint when a known field sits at the wrong level (`gpu` not indented under `resources`)."""
    others = [p for p in _field_paths(root).get(name, ()) if p != field]
    if not others:
        return None
    listed = " or ".join(f"`{p}`" for p in others[:2])
    return f"did you mean {listed}? check the indentation"


def _clean(loc: tuple[Any, ...], data: Any) -> tuple[tuple[Any, ...], tuple[str, ...]]:
    """Split a pydantic location into the YAML path (present in the data) and the remaining
    model field names (reached only after a short syntax was expanded). Union tags that
    pydantic inserts after a discriminated field are dropped."""
    path: list[Any] = []
    rest: list[str] = []
    current = data
    shape: list[Any] = []  # the location so far, list indices as `int`
    tag_seen = False
    for part in loc:
        tags = None if tag_seen else _TAGGED_FIELDS.get(tuple(shape))
        tag_seen = False
        if tags is not None and part in tags:
            tag_seen = True  # the branch tag; the next part is a field of that branch
            continue
        shape.append(int if isinstance(part, int) else part)
        if isinstance(current, dict) and part in current and not rest:
            path.append(part)
            current = current[part]
        elif isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current) and not rest:
            path.append(part)
            current = current[part]
        elif isinstance(part, str) and part.isidentifier() and part not in _TYPE_TAGS:
            rest.append(part)
    return tuple(path), tuple(rest)


# Discriminated unions: pydantic puts the branch's tag into the location after these fields.
_TAGGED_FIELDS: dict[tuple[Any, ...], frozenset[str]] = {
    ("model",): frozenset({"openai", "tgi"}),
    ("volumes", int): frozenset({"network", "instance"}),
    ("rate_limits", int, "key"): frozenset({"ip_address", "header"}),
}
# Plain unions: pydantic names each branch by its type.
_TYPE_TAGS = frozenset({"str", "int", "bool", "float", "list", "dict", "none", "GatewayRef", "RetrySpec", "EnvRef", "IntRange", "MemoryRange"})


def diagnostics_from_validation_error(
    exc: ValidationError, doc: Document, file: str, root: type[BaseModel]
) -> list[Diagnostic]:
    from ._base import FieldError, MultiFieldError

    out: list[Diagnostic] = []
    seen: set[tuple[str, str]] = set()
    by_path: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for err in exc.errors(include_url=False, include_context=True, include_input=True):
        loc = tuple(err["loc"])
        error = (err.get("ctx") or {}).get("error")
        if isinstance(error, MultiFieldError):
            for problem in error.problems:
                by_path.setdefault(loc + problem.path, []).append({"type": "field_error", "msg": problem.message, "hint": problem.hint})
            continue
        if isinstance(error, FieldError):
            by_path.setdefault(loc + error.path, []).append({"type": "field_error", "msg": error.message, "hint": error.hint})
            continue
        by_path.setdefault(loc, []).append(err)

    for loc, errors in by_path.items():
        path, rest = _clean(loc, doc.data)
        # Errors of one value from several union branches: report them once, together.
        first = errors[0]
        kind = first["type"]
        key = kind == "extra_forbidden"
        if kind == "extra_forbidden":
            name = loc[-1]
            field = format_path((*path[:-1], name) if path and path[-1] == name else (*path, name))
            hint = _elsewhere(root, str(name), field) or did_you_mean(
                str(name), _fields_at(root, tuple(p for p in loc[:-1] if isinstance(p, str)))
            )
            message = f"unknown field `{name}`"
        elif kind == "missing":
            name = loc[-1]
            field = format_path((*path, *rest)) if rest else format_path((*path, name))
            hint = None
            message = f"the required field `{name}` is missing"
        else:
            field = format_path((*path, *rest))
            hint = next((e["hint"] for e in errors if e.get("hint")), None) or _literal_hint(errors)
            secret = is_secret_path((*path, *rest))
            messages = []
            for err in errors:
                text = _message(err, secret)
                if text not in messages:
                    messages.append(text)
            message = messages[0] if len(messages) == 1 else "; or ".join(messages)
        line, column = doc.position(path, key=key)
        if (field, message) in seen:
            continue
        seen.add((field, message))
        out.append(Diagnostic(file, line, column, field, message, hint))
    return out


def _literal_hint(errors: list[dict[str, Any]]) -> str | None:
    """"did you mean `on-demand`?" for a misspelt choice (`spot_policy: ondemand`)."""
    for err in errors:
        value = err.get("input")
        if err["type"] == "literal_error" and isinstance(value, str):
            choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
            hint = did_you_mean(value, choices)
            if hint:
                return hint
    return None


def _message(err: dict[str, Any], secret: bool) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    found = "" if secret else f", got {_kind(value)}"
    if kind == "field_error":
        return err["msg"]
    if kind in ("value_error", "assertion_error"):
        error = ctx.get("error")
        return str(error) if error is not None else err["msg"]
    if kind in _TYPE_NOUNS:
        return f"expected {_TYPE_NOUNS[kind]}{found}"
    if kind == "literal_error":
        expected = str(ctx.get("expected", "one of the allowed values")).replace("'", "`")
        return f"expected {expected}{found}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        relation = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than", "less_than_equal": "at most"}[kind]
        bound = next(iter(ctx.values()), "?")
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {relation} {bound}{found}"
    if kind == "string_pattern_mismatch":
        return f"invalid value{found}: must match the pattern `{ctx.get('pattern')}`"
    if kind in ("string_too_short", "too_short"):
        return f"too short: at least {ctx.get('min_length')} {'characters' if kind.startswith('string') else 'items'}"
    if kind in ("string_too_long", "too_long"):
        return f"too long: at most {ctx.get('max_length')} {'characters' if kind.startswith('string') else 'items'}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return f"expected a mapping{found}"
    if kind == "finite_number":
        return "expected a finite number"
    return err["msg"] + found
