"""The k8s stack on k8s-local's real node: real containers of serveform's runtime image.

One stack, the chat example (`python stacks/examples/chat_server.py` from the project, shipped as
the service's code archive and unpacked at /workflow by the pod's init container, in the runtime image, `replicas: 1..2`, a 5 rps target with short delays), state in k8s-local's
S3-compatible object store (Pulumi's `s3://` backend, shared with the in-cluster scaler, whose
`scaler-env` Secret the stack writes from this environment), is deployed once for the module and:

- served through the gateway pod on its LoadBalancer address (loopback) with TLS from the pod's
  internal CA: curl and the `openai` client, plain and streaming; 200 with the token, 401 without;
- a killed gateway pod comes back and serves (with a new internal CA, read again);
- under locust load the scaler pod (its ServiceAccount, no host kubeconfig) runs a scale `up` in
  the cluster that takes chat from 1 to 2 Ready pods, changing nothing but the count; traffic
  reaches both; an `up` from a fresh copy of the project (what CI runs) keeps 2 during the load
  and keeps the scaler's count after it; idle again, the scaler brings chat back to 1;
- a replica pod killed under load is replaced; locust's failures are counted and bounded;
- `destroy` leaves nothing of the stack in the cluster (no volume is retained: none is declared).

Everything is checked through HTTP and the Kubernetes API.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from _k8s_local import K8sLocal, poll
from kubernetes import client as k8s_client

from serveform.stacks.engine import Engine

pytestmark = pytest.mark.timeout(3600)

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "gateway-token-SECRET-real-pods-7c1f-0a9d2e"
PASSPHRASE = "k8s-local-real-pods-passphrase"
DOMAIN = "k8s.test"
CA_PATH = "/var/lib/serveform-gateway/state/caddy/pki/authorities/local/root.crt"
# Pods start in seconds once the image is on the node; an in-cluster `up` takes tens of seconds
# on a busy 2-core machine. These bound waits, they are not performance targets.
READY_TIMEOUT_SECONDS = 180
SCALE_TIMEOUT_SECONDS = 420
LOCUST_LIMIT_SECONDS = 600
# Killing a replica under load: connections in flight to it fail until the gateway's DNS lookup
# drops it. At most this share of the requests may fail.
MAX_FAILURE_RATIO = 0.2

CHAT = (ROOT / "stacks" / "examples" / "chat.dstack.yml").read_text()
for old, new in (
    ("replicas: 1..3", "replicas: 1..2"),
    ("target: 10", "target: 5"),
    ("scale_up_delay: 30s", "scale_up_delay: 5s"),
    ("scale_down_delay: 60s", "scale_down_delay: 10s\n  window: 30s"),
):
    assert old in CHAT, old
    CHAT = CHAT.replace(old, new)


@dataclass
class Deployed:
    engine: Engine
    namespace: str
    address: str
    project: Path
    core: k8s_client.CoreV1Api
    apps: k8s_client.AppsV1Api
    ca_file: Path

    def refresh_ca(self) -> None:
        """The gateway pod's internal root (it changes with the pod: its state is an emptyDir)."""
        from kubernetes.stream import stream

        pod = _ready_pods(self.core, self.namespace, "gateway")[0]
        text = stream(
            self.core.connect_get_namespaced_pod_exec, pod.metadata.name, self.namespace,
            command=["cat", CA_PATH], stderr=True, stdin=False, stdout=True, tty=False,
        )
        assert "BEGIN CERTIFICATE" in text, text
        self.ca_file.write_text(text)

    def client(self, host: str = f"chat.{DOMAIN}", **kwargs) -> httpx.Client:
        """HTTPS to HOST, connected to the load balancer's address (SNI and Host stay HOST)."""
        transport = httpx.HTTPTransport(verify=str(self.ca_file))
        mounts = {f"all://{host}": transport}
        return httpx.Client(base_url=f"https://{host}", mounts=mounts, timeout=30, **kwargs)


def _ready_pods(core: k8s_client.CoreV1Api, namespace: str, name: str) -> list:
    pods = core.list_namespaced_pod(namespace, label_selector=f"app.kubernetes.io/name={name}").items
    return [
        p for p in pods
        if p.metadata.deletion_timestamp is None and p.status.phase == "Running"
        and any(c.type == "Ready" and c.status == "True" for c in p.status.conditions or [])
    ]


def _resolve_to(address: str):
    """Make every connection to *.k8s.test go to ADDRESS (httpx resolves through getaddrinfo)."""
    import socket

    original = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        name = host.decode() if isinstance(host, bytes) else host
        if isinstance(name, str) and name.rstrip(".").endswith(DOMAIN):
            return original(address, *args, **kwargs)
        return original(host, *args, **kwargs)

    socket.getaddrinfo = resolve
    return original


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory, k8s_local_real_node: K8sLocal) -> Iterator[Deployed]:
    import socket

    from kubernetes import config as k8s_config
    from pulumi import automation as auto

    k8s_local = k8s_local_real_node
    kube = k8s_config.new_client_from_config(config_file=str(k8s_local.kubeconfig), context=k8s_local.context)

    saved = dict(os.environ)
    root = tmp_path_factory.mktemp("real-pods")
    (root / "services").mkdir()
    (root / "stacks").mkdir()
    (root / "Pulumi.yaml").write_text("name: serveform\nruntime: python\nstackConfigDir: stacks\n")
    (root / "__main__.py").write_text("from serveform.components.program import run\n\nrun()\n")
    (root / "services" / "chat.dstack.yml").write_text(CHAT)
    # The project is the repository the stack ships to /workflow: the chat server travels in it.
    (root / "stacks" / "examples").mkdir(parents=True)
    (root / "stacks" / "examples" / "chat_server.py").write_text((ROOT / "stacks" / "examples" / "chat_server.py").read_text())
    # Beside the project, not in it: everything in the project is the code the replicas run.
    ca_file = tmp_path_factory.mktemp("real-pods-ca") / "gateway-ca.crt"
    namespace = f"sf-real-{os.getpid()}"
    config = {
        "serveform:backend": "k8s",
        "serveform:domain": DOMAIN,
        "serveform:services": ["services/chat.dstack.yml"],
        "serveform:retainVolumes": False,
        "serveform:gateway": {"tls": "internal"},
        "serveform:k8s": {
            "kubeconfig": str(k8s_local.kubeconfig),
            "context": k8s_local.context,
            "namespace": namespace,
            "rollout_timeout_seconds": READY_TIMEOUT_SECONDS,
            "python_image": "runtime",
            "cpu_request_fraction": 0.1,
        },
    }
    (root / "stacks" / "Pulumi.k8s.yaml").write_text(json.dumps({"config": config}, indent=2))
    # The state lives in k8s-local's object store, where the scaler pod reaches it too.
    os.environ.update(k8s_local.state_env())
    os.environ["PULUMI_CONFIG_PASSPHRASE"] = PASSPHRASE
    os.environ["PULUMI_HOME"] = str(root / "pulumi-home")
    os.environ.pop("KUBECONFIG", None)
    lines: list[str] = []
    engine = Engine(stack="k8s", project=root, on_output=lines.append)
    engine.stack_obj.set_config("serveform:tokens[0]", auto.ConfigValue(TOKEN, secret=True), path=True)
    core, apps = k8s_client.CoreV1Api(kube), k8s_client.AppsV1Api(kube)
    original_getaddrinfo = socket.getaddrinfo
    destroyed = False
    try:
        t0 = time.monotonic()
        assert engine.up().summary.result == "succeeded", "\n".join(lines[-40:])
        address = engine.outputs()["gateway_address"]
        print(f"up: {time.monotonic() - t0:.1f} s")
        _resolve_to(address)
        state = Deployed(engine, namespace, address, root, core, apps, ca_file)
        poll(lambda: _ready_pods(core, namespace, "gateway"), timeout_seconds=READY_TIMEOUT_SECONDS, what="gateway pod Ready")
        state.refresh_ca()
        yield state
        destroyed = True
        _destroy(state)
    finally:
        socket.getaddrinfo = original_getaddrinfo
        if not destroyed:
            try:
                _destroy(Deployed(engine, namespace, "", root, core, apps, ca_file))
            except Exception as exc:  # the test's own failure is the one to report
                print(f"destroy after a failure: {exc}", file=sys.stderr)
        os.environ.clear()
        os.environ.update(saved)


def _destroy(state: Deployed) -> None:
    # The scaler pod may be in the middle of an `up`: stop it first, so the stack is not locked.
    try:
        state.apps.patch_namespaced_deployment_scale("scaler", state.namespace, {"spec": {"replicas": 0}})
        poll(lambda: not state.core.list_namespaced_pod(state.namespace, label_selector="app.kubernetes.io/name=serveform-scaler").items,
             timeout_seconds=120, what="scaler pod gone")
    except k8s_client.ApiException as exc:
        if exc.status != 404:
            raise
    state.engine.destroy()


def _get(state: Deployed, path: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with state.client() as client:
        return client.get(path, headers=headers)


def _serves(state: Deployed) -> bool:
    """One request through the gateway answered 200 (a connection the balancer still sends to a
    pod that is going away, or a gateway still starting, counts as not yet)."""
    try:
        return _get(state, "/ping").status_code == 200
    except httpx.HTTPError:
        return False


def test_gateway_pod_serves_real_chat_pods_with_tls_and_the_token(deployed: Deployed) -> None:
    import openai

    # Real containers on the real node: the gateway, the scaler and chat, all from the runtime image.
    from serveform.image import image_ref

    for name in ("gateway", "chat", "serveform-scaler"):
        (pod,) = poll(lambda name=name: _ready_pods(deployed.core, deployed.namespace, name),
                      timeout_seconds=READY_TIMEOUT_SECONDS, what=f"{name} pod Ready")
        assert pod.spec.node_name == "k8s-local-node", name
        (status,) = pod.status.container_statuses
        assert status.container_id.startswith("containerd://") and status.ready, name
        assert status.image.endswith(image_ref()), (name, status.image)
    # The container runs as the image's non-root user.
    gateway_pod = _ready_pods(deployed.core, deployed.namespace, "gateway")[0]
    from kubernetes.stream import stream

    uid = stream(deployed.core.connect_get_namespaced_pod_exec, gateway_pod.metadata.name, deployed.namespace,
                 command=["id", "-u"], stderr=True, stdin=False, stdout=True, tty=False)
    assert uid.strip() == "10001"

    # curl, exactly as a user would: the service host resolved to the load balancer's address.
    url = f"https://chat.{DOMAIN}/v1/models"
    base = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert", str(deployed.ca_file),
            "--resolve", f"chat.{DOMAIN}:443:{deployed.address}", url]
    assert subprocess.run([*base, "-H", f"Authorization: Bearer {TOKEN}"], capture_output=True, text=True, timeout=60).stdout == "200"
    assert subprocess.run(base, capture_output=True, text=True, timeout=60).stdout == "401"
    assert _get(deployed, "/ping", token="wrong").status_code == 401

    # The openai client through gateway.<domain>/v1, plain and streaming.
    with deployed.client(f"gateway.{DOMAIN}") as http:
        ai = openai.OpenAI(base_url=f"https://gateway.{DOMAIN}/v1", api_key=TOKEN, http_client=http, max_retries=0)
        reply = ai.chat.completions.create(model="chat-small", messages=[{"role": "user", "content": "hello there"}])
        assert reply.choices[0].message.content
        chunks = list(ai.chat.completions.create(
            model="chat-small", messages=[{"role": "user", "content": "stream please"}], stream=True
        ))
        assert len(chunks) > 2 and "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        refused = openai.OpenAI(base_url=f"https://gateway.{DOMAIN}/v1", api_key="not-the-token", http_client=http, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            refused.chat.completions.create(model="chat-small", messages=[{"role": "user", "content": "hi"}])


def test_a_killed_gateway_pod_comes_back_and_serves(deployed: Deployed) -> None:
    (old,) = _ready_pods(deployed.core, deployed.namespace, "gateway")
    deployed.core.delete_namespaced_pod(old.metadata.name, deployed.namespace, grace_period_seconds=0)
    t0 = time.monotonic()
    new = poll(
        lambda: [p for p in _ready_pods(deployed.core, deployed.namespace, "gateway") if p.metadata.uid != old.metadata.uid],
        timeout_seconds=READY_TIMEOUT_SECONDS, what="a new gateway pod Ready",
    )
    assert len(new) == 1
    deployed.refresh_ca()  # a new pod, a new internal CA
    poll(lambda: _serves(deployed), timeout_seconds=60, what="the new gateway serving")
    print(f"gateway pod replaced and serving in {time.monotonic() - t0:.1f} s")


def _locust(deployed: Deployed, users: int, rps_per_user: float, csv_prefix: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SERVEFORM_LOAD_URL": f"https://chat.{DOMAIN}",
        "SERVEFORM_LOAD_TOKEN": TOKEN,
        "SERVEFORM_LOAD_CA": str(deployed.ca_file),
        "SERVEFORM_LOAD_RPS_PER_USER": str(rps_per_user),
        "SERVEFORM_LOAD_RESOLVE": f"chat.{DOMAIN}={deployed.address},gateway.{DOMAIN}={deployed.address}",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "tests" / "load" / "locustfile.py"), "PlainUser",
         "--headless", "-u", str(users), "-r", str(users), "-t", f"{LOCUST_LIMIT_SECONDS}s", "--only-summary",
         "--csv", str(csv_prefix)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _locust_totals(csv_prefix: Path) -> tuple[int, int]:
    """(requests, failures) of the run, from locust's aggregated stats row."""
    with open(f"{csv_prefix}_stats.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["Name"] == "Aggregated"]
    return int(rows[0]["Request Count"]), int(rows[0]["Failure Count"])


def _replicas_answering(deployed: Deployed, requests: int = 30) -> set[str]:
    with deployed.client() as client:
        return {client.get("/ping", headers={"Authorization": f"Bearer {TOKEN}"}).headers.get("X-Replica", "") for _ in range(requests)}


def _ci_up(deployed: Deployed, tmp_path: Path, name: str) -> dict:
    """`up` from a fresh copy of the project (CI's clone: the reviewed files, nothing of a host);
    the stack's `replicas` output afterwards."""
    import shutil

    clone = tmp_path / name
    clone.mkdir()
    for entry in ("Pulumi.yaml", "__main__.py", "stacks", "services"):
        source = deployed.project / entry
        if source.is_dir():
            shutil.copytree(source, clone / entry)
        else:
            shutil.copy2(source, clone / entry)
    lines: list[str] = []
    t0 = time.monotonic()
    result = Engine(stack="k8s", project=clone, on_output=lines.append).up()
    assert result.summary.result == "succeeded", "\n".join(lines[-40:])
    print(f"{name}: CI up in {time.monotonic() - t0:.1f} s")
    return result.outputs["replicas"].value


def test_load_makes_the_in_cluster_scaler_add_a_pod_and_ci_keeps_it(deployed: Deployed, tmp_path: Path) -> None:
    # The scaler pod is the cluster's own: its ServiceAccount, no kubeconfig from the host.
    (scaler,) = poll(lambda: _ready_pods(deployed.core, deployed.namespace, "serveform-scaler"),
                     timeout_seconds=READY_TIMEOUT_SECONDS, what="scaler pod Ready")
    assert scaler.spec.service_account_name == "scaler"
    assert not any("kubeconfig" in " ".join(c.command or []) for c in scaler.spec.containers)
    assert deployed.apps.read_namespaced_deployment("chat", deployed.namespace).spec.replicas == 1
    (first,) = _ready_pods(deployed.core, deployed.namespace, "chat")
    template = first.metadata.labels["pod-template-hash"]
    (gateway,) = _ready_pods(deployed.core, deployed.namespace, "gateway")
    load = _locust(deployed, users=2, rps_per_user=4, csv_prefix=tmp_path / "scale")  # ~8 rps, target 5
    t0 = time.monotonic()
    try:
        poll(lambda: len(_ready_pods(deployed.core, deployed.namespace, "chat")) == 2,
             timeout_seconds=SCALE_TIMEOUT_SECONDS, what="chat at 2 Ready pods (the scaler's in-cluster up)")
        print(f"load step to a second pod Ready: {time.monotonic() - t0:.1f} s")
        assert deployed.apps.read_namespaced_deployment("chat", deployed.namespace).spec.replicas == 2
        # The scaler's `up` changed the count only: the same pod template as the host's `up`.
        all_chat = deployed.core.list_namespaced_pod(deployed.namespace, label_selector="app.kubernetes.io/name=chat").items
        assert {p.metadata.labels["pod-template-hash"] for p in all_chat} == {template}
        # CI's `up` of the reviewed files (chat's range 1..2, initial 1) keeps the scaler's 2.
        replicas = _ci_up(deployed, tmp_path, "ci-during-load")
        assert replicas["chat"]["count"] == 2 and replicas["chat"]["source"] == "scaler", replicas
        assert deployed.apps.read_namespaced_deployment("chat", deployed.namespace).spec.replicas == 2
        # The clone deploys what is deployed already: the same code archive, the same pods.
        all_chat = deployed.core.list_namespaced_pod(deployed.namespace, label_selector="app.kubernetes.io/name=chat").items
        assert {p.metadata.labels["pod-template-hash"] for p in all_chat} == {template}
        assert [p.metadata.uid for p in _ready_pods(deployed.core, deployed.namespace, "gateway")] == [gateway.metadata.uid]
        pods = {p.metadata.name for p in _ready_pods(deployed.core, deployed.namespace, "chat")}
        assert len(pods) == 2
        # Traffic reaches both pods (X-Replica is the pod's name).
        poll(lambda: {r.rpartition("/")[2] for r in _replicas_answering(deployed)} == pods,
             timeout_seconds=90, what=f"requests answered by both pods {sorted(pods)}")
    finally:
        _stop(load)
    requests, failures = _locust_totals(tmp_path / "scale")
    assert requests > 0 and failures <= requests * MAX_FAILURE_RATIO, (requests, failures)
    # Right after the load, CI again: whatever the scaler last decided stays (never the file's 1).
    replicas = _ci_up(deployed, tmp_path, "ci-after-load")
    assert replicas["chat"]["source"] == "scaler", replicas
    assert deployed.apps.read_namespaced_deployment("chat", deployed.namespace).spec.replicas == replicas["chat"]["count"]
    # Idle: after the window and the scale-down delay, the scaler brings chat back to one pod.
    poll(lambda: deployed.apps.read_namespaced_deployment("chat", deployed.namespace).spec.replicas == 1,
         timeout_seconds=SCALE_TIMEOUT_SECONDS, what="chat scaled back to 1")
    poll(lambda: len(_ready_pods(deployed.core, deployed.namespace, "chat")) == 1
         and len(deployed.core.list_namespaced_pod(deployed.namespace, label_selector="app.kubernetes.io/name=chat").items) == 1,
         timeout_seconds=READY_TIMEOUT_SECONDS, what="one chat pod left")
    poll(lambda: {k: deployed.engine.outputs()["replicas"]["chat"][k] for k in ("count", "source")} == {"count": 1, "source": "scaler"},
         timeout_seconds=READY_TIMEOUT_SECONDS, what="the stack's replicas output at 1, set by the scaler")


def test_a_replica_pod_killed_under_load_is_replaced_with_bounded_failures(deployed: Deployed, tmp_path: Path) -> None:
    (victim,) = poll(lambda: _ready_pods(deployed.core, deployed.namespace, "chat"), timeout_seconds=READY_TIMEOUT_SECONDS, what="a chat pod")
    load = _locust(deployed, users=1, rps_per_user=3, csv_prefix=tmp_path / "kill")  # below the target: no scaling
    try:
        time.sleep(5)  # some traffic before the kill; bounded, part of the measured run
        deployed.core.delete_namespaced_pod(victim.metadata.name, deployed.namespace, grace_period_seconds=0)
        t0 = time.monotonic()
        poll(lambda: [p for p in _ready_pods(deployed.core, deployed.namespace, "chat") if p.metadata.uid != victim.metadata.uid],
             timeout_seconds=READY_TIMEOUT_SECONDS, what="a replacement chat pod Ready")
        poll(lambda: _serves(deployed), timeout_seconds=60, what="chat serving again")
        print(f"replica replaced and serving in {time.monotonic() - t0:.1f} s")
        time.sleep(5)
    finally:
        _stop(load)
    requests, failures = _locust_totals(tmp_path / "kill")
    print(f"killed replica under load: {failures} of {requests} requests failed")
    assert requests > 0 and failures <= requests * MAX_FAILURE_RATIO, (requests, failures)


def test_destroy_leaves_nothing_of_the_stack(deployed: Deployed) -> None:
    _destroy(deployed)

    def gone() -> bool:
        try:
            deployed.core.read_namespace(deployed.namespace)
        except k8s_client.ApiException as exc:
            return exc.status == 404
        return False

    poll(gone, timeout_seconds=READY_TIMEOUT_SECONDS, what="namespace deleted")
    selector = "app.kubernetes.io/part-of=serveform,serveform.dev/stack=k8s"
    assert not deployed.core.list_persistent_volume(label_selector=selector).items
    assert not deployed.core.list_pod_for_all_namespaces(label_selector=selector).items
    # The node's containers are gone too (a pod deleted by the API is stopped by the kubelet).
    with pytest.raises(httpx.HTTPError):
        with httpx.Client(verify=False, timeout=5) as client:
            client.get(f"https://{deployed.address}/")
