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
