"""Hostile service files through the real CLI: size cap, alias-expansion cap, no empty error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# The caps of serveform.translator._yaml, restated: the messages must carry these numbers.
MAX_TEXT_CHARS = 1024 * 1024
MAX_EXPANDED_CHARS = 4 * MAX_TEXT_CHARS
# Guards against a hang (the old code ran out of memory), not speed targets.
CLI_TIMEOUT_SECONDS = 120


def _serveform(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "serveform"), *args], cwd=cwd, capture_output=True, text=True, timeout=CLI_TIMEOUT_SECONDS
    )


def _alias_bomb(path: Path) -> Path:
    """The review's file: one 100 KB anchored string reused 20,000 times, 240 KB on disk."""
    big = "x" * 100_000
    uses = ", ".join(["*big"] * 20_000)
    path.write_text(
        "type: service\nname: bomb\nport: 8000\n"
        f"env:\n  - &big PAD={big}\n"
        f"commands: [{uses}]\n"
    )
    assert 200_000 < path.stat().st_size < 260_000
    return path


@pytest.mark.parametrize("command", ["validate", "compile"])
def test_alias_bomb_fails_with_a_clear_error(tmp_path: Path, command: str) -> None:
    bomb = _alias_bomb(tmp_path / "bomb.dstack.yml")
    result = _serveform(command, str(bomb), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "aliases expand the document to" in result.stderr
    assert f"more than the limit of {MAX_EXPANDED_CHARS}" in result.stderr
    # The diagnostic points at the anchor (line 5: `  - &big PAD=...`) and says how often it is reused.
    assert "bomb.dstack.yml:5:" in result.stderr and "reused 20000 times" in result.stderr
    assert len(result.stderr) < 5_000  # the error does not echo the expansion


def test_a_50_mb_service_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.dstack.yml"
    with big.open("w") as handle:
        handle.write("type: service\nname: big\nport: 8000\ncommands:\n")
        line = "  - echo " + "y" * 90 + "\n"
        handle.write(line * (50 * 1024 * 1024 // len(line)))
    result = _serveform("validate", str(big), cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"more than the limit of {MAX_TEXT_CHARS} characters for a service file" in result.stderr
    assert str(big.stat().st_size) in result.stderr


def test_anchors_for_small_repeated_pieces_still_work(tmp_path: Path) -> None:
    service = tmp_path / "ok.dstack.yml"
    service.write_text(
        "type: service\nname: ok\nport: 8000\n"
        "commands: [&run 'python -m http.server 8000']\n"
        "setup: [*run, *run]\n"
    )
    result = _serveform("validate", str(service), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_no_error_message_is_empty() -> None:
    from serveform.cli import describe

    # MemoryError (what the alias bomb raised in `compile`) and bare KeyErrors carry no text.
    for exc in (MemoryError(), KeyError(""), RuntimeError(), ValueError("   ")):
        message = describe(exc)
        assert message.strip() and len(message) > 10, (exc, message)
    assert "out of memory" in describe(MemoryError())
    assert describe(RuntimeError("what went wrong")) == "what went wrong"


def test_every_cli_error_line_says_what_is_wrong(tmp_path: Path) -> None:
    cases = {
        "empty.dstack.yml": "",
        "list.dstack.yml": "- a\n- b\n",
        "tabs.dstack.yml": "type: service\n\tname: x\n",
        "deep.dstack.yml": "a: " + "[" * 300 + "]" * 300 + "\n",
        "bad-number.dstack.yml": "type: service\nname: x\nport: 8000\nreplicas: 1e5000\n",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "binary.dstack.yml").write_bytes(b"\xff\xfe\x00garbage")
    files = [*cases, "binary.dstack.yml", "missing.dstack.yml"]
    result = _serveform("validate", *files, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) >= len(files)
    for line in lines:
        after = line.split("error:", 1)[1].strip()
        assert len(after) > 5, f"an error that says nothing: {line!r}"
