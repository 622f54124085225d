"""Dependency audit in `make test`: no installed distribution and no pyproject floor is a release
with a known vulnerability (tools/audit: the committed advisory list, checked offline)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
AUDIT = ROOT / "tools" / "audit" / "audit.py"


def _audit():
    spec = importlib.util.spec_from_file_location("_audit", AUDIT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_installed_and_declared_dependencies_have_no_known_vulnerability() -> None:
    result = subprocess.run([sys.executable, str(AUDIT), "check"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no known vulnerability" in result.stdout


def test_floors_are_at_the_fixed_releases() -> None:
    audit = _audit()
    requirements = {r.split(">")[0].split("=")[0].strip(): r for r in audit.pyproject_requirements()}
    assert requirements["jinja2"].startswith("jinja2>=3.1.6")
    assert requirements["aiohttp"].startswith("aiohttp>=3.13.4")


def test_the_audit_fails_on_a_vulnerable_release() -> None:
    """The check can fail: the floors this project had before issue 16, and old installed releases."""
    audit = _audit()
    advisories = audit.load()
    before = ["jinja2>=3.1,<4", "aiohttp>=3.9,<4", "setuptools>=69"]
    found = {(f.package, f.ids[0]) for f in audit.check_floors(advisories, before)}
    assert ("jinja2", "CVE-2025-27516") in found  # sandbox escape, fixed in 3.1.6
    assert ("aiohttp", "CVE-2025-53643") in found  # request smuggling, fixed in 3.12.14
    assert ("setuptools", "CVE-2025-47273") in found
    installed = audit.check_installed(advisories, {"aiohttp": "3.10.2", "jinja2": "3.1.6", "protobuf": "5.29.4"})
    assert {f.package for f in installed} == {"aiohttp", "protobuf"}
    assert not audit.check_installed(advisories, {"protobuf": "5.29.5", "aiohttp": "3.13.4"})
