"""serveform reads service files exactly as dstack 0.22.5 does — checked against dstack itself.

dstack is installed from PyPI into its own virtualenv by `bench/translator.py --ensure-dstack`
(once per machine); each case file is parsed by both, and both must accept or reject it, with
the same normalised shape (`spec`) when accepted. Deliberate differences are listed, with their
reason, in dstack_cases.yaml.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from serveform.translator import CompileContext, TranslatorError, compile_file

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
CASES = yaml.safe_load((HERE / "dstack_cases.yaml").read_text())


@pytest.fixture(scope="module")
def dstack_python() -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "translator.py"), "--ensure-dstack"], check=True, capture_output=True, text=True, timeout=600
    )
    return out.stdout.strip().splitlines()[-1]


def _dstack_parse(python: str, files: list[Path]) -> dict[str, dict]:
    out = subprocess.run([python, str(HERE / "_dstack_parse.py"), *map(str, files)], check=True, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout)


def _ours(path: Path) -> dict:
    try:
        return compile_file(path, CompileContext(require_env=False)).spec.model_dump(mode="json")
    except TranslatorError as exc:
        return {"error": str(exc)}


def _compare(theirs: dict, ours: dict) -> list[str]:
    if "error" in theirs or "error" in ours:
        if ("error" in theirs) != ("error" in ours):
            return [f"dstack: {theirs.get('error', 'accepted')!s:.200} / serveform: {ours.get('error', 'accepted')!s:.200}"]
        return []
    problems = []
    for key, value in theirs.items():
        if key == "registry_auth" and value:  # ours masks the password
            value = {**value, "password": "**********"}
        if key not in ours:
            problems.append(f"missing field {key}")
        elif ours[key] != value:
            problems.append(f"{key}: dstack {value!r} / serveform {ours[key]!r}")
    problems += [f"extra field {k}" for k, v in ours.items() if k not in theirs and v not in (None, [], {})]
    return problems


def test_cases_and_examples_match_dstack(dstack_python: str, tmp_path: Path) -> None:
    files = []
    for index, case in enumerate(CASES):
        path = tmp_path / f"case-{index:03d}.dstack.yml"
        path.write_text(case["yaml"])
        files.append(path)
    examples = sorted((HERE / "examples").glob("*.dstack.yml")) + [ROOT / "stacks" / "examples" / "chat.dstack.yml"]
    theirs = _dstack_parse(dstack_python, files + examples)
    mismatches, stale = [], []
    for index, path in enumerate(files + examples):
        problems = _compare(theirs[str(path)], _ours(path))
        differs = CASES[index].get("differs") if index < len(CASES) else None
        if problems and not differs:
            mismatches.append(f"{path.name}: {'; '.join(problems)}\n{path.read_text()}")
        if differs and not problems:
            stale.append(f"{path.name} is marked as differing ({differs}) but matches dstack")
    assert not mismatches, "\n\n".join(mismatches)
    assert not stale, "\n".join(stale)
    # the seed examples are accepted by both
    for path in examples:
        assert "error" not in theirs[str(path)], theirs[str(path)]
