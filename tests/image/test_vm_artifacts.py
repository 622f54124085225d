"""`serveform.image.vm`: the gateway VM's artifacts are reproducible, listed, and fail clearly.

The builders are called by their own names: tests/components replaces `gateway_artifacts` with
small stand-ins for its whole session.
"""

from __future__ import annotations

import hashlib
import tarfile

import pytest

import serveform.image.vm as vm
from serveform.image import ImageBuildError
from serveform.image.build import source_root


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_checkout_gives_the_same_bytes():
    root = source_root()
    first = vm._wheelhouse(root)
    before = _digest(first)
    # Built again from scratch (the dependency wheels stay cached): the same digest, so an
    # unchanged checkout keeps the gateway's user data and VM.
    first.unlink()
    assert _digest(vm._wheelhouse(root)) == before
    pulumi = vm._pulumi()
    before = _digest(pulumi)
    pulumi.unlink()
    assert _digest(vm._pulumi()) == before


@pytest.mark.parametrize("cloud", ["aws", "gcp"])
def test_the_wheelhouse_holds_serveform_and_exactly_the_pinned_wheels(cloud):
    with tarfile.open(vm._wheelhouse(source_root(), cloud)) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert all(m.mtime == vm.SOURCE_DATE_EPOCH and m.uid == 0 and m.uname == "root" for m in members)
    def normal(name: str) -> str:  # PEP 503: runs of -_. are one dash
        return name.lower().replace("_", "-").replace(".", "-")

    wheels = {normal(n.split("/")[1].split("-")[0]) for n in names}
    pinned = {normal(line.split("==")[0]) for line in vm._requirements(cloud).splitlines() if line and not line.startswith("#")}
    assert wheels - {"serveform"} == pinned
    # GCP's scaler runs `up` on the VM (its Pulumi SDK); AWS's calls the Auto Scaling API (none).
    assert ("pulumi-gcp" in wheels) == (cloud == "gcp") and "pulumi-aws" not in wheels


def test_a_missing_build_names_what_to_run(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "_serveform_cache", lambda: tmp_path)
    with pytest.raises(ImageBuildError, match=r"caddy.*missing; run `tools/setup.sh dev`"):
        vm._caddy()
    with pytest.raises(ImageBuildError, match=r"pulumi.*missing; run `tools/setup.sh dev`"):
        vm._pulumi()


def test_a_vm_reads_back_the_list_it_booted_from(tmp_path):
    listed = tmp_path / "artifacts.json"
    listed.write_text('{"bucket": "b", "artifacts": [{"name": "caddy", "sha256": "' + "a" * 64 + '", "key": "artifacts/caddy-' + "a" * 64 + '"}]}')
    (artifact,) = vm.shipped_artifacts(listed)
    assert artifact.name == "caddy" and artifact.path is None and artifact.key == "artifacts/caddy-" + "a" * 64
    listed.write_text("{}")
    with pytest.raises(ImageBuildError, match="artifacts.json: expected the VM's artifact list"):
        vm.shipped_artifacts(listed)
