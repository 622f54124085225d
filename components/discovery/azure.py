"""Azure: private IPs of a scale set's instances, via the scale set's network interfaces.

The token comes from the instance metadata service for the gateway's user-assigned identity;
the subscription is the gateway VM's own (also from the metadata service).
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping

from . import _http

__all__ = ["running_ips"]

IMDS = "http://169.254.169.254"
ARM = "https://management.azure.com"
NIC_API_VERSION = "2018-10-01"


def _sdk_endpoints() -> dict[str, str]:
    """The test's endpoint variables, when set (only the boot test sets them, to its stub):
    AZURE_POD_IDENTITY_AUTHORITY_HOST (azure-identity's, the metadata service) and
    SERVEFORM_TEST_AZURE_ENDPOINT (`https://HOST/PATH` -> `<it>/HOST/PATH`; Azure's SDKs have no
    variable for the management endpoint), as the boot's fetcher reads them."""
    found = {}
    if os.environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST"):
        found["imds"] = os.environ["AZURE_POD_IDENTITY_AUTHORITY_HOST"].rstrip("/")
    if os.environ.get("SERVEFORM_TEST_AZURE_ENDPOINT"):
        found["arm"] = os.environ["SERVEFORM_TEST_AZURE_ENDPOINT"].rstrip("/") + "/management.azure.com"
    return found


def running_ips(resource_group: str, scale_set: str, *, client_id: str | None, endpoints: Mapping[str, str] | None = None) -> list[str]:
    endpoints = {**_sdk_endpoints(), **(endpoints or {})}
    imds = endpoints.get("imds", IMDS)
    query = {"api-version": "2018-02-01", "resource": "https://management.azure.com/"}
    if client_id:
        query["client_id"] = client_id
    token = _http.get_json(f"{imds}/metadata/identity/oauth2/token?{urllib.parse.urlencode(query)}", {"Metadata": "true"})["access_token"]
    subscription = _http.request(
        "GET", f"{imds}/metadata/instance/compute/subscriptionId?api-version=2021-02-01&format=text", {"Metadata": "true"}
    ).decode().strip()
    url = (
        f"{endpoints.get('arm', ARM)}/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/"
        f"Microsoft.Compute/virtualMachineScaleSets/{scale_set}/networkInterfaces?api-version={NIC_API_VERSION}"
    )
    ips: list[str] = []
    while url:
        page = _http.get_json(url, {"Authorization": f"Bearer {token}"})
        for nic in page.get("value", []):
            for config in nic.get("properties", {}).get("ipConfigurations", []):
                ip = config.get("properties", {}).get("privateIPAddress")
                if ip:
                    ips.append(ip)
        url = page.get("nextLink") or ""
    return sorted(set(ips))
