"""The adversarial suite of issue 16: each test reproduces a finding and fails on the code before its fix.

Test modules reuse the component harnesses (tests/components) by module name: pytest runs with
`--import-mode=importlib`, which puts no test folder on `sys.path`, so this adds them.
"""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _path in (_TESTS / "components", _TESTS / "components" / "k8s"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _fake_gateway_artifacts(tmp_path_factory):
    """The AWS gateway uploads its artifacts; under mocks, small files stand in for the real builds."""
    from _cloud_examples import fake_gateway_artifacts

    import serveform.image.vm as vm_artifacts

    fakes = fake_gateway_artifacts(tmp_path_factory.mktemp("artifacts"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(vm_artifacts, "gateway_artifacts", lambda root=None, **_: fakes)
        yield fakes
