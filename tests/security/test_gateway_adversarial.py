"""Issue 16, the gateway's side: each test replays a finding against a real gateway (Caddy with the
project's module, the router, real replicas on loopback) or the settings that configure it, and
fails on the code before its fix."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr, ValidationError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gateway"))

from gateway_helpers import (  # noqa: E402  # type: ignore[import-not-found]
    CHAT_SERVER,
    ROOT,
    TOKENS,
    LoopbackTransport,
    Replica,
    ensure_caddy,
    free_port,
    make_plan,
    start_gateway,
    wait_for,
)
from serveform.gateway import GatewayConfigError, GatewaySettings  # noqa: E402
from serveform.gateway.routes import routes_from_plans  # noqa: E402
from serveform.stacks.settings import StackConfigError, StackSettings  # noqa: E402
from serveform.translator.plan import ModelPlan, ProbePlan  # noqa: E402

FAST_PROBE = (ProbePlan(url="/health", interval_seconds=1, timeout_seconds=2),)
MODULE = ROOT / "tools" / "caddy" / "serveform"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One gateway (a service and a model) with one replica behind both."""
    ensure_caddy()
    tmp = tmp_path_factory.mktemp("adversarial")
    port = free_port()
    log = open(tmp / "replica.log", "wb")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, str(CHAT_SERVER), "--host", "127.0.0.1", "--port", str(port), "--model", "chat-small"],
        env={**os.environ, "SERVEFORM_REPLICA_ID": "r"}, stdout=log, stderr=log, cwd=ROOT,
    )
    log.close()
    replica = Replica(port=port, ident="test/r", process=process)
    gateway = start_gateway(tmp / "gw", [make_plan("chat", model=ModelPlan(name="chat-small"), probes=FAST_PROBE)])
    try:
        wait_for(lambda: httpx.get(f"http://{replica.address}/health", timeout=1).status_code == 200 if process.poll() is None else False)
    except httpx.HTTPError:
        pass
    gateway.publish("chat", [replica])
    gateway.wait_ready("chat", 1)
    yield gateway
    assert gateway.stop() == 0, gateway.log()
    replica.stop()


def _get(gateway, host: str, headers: list[tuple[str, str]], path: str = "/ping", **kwargs) -> httpx.Response:
    # A list of pairs, so that a header can be sent twice.
    with gateway.client(**kwargs) as client:
        if host == "gateway":
            return client.get(gateway.url("gateway", "/v1/models"), headers=headers)
        return client.get(gateway.url(host, path), headers=headers)


def test_the_internal_listener_serves_only_the_router(stack):
    """Caddy's loopback listener for the router served every service to any local user."""
    internal = stack.status["internal_url"]
    with httpx.Client(timeout=10) as client:
        bare = client.get(f"{internal}/ping", headers={"Host": "chat.localhost"})
        guessed = client.get(f"{internal}/ping", headers={"Host": "chat.localhost", "X-Serveform-Gateway-Secret": "x" * 43})
        with_token = client.get(f"{internal}/ping", headers={"Host": "chat.localhost", "Authorization": f"Bearer {TOKENS[0]}"})
    assert (bare.status_code, guessed.status_code, with_token.status_code) == (401, 401, 401)
    # The router, which holds the secret, still gets through.
    with stack.client() as client:
        answer = client.post(stack.url("gateway", "/v1/chat/completions"), headers=stack.auth(),
                             json={"model": "chat-small", "messages": [{"role": "user", "content": "via router"}]})
    assert answer.json()["choices"][0]["message"]["content"] == "Echo: via router"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
@pytest.mark.parametrize("host", ["chat", "gateway"])
def test_the_bearer_scheme_is_case_insensitive(stack, scheme, host):
    assert _get(stack, host, [("Authorization", f"{scheme} {TOKENS[0]}")]).status_code == 200


@pytest.mark.parametrize("second", [TOKENS[0], "wrong-token-0123456789abcdef0123456789"])
@pytest.mark.parametrize("host", ["chat", "gateway"])
def test_duplicate_authorization_headers_are_refused_on_every_host(stack, host, second):
    response = _get(stack, host, [("Authorization", f"Bearer {TOKENS[0]}"), ("Authorization", f"Bearer {second}")])
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_tokens_stay_out_of_caddys_running_config_and_its_files(stack):
    """The tokens were substituted into the config the admin API returns."""
    socket_path = stack.status["admin"].removeprefix("unix/")
    with httpx.Client(transport=httpx.HTTPTransport(uds=socket_path), timeout=10) as client:
        running = client.get("http://localhost/config/").text
    assert "serveform_gate" in running
    for token in TOKENS:
        assert token not in running
        for path in (stack.state_dir / "secrets" / "caddy.json", stack.state_dir / "routes.json", stack.state_dir / "secrets" / "token_hashes.json"):
            assert token not in path.read_text()


def test_the_token_is_compared_in_constant_time():
    """Caddy compared the Authorization header with `==` (a header matcher); the module hashes the
    presented token and compares digests with crypto/subtle, against every accepted token."""
    source = (MODULE / "auth.go").read_text()
    assert "subtle.ConstantTimeCompare(sum[:], tokens[i][:])" in source and "for i := range tokens" in source
    templates = "".join(p.read_text() for p in (ROOT / "gateway" / "templates").glob("*.j2"))
    assert not re.search(r"header\s+Authorization", templates)


def test_failed_logins_are_rate_limited_per_client(tmp_path, caddy_ready):
    gateway = start_gateway(tmp_path / "gw", [make_plan("chat", probes=FAST_PROBE)])
    try:
        codes = [_get(gateway, "chat", [("Authorization", f"Bearer guess-{i:040d}")]).status_code for i in range(40)]
        assert codes[:30] == [401] * 30 and set(codes[30:]) == {429}, codes
        # The guesser is blocked even with the right token; another client is not.
        assert _get(gateway, "chat", [("Authorization", f"Bearer {TOKENS[0]}")]).status_code == 429
        other = httpx.Client(transport=LoopbackTransport(verify=gateway.ssl_context(), local_address="127.0.0.2"), timeout=30)
        with other:
            assert other.get(gateway.url("chat", "/ping"), headers=gateway.auth()).status_code in (200, 503)
    finally:
        assert gateway.stop() == 0, gateway.log()


@pytest.fixture
def caddy_ready():
    return ensure_caddy()


def test_generated_tokens_have_at_least_128_bits():
    import base64

    from serveform.components.local._token import TOKEN_BYTES, TokenProvider

    assert TOKEN_BYTES * 8 >= 128
    value = TokenProvider().create({"provider_version": "1"}).outs["value"]
    assert len(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))) * 8 >= 128
    GatewaySettings(tokens=(SecretStr(value),))  # and the gateway accepts it


def test_short_configured_tokens_are_refused_naming_the_key():
    with pytest.raises(StackConfigError) as caught:
        StackSettings.from_config({"backend": "local", "services": ["a.dstack.yml"], "tokens": ["hunter2"]}, stack="dev", project_dir="/p")
    message = str(caught.value)
    assert "serveform:tokens[0]" in message and "at least 32" in message and "hunter2" not in message
    with pytest.raises(ValidationError, match="shorter than 32"):
        GatewaySettings(tokens=(SecretStr("x"),))


def test_tokens_never_cross_plain_http_beyond_loopback_unless_the_stack_says_so():
    with pytest.raises(ValidationError, match="allow_plain_http"):
        GatewaySettings(tls="off")  # every interface, plain HTTP
    GatewaySettings(tls="off", bind=("127.0.0.1",))  # loopback only: nobody on the path
    GatewaySettings(tls="off", allow_plain_http=True)
    public = GatewaySettings(tls="internal")
    with pytest.raises(GatewayConfigError) as caught:
        routes_from_plans(public, [make_plan("web", https=False)])
    assert caught.value.problems[0].field == "https" and "allow_plain_http" in caught.value.problems[0].message
    routes_from_plans(public, [make_plan("web", https=False, auth=False)])  # no token involved
    routes_from_plans(public.model_copy(update={"allow_plain_http": True}), [make_plan("web", https=False)])
    settings = StackSettings.from_config(
        {"backend": "aws", "services": ["a.dstack.yml"], "gateway": {"tls": "off", "allow_plain_http": True}}, stack="prod", project_dir="/p"
    )
    assert settings.gateway.allow_plain_http


def test_metrics_listen_on_loopback_unless_opened_and_then_need_a_token(tmp_path):
    from serveform.gateway import GatewayRuntime, render_caddyfile

    settings = GatewaySettings(tokens=(SecretStr(TOKENS[0]),))
    local = render_caddyfile(settings, [], GatewayRuntime(state_dir=tmp_path))
    metrics_site = local[local.index("serveform_metrics") - 200:]
    assert "bind 127.0.0.1" in metrics_site and "require_token" not in local
    opened = render_caddyfile(settings, [], GatewayRuntime(state_dir=tmp_path, metrics_address="0.0.0.0", metrics_auth=True))
    assert "require_token" in opened
