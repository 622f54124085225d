"""Shared test configuration.

Every package's tests live in their own folder (tests/translator, tests/gateway, ...).
Tools built by tools/setup.sh are linked into .venv/bin; `make test` puts it on PATH,
and this file does too so that `pytest` run directly finds the same binaries.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_BIN = Path(sys.executable).parent
os.environ["PATH"] = f"{_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ.setdefault("PULUMI_SKIP_UPDATE_CHECK", "1")
