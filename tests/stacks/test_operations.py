"""An operator's commands on a real local stack: `up`'s progress, `status`, `logs`, restarts, `destroy`.

One project for the module, tests in order: up on a terminal (a pty) shows the progress line and
piped shows only the summary → status → logs → a replica killed behind Pulumi's back comes back
by itself and status counts it (logs --follow sees it) → the gateway's status endpoint (the path
`status` takes for VM and pod gateways) → destroy refuses without a terminal, lists the volume,
takes "no" for an answer, then goes with --yes.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.timeout(600)

VOLUME = "ops-data"
RESTART_TIMEOUT_SECONDS = 30
"""A killed replica is started again after the supervisor's first backoff (1 s) and serves
once its server listens and the gateway's probe (1 s interval here) passes."""


def _on_pty(project, *args: str, answer: bytes | None = None, timeout: float = 300) -> tuple[int, str]:
    """Run `serveform ARGS` with stdin and stdout on a pseudo-terminal; its exit status and output."""
    argv = [sys.executable, "-m", "serveform.cli", args[0], "--stack", project.stack, "--project-dir", str(project.root), *args[1:]]
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, cwd=project.root, env=project.env, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    answered = False
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
                if answer is not None and not answered and b"Type 'yes'" in b"".join(chunks):
                    os.write(master, answer)
                    answered = True
            elif proc.poll() is not None:
                break
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), b"".join(chunks).decode("utf-8", "replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()


def _status(project) -> dict:
    return json.loads(project.ok(project.serveform("status", "--json")).stdout)


def _chat(status: dict) -> dict:
    (chat,) = [s for s in status["services"] if s["name"] == "chat"]
    return chat


def test_up_on_a_terminal_shows_progress_and_piped_only_the_summary(local_project):
    local_project.write_service(replicas="2..3", volume=VOLUME)
    code, screen = _on_pty(local_project, "up", "--yes")
    assert code == 0, screen
    # The line is redrawn in place (carriage return + erase line) as resources finish.
    assert "\r\x1b[K" in screen
    frames = [f for f in screen.replace("\r\n", "\n").split("\r\x1b[K") if "resources done" in f]
    # ...and names what the update waits on: the replicas being started.
    assert any("chat-replica-" in f.partition(" · waiting on ")[2] for f in frames), "\n".join(frames)
    done = [tuple(map(int, f.split("] ", 1)[1].split(" ", 1)[0].split("/"))) for f in frames]
    assert done[-1][0] == done[-1][1] >= 9, done[-1]  # every resource the update touched is done
    assert "serveform up: succeeded:" in screen

    # Piped (not a terminal): nothing but the summary line.
    piped = local_project.ok(local_project.serveform("up", "--yes"))
    assert piped.stdout.strip().splitlines() == [line for line in piped.stdout.strip().splitlines() if line.startswith("serveform up: ")]
    assert "resources done" not in piped.stdout + piped.stderr and "\x1b" not in piped.stdout


def test_status_shows_replicas_readiness_load_and_the_last_update(local_project):
    endpoints = local_project.endpoints()
    with local_project.client("chat.localhost", token=endpoints["token"], ca_cert=endpoints["gateway"]["ca_cert"]) as client:
        local_project.wait_for(lambda: local_project.serving_replicas(client, 20) == {"chat/0", "chat/1"}, 60, "both replicas")
    status = _status(local_project)
    assert status["version"] == 1 and status["stack"] == local_project.stack and status["backend"] == "local"
    assert status["gateway"] == {"address": f"127.0.0.1:{local_project.https_port}", "reachable": True, "error": None}
    assert status["scaler"]["reachable"] and status["scaler"]["address"].startswith("127.0.0.1:")
    assert status["last_update"]["kind"] == "update" and status["last_update"]["result"] == "succeeded"
    assert status["last_update"]["ended_at"].endswith("Z")
    chat = _chat(status)
    assert chat["url"] == f"https://chat.localhost:{local_project.https_port}" and chat["model"] == "chat-small"
    assert chat["replicas"] == {"min": 2, "max": 3, "desired": 2, "published": 2, "ready": 2, "restarts": 0}
    assert chat["rps"] is not None and chat["rps"] >= 0 and chat["window_seconds"] == 300
    assert [d["replica"] for d in chat["replica_details"]] == [0, 1]
    assert chat["scaler"] is None  # this scaler has decided nothing yet (its target is far away)

    # The scaler's last decision, as its state file keeps it (written as the daemon writes it).
    from serveform.scaler.state import ScalerState, ServiceRecord, StateStore

    store = StateStore(local_project.state_dir / "scaler" / "scaler-state.json")
    reason = "2.0 rps over 300s, target 1000 per replica: at minimum"
    store.save(ScalerState({"chat": ServiceRecord(desired=2, applied=2, last_scaled_at=1796000000.0, reason=reason)}))
    decision = _chat(_status(local_project))["scaler"]
    assert decision == {"desired": 2, "applied": 2, "reason": reason, "last_scaled_at": "2026-11-30T00:53:20Z"}
    table = local_project.ok(local_project.serveform("status")).stdout
    assert "SERVICE" in table and "READY" in table and "RESTARTS" in table
    row = next(line for line in table.splitlines() if line.startswith("chat "))
    assert row.split()[3:8] == ["2", "[2..3]", "2", "2", "0"], row
    assert row.endswith(f"2 ({reason})"), row
    assert f"gateway: 127.0.0.1:{local_project.https_port}" in table


def test_logs_of_replicas_gateway_and_scaler(local_project):
    one = local_project.ok(local_project.serveform("logs", "chat", "--replica", "1")).stdout
    assert "chat server chat/1" in one and "chat/0" not in one
    both = local_project.ok(local_project.serveform("logs", "chat")).stdout
    assert "[chat-0] " in both and "[chat-1] " in both
    gateway = local_project.ok(local_project.serveform("logs", "gateway")).stdout
    assert "gateway up" in gateway
    scaler = local_project.ok(local_project.serveform("logs", "scaler")).stdout
    assert "serveform.scaler" in scaler
    missing = local_project.serveform("logs", "nosuch")
    assert missing.returncode == 2 and "services: chat" in missing.stderr
    out_of_range = local_project.serveform("logs", "chat", "--replica", "7")
    assert out_of_range.returncode == 2 and "--replica 0..1" in out_of_range.stderr


def test_a_killed_replica_comes_back_by_itself_and_status_counts_it(local_project):
    from serveform.components.local._replica import read_restarts

    log = local_project.state_dir / "replicas" / "chat-0.log"
    child = read_restarts(log)["child_pid"]
    follow = subprocess.Popen(
        [sys.executable, "-m", "serveform.cli", "logs", "--stack", local_project.stack, "--project-dir", str(local_project.root),
         "chat", "--replica", "0", "--follow", "--lines", "1"],
        cwd=local_project.root, env=local_project.env, stdout=subprocess.PIPE, text=True,
    )
    try:
        first = follow.stdout.readline()  # the follower has shown the last line: it is at the file's end
        assert first.strip(), first
        os.kill(child, signal.SIGKILL)  # the server crashes; no refresh, no up
        endpoints = local_project.endpoints()
        with local_project.client("chat.localhost", token=endpoints["token"], ca_cert=endpoints["gateway"]["ca_cert"]) as client:
            # Meanwhile the gateway routes around it: every request is answered, by chat/1 while
            # chat/0 is down, until chat/0 is back on its address.
            deadline = time.monotonic() + RESTART_TIMEOUT_SECONDS
            answered = []
            while time.monotonic() < deadline:
                response = client.get("/health")
                assert response.status_code == 200, (response.status_code, response.text)
                answered.append(response.headers["x-replica"])
                if (read_restarts(log) or {}).get("restarts") == 1 and "chat/0" in answered[-20:]:
                    break
            else:
                raise AssertionError(f"chat/0 did not come back within {RESTART_TIMEOUT_SECONDS}s")
        chat = _chat(_status(local_project))
        assert chat["replicas"]["restarts"] == 1 and chat["replicas"]["ready"] == 2
        assert chat["replica_details"][0] == {"replica": 0, "restarts": 1, "last_exit": -9, "running": True}
        assert set(local_project.replicas()) == {"chat-replica-0", "chat-replica-1"}  # same resources: nothing to heal
    finally:
        follow.send_signal(signal.SIGINT)
        followed, _ = follow.communicate(timeout=30)
    assert "exited with signal 9" in followed and "restart 1: started again" in followed, followed
    assert followed.split("exited with signal 9")[0].count("\n") <= 1  # --lines 1: one old line, then only new ones


def test_the_gateway_status_endpoint_is_what_remote_status_reads(local_project):
    from serveform.stacks.status import fetch_gateway_status

    endpoints = local_project.endpoints()
    address, ca_cert = endpoints["gateway"]["address"], endpoints["gateway"]["ca_cert"]
    document = fetch_gateway_status(address, "gateway.localhost", endpoints["token"], ca_cert=ca_cert)
    assert len(document["services"]["chat"]["ready"]) == 2 and len(document["services"]["chat"]["published"]) == 2
    with pytest.raises(ValueError, match="401"):
        fetch_gateway_status(address, "gateway.localhost", "not-the-token", ca_cert=ca_cert)


def test_destroy_refuses_without_a_terminal_lists_the_volume_and_asks(local_project):
    before = local_project.replicas()
    refused = local_project.serveform("destroy")  # stdin is not a terminal, no --yes
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "stdin is not a terminal" in refused.stderr and "--yes" in refused.stderr
    assert f"volume-{VOLUME}" in refused.stdout and "DELETED" in refused.stdout
    assert str(local_project.state_dir / "volumes" / VOLUME) in refused.stdout
    code, screen = _on_pty(local_project, "destroy", answer=b"no\n")
    assert code == 1 and "cancelled" in screen, screen
    assert local_project.replicas() == before  # nothing was touched

    destroyed = local_project.ok(local_project.serveform("destroy", "--yes"))
    assert f"volume-{VOLUME}" in destroyed.stderr  # the list is printed even without a question
    assert local_project.resources() == []
    assert local_project.processes_mentioning(str(local_project.root)) == []
    status = _status(local_project)
    assert status["deployed"] is False and status["services"] == []
