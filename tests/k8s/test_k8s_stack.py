"""The `k8s` backend deployed for real: the Pulumi CLI (Automation API engine) against k8s-local.

One stack with two services — `chat` (CPU, autoscaled 1..3, a secret env from stack secrets; in
serveform's runtime image) and `llm` (two A100s, shm, a network volume, a secret env), on kwok's
nodes — goes through `preview`, `up`, a
no-change `up`, scale `up`s as the scaler and `serveform scale` run them (kept by a plain `up`), and
`destroy`. Every check reads the cluster through the Kubernetes API. A second stack asks for
more GPUs than any node has and must fail fast with a message naming the service file.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from _k8s_local import K8sLocal, poll
from kubernetes import client as k8s_client

from serveform.stacks.engine import Engine

pytestmark = pytest.mark.timeout(3600)

API_KEY = "chat-api-key-SECRET-5d41"
HF_TOKEN = "hf_SECRET_k8s_local_9e2c"
GATEWAY_TOKEN = "gateway-token-SECRET-31ab-0123456789abcdef"
PASSPHRASE = "k8s-local-test-passphrase"
# Pulumi waits for rollouts itself; these bound only what happens after `up` returns.
SETTLE_TIMEOUT_SECONDS = 60

CHAT = """\
type: service
name: chat
python: "3.11"
env:
  - API_KEY
  - GREETING=hello
commands:
  - python -m http.server 8000
port: 8000
probes:
  - type: http
    url: /
replicas: 1..3
scaling:
  metric: rps
  target: 10
"""

LLM = """\
type: service
name: llm
image: vllm/vllm-openai:v0.6.0
env:
  - HF_TOKEN
commands:
  - vllm serve facebook/opt-125m --port 8000
port: 8000
resources:
  gpu: A100:2
  shm_size: 8GB
volumes:
  - name: models
    path: /models
model:
  name: opt
  format: openai
"""

GREEDY = """\
type: service
name: greedy
image: vllm/vllm-openai:v0.6.0
port: 8000
resources:
  gpu: 8
"""


@pytest.fixture
def clean_environ():
    """The engine exports PULUMI_*/SERVEFORM_* into this process; give other tests theirs back."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)



def _runtime_image() -> str:
    from serveform.image import image_ref

    return image_ref()


def _project(
    root: Path, stack: str, k8s_local: K8sLocal, namespace: str, services: dict[str, str], **k8s_settings: object
) -> Path:
    (root / "services").mkdir(parents=True)
    (root / "stacks").mkdir()
    (root / "state").mkdir()
    (root / "Pulumi.yaml").write_text("name: serveform\nruntime: python\nstackConfigDir: stacks\n")
    # The program a scaler pod runs (the ConfigMap of project files carries it).
    (root / "__main__.py").write_text("from serveform.components.program import run\n\nrun()\n")
    for name, text in services.items():
        (root / "services" / f"{name}.dstack.yml").write_text(text)
    config = {
        "serveform:backend": "k8s",
        "serveform:domain": "k8s.test",
        "serveform:services": [f"services/{name}.dstack.yml" for name in services],
        "serveform:retainVolumes": False,
        "serveform:gateway": {"tls": "internal"},
        "serveform:k8s": {
            "kubeconfig": str(k8s_local.kubeconfig),
            "context": k8s_local.context,
            "namespace": namespace,
            "volume_host_path": str(root / "volumes"),
            "volume_size_gb": 1,
            "rollout_timeout_seconds": 120,
            # No `image`: serveform's runtime image, imported into the real node (never pulled).
            # `python:` services run in it too; the node has this machine's cores.
            "python_image": "runtime",
            "cpu_request_fraction": 0.1,
            **k8s_settings,
        },
    }
    (root / "stacks" / f"Pulumi.{stack}.yaml").write_text(json.dumps({"config": config}, indent=2))
    os.environ["PULUMI_BACKEND_URL"] = (root / "state").as_uri()
    os.environ["PULUMI_CONFIG_PASSPHRASE"] = PASSPHRASE
    os.environ["PULUMI_HOME"] = str(root / "pulumi-home")
    return root


def _engine(project: Path, stack: str) -> Engine:
    lines: list[str] = []
    engine = Engine(stack=stack, project=project, on_output=lines.append)
    engine.output = lines  # type: ignore[attr-defined]
    return engine


def _running_pods(core: k8s_client.CoreV1Api, namespace: str, service: str) -> list:
    pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/name={service}").items
    return [p for p in pods if p.status.phase == "Running" and p.metadata.deletion_timestamp is None]


def _namespace_exists(core: k8s_client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespace(namespace)
    except k8s_client.ApiException as exc:
        if exc.status == 404:
            return False
        raise
    return True


def _state_text(project: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in (project / "state").rglob("*") if p.is_file())


def test_preview_up_noop_scale_and_destroy(tmp_path: Path, k8s_local: K8sLocal, kube, clean_environ) -> None:
    from pulumi import automation as auto

    marks = [("start", time.monotonic())]

    def mark(step: str) -> None:
        marks.append((step, time.monotonic()))

    namespace = f"sf-{os.getpid()}"
    project = _project(tmp_path, "k8s", k8s_local, namespace, {"chat": CHAT, "llm": LLM})
    engine = _engine(project, "k8s")
    stack = engine.stack_obj
    stack.set_config("serveform:secrets.API_KEY", auto.ConfigValue(API_KEY, secret=True), path=True)
    stack.set_config("serveform:secrets.HF_TOKEN", auto.ConfigValue(HF_TOKEN, secret=True), path=True)
    stack.set_config("serveform:tokens[0]", auto.ConfigValue(GATEWAY_TOKEN, secret=True), path=True)
    stack_file = (project / "stacks" / "Pulumi.k8s.yaml").read_text()
    for secret in (API_KEY, HF_TOKEN, GATEWAY_TOKEN):
        assert secret not in stack_file
    core = k8s_client.CoreV1Api(kube)
    apps = k8s_client.AppsV1Api(kube)

    # preview: the plan, and nothing in the cluster.
    preview = engine.preview()
    mark("preview")
    assert preview.change_summary.get("create", 0) >= 10, preview.change_summary
    assert not _namespace_exists(core, namespace)

    # up
    up = engine.up()
    mark("up")
    assert up.summary.result == "succeeded"
    outputs = engine.outputs()
    # The loopback load balancer's address for this Service (its own address in 127.0.0.0/8).
    assert outputs["gateway_address"].startswith("127.") and outputs["gateway_address"] != "127.0.0.1"
    services = {s["name"]: s for s in outputs["services"]}
    assert services["llm"]["model_endpoint"] == "https://gateway.k8s.test/v1"

    chat = apps.read_namespaced_deployment("chat", namespace)
    llm = apps.read_namespaced_deployment("llm", namespace)
    assert chat.spec.replicas == 1 and llm.spec.replicas == 1
    llm_pod = llm.spec.template.spec
    (llm_container,) = llm_pod.containers
    assert llm_container.resources.limits == {"nvidia.com/gpu": "2"}
    assert [(t.key, t.operator, t.effect) for t in llm_pod.tolerations] == [("nvidia.com/gpu", "Exists", "NoSchedule")]
    assert llm_pod.node_selector == {"nvidia.com/gpu.present": "true"}
    shm = next(v for v in llm_pod.volumes if v.name == "shm")
    assert shm.empty_dir.medium == "Memory" and shm.empty_dir.size_limit == "8Gi"
    (chat_container,) = chat.spec.template.spec.containers
    assert chat_container.resources.limits is None
    assert {e.name: e.value for e in chat_container.env}["GREETING"] == "hello"

    # Secrets: in Kubernetes Secrets, referenced by envFrom; never in the Deployments.
    (env_ref,) = llm_container.env_from
    llm_secret = core.read_namespaced_secret(env_ref.secret_ref.name, namespace)
    import base64

    assert base64.b64decode(llm_secret.data["HF_TOKEN"]).decode() == HF_TOKEN
    chat_secret = core.read_namespaced_secret(chat_container.env_from[0].secret_ref.name, namespace)
    assert base64.b64decode(chat_secret.data["API_KEY"]).decode() == API_KEY
    for deployment in apps.list_namespaced_deployment(namespace).items:
        text = json.dumps(kube.sanitize_for_serialization(deployment))
        for secret in (API_KEY, HF_TOKEN, GATEWAY_TOKEN):
            assert secret not in text, deployment.metadata.name
    for config_map in core.list_namespaced_config_map(namespace).items:
        assert GATEWAY_TOKEN not in json.dumps(config_map.data)
    state = _state_text(project)
    for secret in (API_KEY, HF_TOKEN, GATEWAY_TOKEN):
        assert secret not in state, "a secret is in the Pulumi state in plain text"

    # Pods really scheduled: the GPU pod on the GPU node, chat on the CPU node, Running (kwok plays the kubelet;
    # tests/k8s/test_real_pods.py runs real containers on k8s-local's real node).
    llm_pods = poll(lambda: _running_pods(core, namespace, "llm"), timeout_seconds=SETTLE_TIMEOUT_SECONDS, what="llm pod Running")
    assert [p.spec.node_name for p in llm_pods] == ["kwok-gpu-0"]
    chat_pods = poll(lambda: _running_pods(core, namespace, "chat"), timeout_seconds=SETTLE_TIMEOUT_SECONDS, what="chat pod Running")
    assert [p.spec.node_name for p in chat_pods] == ["kwok-cpu-0"]
    claim = core.read_namespaced_persistent_volume_claim("models", namespace)
    assert claim.status.phase == "Bound" and claim.spec.volume_name == f"{namespace}-models"
    gateway = core.read_namespaced_service("gateway", namespace)
    assert gateway.spec.type == "LoadBalancer"
    assert gateway.status.load_balancer.ingress[0].ip == outputs["gateway_address"]
    scaler = apps.read_namespaced_deployment("scaler", namespace)
    assert scaler.spec.template.spec.service_account_name == "scaler"
    assert "--metrics-url" in scaler.spec.template.spec.containers[0].command
    poll(lambda: _running_pods(core, namespace, "serveform-scaler"), timeout_seconds=SETTLE_TIMEOUT_SECONDS, what="scaler pod Running")
    llm_service = core.read_namespaced_service("llm", namespace)
    assert llm_service.spec.cluster_ip == "None"
    # Routes are not in the Caddyfile (the gateway's module reads them from its routes file, so a
    # route change reloads nothing); replicas are found in cluster DNS (gateway.json, below).
    caddyfile = core.list_namespaced_config_map(namespace, label_selector="app.kubernetes.io/name=gateway").items[0].data["Caddyfile"]
    assert "routes_file" in caddyfile and "llm" not in caddyfile
    _assert_gateway_pod_runs_serveforms_gateway(core, apps, namespace)
    _assert_scaler_pod_gets_the_project(core, apps, namespace, project)

    # A second `up` with nothing changed changes nothing.
    again = engine.up()
    mark("no-change up")
    # "read": the program reads its last deployment (replica counts) back from the stack.
    assert set(again.summary.resource_changes) == {"same", "read"}, again.summary.resource_changes

    # A scale `up` (what the scaler and `serveform scale` run): chat at 3, nothing else changes.
    scaled = engine.scale({"chat": 3})
    mark("scale-up up")
    assert scaled.summary.resource_changes.get("update") == 1, scaled.summary.resource_changes
    assert apps.read_namespaced_deployment("chat", namespace).spec.replicas == 3
    running = poll(
        lambda: len(_running_pods(core, namespace, "chat")) == 3 and _running_pods(core, namespace, "chat"),
        timeout_seconds=SETTLE_TIMEOUT_SECONDS,
        what="3 chat pods Running",
    )
    assert len(running) == 3
    # The count is the stack's, not the reviewed file's: the scaler's project is unchanged, and
    # a plain `up` of the reviewed files (what CI runs) keeps 3.
    _assert_scaler_pod_gets_the_project(core, apps, namespace, project)
    assert set(engine.up().summary.resource_changes) == {"same", "read"}
    assert apps.read_namespaced_deployment("chat", namespace).spec.replicas == 3
    assert engine.outputs()["replicas"]["chat"]["source"] == "manual"
    # Narrowing the reviewed range clamps the count at the next `up`.
    chat_file = project / "services" / "chat.dstack.yml"
    chat_file.write_text(CHAT.replace("replicas: 1..3", "replicas: 1..2"))
    engine.up()
    assert apps.read_namespaced_deployment("chat", namespace).spec.replicas == 2
    assert engine.outputs()["replicas"]["chat"]["source"] == "clamped"
    chat_file.write_text(CHAT)
    # ...and back down to 1.
    engine.scale({"chat": 1})
    mark("scale-down up")
    poll(
        lambda: len(_running_pods(core, namespace, "chat")) == 1,
        timeout_seconds=SETTLE_TIMEOUT_SECONDS,
        what="chat back to 1 Running pod",
    )
    assert len(_running_pods(core, namespace, "llm")) == 1

    # destroy: nothing of the stack remains.
    engine.destroy()
    mark("destroy")
    poll(lambda: not _namespace_exists(core, namespace), timeout_seconds=SETTLE_TIMEOUT_SECONDS, what="namespace deleted")
    selector = "app.kubernetes.io/part-of=serveform,serveform.dev/stack=k8s"
    assert not core.list_persistent_volume(label_selector=selector).items
    assert not core.list_pod_for_all_namespaces(label_selector=selector).items
    assert not apps.list_deployment_for_all_namespaces(label_selector=selector).items
    print(", ".join(f"{step} {t - prev:.1f} s" for (_, prev), (step, t) in zip(marks, marks[1:])))


def _assert_gateway_pod_runs_serveforms_gateway(core: k8s_client.CoreV1Api, apps: k8s_client.AppsV1Api, namespace: str) -> None:
    """The gateway pod runs serveform's gateway on gateway.json (ConfigMap) and its secrets (Secret)."""
    import base64

    deployment = apps.read_namespaced_deployment("gateway", namespace)
    pod = deployment.spec.template.spec
    (container,) = pod.containers
    assert container.image == _runtime_image()
    assert container.command[-1].endswith("exec python -m serveform.gateway run --state-dir /var/lib/serveform-gateway/state")
    # No secret in its environment (the tokens are files): only what a read-only root needs.
    assert not container.env_from
    assert {(e.name, e.value) for e in container.env or ()} <= {("HOME", "/tmp"), ("PYTHONDONTWRITEBYTECODE", "1")}
    mounts = {m.name: m for m in container.volume_mounts}
    assert mounts["config"].mount_path == "/etc/serveform-gateway/config" and mounts["config"].read_only
    assert mounts["secrets"].mount_path == "/etc/serveform-gateway/secrets" and mounts["secrets"].read_only
    volumes = {v.name: v for v in pod.volumes}
    config = core.read_namespaced_config_map(volumes["config"].config_map.name, namespace)
    document = json.loads(config.data["gateway.json"])
    assert document["runtime"]["replica_dns"] == "system"
    assert document["runtime"]["srv_lookups"]["llm"]["name"] == f"llm.{namespace}.svc.cluster.local"
    assert document["runtime"]["metrics_port"] == 9180 and document["runtime"]["metrics_address"] == "0.0.0.0"
    assert document["tokens_file"] == "/etc/serveform-gateway/secrets/tokens.json"
    assert GATEWAY_TOKEN not in config.data["gateway.json"]
    assert volumes["secrets"].secret.default_mode == 0o400
    secret = core.read_namespaced_secret(volumes["secrets"].secret.secret_name, namespace)
    assert json.loads(base64.b64decode(secret.data["tokens.json"])) == [GATEWAY_TOKEN]
    metrics = core.read_namespaced_service("gateway-metrics", namespace)
    assert [(p.port, p.target_port) for p in metrics.spec.ports] == [(9180, "metrics")]


def _assert_scaler_pod_gets_the_project(
    core: k8s_client.CoreV1Api, apps: k8s_client.AppsV1Api, namespace: str, project: Path
) -> None:
    """The scaler pod copies the project files from a ConfigMap and runs `--project-dir` on them."""
    deployment = apps.read_namespaced_deployment("scaler", namespace)
    pod = deployment.spec.template.spec
    (container,) = pod.containers
    command = container.command
    assert container.image == _runtime_image()
    assert command[command.index("--project-dir") + 1] == "/srv/serveform"
    assert command[command.index("--state") + 1] == "/var/lib/serveform-scaler/k8s.json"
    assert [e.secret_ref.name for e in container.env_from] == ["scaler-env"]
    mounts = {m.name: m.mount_path for m in container.volume_mounts}
    assert mounts == {
        "state": "/var/lib/serveform-scaler",
        "project": "/srv/serveform",
        "tmp": "/tmp",
        "metrics-token": "/etc/serveform/metrics-token",
    }
    (init,) = pod.init_containers
    assert init.image == _runtime_image() and "/srv/serveform" in init.command[-1]
    volumes = {v.name: v for v in pod.volumes}
    source = volumes["project-source"].config_map
    files = core.read_namespaced_config_map(source.name, namespace).data
    paths = {item.path: files[item.key] for item in source.items}
    assert sorted(paths) == ["Pulumi.yaml", "__main__.py", "services/chat.dstack.yml", "services/llm.dstack.yml", "stacks/Pulumi.k8s.yaml"]
    import yaml

    # The pod's copy names the runtime image and has no kubeconfig (the pod uses its ServiceAccount).
    pod_k8s = yaml.safe_load(paths["stacks/Pulumi.k8s.yaml"])["config"]["serveform:k8s"]
    assert "kubeconfig" not in pod_k8s and "context" not in pod_k8s
    assert pod_k8s["runtime_image"] == _runtime_image() and pod_k8s["python_image"] == "runtime"
    assert paths["services/chat.dstack.yml"] == CHAT
    for secret in (API_KEY, HF_TOKEN, GATEWAY_TOKEN):
        assert secret not in json.dumps(files)


def test_more_gpus_than_any_node_fails_up_fast(tmp_path: Path, k8s_local: K8sLocal, kube, clean_environ) -> None:
    from pulumi import automation as auto

    namespace = f"sf-greedy-{os.getpid()}"
    project = _project(tmp_path, "k8s-greedy", k8s_local, namespace, {"greedy": GREEDY})
    engine = _engine(project, "k8s-greedy")
    t0 = time.monotonic()
    with pytest.raises(auto.CommandError) as err:
        engine.up()
    elapsed = time.monotonic() - t0
    message = str(err.value)
    assert "services/greedy.dstack.yml: error: resources.gpu" in message
    assert "needs 8 nvidia.com/gpu, but the most any schedulable node has is 4" in message
    # Refused before any object was created, long before the rollout timeout (120 s here).
    assert elapsed < 60, elapsed
    assert not _namespace_exists(k8s_client.CoreV1Api(kube), namespace)


def test_without_the_pre_flight_a_bounded_rollout_timeout_still_ends_up(
    tmp_path: Path, k8s_local: K8sLocal, kube, clean_environ
) -> None:
    """For clusters that skip the node check (autoscaled GPU pools), `up` fails after the
    rollout timeout with the scheduler's reason, and `destroy` cleans up what it created."""
    from pulumi import automation as auto

    namespace = f"sf-timeout-{os.getpid()}"
    project = _project(
        tmp_path, "k8s-timeout", k8s_local, namespace, {"greedy": GREEDY},
        check_capacity=False, rollout_timeout_seconds=15,
    )
    engine = _engine(project, "k8s-timeout")
    core = k8s_client.CoreV1Api(kube)
    try:
        t0 = time.monotonic()
        with pytest.raises(auto.CommandError) as err:
            engine.up()
        elapsed = time.monotonic() - t0
        message = str(err.value)
        assert "greedy-deployment" in message and "Minimum number of live Pods was not attained" in message
        assert elapsed < 120, elapsed
        # The reason is on the pod, where `kubectl describe` shows it.
        (pod,) = core.list_namespaced_pod(namespace, label_selector="app.kubernetes.io/name=greedy").items
        assert pod.status.phase == "Pending"
        (scheduled,) = [c for c in pod.status.conditions if c.type == "PodScheduled"]
        assert scheduled.reason == "Unschedulable" and "Insufficient nvidia.com/gpu" in scheduled.message
    finally:
        engine.destroy()
    poll(lambda: not _namespace_exists(core, namespace), timeout_seconds=SETTLE_TIMEOUT_SECONDS, what="namespace deleted")
