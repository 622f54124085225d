"""The gateway's configuration on Kubernetes, checked by Caddy and by the gateway supervisor itself.

`_caddy` gives the gateway package a cluster runtime (upstreams from the cluster's DNS, metrics on
the pod's address). `caddy adapt --validate` (the project's pinned Caddy) must accept the
Caddyfile, with the cluster names and no loopback resolver; and the pod's files (`gateway.json`
with that runtime, the secret files) must make a real `python -m serveform.gateway run` render
the same upstreams and open the metrics port the Service points at.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from serveform.components.k8s import _caddy
from serveform.components.k8s.gpu_instance_group import PORT_NAME
from serveform.gateway.render import routes_document
from serveform.gateway.routes import routes_from_plans
from serveform.stacks.settings import StackSettings
from serveform.translator import CompileContext, compile_text

SERVICE = """
type: service
name: {name}
image: python:3.11-slim
commands:
  - python -m http.server 8000
port: 8000
model:
  name: model-{name}
  format: openai
"""


def _settings(**extra) -> StackSettings:
    config = {"backend": "k8s", "services": ["a"], "domain": "example.com", "tokens": ["tok-123-0123456789abcdef0123456789abcdef"], **extra}
    return StackSettings.from_config(config, stack="k8s", project_dir="/p")


def _plans(*names: str):
    context = CompileContext(backend="k8s")
    return [compile_text(SERVICE.format(name=n), file=f"{n}.dstack.yml", context=context).plan for n in names]


def _caddy_binary() -> str:
    found = shutil.which("caddy", path=str(Path(sys.executable).parent))
    assert found, "caddy is missing from .venv/bin; run tools/setup.sh"
    return found


def _adapt(caddyfile: str, tmp_path: Path) -> dict:
    path = tmp_path / "Caddyfile"
    path.write_text(caddyfile)
    env = {**os.environ, "SERVEFORM_TOKEN_0": "tok-123-0123456789abcdef0123456789abcdef"}
    result = subprocess.run(
        [_caddy_binary(), "adapt", "--config", str(path), "--adapter", "caddyfile", "--validate"],
        capture_output=True, text=True, env=env, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _upstream_sources(config: dict) -> list[dict]:
    found = []

    def walk(node):
        if isinstance(node, dict):
            if node.get("handler") == "reverse_proxy" and "dynamic_upstreams" in node:
                found.append(node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return found


@pytest.mark.parametrize("tls", ["internal", "off"])
def test_caddy_accepts_the_cluster_caddyfile_and_it_resolves_headless_services(tmp_path, tls):
    text = _caddy.gateway_caddyfile(_settings(gateway={"tls": tls, "allow_plain_http": tls == "off"}), _plans("chat", "llm"), "team-a", PORT_NAME)
    config = _adapt(text, tmp_path)
    proxies = _upstream_sources(config)
    # The gateway's module names each service's SRV lookup per request from its routes file.
    routes = routes_from_plans(_caddy.gateway_settings(_settings(gateway={"tls": tls, "allow_plain_http": tls == "off"})), _plans("chat", "llm"))
    document = routes_document(_caddy.gateway_settings(_settings()), routes, _caddy.cluster_runtime(_plans("chat", "llm"), "team-a", PORT_NAME), generation=1)
    assert sorted(s["srv"] for s in document["services"]) == ["_http._tcp.chat.team-a.svc.cluster.local", "_http._tcp.llm.team-a.svc.cluster.local"]
    for proxy in proxies:
        upstreams = proxy["dynamic_upstreams"]
        assert upstreams["source"] == "srv"
        assert upstreams["name"] == "{serveform.srv}" and "service" not in upstreams
        assert "resolver" not in upstreams
        assert "resolver" not in proxy.get("transport", {})
    servers = config["apps"]["http"]["servers"]
    assert ["0.0.0.0:9180"] in [s["listen"] for s in servers.values()]
    assert "tok-123-0123456789abcdef0123456789abcdef" not in text


def test_pod_files_keep_secrets_out_of_gateway_json_and_carry_the_cluster_runtime():
    config, secret_files = _caddy.gateway_files(_settings(), _plans("chat", "llm"), "team-a", PORT_NAME)
    document = json.loads(config)
    assert "tok-123-0123456789abcdef0123456789abcdef" not in config
    assert json.loads(secret_files["tokens.json"]) == ["tok-123-0123456789abcdef0123456789abcdef"]
    assert document["tokens_file"] == f"{_caddy.SECRETS_DIR}/tokens.json"
    assert set(secret_files) == {"tokens.json", "dns.json", "probe_headers.json"}
    assert document["runtime"] == {
        "replica_dns": "system",
        "srv_lookups": {
            "chat": {"service": "http", "proto": "tcp", "name": "chat.team-a.svc.cluster.local"},
            "llm": {"service": "http", "proto": "tcp", "name": "llm.team-a.svc.cluster.local"},
        },
        "metrics_address": "0.0.0.0",
        "metrics_port": _caddy.METRICS_PORT,
        # Every pod address: with tokens configured, the scaler must present one (issue 16).
        "metrics_auth": True,
    }


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_gateway_supervisor_runs_the_pod_files(tmp_path):
    """What the pod runs, on loopback: the supervisor reads the runtime from gateway.json."""
    import time
    import urllib.request

    from serveform.components.k8s.gateway import gateway_command

    http_port = _free_port()
    settings = _settings(gateway={"tls": "off", "http_port": http_port, "allow_plain_http": True})
    config, secret_files = _caddy.gateway_files(settings, _plans("chat", "llm"), "team-a", PORT_NAME)
    document = json.loads(config)
    secrets_dir = tmp_path / "secrets-mount"
    secrets_dir.mkdir(mode=0o700)
    for name, text in secret_files.items():
        (secrets_dir / name).write_text(text)
        (secrets_dir / name).chmod(0o400)
        document_key = {"tokens.json": "tokens_file", "dns.json": "dns_options_file", "probe_headers.json": "probe_headers_file"}[name]
        assert document[document_key] == f"{_caddy.SECRETS_DIR}/{name}"
        document[document_key] = str(secrets_dir / name)  # where this test mounts them
    metrics_port = _free_port()
    document["runtime"]["metrics_port"] = metrics_port
    state = tmp_path / "state"
    state.mkdir()
    (state / "gateway.json").write_text(json.dumps(document))
    command = gateway_command()
    # The pod copies gateway.json into a state directory it creates, then execs the gateway on it.
    assert command[:2] == ["sh", "-c"]
    assert command[2].endswith(f"exec python -m serveform.gateway run --state-dir {_caddy.STATE_DIR}")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    argv = [sys.executable, "-m", "serveform.gateway", "run", "--state-dir", str(state)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (state / "status.json").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the gateway did not come up"
            time.sleep(0.05)
        rendered = (state / "Caddyfile").read_text()
        routes = json.loads((state / "routes.json").read_text())
        assert sorted(s["srv"] for s in routes["services"]) == ["_http._tcp.chat.team-a.svc.cluster.local", "_http._tcp.llm.team-a.svc.cluster.local"]
        assert "resolvers 127.0.0.1" not in rendered and "tok-123-0123456789abcdef0123456789abcdef" not in rendered
        # The metrics listener is on every pod address: it refuses a request without a token.
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10)
            raise AssertionError("metrics served without a token")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        scrape = urllib.request.Request(f"http://127.0.0.1:{metrics_port}/metrics", headers={"Authorization": "Bearer tok-123-0123456789abcdef0123456789abcdef"})
        with urllib.request.urlopen(scrape, timeout=10) as response:
            assert b'serveform_requests_total{service="chat",host="chat.example.com"} 0' in response.read()
        # The router answers on gateway.<domain>: a request without a token is refused by Caddy.
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/v1/models", headers={"Host": "gateway.example.com"})
        try:
            urllib.request.urlopen(request, timeout=10)
            raise AssertionError("no token, yet served")
        except urllib.error.HTTPError as exc:
            assert exc.code == 401
        request.add_header("Authorization", "Bearer tok-123-0123456789abcdef0123456789abcdef")
        with urllib.request.urlopen(request, timeout=10) as response:
            models = json.loads(response.read())
        assert sorted(m["id"] for m in models["data"]) == ["model-chat", "model-llm"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_namespace_that_is_not_a_dns_label_is_refused_before_registration():
    import pulumi
    from _k8s_harness import run_program

    from serveform.components import k8s as backend

    settings = _settings(k8s={"namespace": "x }\nevil {"})
    with pytest.raises(pulumi.RunError, match=r"serveform:k8s.namespace: .* is not a Kubernetes namespace name"):
        run_program(lambda: backend.deploy(settings, _plans("chat")))
