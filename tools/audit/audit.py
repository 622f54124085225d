"""Dependency vulnerability audit that works offline: installed distributions and pyproject floors
against a committed advisory list (`advisories.json` beside this file).

    python tools/audit/audit.py check     # exit 1 and list every match; `make test` runs it (tests/security)
    python tools/audit/audit.py refresh   # rewrite advisories.json from OSV (needs api.osv.dev)

Why not pip-audit: it asks PyPI's per-release JSON API or OSV for every package, and the machines
this project is built and tested on reach package indexes but neither of those services (the
per-release JSON answers 404, OSV does not answer). The check itself needs no network; the list
is refreshed where the network allows, reviewed as a diff, and committed.
"""

from __future__ import annotations

import json
import re
import sys
import tomllib
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

__all__ = ["ADVISORIES", "Finding", "check_floors", "check_installed", "load", "main"]

ADVISORIES = Path(__file__).with_name("advisories.json")
PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
OSV_QUERYBATCH = "https://api.osv.dev/v1/querybatch"
OSV_TIMEOUT_SECONDS = 30


@dataclass(frozen=True)
class Finding:
    """One vulnerable release: where it was seen (`installed` or a pyproject requirement) and why."""

    package: str
    version: str
    where: str
    ids: tuple[str, ...]
    summary: str

    def __str__(self) -> str:
        return f"{self.package} {self.version} ({self.where}): {', '.join(self.ids)}: {self.summary}"


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def load(path: Path = ADVISORIES) -> list[dict]:
    """The advisory entries: `package`, `ids`, `affected` (specifier sets), `summary`."""
    return json.loads(path.read_text())["advisories"]


def _affected(entry: dict, version: Version) -> bool:
    return any(version in SpecifierSet(spec, prereleases=True) for spec in entry["affected"])


def check_installed(advisories: list[dict], installed: dict[str, str] | None = None) -> list[Finding]:
    """Installed distributions (name → version; default: this interpreter's) in an affected range."""
    if installed is None:
        installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    findings = []
    for entry in advisories:
        raw = installed.get(_canonical(entry["package"]))
        if raw is None:
            continue
        try:
            version = Version(raw)
        except InvalidVersion:
            continue
        if _affected(entry, version):
            findings.append(Finding(entry["package"], raw, "installed", tuple(entry["ids"]), entry["summary"]))
    return findings


def check_floors(advisories: list[dict], requirements: list[str]) -> list[Finding]:
    """Requirements whose lowest allowed release (`>=X` or `==X`) is in an affected range."""
    findings = []
    for line in requirements:
        req = Requirement(line)
        floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if not floors:
            floors = [Version("0")]  # unbounded below: every old release is allowed
        floor = max(floors)
        for entry in advisories:
            if _canonical(entry["package"]) == _canonical(req.name) and _affected(entry, floor):
                findings.append(Finding(req.name, str(floor), f"pyproject: {line}", tuple(entry["ids"]), entry["summary"]))
    return findings


def pyproject_requirements(path: Path = PYPROJECT) -> list[str]:
    """Every requirement of pyproject.toml: build system, dependencies, optional dependencies."""
    data = tomllib.loads(path.read_text())
    out = list(data.get("build-system", {}).get("requires", []))
    project = data.get("project", {})
    out += project.get("dependencies", [])
    for extra in project.get("optional-dependencies", {}).values():
        out += [r for r in extra if not r.startswith("serveform")]
    return out


def refresh(path: Path = ADVISORIES) -> int:
    """Rewrite the list from OSV for every installed distribution (needs the network)."""
    installed = {_canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}
    names = sorted(installed)
    body = {"queries": [{"package": {"name": n, "ecosystem": "PyPI"}} for n in names]}
    request = urllib.request.Request(OSV_QUERYBATCH, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=OSV_TIMEOUT_SECONDS) as response:
        results = json.load(response)["results"]
    known = {tuple(sorted(e["ids"])) for e in load(path)}
    entries = load(path)
    for name, result in zip(names, results):
        for vuln in result.get("vulns", []):
            detail_url = f"https://api.osv.dev/v1/vulns/{vuln['id']}"
            with urllib.request.urlopen(detail_url, timeout=OSV_TIMEOUT_SECONDS) as response:
                detail = json.load(response)
            ids = tuple(sorted([detail["id"], *detail.get("aliases", [])]))
            if ids in known:
                continue
            ranges = []
            for affected in detail.get("affected", []):
                for r in affected.get("ranges", []):
                    start = next((e["introduced"] for e in r["events"] if "introduced" in e), "0")
                    fixed = next((e["fixed"] for e in r["events"] if "fixed" in e), None)
                    if fixed:
                        ranges.append(f">={start},<{fixed}" if start != "0" else f"<{fixed}")
            if ranges:
                entries.append({"package": name, "ids": list(ids), "affected": ranges, "summary": detail.get("summary", "")})
    data = json.loads(path.read_text())
    data["advisories"] = entries
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{path}: {len(entries)} advisories; review the diff and raise the floors in pyproject.toml")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["refresh"]:
        return refresh()
    if args not in ([], ["check"]):
        print("usage: audit.py [check | refresh]", file=sys.stderr)
        return 2
    advisories = load()
    findings = check_installed(advisories) + check_floors(advisories, pyproject_requirements())
    for finding in findings:
        print(f"vulnerable: {finding}", file=sys.stderr)
    if not findings:
        print(f"audit: no known vulnerability ({len(advisories)} advisories, reviewed {json.loads(ADVISORIES.read_text())['reviewed']})")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
