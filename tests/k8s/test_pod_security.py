"""Pod Security admission on a real API server (k8s-local): our pods are admitted where it enforces
"restricted", and a privileged pod is refused there (so the check is live, not a label).

A stack with `serveform:policy.pod_security: restricted` and an autoscaled service (so the
gateway, the scaler and a replica all run) goes up through the real engine; every Deployment
must have its pods (the ReplicaSet controller creates them through admission, and a refused pod
leaves a FailedCreate event instead).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from _k8s_local import K8sLocal, poll
from kubernetes import client as k8s_client

from serveform.stacks.engine import Engine

pytestmark = pytest.mark.timeout(1800)

PASSPHRASE = "k8s-local-pod-security-test"
TOKEN = "psa-test-token-0123456789abcdef0123"
CHAT = """\
type: service
name: chat
image: python:3.11-slim
commands:
  - python -m http.server 8000
port: 8000
replicas: 1..2
scaling:
  metric: rps
  target: 10
"""


@pytest.fixture
def clean_environ():
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _project(root: Path, k8s_local: K8sLocal, namespace: str) -> Path:
    (root / "stacks").mkdir(parents=True)
    (root / "state").mkdir()
    (root / "Pulumi.yaml").write_text("name: serveform\nruntime: python\nstackConfigDir: stacks\n")
    (root / "__main__.py").write_text("from serveform.components.program import run\n\nrun()\n")
    (root / "chat.dstack.yml").write_text(CHAT)
    config = {
        "serveform:backend": "k8s",
        "serveform:domain": "k8s.test",
        "serveform:services": ["chat.dstack.yml"],
        "serveform:retainVolumes": False,
        "serveform:gateway": {"tls": "internal"},
        "serveform:policy": {"pod_security": "restricted"},
        "serveform:k8s": {
            "kubeconfig": str(k8s_local.kubeconfig),
            "context": k8s_local.context,
            "namespace": namespace,
            "rollout_timeout_seconds": 120,
            "image": "serveform:test",
        },
    }
    (root / "stacks" / "Pulumi.psa.yaml").write_text(json.dumps({"config": config}, indent=2))
    os.environ["PULUMI_BACKEND_URL"] = (root / "state").as_uri()
    os.environ["PULUMI_CONFIG_PASSPHRASE"] = PASSPHRASE
    os.environ["PULUMI_HOME"] = str(root / "pulumi-home")
    return root


def test_restricted_namespace_admits_our_pods_and_refuses_a_privileged_one(tmp_path, k8s_local, kube, clean_environ) -> None:
    namespace = f"sf-psa-{os.getpid()}"
    project = _project(tmp_path, k8s_local, namespace)
    engine = Engine(stack="psa", project=project, on_output=lambda line: None)
    core = k8s_client.CoreV1Api(kube)
    from pulumi import automation as auto

    # With a token, the scaler pod also mounts the gateway's Secret (metrics require the token).
    engine.stack_obj.set_config("serveform:tokens[0]", auto.ConfigValue(TOKEN, secret=True), path=True)
    try:
        up = engine.up()
        assert up.summary.result == "succeeded"
        labels = core.read_namespace(namespace).metadata.labels
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"

        deployments = {d.metadata.name: d for d in k8s_client.AppsV1Api(kube).list_namespaced_deployment(namespace).items}
        assert set(deployments) == {"gateway", "scaler", "chat"}
        for name, deployment in deployments.items():
            selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
            poll(
                lambda selector=selector: core.list_namespaced_pod(namespace, label_selector=selector).items,
                timeout_seconds=60, what=f"pods of {name}",
            )
        refused = [
            e.message for e in core.list_namespaced_event(namespace).items
            if e.reason == "FailedCreate" and "PodSecurity" in (e.message or "")
        ]
        assert refused == []
        scaler_volumes = {v.name: v for v in deployments["scaler"].spec.template.spec.volumes}
        gateway_secret = scaler_volumes["metrics-token"].secret.secret_name
        assert core.read_namespaced_secret(gateway_secret, namespace).data.keys() >= {"tokens.json"}
        policies = {p.metadata.name for p in k8s_client.NetworkingV1Api(kube).list_namespaced_network_policy(namespace).items}
        assert policies == {"chat", "gateway", "scaler"}

        # Negative control: the same API server refuses what "restricted" forbids in this namespace.
        privileged = k8s_client.V1Pod(
            metadata=k8s_client.V1ObjectMeta(name="privileged"),
            spec=k8s_client.V1PodSpec(
                containers=[
                    k8s_client.V1Container(
                        name="x", image="busybox", security_context=k8s_client.V1SecurityContext(privileged=True)
                    )
                ]
            ),
        )
        with pytest.raises(k8s_client.ApiException) as caught:
            core.create_namespaced_pod(namespace, privileged)
        assert caught.value.status == 403 and "PodSecurity" in caught.value.body
    finally:
        engine.destroy()
