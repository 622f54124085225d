"""The GCP backend under Pulumi's mock runtime: every example service, key inputs, secrets, bad config."""

from __future__ import annotations

from _cloud_contract import *  # noqa: F401,F403 (the shared VM-backend tests)
from _cloud_contract import deploy, make_settings, recording  # noqa: F401
from _cloud_examples import example_plans

BACKEND = "gcp"
CONFIG = {"serveform:gcp": {"project": "acme-ml", "zone": "us-central1-a", "dns_zone": "example-com"}}
BAD_CONFIGS = [
    ({"serveform:gcp": {"zone": "us-central1-a"}}, "serveform:gcp.project"),
    ({"serveform:gcp": {"project": "acme-ml"}}, "serveform:gcp.zone"),
    ({"serveform:gcp": {"project": "acme-ml", "zone": "europe-west4-a", "region": "us-central1"}}, "serveform:gcp.zone"),
]


def desired_of(rec, service):
    return rec.one("gcp:compute/instanceGroupManager:InstanceGroupManager", f"{service}-group").inputs["targetSize"]


def test_instance_templates_gpus_maintenance_and_spot(recording):
    mixtral = recording.one("gcp:compute/instanceTemplate:InstanceTemplate", "mixtral-template").inputs
    assert mixtral["machineType"] == "a2-ultragpu-2g"
    assert mixtral["guestAccelerators"] == [{"type": "nvidia-a100-80gb", "count": 2}]
    assert mixtral["scheduling"]["onHostMaintenance"] == "TERMINATE"
    assert mixtral["scheduling"]["provisioningModel"] == "STANDARD"
    assert mixtral["disks"][0]["diskSizeGb"] == 200
    llama = recording.one("gcp:compute/instanceTemplate:InstanceTemplate", "llama31-service-template").inputs
    assert llama["guestAccelerators"] == [{"type": "nvidia-l4", "count": 1}]
    auto = recording.one("gcp:compute/instanceTemplate:InstanceTemplate", "volume-service-template").inputs
    assert auto["scheduling"]["provisioningModel"] == "SPOT" and auto["scheduling"]["preemptible"] is True
    assert auto["guestAccelerators"] == []
    assert "user-data" in auto["metadata"]


def test_managed_instance_groups(recording):
    group = recording.one("gcp:compute/instanceGroupManager:InstanceGroupManager", "llama31-service-group").inputs
    assert group["name"] == "serveform-dev-llama31-service" and group["zone"] == "us-central1-a"
    assert group["targetSize"] == 1
    assert group["versions"][0]["instanceTemplate"]


def test_firewalls(recording):
    gw = recording.one("gcp:compute/firewall:Firewall", "gateway-firewall").inputs
    assert gw["allows"] == [{"protocol": "tcp", "ports": ["80", "443"]}] and gw["sourceRanges"] == ["0.0.0.0/0"]
    replica = recording.one("gcp:compute/firewall:Firewall", "mixtral-firewall").inputs
    assert replica["allows"] == [{"protocol": "tcp", "ports": ["8000"]}]
    assert "sourceRanges" not in replica and replica["sourceServiceAccounts"][0].endswith(".iam.gserviceaccount.com")


def test_wildcard_dns_record(recording):
    record = recording.one("gcp:dns/recordSet:RecordSet").inputs
    assert (record["name"], record["type"], record["managedZone"]) == ("*.example.com.", "A", "example-com")
    assert record["rrdatas"] == ["203.0.113.10"]


def test_no_zone_no_record():
    rec = deploy("gcp", make_settings("gcp", {"serveform:gcp": {"project": "p", "zone": "us-central1-a"}}), [example_plans("gcp")["mixtral"]])
    assert rec.of_type("gcp:dns/recordSet:RecordSet") == []


def test_gateway_role_is_narrow(recording):
    role = recording.one("gcp:projects/iAMCustomRole:IAMCustomRole", "gateway-role").inputs
    assert all(p.startswith(("compute.instances.", "compute.instanceGroupManagers.", "compute.instanceGroups.", "compute.zoneOperations."))
               for p in role["permissions"])


def test_acme_dns_challenge_gets_the_project_and_the_dns_permissions():
    config = {**CONFIG, "serveform:gateway": {"tls": "acme_dns", "dns_provider": "googleclouddns", "acme_email": "ops@example.com"}}
    rec = deploy("gcp", make_settings("gcp", config), [example_plans("gcp")["http-server-service"]])
    from _cloud_contract import user_data_of  # noqa: PLC0415

    install = user_data_of(rec, "gateway")
    assert "printf '%s' '{\"gcp_project\": \"acme-ml\"}'" in install
    role = rec.one("gcp:projects/iAMCustomRole:IAMCustomRole", "gateway-role").inputs
    assert "dns.resourceRecordSets.create" not in role["permissions"]  # project-wide role: read only
    dns_role = rec.one("gcp:projects/iAMCustomRole:IAMCustomRole", "gateway-dns-role").inputs
    assert "dns.resourceRecordSets.create" in dns_role["permissions"]
    grant = rec.one("gcp:dns/dnsManagedZoneIamMember:DnsManagedZoneIamMember", "gateway-dns-grant").inputs
    assert grant["managedZone"] == "example-com" and grant["role"]


def test_artifacts_are_shipped_into_a_private_bucket_readable_by_the_gateway_only(recording):
    """Issue 14 item 5: what the gateway VM runs is uploaded by the deployment, named by digest in its user data."""
    import yaml

    bucket = recording.one("gcp:storage/bucket:Bucket", "gateway-artifacts")
    assert "serveform:gcp:Gateway" in bucket.urn
    # No ACLs, never public; Cloud Storage encrypts every object at rest with Google-managed keys.
    assert bucket.inputs["uniformBucketLevelAccess"] is True and bucket.inputs["publicAccessPrevention"] == "enforced"
    assert bucket.inputs["location"] == "US-CENTRAL1"
    objects = [r for r in recording.resources if r.type == "gcp:storage/bucketObject:BucketObject" and r.name.startswith("gateway-artifact-")]
    assert sorted(o.name for o in objects) == ["gateway-artifact-caddy", "gateway-artifact-pulumi", "gateway-artifact-wheelhouse"]
    assert all(o.inputs["name"].startswith("artifacts/") for o in objects)
    # The gateway's account may view exactly these objects: by full name, not the bucket, no wildcard.
    grants = recording.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")
    assert [g.name for g in grants] == ["gateway-artifacts-read"]
    grant = grants[0].inputs
    assert grant["role"] == "roles/storage.objectViewer" and grant["member"].startswith("serviceAccount:")
    names = sorted(f'projects/_/buckets/{grant["bucket"]}/objects/{o.inputs["name"]}' for o in objects)
    assert grant["condition"]["expression"] == " || ".join(f'resource.name == "{n}"' for n in names)
    vm = recording.one("gcp:compute/instance:Instance", "gateway-vm").inputs
    assert vm["bootDisk"]["initializeParams"]["image"] == "debian-cloud/debian-12"
    document = yaml.safe_load(vm["metadata"]["user-data"])
    files = {f["path"]: f for f in document["write_files"]}
    # GCP's fetcher (the metadata server's token), and what every cloud's shares beside it.
    assert "metadata.google.internal" in files["/opt/serveform/bin/serveform-fetch"]["content"]
    assert "/opt/serveform/bin/_fetch.py" in files
    script = files["/opt/serveform/install.sh"]["content"]
    for obj in objects:
        key = obj.inputs["name"]
        digest = key.rsplit("-", 1)[1]
        assert f"serveform-fetch artifact {key.split('/')[1].rsplit('-', 1)[0]} {digest} {grant['bucket']} {key} " in script
    # The secrets too come through the fetcher, with the service account's token.
    assert "serveform-fetch secret projects/" in script
    # Nothing from the internet at boot: no index, no download, no curl | sh.
    assert "pip install -q serveform" not in script and "curl" not in script and "get.pulumi.com" not in script
    assert "curl" not in document["packages"]


def test_the_scalers_up_on_the_vm_keeps_the_artifacts_it_booted_from(recording, tmp_path, monkeypatch):
    """A scale update on the gateway VM has no checkout: it reuses the VM's artifact list, so its user data stays."""
    import yaml

    def user_data(rec):
        return rec.one("gcp:compute/instance:Instance", "gateway-vm").inputs["metadata"]["user-data"]

    files = {f["path"]: f for f in yaml.safe_load(user_data(recording))["write_files"]}
    listed = tmp_path / "artifacts.json"
    listed.write_text(files["/etc/serveform/artifacts.json"]["content"])
    monkeypatch.setenv("SERVEFORM_VM_ARTIFACTS", str(listed))
    import serveform.image.vm as vm_artifacts

    def no_build(root=None, **_):
        raise AssertionError("a scale update on the VM must not build artifacts")

    monkeypatch.setattr(vm_artifacts, "gateway_artifacts", no_build)
    again = deploy("gcp", make_settings("gcp", CONFIG), example_plans("gcp").values())
    assert user_data(again) == user_data(recording)


def test_artifact_read_condition_names_each_object():
    from serveform.components.gcp.gateway import artifact_read_condition

    assert artifact_read_condition("b", ["artifacts/z-1", "artifacts/a-2"]) == (
        'resource.name == "projects/_/buckets/b/objects/artifacts/a-2" || resource.name == "projects/_/buckets/b/objects/artifacts/z-1"'
    )


def test_a_services_code_archive_is_uploaded_and_only_its_replicas_may_read_it(tmp_path):
    """Issue 14 item 2 on GCP: the archive goes into the gateway's artifact bucket, named by digest;
    only that service's account may view it, and its replicas fetch it by the media URL."""
    import hashlib

    from serveform.translator.plan import CodePlan

    archive = tmp_path / "code.tar.gz"
    archive.write_bytes(b"not really a tarball")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    plans = dict(example_plans("gcp"))
    name, plan = sorted(plans.items())[0]
    plans[name] = plan.model_copy(update={"code": CodePlan(sha256=digest, size_bytes=20, archive=str(archive))})
    rec = deploy("gcp", make_settings("gcp", CONFIG), plans.values())
    code = rec.one("gcp:storage/bucketObject:BucketObject", f"{name}-code")
    assert code.inputs["name"] == f"code/{name}/{digest}.tar.gz" and "serveform:gcp:Gateway" in code.urn
    assert code.inputs["bucket"] == rec.one("gcp:storage/bucket:Bucket", "gateway-artifacts").inputs.get("name", "gateway-artifacts")
    grants = {g.name: g.inputs for g in rec.of_type("gcp:storage/bucketIAMMember:BucketIAMMember")}
    assert set(grants) == {"gateway-artifacts-read", f"{name}-code-read"}
    read = grants[f"{name}-code-read"]
    # The service's own account (the mocks name it by its logical name), not the gateway's.
    assert read["role"] == "roles/storage.objectViewer" and read["member"] == f"serviceAccount:{name}-identity@mock-project.iam.gserviceaccount.com"
    assert read["condition"]["expression"] == f'resource.name == "projects/_/buckets/{read["bucket"]}/objects/code/{name}/{digest}.tar.gz"'
    from _cloud_contract import user_data_of  # noqa: PLC0415

    run = user_data_of(rec, name)
    assert f"https://storage.googleapis.com/storage/v1/b/{read['bucket']}/o/code%2F{name}%2F{digest}.tar.gz?alt=media" in run
    # Fetched with GCP's serveform-fetch (the account's token from the metadata server), digest checked.
    assert f"/opt/serveform/bin/serveform-fetch artifact code {digest} {read['bucket']} code/{name}/{digest}.tar.gz " in run
