"""serveform-fetch (components/boot/aws_fetch.py), the AWS VM's boot fetcher, against moto.

The same program the gateway's user data writes to /opt/serveform/bin/serveform-fetch, run by
Debian's python3 without serveform installed: signed S3 and Secrets Manager calls with IMDSv2
credentials, each artifact checked by digest, one console line when it cannot succeed.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
from pathlib import Path

import pytest

from _vmboot import ROOT, Moto, loopback_moto

FETCH = ROOT / "components" / "boot" / "aws_fetch.py"
BUCKET = "fetch-test-artifacts"


@pytest.fixture(scope="module")
def fetcher(tmp_path_factory) -> Path:
    """The fetcher and the modules it imports in one folder, as the user data writes them on a VM."""
    from serveform.components._vm import FETCH_BIN, fetch_files

    folder = tmp_path_factory.mktemp("bin")
    for path, text in fetch_files("aws").items():
        (folder / Path(path).name).write_text(text)
    (folder / Path(FETCH_BIN).name).chmod(0o755)
    return folder / Path(FETCH_BIN).name


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    server = loopback_moto(tmp_path_factory.mktemp("moto"))
    try:
        server.call(
            ("s3", "create_bucket", {"Bucket": BUCKET}),
            ("s3", "put_object", {"Bucket": BUCKET, "Key": "artifacts/caddy-good", "Body": "the real caddy"}),
            ("secretsmanager", "create_secret", {"Name": "tokens", "SecretString": '["t0k3n"]'}),
        )
        yield server
    finally:
        server.close()


def _fetch(moto: Moto, fetcher: Path, *args: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "AWS_ENDPOINT_URL": moto.url, "AWS_EC2_METADATA_SERVICE_ENDPOINT": moto.url}
    # System python3 with no site packages: what a fresh VM has.
    return subprocess.run(["/usr/bin/python3", "-S", str(fetcher), *args], capture_output=True, text=True, env=env, timeout=120)


def test_an_artifact_with_its_digest_is_written(moto, fetcher, tmp_path):
    dest = tmp_path / "caddy.artifact"
    digest = hashlib.sha256(b"the real caddy").hexdigest()
    result = _fetch(moto, fetcher, "artifact", "caddy", digest, BUCKET, "artifacts/caddy-good", "us-east-1", str(dest))
    assert result.returncode == 0, result.stderr
    assert dest.read_bytes() == b"the real caddy"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["caddy.artifact"]


def test_a_changed_artifact_is_refused_with_one_line(moto, fetcher, tmp_path):
    dest = tmp_path / "caddy.artifact"
    expected = hashlib.sha256(b"what the deployment built").hexdigest()
    result = _fetch(moto, fetcher, "artifact", "caddy", expected, BUCKET, "artifacts/caddy-good", "us-east-1", str(dest))
    got = hashlib.sha256(b"the real caddy").hexdigest()
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"serveform: artifact caddy: sha256 mismatch (expected {expected}, got {got})"]
    assert list(tmp_path.iterdir()) == []  # nothing half-written is left to be used


def test_a_missing_artifact_is_refused_with_one_line(moto, fetcher, tmp_path):
    result = _fetch(moto, fetcher, "artifact", "pulumi", "0" * 64, BUCKET, "artifacts/pulumi-absent", "us-east-1", str(tmp_path / "p"))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"serveform: artifact pulumi: not found at s3://{BUCKET}/artifacts/pulumi-absent (HTTP 404)"]


def test_a_secret_is_printed_and_nothing_else(moto, fetcher):
    result = _fetch(moto, fetcher, "secret", "tokens", "us-east-1")
    assert result.returncode == 0, result.stderr
    assert result.stdout == '["t0k3n"]' and result.stderr == ""


def test_calls_are_signed_with_the_instance_credentials(moto, fetcher, tmp_path):
    # The fetcher asks IMDSv2 for a token and the role's keys before each signed call.
    _fetch(moto, fetcher, "secret", "tokens", "us-east-1")
    _fetch(moto, fetcher, "artifact", "caddy", "0" * 64, BUCKET, "artifacts/caddy-good", "us-east-1", str(tmp_path / "c"))
    calls = [c.split(" ", 1)[1] for c in moto.calls()]
    assert "imds:PUT /latest/api/token" in calls
    assert "secretsmanager:GetSecretValue" in calls and any(c.startswith("s3:GET /fetch-test-artifacts/") for c in calls)


def test_bad_usage_prints_the_usage(fetcher):
    result = subprocess.run(["/usr/bin/python3", "-S", str(fetcher), "artifact"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "serveform-fetch artifact NAME SHA256" in result.stderr
    assert Path(FETCH).read_text().startswith("#!/usr/bin/python3\n")
