"""The Kubernetes backend under Pulumi's mock runtime: which objects, with which key inputs.

Plans come from real service files through the translator (as `__main__.py` does); the node
list of the capacity pre-flight is replaced by fixed nodes, so no cluster is needed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pulumi
import pytest
import yaml
from _k8s_harness import LB_ADDRESS, run_program

from serveform.components import k8s as backend
from serveform.components.k8s import _capacity
from serveform.stacks.settings import StackSettings
from serveform.translator import CompileContext, compile_text

HF_TOKEN = "hf_k8s_SECRET_never_plain_42"
REGISTRY_PASSWORD = "reg-pa%%-'\"-k8s"
GATEWAY_TOKEN = "gw-token-SECRET-77-0123456789abcdef0123456789"

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
SECRET = "kubernetes:core/v1:Secret"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
PV = "kubernetes:core/v1:PersistentVolume"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
NAMESPACE = "kubernetes:core/v1:Namespace"

LLM = f"""
type: service
name: llm
image: ghcr.io/acme/vllm:0.6
registry_auth:
  username: acme
  password: {json.dumps(REGISTRY_PASSWORD)}
env:
  - HF_TOKEN
  - MODEL=meta-llama/Llama-3-8B
commands:
  - vllm serve "$MODEL" --port 8000
port: 8000
resources:
  gpu: A100:2
  shm_size: 16GB
volumes:
  - name: models
    path: /models
replicas: 1..3
scaling:
  metric: rps
  target: 10
model:
  name: llama
  format: openai
"""

CHAT = """
type: service
name: chat
image: python:3.11-slim
commands:
  - python -m http.server 8000
port: 8000
probes:
  - type: http
    url: /health
replicas: 2
"""

NODES = [
    _capacity.NodeFacts(name="cpu-0", allocatable={"cpu": "32"}, labels={}),
    _capacity.NodeFacts(
        name="gpu-0",
        allocatable={"cpu": "32", "nvidia.com/gpu": "4"},
        labels={"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"},
    ),
    _capacity.NodeFacts(
        name="gpu-1",
        allocatable={"nvidia.com/gpu": "8"},
        labels={"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-A10G"},
    ),
]


def _plan(text: str, file: str):
    context = CompileContext(backend="k8s", environ={"HF_TOKEN": HF_TOKEN})
    return compile_text(text, file=file, context=context).plan


IMAGE = "registry.example/serveform:1"
_PROJECT: list[Path] = []


@pytest.fixture(autouse=True)
def project(tmp_path) -> Path:
    """A project directory as the scaler's pod needs it (Pulumi.yaml, program, stack file, services)."""
    root = tmp_path / "project"
    (root / "stacks").mkdir(parents=True)
    (root / "Pulumi.yaml").write_text(
        "name: serveform\nruntime:\n  name: python\n  options:\n    toolchain: pip\n    virtualenv: .venv\n"
        "stackConfigDir: stacks\nmain: __main__.py\n"
    )
    (root / "__main__.py").write_text("from serveform.components.program import run\n\nrun()\n")
    (root / "stacks" / "Pulumi.k8s.yaml").write_text("encryptionsalt: v1:abc\nconfig:\n  serveform:backend: k8s\n")
    (root / "llm.dstack.yml").write_text(LLM)
    (root / "chat.dstack.yml").write_text(CHAT)
    _PROJECT[:] = [root]
    return root


def _settings(**extra) -> StackSettings:
    k8s = {"image": IMAGE, **extra.pop("k8s", {"namespace": "team-a", "volume_host_path": "/var/lib/serveform-volumes"})}
    config = {
        "backend": "k8s",
        "services": ["llm.dstack.yml", "chat.dstack.yml"],
        "domain": "example.com",
        "tokens": [GATEWAY_TOKEN],
        "k8s": k8s,
        **extra,
    }
    return StackSettings.from_config(config, stack="k8s", project_dir=str(_PROJECT[0]))


@pytest.fixture
def nodes(monkeypatch):
    calls = []

    def read_nodes(kubeconfig, context):
        calls.append((kubeconfig, context))
        return list(NODES)

    monkeypatch.setattr(_capacity, "read_nodes", read_nodes)
    return calls


def _deploy(settings=None, plans=None):
    settings = settings or _settings()
    plans = plans if plans is not None else [_plan(LLM, "llm.dstack.yml"), _plan(CHAT, "chat.dstack.yml")]
    return run_program(lambda: backend.deploy(settings, plans))


def _container(deployment) -> dict:
    (container,) = deployment.inputs["spec"]["template"]["spec"]["containers"]
    return container


def test_gpu_service_becomes_deployment_with_gpu_limits_tolerations_and_node_selection(nodes):
    rec = _deploy()
    llm = rec.one(DEPLOYMENT, "llm-deployment")
    spec = llm.inputs["spec"]
    pod = spec["template"]["spec"]
    container = _container(llm)
    assert llm.inputs["metadata"]["name"] == "llm"
    assert llm.inputs["metadata"]["namespace"] == "team-a"
    assert spec["replicas"] == 1
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "2"}
    assert container["resources"]["requests"]["memory"].endswith("Gi")
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    # A100 was asked for: only the A100 node's product label, not the A10G one.
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-A100-SXM4-80GB"]}
    ]
    assert container["command"] == ["/bin/sh", "-c"]
    assert container["args"] == ['vllm serve "$MODEL" --port 8000']
    assert container["ports"] == [{"name": "http", "containerPort": 8000}]
    # dstack's default model probe is a POST: the kubelet can only check the port.
    assert container["readinessProbe"]["tcpSocket"] == {"port": "http"}
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert nodes == [(None, None)]


def test_cpu_service_has_no_gpu_fields_and_http_probe(nodes):
    rec = _deploy()
    chat = rec.one(DEPLOYMENT, "chat-deployment")
    pod = chat.inputs["spec"]["template"]["spec"]
    container = _container(chat)
    assert "limits" not in container["resources"]
    assert "tolerations" not in pod and "nodeSelector" not in pod and "affinity" not in pod
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert chat.inputs["spec"]["replicas"] == 2


def test_replicas_are_the_programs_resolved_counts_clamped_to_bounds(nodes):
    # The program resolves counts (serveform.stacks.replicas) and hands them over in the settings.
    rec = _deploy(_settings().model_copy(update={"replicas": {"llm": 3, "chat": 9}}))
    assert rec.one(DEPLOYMENT, "llm-deployment").inputs["spec"]["replicas"] == 3
    assert rec.one(DEPLOYMENT, "chat-deployment").inputs["spec"]["replicas"] == 2
    assert _service(rec, "llm")["replicas"] == {"min": 1, "max": 3, "count": 3}


def test_env_secrets_reach_a_kubernetes_secret_as_pulumi_secrets_only(nodes):
    rec = _deploy()
    llm = rec.one(DEPLOYMENT, "llm-deployment")
    env_secret = rec.one(SECRET, "llm-env")
    assert env_secret.secret_inputs == ["stringData"]
    assert env_secret.inputs["stringData"] == {"HF_TOKEN": HF_TOKEN}
    container = _container(llm)
    assert container["envFrom"] == [{"secretRef": {"name": "llm-env-a1b2c3"}}]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["MODEL"] == "meta-llama/Llama-3-8B"
    assert "HF_TOKEN" not in env
    # Each replica names itself by its pod (chat_server's X-Replica), through the downward API.
    assert env["SERVEFORM_REPLICA_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # No secret value in any non-Secret object, nor in the exports.
    for resource in rec.resources:
        if resource.type != SECRET:
            text = json.dumps(resource.inputs, default=str)
            for secret in (HF_TOKEN, REGISTRY_PASSWORD, GATEWAY_TOKEN):
                assert secret not in text, (resource.name, secret)
    assert HF_TOKEN not in json.dumps(rec.outputs, default=str)


def test_registry_credentials_become_an_image_pull_secret(nodes):
    rec = _deploy()
    registry = rec.one(SECRET, "llm-registry")
    assert registry.inputs["type"] == "kubernetes.io/dockerconfigjson"
    assert registry.secret_inputs in (["stringData"], ["stringData..dockerconfigjson"])
    config = json.loads(registry.inputs["stringData"][".dockerconfigjson"])
    assert config["auths"]["ghcr.io"]["password"] == REGISTRY_PASSWORD
    assert config["auths"]["ghcr.io"]["username"] == "acme"
    pod = rec.one(DEPLOYMENT, "llm-deployment").inputs["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "llm-registry-a1b2c3"}]


def test_volume_is_a_claim_bound_to_a_static_host_path_volume(nodes):
    rec = _deploy()
    pv = rec.one(PV, "models-volume-pv")
    pvc = rec.one(PVC, "models-volume-claim")
    assert pv.inputs["metadata"]["name"] == "team-a-models"
    assert pv.inputs["spec"]["hostPath"] == {"path": "/var/lib/serveform-volumes/team-a/models", "type": "DirectoryOrCreate"}
    assert pv.inputs["spec"]["claimRef"] == {"namespace": "team-a", "name": "models"}
    assert pv.inputs["spec"]["storageClassName"] == ""
    assert pvc.inputs["spec"]["volumeName"] == "team-a-models"
    assert pvc.inputs["spec"]["storageClassName"] == ""
    assert pvc.inputs["spec"]["resources"] == {"requests": {"storage": "100Gi"}}
    pod = rec.one(DEPLOYMENT, "llm-deployment").inputs["spec"]["template"]["spec"]
    claim_volume = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim_volume["persistentVolumeClaim"] == {"claimName": "models"}
    mount = next(m for m in _container(rec.one(DEPLOYMENT, "llm-deployment"))["volumeMounts"] if m["name"] == claim_volume["name"])
    assert mount["mountPath"] == "/models"


def test_volume_without_host_path_asks_the_storage_class(nodes):
    settings = _settings(k8s={"namespace": "team-a", "storage_class": "fast-ssd", "volume_size_gb": 500})
    rec = _deploy(settings)
    assert not rec.of_type(PV)
    pvc = rec.one(PVC, "models-volume-claim")
    assert pvc.inputs["spec"]["storageClassName"] == "fast-ssd"
    assert "volumeName" not in pvc.inputs["spec"]
    assert pvc.inputs["spec"]["resources"] == {"requests": {"storage": "500Gi"}}


def test_headless_services_give_the_gateway_dns_upstreams(nodes):
    rec = _deploy()
    svc = rec.one(SERVICE, "llm-service")
    assert svc.inputs["spec"]["clusterIP"] == "None"
    assert svc.inputs["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http"}]
    assert svc.inputs["spec"]["selector"] == rec.one(DEPLOYMENT, "llm-deployment").inputs["spec"]["selector"]["matchLabels"]
    data = rec.one(CONFIG_MAP, "gateway-config").inputs["data"]
    caddyfile = data["Caddyfile"]
    # Services are looked up per request from the routes file the pod's supervisor writes from
    # gateway.json (its runtime names the cluster's SRV records, checked below).
    assert "name `{serveform.srv}`" in caddyfile and "llm" not in caddyfile
    assert "serveform.internal" not in caddyfile and "resolvers 127.0.0.1" not in caddyfile
    assert GATEWAY_TOKEN not in caddyfile and "SERVEFORM_TOKEN" not in caddyfile
    # The pod's gateway renders the same from gateway.json: cluster DNS, metrics for the scaler's pod.
    document = json.loads(data["gateway.json"])
    assert document["runtime"]["replica_dns"] == "system"
    assert document["runtime"]["srv_lookups"]["llm"] == {"service": "http", "proto": "tcp", "name": "llm.team-a.svc.cluster.local"}
    assert document["runtime"]["metrics_address"] == "0.0.0.0" and document["runtime"]["metrics_port"] == 9180
    assert [p["name"] for p in document["plans"]] == ["llm", "chat"]
    assert GATEWAY_TOKEN not in data["gateway.json"] and HF_TOKEN not in data["gateway.json"]


def test_gateway_runs_serveforms_gateway_behind_a_load_balancer_with_secrets_in_a_secret(nodes):
    rec = _deploy()
    public = rec.one(SERVICE, "gateway-service")
    assert public.inputs["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in public.inputs["spec"]["ports"]] == [80, 443]
    secrets = rec.one(SECRET, "gateway-secrets")
    assert secrets.secret_inputs == ["stringData"]
    assert json.loads(secrets.inputs["stringData"]["tokens.json"]) == [GATEWAY_TOKEN]
    gateway = rec.one(DEPLOYMENT, "gateway-deployment")
    container = _container(gateway)
    assert container["image"] == IMAGE
    assert container["command"][:2] == ["sh", "-c"]
    assert container["command"][2].endswith("exec python -m serveform.gateway run --state-dir /var/lib/serveform-gateway/state")
    assert "cp /etc/serveform-gateway/config/gateway.json /var/lib/serveform-gateway/state/gateway.json" in container["command"][2]
    assert "envFrom" not in container
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/serveform-gateway/config", "readOnly": True}
    assert mounts["secrets"]["mountPath"] == "/etc/serveform-gateway/secrets" and mounts["secrets"]["readOnly"]
    volumes = {v["name"]: v for v in gateway.inputs["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"] == {"secretName": "gateway-secrets-a1b2c3", "defaultMode": 0o400}
    assert volumes["config"]["configMap"] == {"name": "gateway-config-a1b2c3"}
    document = json.loads(rec.one(CONFIG_MAP, "gateway-config").inputs["data"]["gateway.json"])
    assert document["tokens_file"] == "/etc/serveform-gateway/secrets/tokens.json"
    assert rec.outputs["gateway_address"] == LB_ADDRESS
    assert rec.outputs["gateway"] == {"address": f"{LB_ADDRESS}:443", "ca_cert": None, "domain": "example.com"}
    assert rec.outputs["domain"] == "example.com"
    assert _service(rec, "llm")["url"] == "https://llm.example.com"
    assert _service(rec, "llm")["model_endpoint"] == "https://gateway.example.com/v1"
    assert _service(rec, "llm")["group"] == "llm"


def test_without_an_image_the_runtime_image_runs_and_unnamed_it_is_refused(nodes, monkeypatch):
    import serveform.image
    from serveform.image import ImageBuildError

    settings = StackSettings.from_config(
        {"backend": "k8s", "services": ["chat.dstack.yml"], "k8s": {"namespace": "team-a"}}, stack="k8s", project_dir=str(_PROJECT[0])
    )
    # The checkout's runtime image (`serveform image ref`) runs the gateway when no image is set...
    monkeypatch.setattr(serveform.image, "image_ref", lambda root=None: "serveform:0123456789ab")
    rec = run_program(lambda: backend.deploy(settings, [_plan(CHAT, "chat.dstack.yml")]))
    assert _container(rec.one(DEPLOYMENT, "gateway-deployment"))["image"] == "serveform:0123456789ab"
    # ...and where it cannot be named (no checkout, binaries not built) the stack is refused.
    def unnamed(root=None):
        raise ImageBuildError("pulumi is not built")

    monkeypatch.setattr(serveform.image, "image_ref", unnamed)
    with pytest.raises(pulumi.RunError, match=r"serveform:k8s.image: not set, and serveform's runtime image cannot be named here: pulumi is not built"):
        run_program(lambda: backend.deploy(settings, [_plan(CHAT, "chat.dstack.yml")]))
    # The old key still names the image.
    legacy = settings.model_copy(update={"k8s": settings.k8s.model_copy(update={"scaler_image": "old:1"})})
    rec = run_program(lambda: backend.deploy(legacy, [_plan(CHAT, "chat.dstack.yml")]))
    assert _container(rec.one(DEPLOYMENT, "gateway-deployment"))["image"] == "old:1"


def test_scaler_deployment_may_only_touch_deployments_in_its_namespace(nodes):
    rec = _deploy()
    role = rec.one("kubernetes:rbac.authorization.k8s.io/v1:Role", "scaler-role")
    writes = [r for r in role.inputs["rules"] if set(r["verbs"]) & {"patch", "update", "create", "delete"}]
    # Writes by name only: the stack's own service Deployments (issue 16), never another in the namespace.
    assert writes == [
        {"apiGroups": ["apps"], "resources": ["deployments"], "resourceNames": ["chat", "llm"], "verbs": ["get", "patch", "update"]}
    ]
    assert not rec.of_type("kubernetes:rbac.authorization.k8s.io/v1:ClusterRole")
    scaler = rec.one(DEPLOYMENT, "scaler-deployment")
    spec = scaler.inputs["spec"]
    assert spec["strategy"] == {"type": "Recreate"} and spec["replicas"] == 1
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "scaler"
    command = _container(scaler)["command"]
    assert command[1:6] == ["-m", "serveform.scaler", "run", "--stack", "k8s"]
    assert command[command.index("--metrics-url") + 1] == "http://gateway-metrics.team-a.svc:9180/metrics"
    assert _container(scaler)["image"] == IMAGE
    assert _container(scaler)["envFrom"] == [{"secretRef": {"name": "scaler-env", "optional": True}}]
    assert scaler.inputs["metadata"]["labels"]["serveform.dev/stack"] == "k8s"
    # Without an autoscaling service there is no scaler.
    rec = _deploy(plans=[_plan(CHAT, "chat.dstack.yml")])
    assert not [r for r in rec.of_type(DEPLOYMENT) if r.name.startswith("scaler")]
    assert not [r for r in rec.of_type(CONFIG_MAP) if r.name.startswith("scaler")]


def test_scaler_pod_gets_the_project_files_and_runs_on_them(nodes, project):
    rec = _deploy()
    files = rec.one(CONFIG_MAP, "scaler-project")
    assert files.inputs["metadata"]["name"] == "scaler-project"
    data = files.inputs["data"]
    assert len(data) == 5, data.keys()
    pulumi_yaml = json.loads(next(v for k, v in data.items() if k.endswith("-Pulumi.yaml")))
    assert pulumi_yaml["main"] == "__main__.py" and pulumi_yaml["stackConfigDir"] == "stacks"
    assert "virtualenv" not in pulumi_yaml["runtime"]["options"]  # the image's python has serveform
    # The pod's stack file: the same config, with the image the deploying `up` used named
    # explicitly and no kubeconfig or context (the pod uses its ServiceAccount).
    pod_stack = yaml.safe_load(next(v for k, v in data.items() if k.endswith("-Pulumi.k8s.yaml")))
    expected = yaml.safe_load((project / "stacks/Pulumi.k8s.yaml").read_text())
    k8s_config = {k: v for k, v in (expected["config"].get("serveform:k8s") or {}).items() if k not in ("kubeconfig", "context")}
    expected["config"]["serveform:k8s"] = k8s_config  # an explicit image: no runtime image to name
    assert pod_stack == expected
    assert next(v for k, v in data.items() if k.endswith("-llm.dstack.yml")) == LLM
    scaler = rec.one(DEPLOYMENT, "scaler-deployment")
    pod = scaler.inputs["spec"]["template"]["spec"]
    container = _container(scaler)
    command = container["command"]
    assert command[command.index("--project-dir") + 1] == "/srv/serveform"
    assert command[command.index("--state") + 1] == "/var/lib/serveform-scaler/k8s.json"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    # /tmp: the root filesystem is read-only (restricted pod security).
    assert mounts == {
        "state": "/var/lib/serveform-scaler", "project": "/srv/serveform", "tmp": "/tmp",
        # The gateway's tokens, for its metrics listener (it requires one when tokens are set).
        "metrics-token": "/etc/serveform/metrics-token",
    }
    assert command[command.index("--metrics-token-file") + 1] == "/etc/serveform/metrics-token/tokens.json"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["project"] == {"name": "project", "emptyDir": {}}
    items = volumes["project-source"]["configMap"]["items"]
    assert sorted(i["path"] for i in items) == ["Pulumi.yaml", "__main__.py", "chat.dstack.yml", "llm.dstack.yml", "stacks/Pulumi.k8s.yaml"]
    assert {i["key"] for i in items} == set(data)
    (init,) = pod["initContainers"]
    assert init["image"] == IMAGE and "/etc/serveform/project/*" in init["command"][-1]
    # A missing project file stops before anything is registered, naming it.
    (project / "chat.dstack.yml").unlink()
    with pytest.raises(pulumi.RunError, match=r"chat.dstack.yml: cannot read it for the scaler's project ConfigMap"):
        _deploy()


def test_children_are_parented_to_their_components(nodes):
    rec = _deploy()
    for resource in rec.resources:
        if resource.name.startswith("llm-"):
            assert "serveform:k8s:GpuInstanceGroup" in resource.urn, resource.urn
        if resource.name.startswith("gateway-"):
            assert "serveform:k8s:Gateway" in resource.urn, resource.urn
        if resource.name.startswith("models-volume-"):
            assert "serveform:k8s:Volume" in resource.urn, resource.urn
    assert rec.one(NAMESPACE).inputs["metadata"]["name"] == "team-a"


def test_more_gpus_than_any_node_has_fails_before_anything_is_registered(monkeypatch):
    monkeypatch.setattr(_capacity, "read_nodes", lambda kubeconfig, context: list(NODES))
    greedy = _plan(LLM.replace("A100:2", "A100:16"), "greedy.dstack.yml")
    registered = []
    with pytest.raises(pulumi.RunError) as err:
        run_program(lambda: (backend.deploy(_settings(), [greedy]), registered.append(True)))
    message = str(err.value)
    assert "greedy.dstack.yml: error: resources.gpu" in message
    assert "needs 16 nvidia.com/gpu" in message and "the most any schedulable node has is 8" in message
    assert not registered


def test_gpu_model_no_node_has_fails_with_its_name(monkeypatch):
    monkeypatch.setattr(_capacity, "read_nodes", lambda kubeconfig, context: list(NODES))
    h100 = _plan(LLM.replace("A100:2", "H100:1"), "h100.dstack.yml")
    with pytest.raises(pulumi.RunError, match=r"h100.dstack.yml: error: resources.gpu: no schedulable node has 1 H100"):
        run_program(lambda: backend.deploy(_settings(), [h100]))


def test_unreachable_cluster_is_a_clear_error(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    settings = _settings(k8s={"kubeconfig": str(kubeconfig), "context": "missing"})
    with pytest.raises(pulumi.RunError, match=r"serveform:k8s: cannot load kubeconfig .*context missing"):
        run_program(lambda: backend.deploy(settings, [_plan(LLM, "llm.dstack.yml")]))


def test_capacity_check_can_be_turned_off_for_autoscaled_clusters(monkeypatch):
    def fail(*_args):
        raise AssertionError("nodes must not be read")

    monkeypatch.setattr(_capacity, "read_nodes", fail)
    rec = _deploy(_settings(k8s={"namespace": "x", "check_capacity": False}))
    pod = rec.one(DEPLOYMENT, "llm-deployment").inputs["spec"]["template"]["spec"]
    assert "affinity" not in pod
    assert _container(rec.one(DEPLOYMENT, "llm-deployment"))["resources"]["limits"] == {"nvidia.com/gpu": "2"}


def test_kubeconfig_context_and_namespace_configure_the_provider(nodes):
    settings = _settings(k8s={"kubeconfig": "conf/kubeconfig", "context": "prod", "namespace": "ml", "create_namespace": False})
    rec = _deploy(settings)
    provider = rec.one("pulumi:providers:kubernetes")
    assert provider.inputs["kubeconfig"] == str(_PROJECT[0] / "conf/kubeconfig")
    assert provider.inputs["context"] == "prod"
    assert provider.inputs["namespace"] == "ml"
    assert not rec.of_type(NAMESPACE)
    assert nodes == [(str(_PROJECT[0] / "conf/kubeconfig"), "prod")]


def test_stack_for_another_backend_is_refused_before_registration(nodes):
    settings = StackSettings.from_config({"backend": "aws", "services": ["x"]}, stack="k8s", project_dir="/p")
    with pytest.raises(pulumi.RunError, match="serveform:backend"):
        run_program(lambda: backend.deploy(settings, [_plan(CHAT, "chat.dstack.yml")]))


def test_amd_gpus_use_the_amd_device_plugin_resource(monkeypatch):
    amd_nodes = [*NODES, _capacity.NodeFacts(name="amd-0", allocatable={"amd.com/gpu": "1"})]
    monkeypatch.setattr(_capacity, "read_nodes", lambda kubeconfig, context: amd_nodes)
    amd = _plan(CHAT.replace("port: 8000", "port: 8000\nresources:\n  gpu: amd:1"), "amd.dstack.yml")
    rec = _deploy(plans=[amd])
    deployment = rec.one(DEPLOYMENT, "chat-deployment")
    pod = deployment.inputs["spec"]["template"]["spec"]
    assert _container(deployment)["resources"]["limits"] == {"amd.com/gpu": "1"}
    assert pod["tolerations"] == [{"key": "amd.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in pod


def test_the_k8s_stack_config_deploys_its_example_service(monkeypatch):
    """stacks/Pulumi.k8s.yaml and its services compile and wire (no GPU: no cluster read)."""
    import yaml

    import serveform.image

    monkeypatch.setattr(serveform.image, "image_ref", lambda root=None: "serveform:0123456789ab")

    from serveform.translator import compile_file

    root = Path(__file__).resolve().parents[3]
    config = yaml.safe_load((root / "stacks" / "Pulumi.k8s.yaml").read_text())["config"]
    settings = StackSettings.from_config(config, stack="k8s", project_dir=root)
    context = CompileContext(backend="k8s", domain=settings.domain)
    plans = [compile_file(path, context=context).plan for path in settings.service_paths]
    rec = run_program(lambda: backend.deploy(settings, plans))
    chat = rec.one(DEPLOYMENT, "chat-deployment")
    assert chat.inputs["metadata"]["namespace"] == "serveform"
    assert chat.inputs["spec"]["replicas"] == plans[0].replicas.initial
    assert rec.one("pulumi:providers:kubernetes").inputs["kubeconfig"] == str(root / ".serveform/k8s-local/kubeconfig")
    assert _service(rec, "chat")["url"] == "https://chat.k8s.localhost"
    # The chat example (`python:`) runs in the runtime image, from the project in it, asking
    # for a tenth of its minimum CPU (k8s-local's node has this machine's cores).
    (container,) = chat.inputs["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "serveform:0123456789ab"
    assert "python stacks/examples/chat_server.py" in container["args"][-1]
    assert container["resources"]["requests"]["cpu"] == "100m"


def _service(rec, name):
    return next(s for s in rec.outputs["services"] if s["name"] == name)
