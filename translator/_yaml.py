"""Load a service file as plain data plus the position of every key and value.

dstack reads `.dstack.yml` with PyYAML's ``safe_load`` (YAML 1.1), so we do too: the same
resolver decides that ``yes`` is a boolean, that ``python: 3.10`` is the float 3.1 and
that ``8080:50`` is a sexagesimal integer. A YAML 1.2 loader (ruamel's default) would read
those differently and let files through that dstack rejects. libyaml's parser is used when
PyYAML was built with it (the same nodes and marks, several times faster); a file it refuses is
read again with PyYAML's own parser, so the verdict on odd files is dstack's.

Two things ``safe_load`` does silently are errors here: a key repeated in one mapping
(the last one would win) and several documents in one file.

Hostile files are refused before anything is built: text longer than `MAX_TEXT_CHARS`, and
documents whose aliases would expand to more than `MAX_EXPANDED_CHARS` (a small file that reuses
one large anchor thousands of times: PyYAML shares the object, but every later step that copies
or joins it — the plan, `compile --json`, a command line — pays the full size).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

from .diagnostics import Diagnostic

__all__ = ["MAX_EXPANDED_CHARS", "MAX_TEXT_CHARS", "Document", "Position", "load"]

_MAX_DEPTH = 200  # deeper nesting than any service file; keeps the walk off Python's recursion limit
# Real service files are a few KiB; dstack's longest examples are under 10 KiB. 1 MiB leaves room
# for long inline scripts and keeps a hostile file from costing seconds and hundreds of MB.
MAX_TEXT_CHARS = 1024 * 1024
# What the document may weigh once every alias is expanded (scalar characters plus one per node):
# four times the text cap, so anchors still save typing, but no alias bomb gets through.
MAX_EXPANDED_CHARS = 4 * MAX_TEXT_CHARS

try:
    _BaseLoader: type = yaml.CSafeLoader
except AttributeError:  # PyYAML without libyaml: same semantics, pure Python
    _BaseLoader = yaml.SafeLoader

Path = tuple[str | int, ...]


@dataclass(frozen=True, slots=True)
class Position:
    """1-based line and column of a key (for mapping entries) and of its value."""

    key_line: int
    key_column: int
    line: int
    column: int


@dataclass(slots=True)
class Document:
    """A loaded service file: its data and where each path sits in the text."""

    data: Any
    positions: dict[Path, Position] = field(default_factory=dict)

    def position(self, path: Path, *, key: bool = False) -> tuple[int, int]:
        """The closest known position of `path` (walking up to a parent when needed)."""
        path = tuple(path)
        while True:
            pos = self.positions.get(path)
            if pos is None and path:
                pos = self.positions.get(tuple(str(p) if not isinstance(p, int) else p for p in path))
            if pos is not None:
                return (pos.key_line, pos.key_column) if key else (pos.line, pos.column)
            if not path:
                return (1, 1)
            path = path[:-1]
            key = False


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _walk(
    node: yaml.Node,
    path: Path,
    constructor: Any,
    doc: Document,
    problems: list[Diagnostic],
    file: str,
    seen: set[int],
    depth: int,
) -> None:
    # A node reached twice is an alias: its positions are those of the anchor, recorded once,
    # so an alias bomb cannot make this walk exponential.
    if id(node) in seen:
        return
    seen.add(id(node))
    if depth > _MAX_DEPTH:
        line, column = _mark(node)
        problems.append(Diagnostic(file, line, column, "", f"nesting deeper than {_MAX_DEPTH} levels"))
        return
    if isinstance(node, yaml.MappingNode):
        keys: dict[Any, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *anchor` merges keys; an explicit key may override them
            try:
                key = constructor.construct_object(key_node, deep=True)
                hash(key)
            except (yaml.YAMLError, TypeError, RecursionError):
                continue  # reported by the full construction below
            key_line, key_column = _mark(key_node)
            if key in keys:
                first_line, _ = _mark(keys[key])
                problems.append(
                    Diagnostic(
                        file,
                        key_line,
                        key_column,
                        _join(path, key),
                        f"duplicate key `{key}` (first defined on line {first_line}); a YAML loader would silently keep only the last one",
                    )
                )
                continue
            keys[key] = key_node
            child = (*path, key if isinstance(key, (str, int)) else str(key))
            line, column = _mark(value_node)
            doc.positions[child] = Position(key_line, key_column, line, column)
            _walk(value_node, child, constructor, doc, problems, file, seen, depth + 1)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            child = (*path, index)
            line, column = _mark(item)
            doc.positions[child] = Position(line, column, line, column)
            _walk(item, child, constructor, doc, problems, file, seen, depth + 1)


_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Builder:
    """Builds the data and records positions in one pass over the node tree.

    Plain mappings and sequences (the whole of a service file, in practice) are built here;
    scalars, and collections with merge keys or explicit tags, go through PyYAML's own
    constructor, so every value is what ``safe_load`` would give.
    """

    def __init__(self, loader: Any, doc: Document, problems: list[Diagnostic], file: str) -> None:
        self.loader = loader
        self.doc = doc
        self.problems = problems
        self.file = file
        self.built: dict[int, Any] = {}  # node id → object: an alias yields the anchor's object
        self.walked: set[int] = set()

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        known = self.built.get(id(node), _MISSING)
        if known is not _MISSING:
            return known
        if depth > _MAX_DEPTH:
            line, column = _mark(node)
            self.problems.append(Diagnostic(self.file, line, column, "", f"nesting deeper than {_MAX_DEPTH} levels"))
            raise _TooDeep
        if isinstance(node, yaml.ScalarNode):
            value = self.loader.construct_object(node)
        elif isinstance(node, yaml.SequenceNode) and node.tag == _SEQ_TAG:
            value = []
            self.built[id(node)] = value
            for index, item in enumerate(node.value):
                child = (*path, index)
                line, column = _mark(item)
                self.doc.positions[child] = Position(line, column, line, column)
                value.append(self.build(item, child, depth + 1))
        elif isinstance(node, yaml.MappingNode) and node.tag == _MAP_TAG and not any(k.tag == _MERGE_TAG for k, _ in node.value):
            value = {}
            self.built[id(node)] = value
            first: dict[Any, yaml.Node] = {}
            for key_node, value_node in node.value:
                key = self.loader.construct_object(key_node, deep=True)
                try:
                    hash(key)
                except TypeError:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
                    ) from None
                key_line, key_column = _mark(key_node)
                if key in first:
                    first_line, _ = _mark(first[key])
                    self.problems.append(
                        Diagnostic(
                            self.file,
                            key_line,
                            key_column,
                            _join(path, key),
                            f"duplicate key `{key}` (first defined on line {first_line}); a YAML loader would silently keep only the last one",
                        )
                    )
                else:
                    first[key] = key_node
                child = (*path, key if isinstance(key, (str, int)) else str(key))
                line, column = _mark(value_node)
                self.doc.positions.setdefault(child, Position(key_line, key_column, line, column))
                value[key] = self.build(value_node, child, depth + 1)
        else:
            # merge keys, `!!set`, `!!omap`...: PyYAML's semantics, our positions and duplicate check.
            # Walk first: constructing a mapping with `<<` rewrites its node (flatten_mapping).
            _walk(node, path, self.loader, self.doc, self.problems, self.file, self.walked, depth)
            value = self.loader.construct_object(node, deep=True)
        self.built[id(node)] = value
        return value


class _TooDeep(Exception):
    pass


_MISSING = object()


def _join(path: Path, key: Any) -> str:
    from .diagnostics import format_path

    return format_path((*path, str(key)))


def load(text: str, file: str) -> tuple[Document | None, list[Diagnostic]]:
    """Parse `text`; return the document (None on a syntax error) and the problems found.

    Problems here are YAML syntax errors, unknown tags, several documents, excessive
    nesting, duplicate keys, oversized text and alias expansion beyond `MAX_EXPANDED_CHARS`,
    each with its position. After duplicate keys the document is still returned (the last
    value wins, as in PyYAML) so that validation can report the file's other problems in the
    same run.
    """
    if len(text) > MAX_TEXT_CHARS:
        return None, [too_large(file, len(text))]
    doc, problems = _load(text, file, _BaseLoader)
    if doc is None and _BaseLoader is not yaml.SafeLoader:
        # libyaml and PyYAML's own parser disagree on a few corner cases; dstack uses the
        # latter, so a file only libyaml refuses is read (or refused) the way dstack does.
        doc, problems = _load(text, file, yaml.SafeLoader)
    return doc, problems


def _load(text: str, file: str, loader_class: type) -> tuple[Document | None, list[Diagnostic]]:
    problems: list[Diagnostic] = []
    try:
        loader = loader_class(text)
    except yaml.YAMLError as exc:  # the pure reader checks characters up front
        return None, [Diagnostic(file, 0, 0, "", f"YAML syntax error: {exc}".replace("\n", " "))]
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            return None, [_syntax_error(exc, file)]
        except yaml.YAMLError as exc:
            return None, [Diagnostic(file, 0, 0, "", f"YAML syntax error: {exc}".replace("\n", " "))]
        except RecursionError:
            return None, [Diagnostic(file, 0, 0, "", "YAML nesting is too deep")]
        doc = Document(data=None)
        if node is None:
            return doc, problems
        bomb = _alias_expansion(node, file)
        if bomb is not None:
            return None, [bomb]
        doc.positions[()] = Position(*_mark(node), *_mark(node))
        try:
            doc.data = _Builder(loader, doc, problems, file).build(node, (), 0)
        except _TooDeep:
            return None, problems
        except RecursionError:
            return None, [Diagnostic(file, 0, 0, "", "YAML nesting is too deep")]
        except yaml.MarkedYAMLError as exc:
            return None, [_syntax_error(exc, file)]
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as exc:
            return None, [Diagnostic(file, 0, 0, "", f"YAML error: {exc}")]
        return doc, problems
    finally:
        loader.dispose()


def too_large(file: str, size: int, unit: str = "characters") -> Diagnostic:
    """The diagnostic for a file above `MAX_TEXT_CHARS` (also used for its size in bytes)."""
    return Diagnostic(
        file, 0, 0, "",
        f"the file is {size} {unit} long, more than the limit of {MAX_TEXT_CHARS} characters for a service file; "
        "service files hold configuration, not data (put large scripts in the image or a repository)",
    )


def _alias_expansion(root: yaml.Node, file: str) -> Diagnostic | None:
    """A diagnostic when the document, aliases expanded, exceeds `MAX_EXPANDED_CHARS`.

    Sizes are computed once per node (memoised on identity), so a billion-laughs document costs
    time linear in its text. The message points at the anchor whose reuse weighs most.
    """
    sizes: dict[int, int] = {}
    uses: dict[int, int] = {}
    nodes: dict[int, yaml.Node] = {}

    def size(node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in sizes:
            uses[key] = uses.get(key, 0) + 1
            return sizes[key]
        if depth > _MAX_DEPTH:
            return 0  # reported as too deep by the builder
        sizes[key] = 0  # a recursive alias counts once (the builder shares the object)
        nodes[key] = node
        if isinstance(node, yaml.ScalarNode):
            total = 1 + len(node.value)
        elif isinstance(node, yaml.SequenceNode):
            total = 1 + sum(size(item, depth + 1) for item in node.value)
        elif isinstance(node, yaml.MappingNode):
            total = 1 + sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        else:
            total = 1
        sizes[key] = total
        return total

    expanded = size(root, 0)
    if expanded <= MAX_EXPANDED_CHARS:
        return None
    heaviest = max(uses, key=lambda k: uses[k] * sizes[k])
    anchor = nodes[heaviest]
    line, column = _mark(anchor)
    return Diagnostic(
        file, line, column, "",
        f"aliases expand the document to {expanded} characters, more than the limit of {MAX_EXPANDED_CHARS}: "
        f"the anchored value here ({sizes[heaviest]} characters) is reused {uses[heaviest]} times; "
        "anchors are for small repeated pieces",
    )


def _syntax_error(exc: yaml.MarkedYAMLError, file: str) -> Diagnostic:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or "invalid YAML"
    if exc.context:
        problem = f"{exc.context}, {problem}"
    if "'\\t'" in problem or "tab" in problem:
        problem += " (YAML is indented with spaces, not tabs)"
    line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
    return Diagnostic(file, line, column, "", f"YAML syntax error: {problem}")
