"""One jinja2 environment for every file serveform renders: cloud-init, shell, systemd, JSON.

Outputs here are machine syntaxes, not HTML, so autoescape is off and every interpolated
string goes through a quoting filter named for the syntax it lands in:

- ``sh_quote``: one POSIX shell word (``'it'"'"'s'``), safe for bash and ``sh -c``;
- ``json``: a JSON value (also a valid YAML flow scalar when it is a string);
- ``yaml``: a YAML double-quoted scalar that survives every character, line breaks included;
- ``systemd_quote``: one argument or assignment of a systemd unit line (``%`` and ``$`` escaped);
- ``b64``: base64 of the UTF-8 text, for cloud-init ``encoding: b64`` and user-data fields.

`StrictUndefined` turns a missing variable into an error instead of an empty string, and a
bare ``{{ value }}`` is reserved for ints and enums (review treats any other as a bug).
"""

from __future__ import annotations

import base64
import json
import shlex
from functools import lru_cache
from pathlib import Path

import jinja2

__all__ = ["TEMPLATES_DIR", "environment", "render", "sh_quote", "yaml_quote", "systemd_quote", "json_quote", "b64"]

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
"""The VM backends' templates (cloud-init, shell, systemd)."""


def sh_quote(value: object) -> str:
    """One POSIX shell word whose value is exactly ``str(value)``."""
    return shlex.quote(str(value))


def json_quote(value: object) -> str:
    """A JSON document for ``value`` (keys sorted so renders are stable)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=True)


def yaml_quote(value: object) -> str:
    """A YAML double-quoted scalar for ``str(value)``.

    Printable ASCII stays as is; everything else is escaped (``\\n``, ``\\uXXXX``, ``\\UXXXXXXXX``),
    because YAML folds raw line breaks (including U+0085, U+2028, U+2029) inside quoted scalars
    and forbids most control characters.
    """
    out = ['"']
    for ch in str(value):
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def systemd_quote(value: object) -> str:
    """One double-quoted word of a systemd unit line (``ExecStart=``, ``Environment=``).

    systemd expands ``%`` specifiers and ``$VAR`` in ``Exec*`` lines, so both are doubled;
    quotes and backslashes are escaped; line breaks are refused (a unit line cannot hold them).
    """
    text = str(value)
    if any(ch in text for ch in "\n\r\0"):
        raise ValueError(f"a systemd unit value cannot contain a line break or NUL: {text!r}")
    text = text.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{text}"'


def b64(value: object) -> str:
    """Base64 of the UTF-8 encoding of ``str(value)``."""
    return base64.b64encode(str(value).encode()).decode("ascii")


@lru_cache(maxsize=8)
def environment(*search_paths: str) -> jinja2.Environment:
    """The shared environment: StrictUndefined, no autoescape, our quoting filters.

    ``search_paths`` default to this package's ``templates/`` folder; other packages (the
    Kubernetes backend, for instance) pass their own folder.
    """
    paths = search_paths or (str(TEMPLATES_DIR),)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(paths)),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        sh_quote=sh_quote,
        json=json_quote,
        yaml=yaml_quote,
        systemd_quote=systemd_quote,
        b64=b64,
    )
    return env


def render(template: str, /, **context: object) -> str:
    """Render ``components/templates/<template>`` with ``context``."""
    return environment().get_template(template).render(**context)
