"""Component tests run many programs under Pulumi's mock runtime in one process.

The runtime keeps the root stack resource in a context variable; a program that ends
leaves it set, and the next program would register its resources (and exports) under the
previous program's stack. Every test starts from no root stack.
"""

from __future__ import annotations

import pulumi
import pytest


@pytest.fixture(autouse=True)
def _fresh_root_stack():
    pulumi.runtime.settings.ROOT.set(None)
    yield
    pulumi.runtime.settings.ROOT.set(None)
