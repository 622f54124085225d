"""The gateway's Caddy module's own Go tests (tools/caddy/serveform/serveform_test.go): the ready
file's validation, the upstream source's answers, the gate's tokens and redirects — run with the Go
that tools/setup.sh builds Caddy with."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_module_go_tests_pass():
    go = shutil.which("go") or "/usr/local/go/bin/go"
    assert os.access(go, os.X_OK), "Go is needed to build the project's Caddy (tools/setup.sh); it is missing"
    env = {**os.environ, "GOFLAGS": "-buildvcs=false"}
    result = subprocess.run(
        [go, "test", "-count=1", "./serveform/"], cwd=ROOT / "tools" / "caddy", capture_output=True, text=True, timeout=600, env=env
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "ok" in result.stdout
