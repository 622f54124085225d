"""The Kubernetes objects serveform renders (Pulumi mock runtime): pod security, network policy,
RBAC and the stack policy against privileged pods and host paths.

`restricted_violations` restates the Pod Security Standards' "restricted" profile (Kubernetes
docs, "Pod Security Standards") as checks on a pod spec, so a pod that fails here would be
refused by a namespace enforcing `restricted`; tests/k8s/test_pod_security.py proves the same
against a real API server on k8s-local.
"""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
from _k8s_harness import run_program

from serveform.components import k8s as backend
from serveform.stacks.settings import StackSettings
from serveform.translator import CompileContext, compile_text

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
NAMESPACE = "kubernetes:core/v1:Namespace"
ROLE = "kubernetes:rbac.authorization.k8s.io/v1:Role"

CHAT = """
type: service
name: chat
image: python:3.11-slim
commands:
  - python -m http.server 8000
port: 8000
replicas: 1..3
scaling:
  metric: rps
  target: 10
"""
PRIVILEGED = """
type: service
name: builder
image: docker:27-dind
privileged: true
commands:
  - dockerd
port: 8000
"""
HOST_ROOT = """
type: service
name: snoop
image: busybox
commands:
  - httpd -f -p 8000
port: 8000
volumes:
  - instance_path: /
    path: /host
"""

# The restricted profile (Pod Security Standards, v1.25+).
_RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}


def restricted_violations(pod: dict) -> list[str]:
    """Why `pod` (a PodSpec as rendered) fails the "restricted" profile; empty when it passes."""
    problems = []
    pod_context = pod.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(key):
            problems.append(f"{key} is set")
    for volume in pod.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= _RESTRICTED_VOLUMES:
            problems.append(f"volume {volume['name']}: {sorted(kinds)} not allowed")
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl["name"] not in _SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl['name']} is not in the safe set")
    for container in [*(pod.get("initContainers") or []), *pod["containers"]]:
        name = container["name"]
        context = container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        if not (context.get("runAsNonRoot") or pod_context.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot must be true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = (context.get("seccompProfile") or pod_context.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {capabilities['add']}")
        for port in container.get("ports") or []:
            if port.get("hostPort"):
                problems.append(f"{name}: hostPort")
    return problems


@pytest.fixture(autouse=True)
def _fresh_root_stack():
    pulumi.runtime.settings.ROOT.set(None)
    yield
    pulumi.runtime.settings.ROOT.set(None)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "stacks").mkdir(parents=True)
    (root / "Pulumi.yaml").write_text("name: serveform\nruntime: python\nstackConfigDir: stacks\n")
    (root / "__main__.py").write_text("from serveform.components.program import run\n\nrun()\n")
    (root / "stacks" / "Pulumi.k8s.yaml").write_text("config:\n  serveform:backend: k8s\n")
    for name, text in {"chat": CHAT, "builder": PRIVILEGED, "snoop": HOST_ROOT}.items():
        (root / f"{name}.dstack.yml").write_text(text)
    return root


def _settings(project: Path, services: list[str], **extra) -> StackSettings:
    config = {
        "backend": "k8s",
        "services": services,
        "domain": "example.com",
        "tokens": ["a-long-enough-test-token-0123456789"],
        "k8s": {"namespace": "team-a", "image": "registry.example/serveform:1"},
        **extra,
    }
    return StackSettings.from_config(config, stack="k8s", project_dir=str(project))


def _plans(project: Path, names: list[str]):
    context = CompileContext(backend="k8s", environ={})
    return [compile_text((project / n).read_text(), file=n, context=context).plan for n in names]


def _deploy(project: Path, names: list[str], **extra):
    settings = _settings(project, names, **extra)
    plans = _plans(project, names)
    return run_program(lambda: backend.deploy(settings, plans))


def _pod(deployment) -> dict:
    return deployment.inputs["spec"]["template"]["spec"]


def test_gateway_and_scaler_pods_pass_the_restricted_profile(project: Path) -> None:
    rec = _deploy(project, ["chat.dstack.yml"])
    for name in ("gateway-deployment", "scaler-deployment"):
        pod = _pod(rec.one(DEPLOYMENT, name))
        assert restricted_violations(pod) == [], name
        for container in [*(pod.get("initContainers") or []), *pod["containers"]]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True and context["runAsUser"] != 0
            writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
            emptydirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
            assert {m["name"] for m in container["volumeMounts"] if m["mountPath"] in writable} <= emptydirs
            assert "/tmp" in writable or container["name"] == "project"
    gateway = _pod(rec.one(DEPLOYMENT, "gateway-deployment"))
    # Ports 80/443 without a capability: the namespaced unprivileged-port sysctl.
    assert {"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"} in gateway["securityContext"]["sysctls"]
    assert gateway["automountServiceAccountToken"] is False


def test_a_restricted_namespace_gets_restricted_replicas(project: Path) -> None:
    rec = _deploy(project, ["chat.dstack.yml"], policy={"pod_security": "restricted"})
    labels = rec.one(NAMESPACE).inputs["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert restricted_violations(_pod(rec.one(DEPLOYMENT, "chat-deployment"))) == []


def test_namespace_enforces_baseline_by_default_and_warns_on_restricted(project: Path) -> None:
    rec = _deploy(project, ["chat.dstack.yml"])
    labels = rec.one(NAMESPACE).inputs["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "baseline"
    assert labels["pod-security.kubernetes.io/warn"] == "restricted"
    replica = _pod(rec.one(DEPLOYMENT, "chat-deployment"))["containers"][0]["securityContext"]
    assert replica == {"allowPrivilegeEscalation": False, "seccompProfile": {"type": "RuntimeDefault"}}


def test_only_the_gateway_reaches_replicas_and_only_the_scaler_reads_metrics(project: Path) -> None:
    rec = _deploy(project, ["chat.dstack.yml"])
    policies = {p.name: p.inputs["spec"] for p in rec.of_type(NETWORK_POLICY)}
    assert set(policies) == {"chat-network", "gateway-network", "scaler-network"}
    chat_pod = rec.one(DEPLOYMENT, "chat-deployment").inputs["spec"]["template"]["metadata"]["labels"]
    gateway_pod = rec.one(DEPLOYMENT, "gateway-deployment").inputs["spec"]["template"]["metadata"]["labels"]
    scaler_pod = rec.one(DEPLOYMENT, "scaler-deployment").inputs["spec"]["template"]["metadata"]["labels"]
    replica = policies["chat-network"]
    assert replica["podSelector"]["matchLabels"] == chat_pod and replica["policyTypes"] == ["Ingress"]
    (rule,) = replica["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": gateway_pod}}]
    gateway = policies["gateway-network"]
    public, metrics = gateway["ingress"]
    assert "from" not in public and {p["port"] for p in public["ports"]} == {"http", "https"}
    assert metrics["from"] == [{"podSelector": {"matchLabels": scaler_pod}}] and metrics["ports"] == [{"port": "metrics"}]
    scaler = policies["scaler-network"]
    assert scaler["podSelector"]["matchLabels"] == scaler_pod and scaler.get("ingress") in (None, [])


def test_scaler_listens_on_loopback_and_its_role_names_the_stack_deployments(project: Path) -> None:
    rec = _deploy(project, ["chat.dstack.yml"])
    (container,) = _pod(rec.one(DEPLOYMENT, "scaler-deployment"))["containers"]
    command = container["command"]
    assert command[command.index("--listen") + 1] == "127.0.0.1:9465" and "ports" not in container
    rules = rec.one(ROLE, "scaler-role").inputs["rules"]
    for rule in rules:
        if set(rule["verbs"]) & {"create", "update", "patch", "delete"}:
            assert rule["resourceNames"] == ["chat"], rule


@pytest.mark.parametrize(
    ("service", "field", "key"),
    [
        ("builder.dstack.yml", "privileged", "serveform:policy.allow_privileged"),
        ("snoop.dstack.yml", "volumes[0].instance_path", "serveform:policy.allow_host_paths"),
    ],
)
def test_privileged_pods_and_host_paths_are_forbidden_on_k8s_unless_allowed(project: Path, service, field, key) -> None:
    with pytest.raises(Exception) as caught:
        _deploy(project, [service])
    message = str(caught.value)
    assert "stacks/Pulumi.k8s.yaml: error:" in message and key in message
    assert f"{service}: {field}:" in message and f"set {key}: true" in message
    allow = key.rsplit(".", 1)[1]
    rec = _deploy(project, [service], policy={allow: True})
    assert rec.one(NAMESPACE).inputs["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_the_policy_can_forbid_on_clouds_too() -> None:
    from _cloud_examples import hostile_plan  # a plan with an instance (host) path volume
    from serveform.stacks.settings import policy_problems

    settings = StackSettings.from_config({"backend": "aws", "services": ["x"]}, stack="aws", project_dir="/p")
    plan = hostile_plan("aws")
    assert policy_problems(settings, [plan]) == []  # one tenant per VM: allowed by default
    strict = StackSettings.from_config(
        {"backend": "aws", "services": ["x"], "policy": {"allow_host_paths": False}}, stack="aws", project_dir="/p"
    )
    assert [key for key, _ in policy_problems(strict, [plan])] == ["serveform:policy.allow_host_paths"]


def test_gateway_metrics_require_a_token_the_scaler_sends(project: Path) -> None:
    from serveform.components.k8s import _caddy

    settings = _settings(project, ["chat.dstack.yml"])
    plans = _plans(project, ["chat.dstack.yml"])
    assert "require_token" in _caddy.gateway_caddyfile(settings, plans, "team-a", "http")
    rec = _deploy(project, ["chat.dstack.yml"])
    pod = _pod(rec.one(DEPLOYMENT, "scaler-deployment"))
    (container,) = pod["containers"]
    token_file = container["command"][container["command"].index("--metrics-token-file") + 1]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "metrics-token"]
    assert volume["secret"]["items"] == [{"key": "tokens.json", "path": "tokens.json"}]
    assert token_file == "/etc/serveform/metrics-token/tokens.json"
    assert {"name": "metrics-token", "mountPath": "/etc/serveform/metrics-token", "readOnly": True} in container["volumeMounts"]


def test_the_scaler_sends_the_token_from_its_file(tmp_path: Path) -> None:
    """A real HTTP exchange: a metrics endpoint that answers 401 without the bearer token."""
    import asyncio
    import json

    import aiohttp
    from aiohttp import web

    from serveform.scaler import daemon

    async def metrics(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer tok-first":
            return web.Response(status=401)
        return web.Response(text="serveform_requests_total 1\n")

    async def scenario() -> tuple[bytes, int]:
        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        url = f"http://127.0.0.1:{port}/metrics"
        token_file = tmp_path / "tokens.json"
        token_file.write_text(json.dumps(["tok-first", "tok-second"]))
        try:
            async with aiohttp.ClientSession() as http:
                body = await daemon._fetch(http, url, daemon._metrics_headers(token_file))
                try:
                    await daemon._fetch(http, url, daemon._metrics_headers(None))
                    status = 200
                except aiohttp.ClientResponseError as exc:
                    status = exc.status
        finally:
            await runner.cleanup()
        return body, status

    # Its own loop, closed after: the Pulumi mock runtime of the other tests keeps the current one.
    loop = asyncio.new_event_loop()
    try:
        body, status = loop.run_until_complete(scenario())
    finally:
        loop.close()
    assert body == b"serveform_requests_total 1\n" and status == 401
