"""The translator stands alone: importing it (and running it) loads nothing of Pulumi, Caddy,
the gateway, the scaler, the components or the stacks engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FORBIDDEN = ("pulumi", "serveform.components", "serveform.gateway", "serveform.scaler", "serveform.stacks", "aiohttp", "grpc")
EXAMPLE = Path(__file__).parent / "examples" / "002-auto-scaling.dstack.yml"

PROBE = f"""
import sys
import serveform.translator
import serveform.translator.commands
import serveform.translator.schema
from serveform.translator import CompileContext, compile_file
compile_file({str(EXAMPLE)!r}, CompileContext(backend="aws", require_env=False))
serveform.translator.schema.service_json_schema()
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("pulumi", "aiohttp", "grpc") or m.startswith(("serveform.components", "serveform.gateway", "serveform.scaler", "serveform.stacks")))
print("\\n".join(loaded))
"""


def test_translator_imports_nothing_downstream() -> None:
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "", f"the translator loaded: {done.stdout}"


def test_translator_sources_do_not_import_downstream() -> None:
    import ast

    root = Path(__file__).resolve().parents[2] / "translator"
    offenders = []
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.ImportFrom) and node.level >= 2:
                names = [f"serveform.{node.module or ''}"]
            offenders += [f"{path.name}: {n}" for n in names if n.startswith(FORBIDDEN)]
    assert not offenders
