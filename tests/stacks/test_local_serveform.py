"""The local stack through `serveform preview|up|refresh|destroy` (the Automation API), for real.

One project for the whole module; the tests run in order, each building on the stack the
previous one left: preview → up and serve → secrets → no-change up (the volume's data stays) →
heal a killed replica → heal a killed gateway → scale through the service file → a bad service
file changes nothing → destroy leaves nothing behind. The service mounts a network volume.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(600)

SERVING_TIMEOUT_SECONDS = 60


def _summary(output: str) -> dict[str, int]:
    """The `{"create": n, "same": m, ...}` line `serveform up|destroy` prints last."""
    line = [l for l in output.splitlines() if l.startswith("serveform ")][-1]
    return json.loads(line[line.index("{") :])


VOLUME = "chat-data"


def test_preview_shows_the_planned_resources_and_starts_nothing(local_project):
    local_project.write_service(replicas=2, volume=VOLUME)
    result = local_project.ok(local_project.serveform("preview"))
    names = ("gateway-process", "gateway-token", "chat-replica-0", "chat-replica-1", "chat-route", f"volume-{VOLUME}-directory")
    for name in names:
        assert name in result.stdout, result.stdout
    assert "chat-replica-2" not in result.stdout
    assert not local_project.state_dir.exists()
    assert local_project.processes_mentioning(str(local_project.root)) == []


def test_up_serves_through_the_gateway_with_auth_and_tls(local_project):
    up = local_project.ok(local_project.serveform("up", "--yes"))
    assert local_project.secret not in up.stdout + up.stderr  # secrets are never printed
    endpoints = local_project.endpoints()
    ca_cert, token = endpoints["gateway"]["ca_cert"], endpoints["token"]
    assert token not in up.stdout + up.stderr
    assert endpoints["gateway"]["address"] == f"127.0.0.1:{local_project.https_port}"
    assert local_project.holds_port(local_project.https_port) and local_project.holds_port(local_project.http_port)
    assert Path(ca_cert).is_file() and token
    (chat,) = endpoints["services"]
    assert chat["url"] == f"https://chat.localhost:{local_project.https_port}" and chat["model"] == "chat-small"

    with local_project.client("chat.localhost", token=token, ca_cert=ca_cert) as client:
        local_project.wait_for(lambda: client.get("/health").status_code == 200, SERVING_TIMEOUT_SECONDS, "chat to serve")
        reply = client.post("/v1/chat/completions", json={"model": "chat-small", "messages": [{"role": "user", "content": "hi there"}]})
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"] == "Echo: hi there"
        # Each replica serves once the gateway's probe has passed on it.
        local_project.wait_for(
            lambda: local_project.serving_replicas(client, 20) == {"chat/0", "chat/1"}, SERVING_TIMEOUT_SECONDS, "both replicas to serve"
        )
    with local_project.client("chat.localhost", token=None, ca_cert=ca_cert) as anonymous:
        assert anonymous.get("/health").status_code == 401
    with local_project.client("chat.localhost", token="not-the-token", ca_cert=ca_cert) as wrong:
        assert wrong.get("/health").status_code == 401
    with pytest.raises(httpx.ConnectError):  # the internal CA is not trusted by default
        httpx.get(f"https://127.0.0.1:{local_project.https_port}/", timeout=5)

    openai = local_project.openai_client(endpoints)
    completion = openai.chat.completions.create(model="chat-small", messages=[{"role": "user", "content": "hello world"}])
    assert completion.choices[0].message.content == "Echo: hello world"
    stream = openai.chat.completions.create(model="chat-small", messages=[{"role": "user", "content": "one two three"}], stream=True)
    pieces = [chunk.choices[0].delta.content for chunk in stream if chunk.choices and chunk.choices[0].delta.content]
    assert "".join(pieces) == "Echo: one two three" and len(pieces) == 4


def test_secrets_stay_out_of_the_state_and_of_files_others_can_read(local_project):
    token = local_project.endpoints()["token"]
    exported = local_project.ok(local_project.pulumi("stack", "export")).stdout
    assert local_project.secret not in exported and token not in exported
    for replica in local_project.replicas().values():
        environ = Path(f"/proc/{replica['pid']}/environ").read_bytes().split(b"\0")
        assert f"CHAT_API_SECRET={local_project.secret}".encode() in environ  # the replica has it
    for path in local_project.state_dir.rglob("*"):
        if path.is_file() and not path.is_socket():
            text = path.read_bytes()
            if local_project.secret.encode() in text or token.encode() in text:
                assert path.stat().st_mode & 0o077 == 0, f"{path} holds a secret and others can read it"


def test_a_second_up_changes_nothing_and_keeps_the_volumes_data(local_project):
    volume = local_project.state_dir / "volumes" / VOLUME
    for replica in local_project.replicas().values():
        environ = Path(f"/proc/{replica['pid']}/environ").read_bytes().split(b"\0")
        assert f"SERVEFORM_VOLUME_DATA={volume}".encode() in environ  # where /data is, locally
    (volume / "kept.txt").write_text("data")
    before = local_project.replicas()
    summary = _summary(local_project.ok(local_project.serveform("up", "--yes")).stdout)
    # "read": the program reads its last deployment (replica counts) back from the stack.
    assert set(summary) == {"same", "read"}, summary
    assert local_project.replicas() == before  # same processes, same ports
    assert (volume / "kept.txt").read_text() == "data"


def test_refresh_notices_a_killed_replica_and_up_heals_it(local_project, tmp_path):
    replicas = local_project.replicas()
    victim, survivor = replicas["chat-replica-0"], replicas["chat-replica-1"]
    os.killpg(victim["pid"], signal.SIGKILL)
    local_project.wait_for(lambda: not local_project.holds_port(victim["port"]), 10, "the replica to die")

    local_project.ok(local_project.serveform("refresh", "--yes"))
    assert set(local_project.replicas()) == {"chat-replica-1"}
    local_project.ok(local_project.serveform("up", "--yes"))
    healed = local_project.replicas()
    assert set(healed) == {"chat-replica-0", "chat-replica-1"}
    assert healed["chat-replica-0"]["pid"] != victim["pid"]
    assert healed["chat-replica-1"]["pid"] == survivor["pid"]  # the other replica was left alone
    endpoints = local_project.endpoints()
    with local_project.client("chat.localhost", token=endpoints["token"], ca_cert=endpoints["gateway"]["ca_cert"]) as client:
        local_project.wait_for(
            lambda: local_project.serving_replicas(client, 20) == {"chat/0", "chat/1"}, SERVING_TIMEOUT_SECONDS, "both replicas to serve"
        )


def test_refresh_and_up_heal_a_killed_gateway_with_its_routes(local_project):
    gateway = local_project.daemons()["gateway-process"]
    os.killpg(gateway["pid"], signal.SIGKILL)
    local_project.wait_for(lambda: not local_project.holds_port(local_project.https_port), 15, "the gateway to die")
    local_project.ok(local_project.serveform("refresh", "--yes"))
    assert "gateway-process" not in local_project.daemons()
    local_project.ok(local_project.serveform("up", "--yes"))
    assert local_project.daemons()["gateway-process"]["pid"] != gateway["pid"]
    endpoints = local_project.endpoints()
    with local_project.client("chat.localhost", token=endpoints["token"], ca_cert=endpoints["gateway"]["ca_cert"]) as client:
        local_project.wait_for(
            lambda: local_project.serving_replicas(client, 20) == {"chat/0", "chat/1"}, SERVING_TIMEOUT_SECONDS, "both replicas behind the new gateway"
        )


def test_changing_replicas_in_the_service_file_changes_the_serving_replicas(local_project):
    before = local_project.replicas()
    local_project.write_service(replicas=3, volume=VOLUME)
    local_project.ok(local_project.serveform("up", "--yes"))
    after = local_project.replicas()
    assert set(after) == {"chat-replica-0", "chat-replica-1", "chat-replica-2"}
    assert all(after[name]["pid"] == before[name]["pid"] for name in before)  # scaling restarts nobody
    endpoints = local_project.endpoints()
    with local_project.client("chat.localhost", token=endpoints["token"], ca_cert=endpoints["gateway"]["ca_cert"]) as client:
        local_project.wait_for(
            lambda: local_project.serving_replicas(client, 30) == {"chat/0", "chat/1", "chat/2"},
            SERVING_TIMEOUT_SECONDS,
            "three replicas to serve",
        )
        local_project.write_service(replicas=1, volume=VOLUME)
        local_project.ok(local_project.serveform("up", "--yes"))
        assert set(local_project.replicas()) == {"chat-replica-0"}
        assert local_project.serving_replicas(client, 20) == {"chat/0"}
    for name in ("chat-replica-1", "chat-replica-2"):
        assert not local_project.holds_port(after[name]["port"])


def test_a_bad_service_file_stops_preview_and_up_before_any_change(local_project):
    before = local_project.snapshot()
    local_project.write_service(text="type: service\nname: chat\ncommands: [python x.py]\nport: 8000\nreplicas: lots\n")
    for command in ("preview", "up"):
        result = local_project.serveform(command, *(["--yes"] if command == "up" else []))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "chat.dstack.yml:5" in result.stderr and "replicas" in result.stderr, result.stderr
    assert local_project.snapshot() == before
    local_project.write_service(replicas=1, volume=VOLUME)


def test_destroy_leaves_no_process_port_or_file_behind(local_project):
    replicas = local_project.replicas()
    local_project.ok(local_project.serveform("destroy", "--yes"))
    assert local_project.processes_mentioning(str(local_project.root)) == []
    for port in (local_project.http_port, local_project.https_port, *(r["port"] for r in replicas.values())):
        assert not local_project.holds_port(port), port
    assert not local_project.state_dir.exists()
    leftovers = [p for p in (local_project.root / ".serveform").rglob("*")] if (local_project.root / ".serveform").exists() else []
    assert leftovers == []
    assert local_project.resources() == []
