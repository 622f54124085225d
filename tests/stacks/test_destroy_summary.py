"""What `destroy` says before it asks: read from a stack export (the shape `pulumi stack export` writes)."""

from __future__ import annotations

from serveform.stacks.destroy import destroy_summary

STACK = "urn:pulumi:prod::serveform::pulumi:pulumi:Stack::serveform-prod"


def _export(retained: bool) -> dict:
    volume = "urn:pulumi:prod::serveform::serveform:k8s:Volume::volume-models"
    claim = {"urn": volume + "$kubernetes:core/v1:PersistentVolumeClaim::volume-models-claim", "type": "kubernetes:core/v1:PersistentVolumeClaim",
             "custom": True, "parent": volume, "id": "serveform/models"}
    if retained:
        claim["retainOnDelete"] = True
    return {"resources": [
        {"urn": STACK, "type": "pulumi:pulumi:Stack", "custom": False},
        {"urn": "urn:pulumi:prod::serveform::pulumi:providers:kubernetes::default", "type": "pulumi:providers:kubernetes", "custom": True},
        {"urn": volume, "type": "serveform:k8s:Volume", "custom": False, "parent": STACK},
        claim,
        {"urn": "urn:pulumi:prod::serveform::kubernetes:apps/v1:Deployment::chat", "type": "kubernetes:apps/v1:Deployment",
         "custom": True, "parent": STACK, "id": "serveform/chat"},
    ]}


def test_retained_volumes_are_listed_as_kept_and_others_as_deleted():
    kept = destroy_summary("prod", _export(retained=True))
    assert kept.resources == 3  # the stack and its providers are not counted
    assert [(v.name, v.kept, v.where) for v in kept.volumes] == [("volume-models", True, "serveform/models")]
    assert "Volumes KEPT" in kept.text() and "volume-models (serveform/models)" in kept.text()
    deleted = destroy_summary("prod", _export(retained=False))
    assert [v.kept for v in deleted.volumes] == [False]
    assert "Volumes DELETED with their data" in deleted.text() and "KEPT" not in deleted.text()


def test_targets_narrow_the_summary_and_an_empty_stack_says_so():
    targeted = destroy_summary("prod", _export(retained=False), ["urn:pulumi:prod::serveform::kubernetes:apps/v1:Deployment::chat"])
    assert targeted.resources == 1 and targeted.volumes == () and "targeted" in targeted.text()
    assert "nothing to destroy" in destroy_summary("prod", {}).text()
