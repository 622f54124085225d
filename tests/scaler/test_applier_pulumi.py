"""`PulumiApplier` against the real Pulumi CLI: a throwaway project on a file:// backend in a temp
dir, run through the project's language host (no inline program, no components imported).

The program plays serveform's contract for counts: it reads the last deployment's `replicas` output
back through a StackReference to itself, applies the `ScaleRequest` in `SERVEFORM_SCALE` and exports
the result, so the test sees what `up` saw; it can be told to hold the stack's lock for a while (a
file flag), to make a real ConcurrentUpdateError."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from serveform.scaler.applier import ApplyWorker, PulumiApplier, StackBusyError

PROGRAM = '''\
import json, os, time
from pathlib import Path
import pulumi
from pulumi.runtime.sync_await import _sync_await

name = f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
last = _sync_await(pulumi.StackReference("last", stack_name=name).outputs.future()) or {}
request = json.loads(os.environ.get("SERVEFORM_SCALE") or "{}")
replicas = {s: int(n) for s, n in (last.get("replicas") or {}).items()}
replicas.update(request.get("counts", {}))
pulumi.export("source", request.get("source"))
hold = Path(__file__).with_name("hold")
if hold.exists():
    Path(__file__).with_name("holding").write_text("1")
    deadline = time.monotonic() + float(hold.read_text())
    while hold.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
pulumi.export("replicas", replicas)
targets = Path(__file__).with_name("targets")
if targets.exists():
    pulumi.export("scalerTargets", {"chat": [targets.read_text()]})
'''


def _env(tmp_path: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)
    (tmp_path / "state").mkdir(exist_ok=True)
    return {
        "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")]),
        "PULUMI_BACKEND_URL": (tmp_path / "state").as_uri(),
        "PULUMI_CONFIG_PASSPHRASE": "test-only",
        "PULUMI_SKIP_UPDATE_CHECK": "1",
        "PULUMI_PYTHON_CMD": sys.executable,
        "HOME": os.environ.get("HOME", str(tmp_path)),
    }


@pytest.fixture
def project(tmp_path):
    proj = tmp_path / "proj"
    (proj / "stacks").mkdir(parents=True)
    (proj / "Pulumi.yaml").write_text(
        "name: scalertest\nruntime:\n  name: python\n  options:\n"
        f"    virtualenv: {Path(sys.executable).parent.parent}\nstackConfigDir: stacks\nmain: __main__.py\n"
    )
    (proj / "__main__.py").write_text(PROGRAM)
    env = _env(tmp_path)
    subprocess.run(["pulumi", "stack", "init", "test", "--non-interactive"], cwd=proj, env=env, check=True, capture_output=True)
    # A reviewed key next to the scaler's: the scaler must leave it as it is.
    subprocess.run(["pulumi", "config", "set", "serveform:domain", "example.test"], cwd=proj, env=env, check=True, capture_output=True)
    return proj, env


def _outputs(proj: Path, env: dict[str, str]) -> dict:
    import json

    out = subprocess.run(["pulumi", "stack", "output", "--json"], cwd=proj, env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def test_apply_runs_a_scale_up_and_never_writes_the_stack_file(project):
    proj, env = project
    stack_file = (proj / "stacks" / "Pulumi.test.yaml").read_text()
    applier = PulumiApplier("test", proj, env=env)
    applier.apply({"chat": 2}, message="serveform scaler: chat=2 (test)")
    assert (proj / "stacks" / "Pulumi.test.yaml").read_text() == stack_file
    assert _outputs(proj, env)["replicas"] == {"chat": 2}
    assert _outputs(proj, env)["source"] == "scaler"
    applier.apply({"other": 0}, message="serveform scaler: another service")
    # The count of chat came back from the last deployment, not from any file.
    assert _outputs(proj, env)["replicas"] == {"chat": 2, "other": 0}
    # The request reached that `up` only: a plain `up` keeps the counts and carries no request.
    subprocess.run(["pulumi", "up", "--yes", "--skip-preview", "--non-interactive"], cwd=proj, env=env, check=True, capture_output=True)
    assert _outputs(proj, env)["replicas"] == {"chat": 2, "other": 0}
    assert _outputs(proj, env).get("source") is None
    assert (proj / "stacks" / "Pulumi.test.yaml").read_text() == stack_file


def test_a_manual_applier_marks_its_request(project):
    proj, env = project
    PulumiApplier("test", proj, env=env, source="manual").apply({"chat": 3}, message="serveform scale chat 3")
    assert _outputs(proj, env)["source"] == "manual"


def test_apply_limits_up_to_the_exported_targets(project):
    proj, env = project
    applier = PulumiApplier("test", proj, env=env)
    applier.apply({"chat": 1}, message="first")
    # The program now names the stack resource itself as what a change of chat touches.
    (proj / "targets").write_text("urn:pulumi:test::scalertest::pulumi:pulumi:Stack::scalertest-test")
    applier.apply({"chat": 1}, message="export targets")
    assert applier.targets(["chat"]) == ["urn:pulumi:test::scalertest::pulumi:pulumi:Stack::scalertest-test"]
    assert applier.targets(["unknown"]) is None  # a service the program does not describe: whole stack
    applier.apply({"chat": 4}, message="targeted")
    assert _outputs(proj, env)["replicas"] == {"chat": 4}


def test_a_locked_stack_raises_stack_busy_and_the_worker_retries_until_it_is_free(project):
    proj, env = project
    applier = PulumiApplier("test", proj, env=env)
    applier.apply({"chat": 1}, message="first")
    (proj / "hold").write_text("60")
    other = subprocess.Popen(
        ["pulumi", "up", "--yes", "--skip-preview", "--non-interactive"], cwd=proj, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 60
        while not (proj / "holding").exists():
            assert other.poll() is None and time.monotonic() < deadline, "the other update never started"
            time.sleep(0.05)
        with pytest.raises(StackBusyError, match="stack test"):
            applier.apply({"chat": 2}, message="while locked")
        worker = ApplyWorker(applier, backoff_initial_seconds=0.5, backoff_max_seconds=1, jitter_ratio=0)
        worker.submit({"chat": 2})
        assert worker.run_once() is not None  # locked: backs off, keeps the count
        assert worker.pending() == {"chat": 2}
        worker.submit({"chat": 3})  # a newer decision meanwhile
        (proj / "hold").unlink()  # the other update finishes
        assert other.wait(60) == 0
        worker.start()
        assert worker.wait_idle(120)
        worker.stop(10)
    finally:
        if other.poll() is None:
            other.kill()
    assert _outputs(proj, env)["replicas"] == {"chat": 3}
    stats = worker.stats()
    assert stats.busy >= 1 and stats.successes == 1
