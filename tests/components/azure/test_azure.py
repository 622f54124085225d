"""The Azure backend under Pulumi's mock runtime: every example service, key inputs, secrets, bad config."""

from __future__ import annotations

from _cloud_contract import *  # noqa: F401,F403 (the shared VM-backend tests)
from _cloud_contract import deploy, make_settings, recording  # noqa: F401
from _cloud_examples import example_plans

BACKEND = "azure"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockKeyForTestsOnly serveform"
CONFIG = {"serveform:azure": {"location": "eastus", "dns_zone": "example.com", "ssh_public_key": KEY}}
BAD_CONFIGS = [
    ({"serveform:azure": {"ssh_public_key": KEY}}, "serveform:azure.location"),
    ({"serveform:azure": {"location": "eastus"}}, "serveform:azure.ssh_public_key"),
    ({"serveform:azure": {"location": "eastus", "ssh_public_key": KEY, "dns_zone": "other.org"}}, "serveform:azure.dns_zone"),
]


def desired_of(rec, service):
    return rec.one("azure-native:compute:VirtualMachineScaleSet", f"{service}-group").inputs["sku"]["capacity"]


def test_scale_sets_sizes_spot_and_disks(recording):
    mixtral = recording.one("azure-native:compute:VirtualMachineScaleSet", "mixtral-group").inputs
    assert mixtral["sku"] == {"name": "Standard_NC48ads_A100_v4", "tier": "Standard", "capacity": 1}
    assert mixtral["vmScaleSetName"] == "serveform-dev-mixtral"
    profile = mixtral["virtualMachineProfile"]
    assert profile["storageProfile"]["osDisk"]["diskSizeGB"] == 200
    assert "priority" not in profile
    auto = recording.one("azure-native:compute:VirtualMachineScaleSet", "volume-service-group").inputs["virtualMachineProfile"]
    assert auto["priority"] == "Spot" and auto["evictionPolicy"] == "Delete" and auto["billingProfile"] == {"maxPrice": 0.5}
    assert profile["osProfile"]["linuxConfiguration"]["disablePasswordAuthentication"] is True


def test_network_security_groups(recording):
    gw = recording.one("azure-native:network:NetworkSecurityGroup", "gateway-firewall").inputs
    allowed = sorted(r["destinationPortRange"] for r in gw["securityRules"] if r["access"] == "Allow")
    assert allowed == ["443", "80"]
    replica = recording.one("azure-native:network:NetworkSecurityGroup", "llama31-service-firewall").inputs
    allow = [r for r in replica["securityRules"] if r["access"] == "Allow"]
    assert [(r["destinationPortRange"], r["sourceAddressPrefix"]) for r in allow] == [("8000", "10.42.0.0/24")]


def test_wildcard_dns_record(recording):
    record = recording.one("azure-native:dns:RecordSet").inputs
    assert (record["relativeRecordSetName"], record["recordType"], record["zoneName"]) == ("*", "A", "example.com")
    assert record["aRecords"] == [{"ipv4Address": "203.0.113.10"}]


def test_no_zone_no_record():
    rec = deploy("azure", make_settings("azure", {"serveform:azure": {"location": "eastus", "ssh_public_key": KEY}}),
                 [example_plans("azure")["mixtral"]])
    assert rec.of_type("azure-native:dns:RecordSet") == []


def _gateway_user_data(rec):
    import base64

    vm = rec.one("azure-native:compute:VirtualMachine", "gateway-vm").inputs
    return base64.b64decode(vm["osProfile"]["customData"]).decode()


def test_artifacts_are_shipped_into_a_private_container_readable_by_the_gateway_only(recording):
    """Issue 14 item 5: what the gateway VM runs is uploaded by the deployment, named by digest in its user data."""
    import yaml

    from serveform.components.azure.gateway import artifact_account_name

    account = recording.one("azure-native:storage:StorageAccount", "gateway-store")
    assert "serveform:azure:Gateway" in account.urn
    inputs = account.inputs
    # HTTPS only, TLS 1.2, no public blob; Azure Storage encrypts at rest with Microsoft-managed keys.
    assert (inputs["enableHttpsTrafficOnly"], inputs["minimumTlsVersion"], inputs["allowBlobPublicAccess"]) == (True, "TLS1_2", False)
    assert inputs["accountName"] == artifact_account_name("dev", "serveform-dev", "eastus")
    container = recording.one("azure-native:storage:BlobContainer", "gateway-artifacts")
    assert container.inputs["publicAccess"] == "None" and container.inputs["containerName"] == "serveform-artifacts"
    blobs = [r for r in recording.resources if r.type == "azure-native:storage:Blob" and r.name.startswith("gateway-artifact-")]
    assert sorted(b.name for b in blobs) == ["gateway-artifact-caddy", "gateway-artifact-pulumi", "gateway-artifact-wheelhouse"]
    assert all(b.inputs["blobName"].startswith("artifacts/") and b.inputs["type"] == "Block" for b in blobs)
    # The gateway's identity reads that container (Storage Blob Data Reader), nothing wider.
    reads = [r for r in recording.resources if r.type == "azure-native:authorization:RoleAssignment" and r.name == "gateway-artifacts-read"]
    assert len(reads) == 1
    read = reads[0].inputs
    assert read["roleDefinitionId"].endswith("/roleDefinitions/2a2b9908-6ea1-4ae2-8e65-a410df84e7d1")
    assert read["scope"].endswith("/gateway-artifacts") and "BlobContainer" in read["scope"]
    assert read["principalId"] == "principal-gateway-identity"
    vm = recording.one("azure-native:compute:VirtualMachine", "gateway-vm").inputs
    assert vm["storageProfile"]["imageReference"]["publisher"] == "Debian"
    document = yaml.safe_load(_gateway_user_data(recording))
    files = {f["path"]: f for f in document["write_files"]}
    assert "/metadata/identity/oauth2/token" in files["/opt/serveform/bin/serveform-fetch"]["content"]
    assert "/opt/serveform/bin/_fetch.py" in files
    script = files["/opt/serveform/install.sh"]["content"]
    base = f"https://{inputs['accountName']}.blob.core.windows.net/serveform-artifacts"
    for blob in blobs:
        key = blob.inputs["blobName"]
        digest = key.rsplit("-", 1)[1]
        assert f"serveform-fetch artifact {key.split('/')[1].rsplit('-', 1)[0]} {digest} {base}/{key} client-gateway-identity " in script
    assert "serveform-fetch secret https://" in script and "/secrets/gateway-tokens client-gateway-identity" in script
    # Nothing from the internet at boot: no index, no download, no curl | sh.
    assert "pip install -q serveform" not in script and "curl" not in script and "get.pulumi.com" not in script
    assert "curl" not in document["packages"]


def test_the_scalers_up_on_the_vm_keeps_the_artifacts_it_booted_from(recording, tmp_path, monkeypatch):
    """A scale update on the gateway VM has no checkout: it reuses the VM's artifact list, so its user data stays."""
    import yaml

    files = {f["path"]: f for f in yaml.safe_load(_gateway_user_data(recording))["write_files"]}
    listed = tmp_path / "artifacts.json"
    listed.write_text(files["/etc/serveform/artifacts.json"]["content"])
    monkeypatch.setenv("SERVEFORM_VM_ARTIFACTS", str(listed))
    import serveform.image.vm as vm_artifacts

    def no_build(root=None, **_):
        raise AssertionError("a scale update on the VM must not build artifacts")

    monkeypatch.setattr(vm_artifacts, "gateway_artifacts", no_build)
    again = deploy("azure", make_settings("azure", CONFIG), example_plans("azure").values())
    assert _gateway_user_data(again) == _gateway_user_data(recording)


def test_artifact_account_name_is_a_valid_stable_storage_account_name():
    import re

    from serveform.components.azure.gateway import artifact_account_name

    name = artifact_account_name("a-very-long-stack-name", "its-resource-group", "westeurope")
    assert re.fullmatch(r"[a-z0-9]{3,24}", name) and name == artifact_account_name("a-very-long-stack-name", "its-resource-group", "westeurope")
    assert name != artifact_account_name("other", "its-resource-group", "westeurope")


def test_a_services_code_archive_is_uploaded_and_only_its_replicas_may_read_it(tmp_path):
    """Issue 14 item 2 on Azure: the archive goes into the service's own container of the stack's
    storage account, named by digest; only that service's identity reads the container."""
    import hashlib

    from serveform.translator.plan import CodePlan

    archive = tmp_path / "code.tar.gz"
    archive.write_bytes(b"not really a tarball")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    plans = dict(example_plans("azure"))
    name, plan = sorted(plans.items())[0]
    plans[name] = plan.model_copy(update={"code": CodePlan(sha256=digest, size_bytes=20, archive=str(archive))})
    rec = deploy("azure", make_settings("azure", CONFIG), plans.values())
    blob = rec.one("azure-native:storage:Blob", f"{name}-code")
    assert blob.inputs["blobName"] == f"code/{name}/{digest}.tar.gz" and "serveform:azure:Gateway" in blob.urn
    container = rec.one("azure-native:storage:BlobContainer", f"{name}-code-container").inputs
    assert container["containerName"] == f"code-{name}" and container["publicAccess"] == "None"
    reads = {r.name: r.inputs for r in rec.resources if r.type == "azure-native:authorization:RoleAssignment" and r.name.endswith("-read")}
    assert set(reads) == {"gateway-artifacts-read", f"{name}-code-read"}
    read = reads[f"{name}-code-read"]
    assert read["roleDefinitionId"].endswith("/roleDefinitions/2a2b9908-6ea1-4ae2-8e65-a410df84e7d1")
    assert read["scope"].endswith(f"/{name}-code-container") and read["principalId"] == f"principal-{name}-identity"
    from _cloud_contract import user_data_of  # noqa: PLC0415

    from serveform.components.azure.gateway import artifact_account_name

    run = user_data_of(rec, name)
    url = f"https://{artifact_account_name('dev', 'serveform-dev', 'eastus')}.blob.core.windows.net/code-{name}/code/{name}/{digest}.tar.gz"
    # Fetched with Azure's serveform-fetch (the identity's token from the metadata service), digest checked.
    assert f"/opt/serveform/bin/serveform-fetch artifact code {digest} {url} client-{name}-identity " in run


def test_code_container_names_are_valid_for_every_service_name():
    import re

    from serveform.components.azure.gateway import code_container_name

    assert code_container_name("chat") == "code-chat"
    odd = code_container_name("a--b")
    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", odd) and 3 <= len(odd) <= 63 and odd != code_container_name("a-b")
    assert len(code_container_name("x" * 40)) <= 63
