"""The one-way data flow of the design, enforced on the source's imports.

file → translator → plan → components → Pulumi; at run time Caddy → scaler → replica counts → a scale `up`.
The translator imports nothing of Pulumi, the gateway, the scaler or the components; the scaler
never imports the components (it runs scale `up`s with counts, it never builds resources);
the gateway knows nothing of Pulumi or the components.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "translator": ("pulumi", "serveform.bundle", "serveform.components", "serveform.gateway", "serveform.scaler", "serveform.stacks"),
    # The code archive is built from the plan at deploy time; it knows nothing of Pulumi or what deploys it.
    "bundle": ("pulumi", "serveform.components", "serveform.gateway", "serveform.scaler", "serveform.stacks"),
    "scaler": ("serveform.components",),
    "gateway": ("pulumi", "serveform.components", "serveform.scaler"),
    # AWS's APIs with the standard library: a VM's boot fetcher runs it before serveform is installed.
    "aws": ("pulumi", "serveform.bundle", "serveform.components", "serveform.gateway", "serveform.scaler", "serveform.stacks", "serveform.translator", "serveform.image"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = "serveform." + ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            found.append((node.lineno, name))
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_imports_follow_the_data_flow(folder: str) -> None:
    offences = []
    for path in sorted((ROOT / folder).rglob("*.py")):
        for line, name in _imports(path):
            for prefix in FORBIDDEN[folder]:
                if name == prefix or name.startswith(prefix + "."):
                    offences.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert not offences, "\n".join(offences)


def test_relative_imports_resolve_inside_the_package() -> None:
    # Guards the walker itself: a relative import in serveform.stacks resolves to serveform.stacks.*.
    names = [n for _, n in _imports(ROOT / "stacks" / "__init__.py")]
    assert "serveform.stacks.settings" in names


def test_the_aws_client_needs_only_the_standard_library() -> None:
    # A booting VM runs it (beside serveform-fetch) before anything but Debian's python3 is there.
    import sys

    offences = [
        f"aws/{path.name}:{line}: imports {name}"
        for path in sorted((ROOT / "aws").glob("*.py"))
        for line, name in _imports(path)
        if name.split(".")[0] not in sys.stdlib_module_names and not name.startswith("serveform.aws")
    ]
    assert not offences, "\n".join(offences)
