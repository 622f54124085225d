"""serveform-fetch of GCP and Azure (components/boot/gcp_fetch.py, azure_fetch.py) against the boot test's stub.

The same programs the gateways' user data write to /opt/serveform/bin/serveform-fetch (with
`_fetch.py` beside them), run by Debian's python3 without serveform installed, on loopback: each
artifact checked by digest and written atomically, a changed or missing one refused with one line,
a secret printed alone, every request with the token the metadata service handed out.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess

import pytest

from _gateway_checks import Stub
from _vmboot import ROOT

BOOT = ROOT / "components" / "boot"
GOOD = b"the real caddy"
ACCOUNT = "sfabcdef0123456789abcdef"
BLOB = f"https://{ACCOUNT}.blob.core.windows.net/serveform-artifacts/artifacts/caddy-good"
VAULT = "https://sf-vault.vault.azure.net/secrets/gateway-tokens"
CLIENT = "client-gateway-identity"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("stubs")
    good = folder / "good"
    good.write_bytes(GOOD)
    gcp = Stub("gcp", {
        "token": "ya29.t", "objects": {"b/artifacts/caddy-good": str(good)},
        "secrets": {"projects/p/secrets/tokens": '["t0k3n"]'}, "replicas": [],
    }, "127.0.0.1", folder)
    azure = Stub("azure", {
        "token": "eyJ.t", "client_id": CLIENT, "subscription": "s", "replicas": [],
        "blobs": {BLOB.removeprefix("https://"): str(good)}, "secrets": {VAULT.removeprefix("https://"): '["t0k3n"]'},
    }, "127.0.0.1", folder)
    try:
        yield {"gcp": gcp, "azure": azure}
    finally:
        gcp.close()
        azure.close()


def _fetch(cloud: str, stub: Stub, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"]}
    if cloud == "gcp":
        env |= {"GCE_METADATA_HOST": f"{stub.host}:{stub.port}", "STORAGE_EMULATOR_HOST": stub.url,
                "CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER": stub.url + "/"}
    else:
        env |= {"AZURE_POD_IDENTITY_AUTHORITY_HOST": stub.url, "SERVEFORM_TEST_AZURE_ENDPOINT": stub.url}
    # System python3 with no site packages: what a fresh VM has.
    return subprocess.run(["/usr/bin/python3", "-S", str(BOOT / f"{cloud}_fetch.py"), *args], capture_output=True, text=True, env=env, timeout=120)


def _artifact(cloud: str, digest: str, where: str, dest) -> list[str]:
    if cloud == "gcp":
        return ["artifact", "caddy", digest, "b", where, str(dest)]
    return ["artifact", "caddy", digest, where, CLIENT, str(dest)]


GOOD_WHERE = {"gcp": "artifacts/caddy-good", "azure": BLOB}
MISSING_WHERE = {"gcp": "artifacts/caddy-absent", "azure": BLOB.replace("caddy-good", "caddy-absent")}
MISSING_NAME = {"gcp": "gs://b/artifacts/caddy-absent", "azure": MISSING_WHERE["azure"]}


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_an_artifact_with_its_digest_is_written(stubs, tmp_path, cloud):
    dest = tmp_path / "caddy.artifact"
    result = _fetch(cloud, stubs[cloud], *_artifact(cloud, hashlib.sha256(GOOD).hexdigest(), GOOD_WHERE[cloud], dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == GOOD and stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caddy.artifact"]


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_a_changed_artifact_is_refused_with_one_line(stubs, tmp_path, cloud):
    expected = hashlib.sha256(b"what the deployment built").hexdigest()
    result = _fetch(cloud, stubs[cloud], *_artifact(cloud, expected, GOOD_WHERE[cloud], tmp_path / "caddy.artifact"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"serveform: artifact caddy: sha256 mismatch (expected {expected}, got {hashlib.sha256(GOOD).hexdigest()})"]
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left to be used


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_a_missing_artifact_is_refused_with_one_line(stubs, tmp_path, cloud):
    result = _fetch(cloud, stubs[cloud], *_artifact(cloud, "0" * 64, MISSING_WHERE[cloud], tmp_path / "p"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"serveform: artifact caddy: not found at {MISSING_NAME[cloud]} (HTTP 404)"]


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_a_secret_is_printed_and_nothing_else(stubs, cloud):
    args = ["secret", "projects/p/secrets/tokens"] if cloud == "gcp" else ["secret", VAULT, CLIENT]
    result = _fetch(cloud, stubs[cloud], *args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == '["t0k3n"]' and result.stderr == ""


@pytest.mark.parametrize("cloud", ["gcp", "azure"])
def test_every_call_carries_the_metadata_services_token(stubs, cloud):
    # The stub refuses a request without the token it handed out (401/403): none was refused.
    calls = stubs[cloud].calls()
    assert calls and not [c for c in calls if c.rsplit(" ", 1)[-1] in ("401", "403")], calls
    token_calls = [c for c in calls if "/token" in c]
    assert len(token_calls) >= len(calls) - len(token_calls)  # a fresh token before each API call


def test_bad_usage_and_bad_references_say_so():
    result = subprocess.run(["/usr/bin/python3", "-S", str(BOOT / "gcp_fetch.py"), "artifact"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "serveform-fetch artifact NAME SHA256 BUCKET OBJECT DEST" in result.stderr
    result = subprocess.run(["/usr/bin/python3", "-S", str(BOOT / "gcp_fetch.py"), "secret", "tokens"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.splitlines() == ["serveform: secret tokens: expected projects/PROJECT/secrets/SECRET"]
    result = subprocess.run(["/usr/bin/python3", "-S", str(BOOT / "azure_fetch.py"), "secret", "https://evil.example/x", CLIENT],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and result.stderr.splitlines() == ["serveform: secret URL: unexpected 'https://evil.example/x'"]
