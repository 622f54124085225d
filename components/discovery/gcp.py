"""GCP: running instances of a service's managed instance group, via the Compute API.

The gateway's service account token comes from the metadata server. Instances carry the
labels their template gives them (`serveform-stack`, `serveform-service`).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping

from . import _http

__all__ = ["running_ips"]

METADATA = "http://metadata.google.internal"
COMPUTE = "https://compute.googleapis.com"


def _sdk_endpoints() -> dict[str, str]:
    """The Google tools' own endpoint variables, when set (only the boot test sets them, to its stub):
    GCE_METADATA_HOST (google-auth) and CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE (gcloud, which
    names the API's root with its `compute/v1/` path)."""
    found = {}
    if os.environ.get("GCE_METADATA_HOST"):
        found["metadata"] = "http://" + os.environ["GCE_METADATA_HOST"]
    if os.environ.get("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE"):
        found["compute"] = os.environ["CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE"].rstrip("/").removesuffix("/compute/v1")
    return found


def running_ips(project: str, zone: str, *, stack: str, service: str, endpoints: Mapping[str, str] | None = None) -> list[str]:
    endpoints = {**_sdk_endpoints(), **(endpoints or {})}
    token = _http.get_json(
        f"{endpoints.get('metadata', METADATA)}/computeMetadata/v1/instance/service-accounts/default/token",
        {"Metadata-Flavor": "Google"},
    )["access_token"]
    query = urllib.parse.urlencode(
        {"filter": f'labels.serveform-stack = "{stack}" AND labels.serveform-service = "{service}" AND status = "RUNNING"'}
    )
    url = f"{endpoints.get('compute', COMPUTE)}/compute/v1/projects/{project}/zones/{zone}/instances?{query}"
    ips: list[str] = []
    while url:
        page = _http.get_json(url, {"Authorization": f"Bearer {token}"})
        for instance in page.get("items", []):
            if instance.get("status") == "RUNNING":
                for nic in instance.get("networkInterfaces", [])[:1]:
                    if nic.get("networkIP"):
                        ips.append(nic["networkIP"])
        next_token = page.get("nextPageToken")
        url = f"{url.split('&pageToken=')[0]}&pageToken={urllib.parse.quote(next_token)}" if next_token else ""
    return sorted(set(ips))
