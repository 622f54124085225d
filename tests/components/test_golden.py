"""Golden files: the rendered boot documents of the hostile example, byte for byte.

A template change shows up here as a reviewable diff. To accept a change on purpose:
``SERVEFORM_UPDATE_GOLDEN=1 python -m pytest tests/components/test_golden.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cloud_examples import hostile_plan  # noqa: E402

from serveform.scaler import render_unit  # noqa: E402

from serveform.components._vm import ArtifactRef, CodeSource, DiscoveryTarget, GatewayBoot, ReplicaBoot, SecretRef, gateway_user_data, replica_user_data  # noqa: E402
from serveform.translator.plan import CodeMountPlan, CodePlan  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "golden"
_REFS = {
    "aws": SecretRef(cloud="aws", ref="arn:aws:secretsmanager:us-east-1:123456789012:secret:hostile-AbCdEf", region="us-east-1"),
    "gcp": SecretRef(cloud="gcp", ref="projects/acme/secrets/serveform-dev-hostile"),
    "azure": SecretRef(cloud="azure", ref="https://sfdev.vault.azure.net/secrets/svc-hostile"),
}

_ENV_REFS = {
    "aws": SecretRef(cloud="aws", ref="arn:aws:secretsmanager:us-east-1:123456789012:secret:scaler-env-AbCdEf", region="us-east-1"),
    "gcp": SecretRef(cloud="gcp", ref="projects/acme/secrets/serveform-dev-scaler-env"),
    "azure": SecretRef(cloud="azure", ref="https://sfdev.vault.azure.net/secrets/scaler-env"),
}


def _check(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("SERVEFORM_UPDATE_GOLDEN") == "1":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} is missing: run with SERVEFORM_UPDATE_GOLDEN=1 once and review it"
    assert text == path.read_text(), f"{name} differs from its golden file"


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_replica_cloud_init_golden(cloud):
    plan = hostile_plan(cloud, instance_dir="/mnt/it's here")
    identity = "00000000-0000-0000-0000-0000000000aa" if cloud == "azure" else None
    _check(f"replica-{cloud}.yaml", replica_user_data(ReplicaBoot(plan=plan, cloud=cloud, stack="dev", secret=_REFS[cloud], identity=identity)))


_CODE_URLS = {
    "aws": "s3://serveform-dev-artifacts/code/hostile/1111111111111111111111111111111111111111111111111111111111111111.tar.gz",
    "gcp": "https://storage.googleapis.com/storage/v1/b/sf-dev/o/code%2Fhostile%2F1111.tar.gz?alt=media",
    "azure": "https://sfdev.blob.core.windows.net/artifacts/code/hostile/1111.tar.gz",
}


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_replica_cloud_init_with_code_golden(cloud):
    code = CodePlan(
        sha256="1" * 64, size_bytes=1234, archive="/p/.serveform/code/1111.tar.gz", workdir="/workflow/sub dir",
        mounts=(CodeMountPlan(member="mounts/0", path="/root/it's/key"),),
    )
    plan = hostile_plan(cloud, instance_dir="/mnt/it's here").model_copy(update={"code": code})
    identity = "00000000-0000-0000-0000-0000000000aa" if cloud == "azure" else None
    boot = ReplicaBoot(plan=plan, cloud=cloud, stack="dev", secret=_REFS[cloud], identity=identity,
                       code=CodeSource(url=_CODE_URLS[cloud], region="us-east-1" if cloud == "aws" else None))
    _check(f"replica-{cloud}-code.yaml", replica_user_data(boot))


@pytest.mark.parametrize("cloud", ["aws", "gcp", "azure"])
def test_gateway_cloud_init_golden(cloud):
    # A fixed gateway.json: its layout belongs to the gateway package and is tested there.
    document = {"settings": {"domain": "example.com", "note": "it's \"$HOME\" `x`\nline"}, "plans": [], "tokens_file": "secrets/tokens.json"}
    boot = GatewayBoot(
        cloud=cloud, stack="dev", domain="example.com",
        gateway_document=document,
        targets=(DiscoveryTarget(service="hostile", port=8080, cloud=cloud, group="serveform-dev-hostile", region="us-east-1"),),
        tokens_secret=_REFS[cloud], identity="00000000-0000-0000-0000-0000000000bb" if cloud == "azure" else None,
        # The scaler on the host: its unit, the project copy and its environment from the secret store.
        scaler_unit=render_unit(stack="dev", gateway_state_dir="/var/lib/serveform/gateway"),
        project_files={"Pulumi.yaml": "name: serveform\nruntime: python\n", "stacks/Pulumi.dev.yaml": "config:\n  serveform:backend: x\n"},
        scaler_env_secret=_ENV_REFS[cloud],
        # The template's rendering of these inputs, not each cloud's own choices (every cloud now
        # ships its artifacts, and an aws gateway gets no project or scaler env): those are tested
        # in tests/components/<cloud> and booted in tests/boot.
        artifacts=tuple(ArtifactRef(name=n, sha256=d * 64, key=f"artifacts/{n}-{d * 64}") for n, d in (("wheelhouse", "a"), ("caddy", "b"), ("pulumi", "c")))
        if cloud == "aws" else (),
        artifact_bucket="gateway-artifacts-0123abcd" if cloud == "aws" else None,
        artifact_region="us-east-1" if cloud == "aws" else None,
    )
    _check(f"gateway-{cloud}.yaml", gateway_user_data(boot))
