"""`gateway.<domain>` with the real `openai` client: format openai and format tgi models."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from serveform.translator.plan import ModelPlan, ProbePlan

from gateway_helpers import TOKENS, LoopbackTransport, json_lines  # type: ignore[import-not-found]

FAST_PROBE = (ProbePlan(url="/health", interval_seconds=1, timeout_seconds=2),)
# The seed's Llama-2 chat template (dstack's `model.chat_template` example).
LLAMA_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '<s>[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' </s>' }}{% endif %}{% endfor %}"
)


@pytest.fixture
def stack(gateway_factory, replicas):
    from gateway_helpers import make_plan  # type: ignore[import-not-found]

    plans = [
        make_plan("chat", model=ModelPlan(name="chat-small"), probes=FAST_PROBE),
        make_plan("llama", model=ModelPlan(name="llama-tgi", format="tgi", chat_template=LLAMA_TEMPLATE, eos_token="</s>"), probes=FAST_PROBE),
        # A model under its own prefix, checked with the default probe (a one-token chat completion).
        make_plan("custom", model=ModelPlan(name="custom-model", prefix="/api/openai/v1")),
    ]
    gateway = gateway_factory(plans)
    chat = replicas("chat", model="chat-small")
    llama = replicas("llama", fmt="tgi", model="llama-tgi", eos="</s>")
    custom = replicas("custom", model="custom-model", prefix="/api/openai/v1")
    gateway.publish("chat", [chat])
    gateway.publish("llama", [llama])
    gateway.publish("custom", [custom])
    for name in ("chat", "llama", "custom"):
        gateway.wait_ready(name, 1)
    gateway.replicas = {"chat": chat, "llama": llama, "custom": custom}
    return gateway


def _client(gateway, token: str = TOKENS[0]) -> openai.OpenAI:
    http = httpx.Client(transport=LoopbackTransport(verify=gateway.ssl_context()), timeout=60)
    return openai.OpenAI(base_url=gateway.url("gateway", "/v1"), api_key=token, http_client=http, max_retries=0)


def test_default_probe_is_a_one_token_chat_completion(stack):
    # `custom` names no probe: like dstack, the gateway checks a format: openai model with a
    # one-token chat completion, sent straight to the replica.
    stats = stack.replicas["custom"].stats()
    assert stats["requests"].get("/api/openai/v1/chat/completions", 0) >= 1
    probe = json.loads(stats["last_body"])
    assert probe["model"] == "custom-model" and probe["max_tokens"] == 1 and probe["messages"][0]["role"] == "user"


def test_openai_client_plain_and_streaming(stack):
    client = _client(stack)
    assert sorted(m.id for m in client.models.list().data) == ["chat-small", "custom-model", "llama-tgi"]
    answer = client.chat.completions.create(model="chat-small", messages=[{"role": "user", "content": "hello gateway"}])
    assert answer.choices[0].message.content == "Echo: hello gateway"
    assert answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(
        model="chat-small", messages=[{"role": "user", "content": "one two three"}], stream=True, max_tokens=3
    )
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    assert pieces == ["Echo:", " one", " two"]
    completion = client.completions.create(model="custom-model", prompt="a b c")
    assert completion.choices[0].text == "Echo: a b c"


def test_openai_client_with_tgi_model(stack):
    client = _client(stack)
    answer = client.chat.completions.create(
        model="llama-tgi",
        messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me more"}],
        max_tokens=20,
    )
    # The TGI replica echoes the words of the last [INST] turn of the prompt that the chat
    # template rendered (system message folded in, as the template does); no EOS token shows.
    assert answer.choices[0].message.content == "Echo: <<SYS>> be brief <</SYS>> tell me more"
    assert answer.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="llama-tgi", messages=[{"role": "user", "content": "stream this"}], stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Echo: stream this"
    assert chunks[-1].choices[0].finish_reason == "stop"
    cut = client.chat.completions.create(model="llama-tgi", messages=[{"role": "user", "content": "a b c d e"}], max_tokens=2)
    assert cut.choices[0].finish_reason == "length"
    assert cut.choices[0].message.content == "Echo: a"
    # The template's own refusal becomes a 400 in OpenAI's shape.
    with pytest.raises(openai.BadRequestError, match="alternate"):
        client.chat.completions.create(model="llama-tgi", messages=[{"role": "assistant", "content": "x"}])
    text_completion = client.completions.create(model="llama-tgi", prompt="[INST] raw prompt [/INST]", max_tokens=5)
    assert text_completion.choices[0].text == "Echo: raw prompt"


def test_errors_in_openai_shape(stack):
    client = _client(stack)
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        _client(stack, token="wrong").models.list()
    with httpx.Client(transport=LoopbackTransport(verify=stack.ssl_context()), timeout=30) as http:
        url = stack.url("gateway", "/v1/chat/completions")
        for body in (b"{not json", b"[1, 2]", b'{"messages": []}'):
            response = http.post(url, content=body, headers={**stack.auth(), "Content-Type": "application/json"})
            assert response.status_code == 400, body
            assert set(response.json()["error"]) == {"message", "type", "param", "code"}
        assert http.get(stack.url("gateway", "/v2/elsewhere"), headers=stack.auth()).status_code == 404
        # The router keeps serving after bad requests.
        ok = http.post(url, json={"model": "chat-small", "messages": [{"role": "user", "content": "still up"}]}, headers=stack.auth())
        assert ok.json()["choices"][0]["message"]["content"] == "Echo: still up"


def test_unknown_fields_pass_through_and_cors(stack, replicas):
    with httpx.Client(transport=LoopbackTransport(verify=stack.ssl_context()), timeout=30) as http:
        url = stack.url("gateway", "/v1/chat/completions")
        body = {"model": "chat-small", "messages": [{"role": "user", "content": "x"}], "brand_new_param": {"nested": [1, "{$HOME}"]}}
        raw = json.dumps(body, separators=(",", ":")).encode()
        response = http.post(url, content=raw, headers={**stack.auth(), "Content-Type": "application/json", "X-Custom": "kept"})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == "*"
        # The replica got the body byte for byte, and the client's own headers, but not the token.
        stats = stack.replicas["chat"].stats()
        assert stats["last_body"] == raw.decode()
        assert stats["last_headers"]["X-Custom"] == "kept"
        assert "Authorization" not in stats["last_headers"]
        preflight = http.options(url, headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 204
        assert preflight.headers.get_list("access-control-allow-origin") == ["*"]
        assert "Authorization" in preflight.headers["access-control-allow-headers"]
        refused = http.get(stack.url("gateway", "/v1/models"), headers={"Origin": "https://app.example"})
        assert refused.status_code == 401 and refused.headers["access-control-allow-origin"] == "*"
        # Streams arrive as server-sent events, chunk by chunk.
        with http.stream("POST", url, json={**body, "stream": True}, headers=stack.auth()) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = json_lines("".join(stream.iter_text()))
        assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == "Echo: x"


def test_client_leaving_mid_stream_harms_nothing(stack):
    body = {"model": "chat-small", "messages": [{"role": "user", "content": " ".join(["w"] * 200)}], "stream": True}
    with httpx.Client(transport=LoopbackTransport(verify=stack.ssl_context()), timeout=30) as http:
        for model in ("chat-small", "llama-tgi"):
            with http.stream("POST", stack.url("gateway", "/v1/chat/completions"), json={**body, "model": model}, headers=stack.auth()) as stream:
                first = next(stream.iter_lines())
                assert first.startswith("data:")
            # closed after one event; the next request is served normally
            again = http.post(stack.url("gateway", "/v1/chat/completions"), json={**body, "model": model, "stream": False, "max_tokens": 2}, headers=stack.auth())
            assert again.status_code == 200
    assert "Traceback" not in stack.log()
