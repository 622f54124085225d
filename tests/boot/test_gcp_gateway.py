"""Issue 14 item 5: the GCP stack's gateway VM user data, booted for real.

The user data is rendered by the GCP components under Pulumi's mock runtime (the GCP provider
plugin cannot be built here) from the gcp stack's chat example, with the real artifacts
(`serveform.image.vm`, the GCP wheelhouse). It boots in the Debian bookworm container of
tests/boot/_vmboot.py (systemd, cloud-init's NoCloud seed, its own network namespace with no route
but the veth's host side). There `_cloud_stub.py gcp` answers exactly the calls the README lists
— the metadata server's token, Cloud Storage's JSON API media downloads, Secret Manager's
`versions/latest:access`, Compute's instance list for discovery — and the project's chat server
stands in for the replica the instance list names. The only test knobs are the Google tools' own
endpoint variables (GCE_METADATA_HOST, STORAGE_EMULATOR_HOST, CLOUDSDK_API_ENDPOINT_OVERRIDES_*),
set by a drop-in in the container's root: the user data carries none.

Boot timings are printed (`pytest tests/boot/test_gcp_gateway.py -s`).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from _gateway_checks import (
    DOMAIN, SERVEFORM_UNITS, TOKEN, Stub, booted, check_serves_the_replica, check_tampered_boot, check_units_active, reboot_and_serve,
    render_gateway,
)
from _vmboot import prepare

import _pulumi_harness

ACCESS_TOKEN = "ya29.boot-test-access-token"
TIMINGS: dict[str, float] = {}


def recording_secret_name(logical: str) -> str:
    return f"projects/mock-project/secrets/{logical}"


def _render() -> dict:
    """The gcp stack's gateway: user data, artifacts (bucket/name -> file), secrets (name -> value)."""
    from serveform.components import gcp as gcp_backend

    config, plans, recording = render_gateway("gcp", gcp_backend.deploy)
    vm = recording.one("gcp:compute/instance:Instance", "gateway-vm")
    objects = {
        f"{r.inputs['bucket']}/{r.inputs['name']}": str(Path(r.raw_inputs["source"].path))
        for r in recording.resources
        if r.type == "gcp:storage/bucketObject:BucketObject"
    }
    # The secrets' resource names as the mocks give them (`projects/mock-project/secrets/<logical name>`)
    # -> their versions' data.
    secrets = {
        recording_secret_name(r.name.removesuffix("-value")): _pulumi_harness.unwrap(r.inputs["secretData"])
        for r in recording.resources
        if r.type == "gcp:secretmanager/secretVersion:SecretVersion"
    }
    group = next(r for r in recording.resources if r.type == "gcp:compute/instanceGroupManager:InstanceGroupManager")
    return {
        "user_data": vm.inputs["metadata"]["user-data"], "objects": objects, "secrets": secrets,
        "project": config["serveform:gcp"]["project"], "zone": group.inputs["zone"],
        "port": plans[0].replica_group.container_port, "host": f"chat.{DOMAIN}",
    }


@pytest.fixture(scope="module")
def vmboot():
    return prepare()


@pytest.fixture(scope="module")
def rendered():
    t0 = time.monotonic()
    out = _render()
    TIMINGS["render (mocks, artifacts cached)"] = time.monotonic() - t0
    return out


def _stub_config(rendered: dict, replica: str, *, tamper: str | None = None, folder: Path | None = None) -> dict:
    objects = dict(rendered["objects"])
    if tamper:
        (key,) = [k for k in objects if k.split("/", 1)[1].startswith(f"artifacts/{tamper}-")]
        fake = folder / "tampered"
        fake.write_bytes(b"tampered")
        objects[key] = str(fake)
    return {"token": ACCESS_TOKEN, "objects": objects, "secrets": rendered["secrets"], "replicas": [replica]}


def _environment(stub: Stub) -> dict[str, str]:
    """The Google tools' own endpoint variables, pointing at the stub (a drop-in of the test's root only)."""
    return {
        "GCE_METADATA_HOST": f"{stub.host}:{stub.port}",
        "STORAGE_EMULATOR_HOST": stub.url,
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER": stub.url + "/",
        "CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE": stub.url + "/compute/v1/",
    }


@pytest.fixture(scope="module")
def gateway(vmboot, rendered, tmp_path_factory):
    folder = tmp_path_factory.mktemp("gcp-gateway-vm")
    try:
        with booted(
            "gcp", f"sfgg{os.getpid() % 100000}", vmboot["ROOT"], folder, rendered["user_data"].encode(),
            config=lambda replica: _stub_config(rendered, replica), environment=_environment, replica_port=rendered["port"],
        ) as parts:
            TIMINGS["first boot: cloud-init done"] = parts["seconds"]
            yield parts
    finally:
        print("\ngcp boot timings (s): " + json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


def test_cloud_init_finishes_and_every_unit_is_active(gateway):
    check_units_active(gateway)


def test_https_answers_401_without_the_token_and_200_with_it(gateway):
    # The replica is the one Compute's instance list named: discovery published it.
    TIMINGS["first 200 after cloud-init"] = check_serves_the_replica(gateway)


def test_the_calls_are_exactly_the_documented_list(gateway, rendered):
    """Every request the VM made (booting, serving, discovering), against the README's list for GCP."""
    gateway["stub"].wait_for_call("/instances")
    calls = gateway["stub"].calls()
    assert not [c for c in calls if c.rsplit(" ", 1)[-1].isdigit()], calls  # nothing refused
    # The gateway's artifacts (the bucket also holds the service's code archive, which only replicas fetch).
    bucket_objects = sorted(k for k in rendered["objects"] if k.split("/", 1)[1].startswith("artifacts/"))
    secrets = sorted(rendered["secrets"])
    expected = {
        "GET /computeMetadata/v1/instance/service-accounts/default/token",
        *(f"GET /storage/v1/b/{k.split('/', 1)[0]}/o/{k.split('/', 1)[1].replace('/', '%2F')}" for k in bucket_objects),
        *(f"GET /v1/{s}/versions/latest:access" for s in secrets),
        f"GET /compute/v1/projects/{rendered['project']}/zones/{rendered['zone']}/instances",
    }
    assert set(calls) == expected
    # Each object once, each secret once (the tokens, the scaler's environment): nothing fetched twice.
    assert all(calls.count(c) == 1 for c in expected if "/storage/" in c or ":access" in c)
    print("\ncalls the GCP gateway VM made: " + json.dumps(sorted(set(calls))))


def test_a_rebooted_gateway_comes_back_serving(gateway):
    """The second boot runs no install (cloud-init ran once per instance): the units come back from disk."""
    TIMINGS["reboot: serving again"] = reboot_and_serve(gateway["vm"], gateway["net"], f"chat.{DOMAIN}", TOKEN, SERVEFORM_UNITS)


@pytest.fixture()
def tampered_boot(vmboot, rendered, tmp_path):
    with booted(
        "gcp", f"sfgt{os.getpid() % 100000}", vmboot["ROOT"], tmp_path, rendered["user_data"].encode(),
        config=lambda replica: _stub_config(rendered, replica, tamper="caddy", folder=tmp_path), environment=_environment, replica_port=None,
    ) as parts:
        TIMINGS["tampered boot: cloud-init ended"] = parts["seconds"]
        yield parts["vm"], parts["status"]


def test_a_tampered_artifact_fails_the_boot_with_one_clear_line(tampered_boot, rendered):
    check_tampered_boot(*tampered_boot, rendered["user_data"])
