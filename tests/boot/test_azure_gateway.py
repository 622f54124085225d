"""Issue 14 item 5: the Azure stack's gateway VM user data, booted for real.

The user data is rendered by the Azure components under Pulumi's mock runtime (the Azure provider
plugin cannot be built here) from the azure stack's chat example, with the real artifacts
(`serveform.image.vm`, the Azure wheelhouse). It boots in the Debian bookworm container of
tests/boot/_vmboot.py (systemd, cloud-init's NoCloud seed, its own network namespace with no route
but the veth's host side). There `_cloud_stub.py azure` answers exactly the calls the README
lists — the instance metadata service's tokens (per resource, for the gateway's user-assigned
identity) and subscription, the blobs, Key Vault's secrets, the scale set's network interfaces
for discovery — and the project's chat server stands in for the replica those name. The test
knobs, set by a drop-in in the container's root and never in user data, are azure-identity's
AZURE_POD_IDENTITY_AUTHORITY_HOST and SERVEFORM_TEST_AZURE_ENDPOINT (Azure's SDKs have no
variable for the data plane's hosts: `https://HOST/PATH` goes to `<stub>/HOST/PATH`).

Boot timings are printed (`pytest tests/boot/test_azure_gateway.py -s`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml

from _gateway_checks import (
    DOMAIN, SERVEFORM_UNITS, TOKEN, Stub, booted, check_serves_the_replica, check_tampered_boot, check_units_active, reboot_and_serve,
    render_gateway,
)
from _vmboot import prepare

import _pulumi_harness

ACCESS_TOKEN = "eyJ.boot-test-access-token"
SUBSCRIPTION = "00000000-0000-0000-0000-000000000001"
TIMINGS: dict[str, float] = {}


def _render() -> dict:
    """The azure stack's gateway: user data, blobs (host/container/name -> file), secrets (host/secrets/name -> value)."""
    from serveform.components import azure as azure_backend

    _, plans, recording = render_gateway("azure", azure_backend.deploy)
    vm = recording.one("azure-native:compute:VirtualMachine", "gateway-vm")
    user_data = base64.b64decode(vm.inputs["osProfile"]["customData"]).decode()
    script = next(f["content"] for f in yaml.safe_load(user_data)["write_files"] if f["path"] == "/opt/serveform/install.sh")
    sources = {r.inputs["blobName"]: str(Path(r.raw_inputs["source"].path)) for r in recording.resources if r.type == "azure-native:storage:Blob"}
    blobs = {}
    for url in re.findall(r"serveform-fetch artifact \S+ \S+ (https://\S+) ", script):
        blobs[url.removeprefix("https://")] = sources[url.split("/", 4)[4]]
    values = {
        r.inputs["secretName"]: _pulumi_harness.unwrap(r.inputs["properties"]["value"])
        for r in recording.resources
        if r.type == "azure-native:keyvault:Secret"
    }
    secrets = {url.removeprefix("https://"): values[url.rsplit("/", 1)[1]] for url in re.findall(r"serveform-fetch secret (https://\S+) ", script)}
    group = next(r for r in recording.resources if r.type == "azure-native:compute:VirtualMachineScaleSet")
    return {
        "user_data": user_data, "blobs": blobs, "secrets": secrets,
        "client_id": re.search(r"serveform-fetch secret https://\S+ (\S+)", script).group(1),
        "resource_group": "serveform-azure", "scale_set": group.inputs["vmScaleSetName"],
        "port": plans[0].replica_group.container_port,
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
    blobs = dict(rendered["blobs"])
    if tamper:
        (key,) = [k for k in blobs if f"/artifacts/{tamper}-" in k]
        fake = folder / "tampered"
        fake.write_bytes(b"tampered")
        blobs[key] = str(fake)
    return {
        "token": ACCESS_TOKEN, "client_id": rendered["client_id"], "subscription": SUBSCRIPTION,
        "blobs": blobs, "secrets": rendered["secrets"], "replicas": [replica],
    }


def _environment(stub: Stub) -> dict[str, str]:
    """The metadata service (azure-identity's variable) and Azure's hosts, pointing at the stub (the test's root only)."""
    return {"AZURE_POD_IDENTITY_AUTHORITY_HOST": stub.url, "SERVEFORM_TEST_AZURE_ENDPOINT": stub.url}


@pytest.fixture(scope="module")
def gateway(vmboot, rendered, tmp_path_factory):
    folder = tmp_path_factory.mktemp("azure-gateway-vm")
    try:
        with booted(
            "azure", f"sfag{os.getpid() % 100000}", vmboot["ROOT"], folder, rendered["user_data"].encode(),
            config=lambda replica: _stub_config(rendered, replica), environment=_environment, replica_port=rendered["port"],
        ) as parts:
            TIMINGS["first boot: cloud-init done"] = parts["seconds"]
            yield parts
    finally:
        print("\nazure boot timings (s): " + json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))


def test_cloud_init_finishes_and_every_unit_is_active(gateway):
    check_units_active(gateway)


def test_https_answers_401_without_the_token_and_200_with_it(gateway):
    # The replica is the one the scale set's network interfaces named: discovery published it.
    TIMINGS["first 200 after cloud-init"] = check_serves_the_replica(gateway)


def test_the_calls_are_exactly_the_documented_list(gateway, rendered):
    """Every request the VM made (booting, serving, discovering), against the README's list for Azure."""
    gateway["stub"].wait_for_call("/networkInterfaces")
    calls = gateway["stub"].calls()
    assert not [c for c in calls if c.rsplit(" ", 1)[-1].isdigit()], calls  # nothing refused
    token = "GET /metadata/identity/oauth2/token?resource="
    expected = {
        token + "https://storage.azure.com/",
        token + "https://vault.azure.net",
        token + "https://management.azure.com/",
        "GET /metadata/instance/compute/subscriptionId",
        *(f"GET /{blob}" for blob in rendered["blobs"]),
        *(f"GET /{secret}" for secret in rendered["secrets"]),
        f"GET /management.azure.com/subscriptions/{SUBSCRIPTION}/resourceGroups/{rendered['resource_group']}/providers/"
        f"Microsoft.Compute/virtualMachineScaleSets/{rendered['scale_set']}/networkInterfaces",
    }
    assert set(calls) == expected
    # Each blob once, each secret once (the tokens, the scaler's environment): nothing fetched twice.
    assert all(calls.count(f"GET /{k}") == 1 for k in [*rendered["blobs"], *rendered["secrets"]])
    print("\ncalls the Azure gateway VM made: " + json.dumps(sorted(set(calls))))


def test_a_rebooted_gateway_comes_back_serving(gateway):
    """The second boot runs no install (cloud-init ran once per instance): the units come back from disk."""
    TIMINGS["reboot: serving again"] = reboot_and_serve(gateway["vm"], gateway["net"], f"chat.{DOMAIN}", TOKEN, SERVEFORM_UNITS)


@pytest.fixture()
def tampered_boot(vmboot, rendered, tmp_path):
    with booted(
        "azure", f"sfat{os.getpid() % 100000}", vmboot["ROOT"], tmp_path, rendered["user_data"].encode(),
        config=lambda replica: _stub_config(rendered, replica, tamper="caddy", folder=tmp_path), environment=_environment, replica_port=None,
    ) as parts:
        TIMINGS["tampered boot: cloud-init ended"] = parts["seconds"]
        yield parts["vm"], parts["status"]


def test_a_tampered_artifact_fails_the_boot_with_one_clear_line(tampered_boot, rendered):
    check_tampered_boot(*tampered_boot, rendered["user_data"])
