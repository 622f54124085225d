"""The gateway's Caddyfile on Kubernetes, checked by Caddy itself.

The gateway package renders the Caddyfile; `_caddy` points its upstreams at the cluster's DNS
(headless Services) and opens the metrics listener to the pod. `caddy adapt --validate` (the
project's pinned Caddy) must accept the result, and the adapted JSON must carry the cluster
names, with no loopback resolver left.
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
    config = {"backend": "k8s", "services": ["a"], "domain": "example.com", "tokens": ["tok-123"], **extra}
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
    env = {**os.environ, "SERVEFORM_TOKEN_0": "tok-123"}
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
    text = _caddy.gateway_caddyfile(_settings(gateway={"tls": tls}), _plans("chat", "llm"), "team-a", PORT_NAME)
    config = _adapt(text, tmp_path)
    proxies = _upstream_sources(config)
    names = sorted({p["dynamic_upstreams"]["name"] for p in proxies})
    assert names == ["chat.team-a.svc.cluster.local", "llm.team-a.svc.cluster.local"]
    for proxy in proxies:
        upstreams = proxy["dynamic_upstreams"]
        assert upstreams["source"] == "srv"
        assert upstreams["service"] == "http" and upstreams["proto"] == "tcp"
        assert "resolver" not in upstreams
        assert "resolver" not in proxy.get("transport", {})
    servers = config["apps"]["http"]["servers"]
    assert [":9180"] in [s["listen"] for s in servers.values()]
    assert "tok-123" not in text


def test_rewrites_refuse_a_caddyfile_of_another_shape():
    with pytest.raises(_caddy.CaddyfileShapeError, match="no `dynamic srv` block for service"):
        _caddy.cluster_upstreams("reverse_proxy 127.0.0.1:1\n", {"chat": "chat.ns.svc.cluster.local"}, "http")
    with pytest.raises(_caddy.CaddyfileShapeError, match="metrics listener"):
        _caddy.metrics_on_pod("{\n}\n", 9180)


def test_a_namespace_that_is_not_a_dns_label_is_refused_before_registration():
    import pulumi
    from _k8s_harness import run_program

    from serveform.components import k8s as backend

    settings = _settings(k8s={"namespace": "x }\nevil {"})
    with pytest.raises(pulumi.RunError, match=r"serveform:k8s.namespace: .* is not a Kubernetes namespace name"):
        run_program(lambda: backend.deploy(settings, _plans("chat")))
