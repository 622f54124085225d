"""The VM gateways' scaler environment: stored as a secret, granted to the gateway, fetched at boot.

The scaler on a GCP or Azure gateway host runs `pulumi up`, so it needs the state backend URL and
passphrase of the deploying environment. Under Pulumi's mock runtime, for each of them: the
program stores them in the cloud's secret store as a Pulumi secret, grants the gateway's identity
(only) access to that one secret, and the boot document names the secret but never holds the
values; with no autoscaling service nothing is stored. On AWS the scaler sets its groups' desired
capacity with the instance role: the state's credentials are stored nowhere and granted to no one.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from _cloud_contract import _decoded_texts, deploy, make_settings
from _cloud_examples import example_plans

PASSPHRASE = "scaler-passphrase-SECRET-4f1d"
BACKEND_URL = "s3://acme-state-SECRET-bucket/serveform"

CONFIGS = {
    "aws": {"serveform:aws": {"region": "us-east-1", "zone_id": "Z0123456789"}},
    "gcp": {"serveform:gcp": {"project": "acme-ml", "zone": "us-central1-a", "dns_zone": "example-com"}},
    "azure": {
        "serveform:azure": {
            "location": "eastus",
            "dns_zone": "example.com",
            "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMockKeyForTestsOnly serveform",
        }
    },
}
# The secret resource (logical name gateway-scaler-env) and the field holding its value.
SECRET_VALUE = {
    "aws": ("aws:secretsmanager/secretVersion:SecretVersion", "gateway-scaler-env-value", "secretString"),
    "gcp": ("gcp:secretmanager/secretVersion:SecretVersion", "gateway-scaler-env-value", "secretData"),
    "azure": ("azure-native:keyvault:Secret", "gateway-scaler-env", "properties"),
}
ACCESS = {
    "aws": None,  # in the role's policy document
    "gcp": ("gcp:secretmanager/secretIamMember:SecretIamMember", "gateway-scaler-env-access"),
    "azure": ("azure-native:authorization:RoleAssignment", "gateway-scaler-env-access"),
}


def _scaling_plans(cloud: str):
    plans = example_plans(cloud)
    scaling = [p for p in plans.values() if p.scaling]
    assert scaling, "the examples hold an autoscaling service"
    return scaling


@pytest.fixture(autouse=True)
def _event_loop():
    """The mock runtime runs on the current loop; an async test before this module may have closed it."""
    try:
        asyncio.get_event_loop_policy().get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())
    yield


@pytest.fixture
def deploying_env(monkeypatch):
    monkeypatch.setenv("PULUMI_BACKEND_URL", BACKEND_URL)
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("PULUMI_ACCESS_TOKEN", raising=False)


def test_aws_stores_no_state_credentials_for_its_scaler(deploying_env):
    rec = deploy("aws", make_settings("aws", CONFIGS["aws"]), _scaling_plans("aws"))
    assert not [r for r in rec.resources if "scaler-env" in r.name]
    policy = json.loads(rec.one("aws:iam/rolePolicy:RolePolicy", "gateway-policy").inputs["policy"])
    assert "ReadScalerEnv" not in {s["Sid"] for s in policy["Statement"]}
    for resource in rec.resources:
        for text in _decoded_texts(resource.inputs):
            assert PASSPHRASE not in text and BACKEND_URL not in text, resource.name


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_scaler_env_is_a_secret_in_the_store_granted_to_the_gateway_and_fetched_at_boot(cloud, deploying_env):
    rec = deploy(cloud, make_settings(cloud, CONFIGS[cloud]), _scaling_plans(cloud))
    type_, name, key = SECRET_VALUE[cloud]
    stored = rec.one(type_, name)
    assert any(path.startswith(key) for path in stored.secret_inputs), stored.secret_inputs
    value = stored.inputs[key]["value"] if cloud == "azure" else stored.inputs[key]
    assert json.loads(value) == {"PULUMI_BACKEND_URL": BACKEND_URL, "PULUMI_CONFIG_PASSPHRASE": PASSPHRASE}
    if ACCESS[cloud] is not None:
        rec.one(*ACCESS[cloud])
    else:
        policy = json.loads(rec.one("aws:iam/rolePolicy:RolePolicy", "gateway-policy").inputs["policy"])
        (statement,) = [s for s in policy["Statement"] if s["Sid"] == "ReadScalerEnv"]
        assert statement["Action"] == ["secretsmanager:GetSecretValue"] and len(statement["Resource"]) == 1
    # The boot document fetches it by reference; the values are nowhere else in plain text.
    boot = [t for r in rec.resources if "gateway" in r.name for t in _decoded_texts(r.inputs) if t.startswith("#cloud-config")]
    assert len(boot) == 1
    assert "retry serveform_fetch_secret > /etc/serveform/scaler.env.json" in boot[0]
    for resource in rec.resources:
        if resource is stored:
            continue
        for text in _decoded_texts(resource.inputs):
            assert PASSPHRASE not in text and BACKEND_URL not in text, resource.name


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_no_scaler_or_no_environment_stores_nothing(cloud, deploying_env, monkeypatch):
    fixed = [p for p in example_plans(cloud).values() if not p.scaling]
    rec = deploy(cloud, make_settings(cloud, CONFIGS[cloud]), fixed)
    assert not [r for r in rec.resources if "scaler-env" in r.name]
    monkeypatch.delenv("PULUMI_BACKEND_URL")
    monkeypatch.delenv("PULUMI_CONFIG_PASSPHRASE")
    rec = deploy(cloud, make_settings(cloud, CONFIGS[cloud]), _scaling_plans(cloud))
    assert not [r for r in rec.resources if "scaler-env" in r.name]
    boot = [t for r in rec.resources if "gateway" in r.name for t in _decoded_texts(r.inputs) if t.startswith("#cloud-config")]
    assert "the operator provides the scaler's environment file" in boot[0]
