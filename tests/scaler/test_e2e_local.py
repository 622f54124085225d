"""The scaler end to end on the local stack: the real Pulumi CLI, Caddy, the gateway, replica
processes, the scaler daemon the stack starts, and locust for load.

One service, `replicas: 0..2`, target 2 rps per replica, short delays and a 30 s window. In
order, on one stack:

1. deployed idle, it runs no replica; a first request is held by the gateway, the scaler sees it
   in flight, scales to 1 and the request succeeds;
2. locust load far above the target scales it to 2 serving replicas;
3. without load it scales back to its minimum, 0 — no replica resource, no replica process;
4. after idling, a first request succeeds again;
5. an edit of the service file in the working tree, never deployed, is not applied by the
   scaler's updates: a replica it adds runs what was deployed;
6. `serveform scale chat 3` holds (a CI `up` keeps it, the scaler follows it) until the scaler's
   next decision; narrowing the reviewed range clamps the count at the next `up`;
7. the scaler killed (with the `up` it runs) in the middle of a scale-up and started again
   converges to the decided count, with exactly one process per replica.

Under load in (2), and after it, an `up` from a fresh clone of the project's git repository —
what CI runs on merge — keeps the scaler's count: counts live in the stack, not in the reviewed
files, which the scaler never writes (`git status` stays clean). The clone takes the project's
path, as a CI checkout has a fixed one; the local backend's state directory is outside it.

Every check counts replicas that serve (distinct `X-Replica` answers through the gateway) or
that exist (stack resources, live processes), never log lines.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(900)

ROOT = Path(__file__).resolve().parents[2]
# The local-stack fixtures live with the stack tests (tests/stacks/conftest.py); loaded by path
# so both suites make projects the same way.
_spec = importlib.util.spec_from_file_location("_stacks_fixtures", ROOT / "tests" / "stacks" / "conftest.py")
fixtures = sys.modules.setdefault("_stacks_fixtures", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(fixtures)

SERVICE = """\
type: service
name: chat
env:
  - MODEL_NAME=chat-small
  - CHAT_TOKEN_DELAY_MS=1
commands:
  - python {chat_server} --port 8000
port: 8000
probes:
  - type: http
    url: /health
    interval: 1s
replicas: {range}
scaling:
  metric: rps
  target: 2
  scale_up_delay: 5s
  scale_down_delay: 10s
  window: 30s
"""
# Window 30 s + scale_down_delay + a tick + an `up` that stops a replica, with room for a busy CI.
SCALE_DOWN_TIMEOUT_SECONDS = 180
SCALE_UP_TIMEOUT_SECONDS = 150
LOCUST_LIMIT_SECONDS = 150


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("scaler-e2e")
    project = fixtures.make_project(base, "scalee2e")
    project.write_service(text=SERVICE.format(chat_server=fixtures.CHAT_SERVER, range="0..2"))
    stack_file = project.root / "stacks" / "Pulumi.scalee2e.yaml"
    config = json.loads(stack_file.read_text())
    project.local_state_dir = base / "local-state"
    config["config"]["serveform:local"] = {"state_dir": str(project.local_state_dir)}
    stack_file.write_text(json.dumps(config, indent=2) + "\n")
    _git(project, "init", "-q")
    extra: list[subprocess.Popen] = []
    project.extra_processes = extra
    yield project
    for proc in extra:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
    project.pulumi("destroy", "--yes")
    for pid in {*fixtures.processes_mentioning(str(project.root)), *fixtures.processes_mentioning(str(project.local_state_dir))}:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _git(stack, *args: str) -> str:
    identity = ["-c", "user.name=serveform-test", "-c", "user.email=test@serveform.invalid"]
    done = subprocess.run(["git", *identity, *args], cwd=stack.root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"git {args}: {done.stderr}"
    return done.stdout


def _commit(stack, message: str) -> None:
    """A reviewed change: everything in the project, committed."""
    _git(stack, "add", "-A")
    _git(stack, "commit", "-q", "--allow-empty", "-m", message)


def _ci_up(stack) -> None:
    """What CI runs on merge: `serveform up` from a fresh clone of the repository."""
    assert _git(stack, "status", "--porcelain") == "", "something wrote into the reviewed files"
    worktree = stack.root.with_name(f"{stack.root.name}.worktree-{time.monotonic_ns()}")
    stack.root.rename(worktree)
    subprocess.run(["git", "clone", "-q", str(worktree), str(stack.root)], check=True, timeout=60)
    stack.ok(stack.serveform("up", "--yes"))


def _replicas_output(stack) -> dict:
    """The stack's `replicas` output: {service: {count, source, set_at}}."""
    return json.loads(stack.ok(stack.pulumi("stack", "output", "replicas", "--json")).stdout)


def _endpoints(stack) -> dict:
    return stack.endpoints()


def _client(stack, timeout: float = 60.0) -> httpx.Client:
    e = _endpoints(stack)
    return stack.client("chat.localhost", token=e["token"], ca_cert=e["gateway"]["ca_cert"], timeout=timeout)


def _replica_resources(stack) -> set[str]:
    return set(stack.replicas())


def _replica_processes(stack) -> list[int]:
    """Live chat-server processes started for this project (they run in its unpacked code, under the state folder)."""
    found = []
    for pid in sorted(set(fixtures.processes_mentioning(str(stack.root))) | set(fixtures.processes_mentioning(str(stack.state_dir)))):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "chat_server.py" in cmdline:
            found.append(pid)
    return found


def _scaler_state(stack) -> dict:
    path = stack.state_dir / "scaler" / "scaler-state.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _scaler_address(stack) -> str:
    out = stack.ok(stack.pulumi("stack", "output", "scaler", "--json")).stdout
    return json.loads(out)["address"]


def _locust(stack, users: int, rps_per_user: float) -> subprocess.Popen:
    e = _endpoints(stack)
    env = {
        **stack.env,
        "SERVEFORM_LOAD_URL": f"https://chat.localhost:{stack.https_port}",
        "SERVEFORM_LOAD_TOKEN": e["token"],
        "SERVEFORM_LOAD_CA": e["gateway"]["ca_cert"],
        "SERVEFORM_LOAD_RPS_PER_USER": str(rps_per_user),
    }
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "locust", "-f", str(ROOT / "tests" / "load" / "locustfile.py"), "PlainUser",
            "--headless", "-u", str(users), "-r", str(users), "-t", f"{LOCUST_LIMIT_SECONDS}s", "--only-summary",
        ],
        cwd=stack.root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    stack.extra_processes.append(proc)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _serving(stack, expected: set[str], timeout: float, what: str) -> None:
    with _client(stack) as client:
        stack.wait_for(lambda: stack.serving_replicas(client, requests=20) == expected, timeout, what)


def test_deployed_idle_then_a_first_request_scales_from_zero(stack):
    stack.ok(stack.serveform("up", "--yes"))
    assert _replica_resources(stack) == set()
    assert _replica_processes(stack) == []
    address = _scaler_address(stack)
    stack.wait_for(lambda: httpx.get(f"http://{address}/healthz", timeout=5).status_code == 200, 60, "the scaler's first ticks")

    started = time.monotonic()
    with _client(stack, timeout=90) as client:
        response = client.get("/health")  # held by the gateway until a replica serves
    assert response.status_code == 200, response.text
    assert response.headers["x-replica"] == "chat/0"
    held = time.monotonic() - started
    assert _replica_resources(stack) == {"chat-replica-0"}
    # The `up` that started the replica finishes (and is recorded) after the replica serves.
    stack.wait_for(lambda: _scaler_state(stack)["services"]["chat"]["applied"] == 1, 60, "the scale-up recorded")
    print(f"first request from zero answered in {held:.1f}s")
    _commit(stack, "the reviewed project, as deployed")


def test_load_above_the_target_scales_up_and_a_ci_up_keeps_it(stack):
    load = _locust(stack, users=4, rps_per_user=5)  # ~20 rps against a target of 2 per replica
    try:
        _serving(stack, {"chat/0", "chat/1"}, SCALE_UP_TIMEOUT_SECONDS, "two serving replicas under load")
        assert _replicas_output(stack)["chat"]["source"] == "scaler"
        _ci_up(stack)  # during the load
        assert _replica_resources(stack) == {"chat-replica-0", "chat-replica-1"}
        assert _replicas_output(stack)["chat"]["count"] == 2
        _serving(stack, {"chat/0", "chat/1"}, 60, "both replicas serving after CI's up")
    finally:
        _stop(load)
    _ci_up(stack)  # after it: the count is still the scaler's
    assert _replicas_output(stack)["chat"]["count"] == _scaler_state(stack)["services"]["chat"]["applied"] == 2
    assert _replica_resources(stack) == {"chat-replica-0", "chat-replica-1"}
    assert len(_replica_processes(stack)) == 2
    metrics = httpx.get(f"http://{_scaler_address(stack)}/metrics", timeout=5).text
    assert 'serveform_scaler_desired_replicas{service="chat"} 2' in metrics


def test_without_load_it_scales_back_to_its_minimum(stack):
    stack.wait_for(lambda: _replica_resources(stack) == set(), SCALE_DOWN_TIMEOUT_SECONDS, "scale down to 0")
    stack.wait_for(lambda: _replica_processes(stack) == [], 30, "replica processes to stop")
    stack.wait_for(lambda: _scaler_state(stack)["services"]["chat"]["applied"] == 0, 60, "the scale-down recorded")
    assert _scaler_state(stack)["services"]["chat"]["desired"] == 0
    assert _replicas_output(stack)["chat"]["count"] == 0
    assert _git(stack, "status", "--porcelain") == ""  # the scaler wrote nothing into the project


def test_after_idling_a_first_request_succeeds(stack):
    with _client(stack, timeout=90) as client:
        response = client.get("/health")
    assert response.status_code == 200 and response.headers["x-replica"] == "chat/0"


def test_the_scalers_updates_never_apply_working_tree_edits(stack):
    service_file = stack.root / "chat.dstack.yml"
    service_file.write_text(service_file.read_text().replace("MODEL_NAME=chat-small", "MODEL_NAME=chat-edited"))
    load = _locust(stack, users=4, rps_per_user=5)
    try:
        _serving(stack, {"chat/0", "chat/1"}, SCALE_UP_TIMEOUT_SECONDS, "two serving replicas under load")
        with _client(stack) as client:
            models = {client.get("/").text.strip() for _ in range(20)}
    finally:
        _stop(load)
    # Both replicas, the one the scaler added included, run the deployed file's environment.
    assert models == {"chat server chat/0 serving chat-small", "chat server chat/1 serving chat-small"}, models
    assert _replicas_output(stack)["chat"]["source"] == "scaler"
    _git(stack, "checkout", "--", "chat.dstack.yml")


def test_serveform_scale_holds_until_the_scalers_next_decision_and_a_narrowed_range_clamps(stack):
    service_file = stack.root / "chat.dstack.yml"
    service_file.write_text(service_file.read_text().replace("replicas: 0..2", "replicas: 0..3"))
    _commit(stack, "chat: up to 3 replicas")
    stack.ok(stack.serveform("up", "--yes"))

    assert "chat runs 3 replica(s)" in stack.ok(stack.serveform("scale", "chat", "3")).stdout
    assert _replica_resources(stack) == {"chat-replica-0", "chat-replica-1", "chat-replica-2"}
    assert _replicas_output(stack)["chat"]["source"] == "manual"
    _ci_up(stack)  # a reviewed `up` keeps the person's count
    assert _replicas_output(stack)["chat"]["count"] == 3
    # The scaler takes it as its new starting point rather than undoing it.
    stack.wait_for(lambda: _scaler_state(stack)["services"]["chat"]["desired"] == 3, 90, "the scaler to follow 3")
    assert _replica_resources(stack) == {"chat-replica-0", "chat-replica-1", "chat-replica-2"}

    service_file.write_text(service_file.read_text().replace("replicas: 0..3", "replicas: 0..2"))
    _commit(stack, "chat: back to 2 replicas at most")
    stack.ok(stack.serveform("up", "--yes"))
    clamped = _replicas_output(stack)["chat"]
    assert (clamped["count"], clamped["source"]) == (2, "clamped")
    assert _replica_resources(stack) == {"chat-replica-0", "chat-replica-1"}
    # Without load, the scaler's next decision takes it down.
    stack.wait_for(lambda: _replica_resources(stack) == set(), SCALE_DOWN_TIMEOUT_SECONDS, "the scaler to scale down to 0")
    assert _replicas_output(stack)["chat"]["source"] == "scaler"


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                out.append(int(entry.name))
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_a_scaler_killed_mid_update_converges_after_restart(stack):
    from serveform.scaler.deploy import spawn_local

    scaler_pid = int(stack.daemons()["scaler-process"]["pid"])
    assert "serveform.scaler" in _cmdline(scaler_pid)
    # From 1 replica, so that the first update under load is the one to 2.
    with _client(stack, timeout=90) as client:
        assert client.get("/health").status_code == 200
    stack.wait_for(lambda: _scaler_state(stack)["services"]["chat"]["applied"] == 1, 60, "one replica recorded")
    load = _locust(stack, users=4, rps_per_user=5)
    try:
        # Wait for the scale-up's `up` (not the `config set` before it): a pulumi child of the scaler.
        deadline = time.monotonic() + SCALE_UP_TIMEOUT_SECONDS
        while not any(" up " in _cmdline(c) and "pulumi" in _cmdline(c) for c in _children(scaler_pid)):
            assert time.monotonic() < deadline, "the scaler never started an update"
            time.sleep(0.02)
        time.sleep(1.0)  # into the update: the stack is locked, the new replica is being created
        os.killpg(os.getpgid(scaler_pid), signal.SIGKILL)  # the scaler and the `up` it runs
    finally:
        _stop(load)
    assert _scaler_state(stack)["services"]["chat"]["desired"] == 2

    # Started again (as its unit or the stack would) on the same state file.
    state_dir = stack.state_dir / "scaler"
    restarted = spawn_local(
        stack.stack,
        stack.root,
        gateway_state_dir=stack.state_dir / "gateway",
        state_path=state_dir / "scaler-state.json",
        listen="127.0.0.1:0",
        log_path=state_dir / "restarted.log",
        env=stack.env,
    )
    stack.extra_processes.append(restarted)
    stack.wait_for(
        lambda: _scaler_state(stack)["services"]["chat"].get("applied") == 2,
        SCALE_UP_TIMEOUT_SECONDS,
        "the restarted scaler to apply the decision it resumed",
    )
    assert _replica_resources(stack) == {"chat-replica-0", "chat-replica-1"}
    # Exactly one process per replica: the killed update left no duplicate behind.
    stack.wait_for(lambda: len(_replica_processes(stack)) == 2, 60, "one process per replica")
    _serving(stack, {"chat/0", "chat/1"}, 60, "both replicas serving")
    # And it keeps scaling: back to 0 without load.
    stack.wait_for(lambda: _replica_resources(stack) == set(), SCALE_DOWN_TIMEOUT_SECONDS, "scale down to 0 after restart")
    stack.wait_for(lambda: _replica_processes(stack) == [], 30, "replica processes to stop")
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(120) == 0
    log = (state_dir / "restarted.log").read_text()
    assert "resuming decisions not yet applied: chat=2" in log
    for line in log.splitlines():
        if " DEBUG " not in line:
            print(line)
