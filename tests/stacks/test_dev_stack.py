"""The repository's `dev` stack as `make up` deploys it (in a copy, on free ports), for real.

`stacks/Pulumi.dev.yaml` with the example chat service: up, every endpoint answers as
`serveform endpoints` says (curl-style with and without the token, the openai client plain and
streamed, the TGI-format example if the stack lists it), its scaler runs, and down leaves nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(600)

SERVING_TIMEOUT_SECONDS = 60


@pytest.fixture(scope="module")
def dev(local_project_factory):
    return local_project_factory(dev=True)


def test_the_dev_stack_comes_up_serves_and_goes(dev):
    up = dev.ok(dev.serveform("up", "--yes"))
    endpoints = dev.endpoints()
    token, ca_cert = endpoints["token"], endpoints["gateway"]["ca_cert"]
    assert token not in up.stdout
    assert endpoints["domain"] == "localhost" and Path(ca_cert).is_file()
    services = {s["name"]: s for s in endpoints["services"]}
    assert "chat" in services and services["chat"]["model"] == "chat-small"

    for name, service in services.items():
        host = service["url"].split("//", 1)[1].split(":", 1)[0]
        with dev.client(host, token=token, ca_cert=ca_cert) as client:
            dev.wait_for(lambda: client.get("/health").status_code == 200, SERVING_TIMEOUT_SECONDS, f"{name} to serve")
        with dev.client(host, token=None, ca_cert=ca_cert) as anonymous:
            assert anonymous.get("/health").status_code == (401 if service["auth"] else 200)

    openai = dev.openai_client(endpoints)
    reply = openai.chat.completions.create(model="chat-small", messages=[{"role": "user", "content": "dev stack"}])
    assert reply.choices[0].message.content == "Echo: dev stack"
    stream = openai.chat.completions.create(model="chat-small", messages=[{"role": "user", "content": "a b"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "Echo: a b"

    outputs = json.loads(dev.ok(dev.pulumi("stack", "output", "--json")).stdout)
    ranges = [s["replicas"] for s in outputs["services"] if s["replicas"]["min"] < s["replicas"]["max"]]
    assert ("scaler" in outputs) == bool(ranges)  # a service with a replica range gets the scaler
    if ranges:
        assert httpx.get(f"http://{outputs['scaler']['address']}/healthz", timeout=5).status_code == 200

    dev.ok(dev.serveform("destroy", "--yes"))
    assert dev.processes_mentioning(str(dev.root)) == []
    assert not (dev.root / ".serveform").exists()
