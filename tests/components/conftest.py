"""Component tests run many programs under Pulumi's mock runtime in one process.

The shared mock runtime is `_pulumi_harness.py` beside this file; tests import it by module
name (pytest runs with `--import-mode=importlib`, which adds no test folder to `sys.path`).

The runtime keeps the root stack resource in a context variable; a program that ends
leaves it set, and the next program would register its resources (and exports) under the
previous program's stack. Every test starts from no root stack.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pulumi
import pytest

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _fresh_root_stack():
    pulumi.runtime.settings.ROOT.set(None)
    yield
    pulumi.runtime.settings.ROOT.set(None)


@pytest.fixture(autouse=True, scope="session")
def _no_deploying_state_credentials():
    """VM gateways store the deploying environment's state credentials for their scaler
    (`_vm.SCALER_ENV_NAMES`); a test sets them itself, so what a test registers never depends
    on the shell (or an engine test) that ran before it. Session scope: module-scoped
    recordings are made before function fixtures run."""
    with pytest.MonkeyPatch.context() as patch:
        for name in ("PULUMI_BACKEND_URL", "PULUMI_CONFIG_PASSPHRASE", "PULUMI_CONFIG_PASSPHRASE_FILE", "PULUMI_ACCESS_TOKEN"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(autouse=True, scope="session")
def _fake_gateway_artifacts(tmp_path_factory):
    """The AWS gateway uploads its artifacts; under mocks, small files stand in for the real builds."""
    from _cloud_examples import fake_gateway_artifacts

    import serveform.image.vm as vm_artifacts

    fakes = fake_gateway_artifacts(tmp_path_factory.mktemp("artifacts"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            vm_artifacts, "gateway_artifacts", lambda root=None, pulumi=True, **_: fakes if pulumi else tuple(f for f in fakes if f.name != "pulumi")
        )
        yield fakes
