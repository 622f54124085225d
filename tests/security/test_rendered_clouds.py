"""The cloud resources serveform renders (Pulumi mock runtime) and the boot scripts it writes:
grants scoped to the stack's own resources, GCP's own network, identity tokens kept out of argv."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pulumi
import pytest
import yaml
from _cloud_contract import deploy, make_settings
from _cloud_examples import example_plans, hostile_plan

from serveform.components._vm import ReplicaBoot, SecretRef, VolumeMount, replica_user_data

FAKE_TOKEN = "ya29.IDENTITY-TOKEN-never-in-argv"


@pytest.fixture(autouse=True)
def _fresh_root_stack():
    pulumi.runtime.settings.ROOT.set(None)
    yield
    pulumi.runtime.settings.ROOT.set(None)


# --- GCP -------------------------------------------------------------------------------------

GCP = {"serveform:gcp": {"project": "acme-ml", "zone": "us-central1-a", "dns_zone": "example-com"}}
GCP_ACME = {**GCP, "serveform:gateway": {"tls": "acme_dns", "dns_provider": "googleclouddns", "acme_email": "ops@example.com"}}


@pytest.fixture(scope="module")
def gcp():
    pulumi.runtime.settings.ROOT.set(None)
    return deploy("gcp", make_settings("gcp", GCP_ACME), example_plans("gcp").values())


def test_gcp_project_wide_grant_is_read_only(gcp) -> None:
    role = gcp.one("gcp:projects/iAMCustomRole:IAMCustomRole", "gateway-role").inputs
    writes = [p for p in role["permissions"] if not p.endswith((".get", ".list"))]
    assert writes == [], writes
    grant = gcp.one("gcp:projects/iAMMember:IAMMember", "gateway-grant").inputs
    assert "condition" not in grant


def test_gcp_scaling_is_granted_on_the_stack_groups_only(gcp) -> None:
    role = gcp.one("gcp:projects/iAMCustomRole:IAMCustomRole", "gateway-scale-role").inputs
    assert "compute.instanceGroupManagers.update" in role["permissions"]
    grant = gcp.one("gcp:projects/iAMMember:IAMMember", "gateway-scale-grant").inputs
    expression = grant["condition"]["expression"]
    groups = [r.inputs["name"] for r in gcp.of_type("gcp:compute/instanceGroupManager:InstanceGroupManager")]
    assert groups and all(
        f'resource.name == "projects/acme-ml/zones/us-central1-a/instanceGroupManagers/{g}"' in expression for g in groups
    )
    assert "startsWith" not in expression and 'resource.type == "compute.googleapis.com/InstanceGroupManager"' in expression


def test_gcp_dns_writes_are_granted_on_the_stack_zone_only(gcp) -> None:
    dns_writes = [
        r.name for r in gcp.of_type("gcp:projects/iAMCustomRole:IAMCustomRole")
        if any(p.startswith("dns.resourceRecordSets.") and not p.endswith(".list") for p in r.inputs["permissions"])
    ]
    assert dns_writes == ["gateway-dns-role"]
    grant = gcp.one("gcp:dns/dnsManagedZoneIamMember:DnsManagedZoneIamMember").inputs
    assert grant["managedZone"] == "example-com"
    project_grants = [r.inputs["role"] for r in gcp.of_type("gcp:projects/iAMMember:IAMMember")]
    dns_role_name = gcp.one("gcp:projects/iAMCustomRole:IAMCustomRole", "gateway-dns-role").inputs["roleId"]
    assert not any(dns_role_name in str(role) for role in project_grants)


def test_gcp_stack_has_its_own_network_and_replicas_no_external_address(gcp) -> None:
    network = gcp.one("gcp:compute/network:Network").inputs
    assert network["autoCreateSubnetworks"] is False
    assert gcp.one("gcp:compute/subnetwork:Subnetwork").inputs["privateIpGoogleAccess"] is True
    nat = gcp.one("gcp:compute/routerNat:RouterNat").inputs
    assert nat["sourceSubnetworkIpRangesToNat"] == "LIST_OF_SUBNETWORKS"
    for template in gcp.of_type("gcp:compute/instanceTemplate:InstanceTemplate"):
        for interface in template.inputs["networkInterfaces"]:
            assert not interface.get("accessConfigs"), f"{template.name} has an external address"
            assert interface["network"] != "default"
    open_to_world = [f for f in gcp.of_type("gcp:compute/firewall:Firewall") if "0.0.0.0/0" in (f.inputs.get("sourceRanges") or [])]
    assert [f.name for f in open_to_world] == ["gateway-firewall"]
    assert open_to_world[0].inputs["allows"] == [{"protocol": "tcp", "ports": ["80", "443"]}]
    assert open_to_world[0].inputs["targetServiceAccounts"]
    vm = gcp.one("gcp:compute/instance:Instance", "gateway-vm").inputs
    assert vm["networkInterfaces"][0]["network"] != "default"


# --- AWS and Azure DNS -----------------------------------------------------------------------


def test_aws_dns_grant_is_limited_to_the_acme_challenge_txt_record() -> None:
    config = {"serveform:aws": {"region": "us-east-1", "zone_id": "Z123"},
              "serveform:gateway": {"tls": "acme_dns", "dns_provider": "route53", "acme_email": "ops@example.com"}}
    rec = deploy("aws", make_settings("aws", config), [example_plans("aws")["http-server-service"]])
    policy = json.loads(rec.one("aws:iam/rolePolicy:RolePolicy", "gateway-policy").inputs["policy"])
    changes = [s for s in policy["Statement"] if "route53:ChangeResourceRecordSets" in s["Action"]]
    (statement,) = changes
    assert statement["Resource"] == ["arn:aws:route53:::hostedzone/Z123"]
    condition = statement["Condition"]["ForAllValues:StringEquals"]
    assert condition["route53:ChangeResourceRecordSetsNormalizedRecordNames"] == ["_acme-challenge.example.com"]
    assert condition["route53:ChangeResourceRecordSetsRecordTypes"] == ["TXT"]


def test_azure_dns_grant_is_txt_only_on_the_zone() -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOr5Nq2sFhD5Xa0c5gYyWcCq8mXyJc7Y1Xh0m2lK9vQp test"
    config = {"serveform:azure": {"location": "eastus", "dns_zone": "example.com", "ssh_public_key": key},
              "serveform:gateway": {"tls": "acme_dns", "dns_provider": "azure", "acme_email": "ops@example.com"}}
    rec = deploy("azure", make_settings("azure", config), [example_plans("azure")["http-server-service"]])
    role = rec.one("azure-native:authorization:RoleDefinition", "gateway-dns-role").inputs
    (permission,) = role["permissions"]
    zone_actions = [a for a in permission["actions"] if a.startswith("Microsoft.Network/dnszones/")]
    writes = [a for a in zone_actions if a.endswith(("/write", "/delete"))]
    assert writes and all("/TXT/" in a for a in writes)
    assignment = rec.one("azure-native:authorization:RoleAssignment", "gateway-dns-access").inputs
    assert assignment["scope"].endswith("/providers/Microsoft.Network/dnszones/example.com")
    # The built-in DNS Zone Contributor (any record type, A records included) is gone.
    assert not any("befefa01-2a29-4197-83a8-272ff33ce314" in str(r.inputs) for r in rec.resources)


# --- identity tokens in boot scripts ---------------------------------------------------------

_REFS = {
    "gcp": SecretRef(cloud="gcp", ref="projects/acme/secrets/serveform-dev-x"),
    "azure": SecretRef(cloud="azure", ref="https://sfdev.vault.azure.net/secrets/svc-x"),
    "aws": SecretRef(cloud="aws", ref="arn:aws:secretsmanager:us-east-1:1:secret:x", region="us-east-1"),
}
_VOLUMES = {
    "gcp": VolumeMount(name="models", ref="projects/acme/zones/z/disks/d", container_path="/models", device="models"),
    "azure": VolumeMount(name="models", ref="/subscriptions/s/disks/d", container_path="/models", device="0"),
    "aws": VolumeMount(name="models", ref="vol-0123456789abcdef0", container_path="/models", device="/dev/sdf"),
}


def _functions(cloud: str) -> str:
    """The boot script's helper functions (`retry`, secret fetch, volume attach) for `cloud`."""
    plan = hostile_plan(cloud)
    identity = "00000000-0000-0000-0000-0000000000aa" if cloud == "azure" else None
    document = yaml.safe_load(
        replica_user_data(ReplicaBoot(plan=plan, cloud=cloud, stack="dev", secret=_REFS[cloud], identity=identity, volumes=(_VOLUMES[cloud],)))
    )
    script = next(f["content"] for f in document["write_files"] if f["content"].startswith("#!/bin/bash"))
    return "\n".join(m.group(0) for m in re.finditer(r"^\w+\(\) \{.*?^\}$", script, flags=re.S | re.M))


_FAKE_CURL = r"""#!/bin/bash
# Records its argv (one line per call) and the headers it was given from files; plays the
# metadata servers and cloud APIs with canned answers.
printf '%s\n' "$*" >> "$LOG/argv"
url="${@: -1}"
prev=""
for a in "$@"; do
  if [ "$prev" = "-H" ] && [ "${a:0:1}" = "@" ]; then cat "${a:1}" >> "$LOG/header-files"; fi
  prev="$a"
done
case "$url" in
  *latest/api/token) printf '%s' "$FAKE_TOKEN" ;;
  *oauth2/token*|*/token) printf '{"access_token": "%s"}' "$FAKE_TOKEN" ;;
  *secretmanager*) printf '{"payload": {"data": "e30="}}' ;;
  *vault.azure.net*) printf '{"value": "{}"}' ;;
  *) printf 'x' ;;
esac
"""


@pytest.mark.parametrize("cloud", ["gcp", "azure", "aws"])
def test_identity_tokens_reach_curl_from_files_never_as_arguments(tmp_path: Path, cloud: str) -> None:
    functions = _functions(cloud)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "curl").write_text(_FAKE_CURL)
    for tool in ("aws", "sleep"):
        (bin_dir / tool).write_text("#!/bin/sh\nexit 0\n")
    for path in bin_dir.iterdir():
        path.chmod(0o755)
    log = tmp_path / "log"
    log.mkdir()
    # The device the attach helper waits for exists at once; `test -e` sees this temp path.
    calls = "serveform_attach_volume " + {"gcp": "disk models", "azure": "disk 0", "aws": "vol-0123456789abcdef0 /dev/sdf"}[cloud]
    body = f"set -euo pipefail\numask 077\n{functions}\n"
    if cloud != "aws":
        body += "serveform_fetch_secret > /dev/null\n"
    body += f"{calls} > /dev/null || true\n"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log), "FAKE_TOKEN": FAKE_TOKEN, "TMPDIR": str(tmp_path)}
    result = subprocess.run(["bash", "-c", body], env=env, capture_output=True, text=True, timeout=60)
    argv = (log / "argv").read_text()
    assert FAKE_TOKEN not in argv, f"{cloud}: the identity token is on a command line:\n{argv}"
    assert FAKE_TOKEN in (log / "header-files").read_text(), f"{cloud}: curl never got the token from a file\n{result.stderr}"
    leftovers = [p for p in tmp_path.glob("tmp.*")]
    assert leftovers == [], f"{cloud}: header files left behind: {leftovers}"


def test_gcp_existing_network_is_used_as_named_and_replicas_still_have_no_external_address() -> None:
    config = {"serveform:gcp": {"project": "acme-ml", "zone": "us-central1-a", "network": "shared-vpc", "subnetwork": "serving"}}
    rec = deploy("gcp", make_settings("gcp", config), [example_plans("gcp")["http-server-service"]])
    assert rec.of_type("gcp:compute/network:Network") == [] and rec.of_type("gcp:compute/routerNat:RouterNat") == []
    for template in rec.of_type("gcp:compute/instanceTemplate:InstanceTemplate"):
        (interface,) = template.inputs["networkInterfaces"]
        assert interface["network"] == "shared-vpc" and interface["subnetwork"] == "serving"
        assert not interface.get("accessConfigs")
    with pytest.raises(Exception, match="serveform:gcp.subnetwork"):
        deploy("gcp", make_settings("gcp", {"serveform:gcp": {"project": "p", "zone": "us-central1-a", "subnetwork": "s"}}),
               [example_plans("gcp")["http-server-service"]])


@pytest.mark.parametrize("cloud", ["gcp", "azure", "aws"])
def test_replica_containers_are_cut_off_from_the_metadata_service(cloud: str) -> None:
    """Issue 14 item 3: the VM's credentials are the VM's. The container has its own network behind
    the engine's bridge (one hop away, so AWS's IMDSv2 token limit of one hop stops it), and its
    packets to the metadata address are dropped before `docker run`; the VM's own (OUTPUT) are not.
    tests/boot/test_aws_replica.py shows both for real."""
    plan = hostile_plan(cloud)
    document = yaml.safe_load(replica_user_data(ReplicaBoot(plan=plan, cloud=cloud, stack="dev", secret=_REFS[cloud])))
    script = next(f["content"] for f in document["write_files"] if f["content"].startswith("#!/bin/bash"))
    assert "--network host" not in script and "--network=host" not in script
    assert f"--network bridge -p {plan.replica_group.container_port}:{plan.replica_group.container_port} " in script
    rule = "iptables -t mangle -I PREROUTING -d 169.254.169.254/32 -j DROP"
    assert script.index(rule) < script.index("exec docker run")
