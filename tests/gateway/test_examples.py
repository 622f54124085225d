"""Every example service file, compiled by the translator, served through a real gateway."""

from __future__ import annotations

import os
import subprocess

import httpx
import openai
import pytest

from serveform.translator import CompileContext, compile_file

from gateway_helpers import ROOT, TOKENS, LoopbackTransport, free_port, wait_for  # type: ignore[import-not-found]


@pytest.mark.parametrize("example", ["chat.dstack.yml", "chat-tgi.dstack.yml"])
def test_example_through_the_gateway(example, gateway_factory, tmp_path):
    plan = compile_file(str(ROOT / "stacks" / "examples" / example), CompileContext()).plan
    gateway = gateway_factory([plan])
    # Run the replica as the local backend does: the plan's commands from the project root,
    # with the plan's env and the replica's own port in $PORT.
    port = free_port()
    env = {**os.environ, **{k: str(v.value) for k, v in plan.replica_group.env.items()}, "PORT": str(port), "HOST": "127.0.0.1"}
    log = open(tmp_path / "replica.log", "wb")  # noqa: SIM115
    replica = subprocess.Popen(["bash", "-c", " && ".join(plan.replica_group.commands)], cwd=ROOT, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        gateway.publish(plan.name, [type("R", (), {"address": f"127.0.0.1:{port}"})()])
        gateway.wait_ready(plan.name, 1)
        http = httpx.Client(transport=LoopbackTransport(verify=gateway.ssl_context()), timeout=60)
        client = openai.OpenAI(base_url=gateway.url("gateway", "/v1"), api_key=TOKENS[1], http_client=http, max_retries=0)
        model = plan.route.model.name
        assert [m.id for m in client.models.list().data] == [model]
        answer = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "from the example"}])
        assert answer.choices[0].message.content == "Echo: from the example"
        streamed = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "streamed"}], stream=True)
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "Echo: streamed"
        # The service's own route answers too.
        assert http.get(gateway.url(plan.route.subdomain, "/health"), headers=gateway.auth()).status_code == 200
    finally:
        os.killpg(replica.pid, 15)
        replica.wait(15)
        log.close()
