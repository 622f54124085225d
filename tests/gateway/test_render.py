"""The rendered Caddyfile: golden files, Caddy's own validation per TLS mode, hostile inputs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from pydantic import SecretStr, ValidationError

from serveform.gateway import GatewayConfigError, GatewayRuntime, GatewaySettings, render_caddyfile
from serveform.gateway.render import TemplateValueError, caddy_quote, caddy_quote_placeholder, routes_document
from serveform.gateway.routes import routes_from_plans
from serveform.translator.plan import ModelPlan, ProbePlan, RateLimitPlan

from gateway_helpers import make_plan  # type: ignore[import-not-found]

GOLDEN = Path(__file__).parent / "golden"
RUNTIME = GatewayRuntime(state_dir=Path("/var/lib/serveform-gateway"), dns_port=5353, internal_port=8079, metrics_port=9180)
TOKENS = (SecretStr("tok-alpha-0123456789abcdef0123456789abcdef"), SecretStr("tok-beta-0123456789abcdef0123456789abcdef"))


def _plans():
    return [
        make_plan(
            "chat",
            model=ModelPlan(name="chat-small"),
            rate_limits=(RateLimitPlan(prefix="/v1", rps=0.5, burst=2), RateLimitPlan(key="header", header="X-User", rps=5)),
        ),
        make_plan("web", auth=False, https=False, readiness_path="/healthz"),
    ]


def _settings(tls: str, **extra) -> GatewaySettings:
    if tls == "acme_dns":
        extra.setdefault("dns_provider", "route53")
    if tls == "off":
        extra.setdefault("allow_plain_http", True)  # a gateway on every interface, plain HTTP by choice
    return GatewaySettings(domain="example.com" if tls != "internal" else "localhost", tls=tls, tokens=TOKENS, acme_email="ops@example.com", **extra)


def _adapt(caddy: str, text: str, tmp_path: Path) -> dict:
    path = tmp_path / "Caddyfile"
    path.write_text(text)
    result = subprocess.run([caddy, "adapt", "--config", str(path), "--adapter", "caddyfile"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def _validate(caddy: str, text: str, tmp_path: Path) -> None:
    path = tmp_path / "Caddyfile"
    path.write_text(text)
    result = subprocess.run(
        [caddy, "adapt", "--validate", "--config", str(path), "--adapter", "caddyfile"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "XDG_DATA_HOME": str(tmp_path / "data"), "XDG_CONFIG_HOME": str(tmp_path / "config")},
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("tls", ["internal", "acme_dns", "on_demand", "off"])
def test_golden(tls):
    text = render_caddyfile(_settings(tls), _plans(), RUNTIME)
    golden = GOLDEN / f"{tls}.Caddyfile"
    if os.environ.get("SERVEFORM_UPDATE_GOLDEN"):
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert text == golden.read_text(), f"rendered Caddyfile differs from {golden}; rerun with SERVEFORM_UPDATE_GOLDEN=1 if intended"
    # No secret in the rendered file, not even a placeholder: Caddy's modules read token digests.
    assert "tok-alpha" not in text and "SERVEFORM_TOKEN" not in text
    # Nor any service: they are served from the routes file, so a route change reloads nothing.
    assert "chat" not in text and text == render_caddyfile(_settings(tls), [], RUNTIME)


@pytest.mark.parametrize("tls", ["internal", "on_demand", "off"])
def test_caddy_validates_every_mode(caddy, tls, tmp_path):
    _validate(caddy, render_caddyfile(_settings(tls), _plans(), RUNTIME.model_copy(update={"state_dir": tmp_path})), tmp_path)


def test_acme_dns_wildcard_covers_service_hosts(caddy, tmp_path):
    settings = _settings("acme_dns", dns_provider="cloudflare", dns_options={"api_token": SecretStr("cf-secret")})
    text = render_caddyfile(settings, _plans(), RUNTIME)
    assert "cf-secret" not in text
    config = _adapt(caddy, text, tmp_path)
    policies = config["apps"]["tls"]["automation"]["policies"]
    wildcard = [p for p in policies if p.get("subjects") == ["*.example.com"]]
    assert wildcard and wildcard[0]["issuers"][0]["challenges"]["dns"]["provider"] == {"name": "cloudflare", "api_token": "{env.SERVEFORM_DNS_API_TOKEN}"}
    # Service hosts are not forced to get certificates of their own: at run time Caddy skips
    # names a managed wildcard covers (caddytls `managingWildcardFor`) and serves the wildcard.
    assert "force_automate" not in text and "tls_automate_names" not in text
    assert "automate" not in json.dumps(config["apps"]["tls"].get("certificates", {}))


def test_routes_document_holds_every_service_setting_and_no_secret():
    routes = routes_from_plans(_settings("internal"), _plans())
    document = routes_document(_settings("internal"), routes, RUNTIME, generation=7)
    assert document["generation"] == 7 and document["router_host"] == "gateway.localhost"
    assert document["token_hashes_file"] == "/var/lib/serveform-gateway/secrets/token_hashes.json"
    chat, web = document["services"]
    assert (chat["name"], chat["host"], chat["auth"], chat["https"]) == ("chat", "chat.localhost", True, True)
    assert (web["auth"], web["https"]) == (False, False)
    # The gateway's own prober decides readiness: replicas come from the ready file, not a lookup.
    assert chat["srv"] == "" and document["ready_file"] == "/var/lib/serveform-gateway/ready.json"
    assert chat["rate_limits"] == [
        {"zone": "chat_0", "prefix": "/v1", "key": "{client_ip}", "events": 3, "window_seconds": 2},
        {"zone": "chat_1", "prefix": "", "key": "{http.request.header.X-User}", "events": 5, "window_seconds": 1},
    ]
    assert "tok-alpha" not in json.dumps(document)


def test_plan_problems_are_reported_together():
    plans = [
        make_plan("gateway"),
        make_plan("ok", readiness_path='/x"y'),
        make_plan("ok2", rate_limits=(RateLimitPlan(prefix="/a b", rps=1), RateLimitPlan(key="header", header="X\nY", rps=1))),
        make_plan("ok3", probes=(ProbePlan(url="/{$HOME}"),)),
    ]
    with pytest.raises(GatewayConfigError) as caught:
        render_caddyfile(_settings("internal"), plans, RUNTIME)
    message = str(caught.value)
    for expected in (
        "services/gateway.dstack.yml: error: name: `gateway` is reserved",
        "services/ok.dstack.yml: error: readiness_probe:",
        "services/ok2.dstack.yml: error: rate_limits[0].prefix:",
        "services/ok2.dstack.yml: error: rate_limits[1].key.header:",
        "services/ok3.dstack.yml: error: probes[0].url:",
    ):
        assert expected in message
    assert len(caught.value.problems) == 5


def test_duplicate_hosts_and_models():
    plans = [make_plan("a", model=ModelPlan(name="m")), make_plan("b", model=ModelPlan(name="m"), file="other.yml")]
    with pytest.raises(GatewayConfigError, match="other.yml: error: model.name: model 'm' is already mapped"):
        render_caddyfile(_settings("internal"), plans, RUNTIME)


def test_settings_refuse_bad_values_without_echoing_tokens():
    with pytest.raises(ValidationError) as caught:
        GatewaySettings(tokens=(SecretStr('abc"\n}'),))
    assert 'abc"' not in str(caught.value) and "token #1" in str(caught.value)
    for bad in ({"domain": "a.b}\n"}, {"admin": "0.0.0.0:2019"}, {"admin": "10.0.0.1:2019"}, {"tls": "acme_dns"}, {"bind": ("not-ip",)}):
        with pytest.raises(ValidationError):
            GatewaySettings(**bad)
    assert GatewaySettings(admin="127.0.0.1:2019").admin == "127.0.0.1:2019"


def test_quoting_filters():
    assert caddy_quote('say "hi"') == '`say "hi"`'
    assert caddy_quote("back`tick") == '"back`tick"'
    for bad in ("a\nb", "{$HOME}", "{http.request.uri}", "x\x00", "`\""):
        with pytest.raises(TemplateValueError):
            caddy_quote(bad)
    assert caddy_quote_placeholder("Bearer {env.T_0}") == "`Bearer {env.T_0}`"
    for bad in ("{$HOME}", "{a} }", "{ {a}", "{a}\n"):
        with pytest.raises(TemplateValueError):
            caddy_quote_placeholder(bad)


_HOSTILE = st.lists(
    st.sampled_from(list('/ab{}$"`\'\\\n\t #*;:@%?=&\r') + ["{$HOME}", "}\nhttp://evil {", "{env.SERVEFORM_TOKEN_0}"]), max_size=8
).map("".join)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=_HOSTILE, prefix=_HOSTILE, header=_HOSTILE, name=_HOSTILE)
def test_hostile_inputs_cannot_change_the_config_shape(caddy, tmp_path, path, prefix, header, name):
    """Whatever a service file holds, the result is a clear error, or routes with exactly our hosts
    and the Caddyfile every stack with these settings gets."""
    try:
        plans = [
            make_plan("chat", readiness_path="/" + path, rate_limits=(RateLimitPlan(prefix="/" + prefix, rps=1), RateLimitPlan(key="header", header=header or "X", rps=1))),
            make_plan(name or "x", model=ModelPlan(name=name or "m")),
        ]
    except ValidationError:
        return
    try:
        text = render_caddyfile(_settings("internal"), plans, RUNTIME)
    except GatewayConfigError as exc:
        assert all(p.file.endswith(".dstack.yml") and p.field for p in exc.problems)
        return
    assert text == render_caddyfile(_settings("internal"), [], RUNTIME)
    document = routes_document(_settings("internal"), routes_from_plans(_settings("internal"), plans), RUNTIME, generation=1)
    assert {s["host"] for s in document["services"]} == {"chat.localhost", f"{name or 'x'}.localhost"}


def test_runtime_for_a_cluster(caddy, tmp_path):
    """Kubernetes: replicas from the cluster's DNS (headless Services), metrics open to the pod
    network but only with the stack's token."""
    from serveform.gateway import SrvLookup

    runtime = RUNTIME.model_copy(update={
        "replica_dns": "system",
        "srv_lookups": {"chat": SrvLookup(service="http", name="chat.serveform.svc.cluster.local"), "web": SrvLookup(service="http", name="web.serveform.svc.cluster.local")},
        "metrics_address": "0.0.0.0",
        "metrics_auth": True,
    })
    config = _adapt(caddy, render_caddyfile(_settings("internal"), _plans(), runtime), tmp_path)
    text = json.dumps(config)
    assert "127.0.0.1:5353" not in text and "replicas.serveform.internal" not in text
    servers = config["apps"]["http"]["servers"]
    assert servers["metrics"]["listen"] == ["0.0.0.0:9180"]
    assert [h for h in _walk(config) if isinstance(h, dict) and h.get("handler") == "serveform_metrics"][0]["require_token"] is True
    proxies = [h for h in _walk(config) if isinstance(h, dict) and h.get("handler") == "reverse_proxy" and "dynamic_upstreams" in h]
    assert {(p["dynamic_upstreams"].get("service"), p["dynamic_upstreams"]["name"]) for p in proxies} == {(None, "{serveform.srv}")}
    document = routes_document(_settings("internal"), routes_from_plans(_settings("internal"), _plans()), runtime, generation=1)
    assert {s["srv"] for s in document["services"]} == {"_http._tcp.chat.serveform.svc.cluster.local", "_http._tcp.web.serveform.svc.cluster.local"}
    assert document["ready_file"] == ""


def _walk(node):
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


@pytest.mark.parametrize(
    "provider, options",
    [
        ("route53", {}),
        ("cloudflare", {"api_token": "t"}),
        ("googleclouddns", {"gcp_project": "p"}),
        ("azure", {"tenant_id": "t", "client_id": "c", "client_secret": "s", "subscription_id": "x", "resource_group_name": "g"}),
    ],
)
def test_every_dns_provider_module_parses(caddy, tmp_path, provider, options):
    settings = _settings("acme_dns", dns_provider=provider, dns_options={k: SecretStr(v) for k, v in options.items()})
    config = _adapt(caddy, render_caddyfile(settings, _plans(), RUNTIME), tmp_path)
    dns = [p for p in config["apps"]["tls"]["automation"]["policies"] if p.get("subjects") == ["*.example.com"]][0]
    provider_config = dns["issuers"][0]["challenges"]["dns"]["provider"]
    assert provider_config["name"] == provider
    for name in options:
        assert provider_config[name] == "{env.SERVEFORM_DNS_" + name.upper() + "}"
