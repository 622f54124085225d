"""The local stack with plain `pulumi` commands in the project directory, as CI users run them.

The CLI starts the project's language host, which runs `__main__.py`; the dynamic providers run
in the project's Python. The tests run in order on one project: preview → up and serve → a
no-change up (`--expect-no-changes`) → heal → scale through the scaler's config key → a bad
service file changes nothing → destroy leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import signal

import httpx

import pytest

pytestmark = pytest.mark.timeout(600)

SERVING_TIMEOUT_SECONDS = 60


@pytest.fixture(scope="module")
def project(local_project):
    local_project.ok(local_project.pulumi("stack", "init"))  # the stack name comes from --stack
    local_project.write_service(replicas="2..3")  # a range: the scaler's key may move it
    return local_project


def test_pulumi_preview_lists_the_planned_resources(project):
    result = project.ok(project.pulumi("preview"))
    for name in ("gateway-process", "gateway-token", "chat-replica-0", "chat-replica-1", "chat-route", "scaler-process"):
        assert name in result.stdout, result.stdout
    assert "to create" in result.stdout
    assert not project.state_dir.exists() and project.processes_mentioning(str(project.root)) == []


def test_pulumi_up_serves_and_a_second_up_changes_nothing(project):
    project.ok(project.pulumi("up", "--yes"))
    endpoints = project.endpoints()
    with project.client("chat.localhost", token=endpoints["token"], ca_cert=endpoints["gateway"]["ca_cert"]) as client:
        project.wait_for(lambda: client.get("/health").status_code == 200, SERVING_TIMEOUT_SECONDS, "chat to serve")
        # Each replica serves once the gateway's probe has passed on it.
        project.wait_for(
            lambda: project.serving_replicas(client, 20) == {"chat/0", "chat/1"}, SERVING_TIMEOUT_SECONDS, "both replicas to serve"
        )
    with project.client("chat.localhost", token=None, ca_cert=endpoints["gateway"]["ca_cert"]) as anonymous:
        assert anonymous.get("/health").status_code == 401
    # The service has a replica range, so the stack runs its scaler in the background.
    scaler = json.loads(project.ok(project.pulumi("stack", "output", "scaler", "--json")).stdout)
    assert httpx.get(f"http://{scaler['address']}/healthz", timeout=5).status_code == 200
    reply = project.openai_client(endpoints).chat.completions.create(
        model="chat-small", messages=[{"role": "user", "content": "plain pulumi"}]
    )
    assert reply.choices[0].message.content == "Echo: plain pulumi"
    project.ok(project.pulumi("up", "--yes", "--expect-no-changes"))


def test_pulumi_refresh_and_up_heal_a_killed_replica(project):
    victim = project.replicas()["chat-replica-1"]
    os.killpg(victim["pid"], signal.SIGKILL)
    project.wait_for(lambda: not project.holds_port(victim["port"]), 10, "the replica to die")
    project.ok(project.pulumi("refresh", "--yes"))
    assert "chat-replica-1" not in project.replicas()
    project.ok(project.pulumi("up", "--yes"))
    assert project.replicas()["chat-replica-1"]["pid"] != victim["pid"]
    project.ok(project.pulumi("up", "--yes", "--expect-no-changes"))


def test_serveform_scale_adds_one_replica_and_plain_pulumi_up_keeps_it(project):
    before = project.replicas()
    stack_file = (project.root / "stacks" / f"Pulumi.{project.stack}.yaml").read_text()
    scaled = project.ok(project.serveform("scale", "chat", "3"))
    assert "chat runs 3 replica(s)" in scaled.stdout
    after = project.replicas()
    assert set(after) == {"chat-replica-0", "chat-replica-1", "chat-replica-2"}
    assert all(after[name]["pid"] == before[name]["pid"] for name in before)
    # The count is in the stack, not in the reviewed file, and a plain `pulumi up` keeps it.
    assert (project.root / "stacks" / f"Pulumi.{project.stack}.yaml").read_text() == stack_file
    previewed = project.ok(project.pulumi("preview", "--diff"))
    assert "chat: 3 replica(s), set by `serveform scale` at" in previewed.stdout + previewed.stderr, previewed.stdout
    project.ok(project.pulumi("up", "--yes", "--expect-no-changes"))
    assert set(project.replicas()) == set(after)
    endpoints = project.endpoints()
    assert endpoints["services"][0]["name"] == "chat"
    with project.client("chat.localhost", token=endpoints["token"], ca_cert=endpoints["gateway"]["ca_cert"]) as client:
        project.wait_for(
            lambda: project.serving_replicas(client, 30) == {"chat/0", "chat/1", "chat/2"}, SERVING_TIMEOUT_SECONDS, "three replicas"
        )


def test_a_new_gateway_port_replaces_the_gateway_and_keeps_the_routes(project):
    from serveform.components.local._process import free_port

    old_port, old_pid = project.https_port, project.daemons()["gateway-process"]["pid"]
    project.https_port = free_port()
    project.ok(project.pulumi("config", "set", "--path", "serveform:gateway.https_port", str(project.https_port)))
    project.ok(project.pulumi("up", "--yes"))
    assert project.daemons()["gateway-process"]["pid"] != old_pid
    assert not project.holds_port(old_port)
    endpoints = project.endpoints()
    assert endpoints["gateway"]["address"] == f"127.0.0.1:{project.https_port}"
    with project.client("chat.localhost", token=endpoints["token"], ca_cert=endpoints["gateway"]["ca_cert"]) as client:
        project.wait_for(
            lambda: project.serving_replicas(client, 30) == {"chat/0", "chat/1", "chat/2"}, SERVING_TIMEOUT_SECONDS, "the routes on the new port"
        )


def test_a_bad_service_file_fails_pulumi_preview_and_up_without_changes(project):
    before = project.snapshot()
    project.write_service(text="type: service\nname: chat\ncommands: [python x.py]\nport: 8000\nreplicaz: 2\n")
    for args in (("preview",), ("up", "--yes")):
        result = project.pulumi(*args)
        assert result.returncode != 0
        assert "chat.dstack.yml:5" in result.stdout + result.stderr and "replicaz" in result.stdout + result.stderr
    assert project.snapshot() == before
    project.write_service(replicas="2..3")


def test_pulumi_destroy_leaves_nothing_behind(project):
    replicas = project.replicas()
    project.ok(project.pulumi("destroy", "--yes"))
    assert project.processes_mentioning(str(project.root)) == []
    for port in (project.http_port, project.https_port, *(r["port"] for r in replicas.values())):
        assert not project.holds_port(port), port
    assert not (project.root / ".serveform").exists()
