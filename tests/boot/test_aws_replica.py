"""Issue 14, item 4: the AWS stack's replica VM booted for real, beside its gateway VM.

Both user data documents come from the AWS components (Pulumi's mock runtime) for the aws
stack's chat example, with `serveform:aws.python_image: runtime`: the chat example names
`python: "3.11"`, and a fresh venv on dstack's base image (what dstack's `uv venv` setup makes)
has no aiohttp, so the example runs in serveform's runtime image instead (as on Kubernetes),
named by digest in the stack (`runtime_image: registry.serveform.test/serveform@sha256:...`).

Each VM boots in its own Debian container (systemd-nspawn, cloud-init's NoCloud seed) on one
bridge, like two instances of a VPC subnet. On the bridge's host address, moto answers S3, EC2 /
Auto Scaling, Secrets Manager and the instance metadata, and an OCI registry
(go-containerregistry's) serves the runtime image as the user's registry would. The replica VM's
image stands in for the GPU AMI: Debian's podman with its docker CLI. Nested in nspawn, podman
runs with crun, cgroups disabled and no session keyring, and its storage on a bind mount (overlayfs
refuses the overlay root). That configuration, the registry's address
(`registries.conf`), and the AWS endpoint variables are the test's own, in the VM's root. The user
data carries none of them.

What runs for real: the replica's cloud-init writes `serveform-fetch` and the unit. The unit's
run.sh fetches the code archive the deployment uploaded from moto's bucket with the instance
role (IMDSv2, SigV4) and checks its digest. It pulls the runtime image by digest and runs the
chat server from the archive in it. The gateway VM finds the replica through the auto scaling
group in moto (the replica VM's address is the group's instance's) and routes HTTPS to it.

Not shown here: GPUs, and the scaler's `up` (the Pulumi AWS provider cannot run on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import time
from pathlib import Path

import pytest

from _vmboot import Lan, Moto, Registry, Vm, prepare
from test_aws_gateway import DOMAIN, SERVEFORM_UNITS, TIMINGS, TOKEN, _https, _render, _seed_moto, _start_replica_group, _wait_https

# The stack's registry for the runtime image: a name only the replica VM's podman resolves (to
# the test's registry on the bridge), as an ECR or GHCR address would be in a real stack.
REGISTRY_HOST = "registry.serveform.test"
REPLICA_UNITS = ["serveform-replica.service"]
# Nested in systemd-nspawn: the cgroup tree is read-only and the kernel keyring is not the
# container's to create; storage on a bind mount (overlayfs refuses an overlay as its upper layer).
PODMAN_NESTED = {
    "etc/containers/containers.conf": (
        "# The boot test's nesting (systemd-nspawn), not a production setting.\n"
        "[containers]\ncgroups = \"disabled\"\nkeyring = false\n"
        "default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]\n"
        "[engine]\nruntime = \"crun\"\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n"
    ),
    "etc/containers/storage.conf": (
        "[storage]\ndriver = \"overlay\"\nrunroot = \"/run/containers/storage\"\ngraphroot = \"/var/lib/containers/storage\"\n"
    ),
    "etc/containers/nodocker": "",
}


def _runtime_image() -> tuple[Path, str]:
    """This checkout's runtime image (`tools/setup.sh all` builds it; cached by layer) and its manifest digest."""
    from serveform.image.build import build, source_root

    archive = build(source_root()).archive
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
    return archive, index["manifests"][0]["digest"]


@pytest.fixture(scope="module")
def vmboot():
    return prepare()


@pytest.fixture(scope="module")
def image():
    t0 = time.monotonic()
    archive, digest = _runtime_image()
    TIMINGS["runtime image (cached layers)"] = time.monotonic() - t0
    return {"archive": archive, "digest": digest, "ref": f"{REGISTRY_HOST}/serveform@{digest}"}


@pytest.fixture(scope="module")
def rendered(image):
    env = {"PULUMI_BACKEND_URL": "file:///var/lib/serveform-scaler/state", "PULUMI_CONFIG_PASSPHRASE": "boot-test-passphrase"}
    return _render(env, aws={"python_image": "runtime", "runtime_image": image["ref"]})


@pytest.fixture(scope="module")
def pair(vmboot, rendered, image, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pair")
    suffix = os.getpid() % 100000
    lan = Lan(f"sfl{suffix}")
    parts: list = []
    storage = folder / "replica-containers"
    try:
        moto = Moto(vmboot["MOTO_SERVER"], lan.host_ip, folder)
        parts.append(moto)
        registry = Registry(vmboot["REGISTRY"], lan.host_ip, folder)
        parts.append(registry)
        t0 = time.monotonic()
        pushed = registry.push(image["archive"], "serveform")
        assert pushed == image["digest"], "the registry holds another manifest than the archive's"
        TIMINGS["runtime image pushed to the registry"] = time.monotonic() - t0
        _seed_moto(moto, rendered, lan)
        # The group's instance in moto is the replica VM: its address is the one discovery finds.
        replica_ip = _start_replica_group(moto, rendered, lan)
        gateway_ip = next(str(h) for h in list(lan.subnet.hosts())[1:] if str(h) != replica_ip)
        env = {"AWS_ENDPOINT_URL": moto.url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": moto.url}

        replica = Vm(f"sfr{suffix}", vmboot["REPLICA_ROOT"], folder / "replica", lan.attach(f"sfr{suffix}", replica_ip))
        parts.append(replica)
        storage.mkdir()
        replica.binds.append(f"{storage}:/var/lib/containers")
        for path, text in PODMAN_NESTED.items():
            (replica.root / path).parent.mkdir(parents=True, exist_ok=True)
            (replica.root / path).write_text(text)
        (replica.root / "etc/containers/registries.conf").write_text(
            f'[[registry]]\nprefix = "{REGISTRY_HOST}"\nlocation = "{registry.address}"\ninsecure = true\n'
        )
        replica.seed(rendered["replica_seed"], instance_id="i-0boot0replica", environment=env)
        t0 = time.monotonic()
        replica.boot()

        gateway = Vm(f"sfg{suffix}", vmboot["ROOT"], folder / "gateway", lan.attach(f"sfg{suffix}", gateway_ip))
        parts.append(gateway)
        gateway.seed(rendered["seed"], instance_id="i-0boot0gateway", environment=env)
        gateway.boot()
        status, seconds = replica.wait_cloud_init()
        TIMINGS["replica VM: cloud-init done"] = seconds
        yield {"replica": replica, "gateway": gateway, "moto": moto, "replica_ip": replica_ip, "status": status, "t0": t0}
    finally:
        for part in reversed(parts):
            part.close()
        lan.close()
        shutil.rmtree(storage, ignore_errors=True)
        print("\nboot timings (s): " + json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


def _wait_replica_serving(replica: Vm, timeout: float = 300) -> str:
    """The chat server's `GET /` on the replica VM, once it answers."""
    probe = "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:8000/').read().decode())\""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = replica.sh(probe).stdout.strip()
        if out.startswith("chat server"):
            return out
        time.sleep(2)
    return out


def test_the_replica_vm_runs_the_service_container(pair, image):
    replica = pair["replica"]
    assert pair["status"] == "done", replica.sh("cloud-init status --long; tail -30 /var/log/cloud-init-output.log").stdout
    answer = _wait_replica_serving(replica)
    assert answer == f"chat server chat/{replica.name} serving chat-small", (
        answer + replica.sh("journalctl -u serveform-replica --no-pager | tail -40").stdout
    )
    TIMINGS["replica serving (since its boot)"] = time.monotonic() - pair["t0"]
    assert replica.wait_active(REPLICA_UNITS) == {u: "active" for u in REPLICA_UNITS}
    assert replica.sh("systemctl is-system-running").stdout.strip() in ("running", "degraded")
    failed = replica.sh("systemctl list-units --failed --no-legend --plain").stdout.strip()
    assert failed == "", failed
    # The container runs the runtime image the stack named by digest, as its non-root user.
    inspect = json.loads(replica.sh("podman inspect serveform-replica", check=True).stdout)[0]
    assert inspect["ImageDigest"] == image["digest"]
    assert inspect["Config"]["User"] == "10001:10001"


def test_the_replica_fetched_its_code_archive_with_its_role(pair, rendered):
    replica, moto = pair["replica"], pair["moto"]
    calls = [c.split(" ", 1)[1] for c in moto.calls() if c.startswith(pair["replica_ip"] + " ")]
    code_keys = [k for k in rendered["objects"] if k.startswith("code/chat/")]
    assert code_keys and all(f"s3:GET /{rendered['bucket']}/{k}" in calls for k in code_keys), calls
    # The archive's files are what the container runs: its sha256 names the unpacked folder.
    sha = code_keys[0].rsplit("/", 1)[1].removesuffix(".tar.gz")
    assert replica.sh(f"test -e /opt/serveform/code/{sha}/.unpacked && echo ok").stdout.strip() == "ok"
    mounts = json.loads(replica.sh("podman inspect serveform-replica", check=True).stdout)[0]["Mounts"]
    assert {"Source": f"/opt/serveform/code/{sha}/repo", "Destination": "/workflow"}.items() <= {
        "Source": next(m["Source"] for m in mounts if m["Destination"] == "/workflow"), "Destination": "/workflow"}.items()


def test_the_gateway_routes_https_to_the_replica_it_discovered(pair):
    gateway, replica, moto = pair["gateway"], pair["replica"], pair["moto"]
    assert _wait_replica_serving(replica).startswith("chat server")
    assert gateway.wait_cloud_init()[0] == "done"
    assert gateway.wait_active(SERVEFORM_UNITS) == {u: "active" for u in SERVEFORM_UNITS}
    failed = gateway.sh("systemctl list-units --failed --no-legend --plain").stdout.strip()
    assert failed == "", failed
    net = gateway.network
    t0 = time.monotonic()
    assert _wait_https(gateway, net, f"chat.{DOMAIN}", "/health", TOKEN, timeout=300) == 200
    TIMINGS["gateway: first 200 from the replica"] = time.monotonic() - t0
    assert _https(gateway, net, f"chat.{DOMAIN}", "/", None)[0] == 401
    code, body = _https(gateway, net, f"chat.{DOMAIN}", "/", TOKEN)
    # The answer names the replica VM: it came from its container, not from a stand-in.
    assert (code, body.decode().strip()) == (200, f"chat server chat/{replica.name} serving chat-small")
    # Discovery asked EC2 for the group's instances and published the replica VM's address.
    calls = [c.split(" ", 1)[1] for c in moto.calls() if c.startswith(net.guest_ip + " ")]
    assert "ec2:DescribeInstances" in calls
    assert pair["replica_ip"] in gateway.sh("cat /var/lib/serveform/gateway/replicas/*.json 2>/dev/null").stdout
