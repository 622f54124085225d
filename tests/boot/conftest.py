"""Boot tests import their helpers (and the components' mock runtime) by module name: pytest runs
with `--import-mode=importlib`, which puts no test folder on `sys.path`."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _path in (_TESTS / "boot", _TESTS / "components"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))
