"""AWS: running instances of an auto scaling group, via EC2 DescribeInstances.

Credentials come from the instance role through IMDSv2; requests are signed with AWS
Signature Version 4 (`sign`, from `serveform.aws.client`), so no SDK is needed on the gateway host.
"""

from __future__ import annotations

import datetime as _dt
import os
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from serveform.aws.client import EC2_API_VERSION, instance_credentials, local_name, sign

from . import _http

__all__ = ["running_ips", "sign"]

IMDS = "http://169.254.169.254"


def _sdk_endpoints() -> dict[str, str]:
    """The AWS SDKs' own endpoint variables, when set (only the boot test sets them, to moto)."""
    found = {}
    if os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        found["imds"] = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"].rstrip("/")
    if os.environ.get("AWS_ENDPOINT_URL"):
        found["ec2"] = os.environ["AWS_ENDPOINT_URL"].rstrip("/")
    return found


def running_ips(group: str, region: str, *, endpoints: Mapping[str, str] | None = None, now: _dt.datetime | None = None) -> list[str]:
    """Private IPs of the group's running instances."""
    endpoints = {**_sdk_endpoints(), **(endpoints or {})}
    creds = instance_credentials(endpoints.get("imds", IMDS))
    base = endpoints.get("ec2", f"https://ec2.{region}.amazonaws.com")
    query = urllib.parse.urlencode(
        {
            "Action": "DescribeInstances",
            "Version": EC2_API_VERSION,
            "Filter.1.Name": "tag:aws:autoscaling:groupName",
            "Filter.1.Value.1": group,
            "Filter.2.Name": "instance-state-name",
            "Filter.2.Value.1": "running",
        }
    )
    url = f"{base}/?{query}"
    headers = sign(
        method="GET", url=url, region=region, service="ec2", access_key=creds.access_key, secret_key=creds.secret_key,
        session_token=creds.token, now=now or _dt.datetime.now(_dt.timezone.utc),
    )
    root = ET.fromstring(_http.request("GET", url, headers))
    ips = []
    for element in root.iter():
        if local_name(element) == "instancesSet":
            for item in element:
                for child in item:
                    if local_name(child) == "privateIpAddress" and child.text:
                        ips.append(child.text)
    return sorted(set(ips))
