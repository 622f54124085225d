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
