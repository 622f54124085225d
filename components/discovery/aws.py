"""AWS: the in-service instances of an auto scaling group, and their private addresses.

Auto Scaling says which instances serve (`DescribeAutoScalingGroups`: lifecycle state
`InService`), EC2 where they are (`DescribeInstances` of exactly those, still running). An
instance that scale-in is terminating, one an operator put in `Standby`, or one still `Pending`
drops out of the gateway's choice at the next round, before EC2 stops it.

Credentials come from the instance role through IMDSv2; requests are signed with AWS
Signature Version 4 (`sign`, from `serveform.aws.client`), so no SDK is needed on the gateway host.
"""

from __future__ import annotations

import datetime as _dt
import os
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from serveform.aws.client import AUTOSCALING_API_VERSION, EC2_API_VERSION, Credentials, instance_credentials, local_name, sign

from . import _http

__all__ = ["running_ips", "sign"]

IMDS = "http://169.254.169.254"
# Auto Scaling's lifecycle state of an instance that takes traffic.
IN_SERVICE = "InService"
# DescribeInstances takes at most this many instance IDs in one call.
INSTANCE_IDS_PER_CALL = 1000


def _sdk_endpoints() -> dict[str, str]:
    """The AWS SDKs' own endpoint variables, when set (only the boot test sets them, to moto)."""
    found = {}
    if os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT"):
        found["imds"] = os.environ["AWS_EC2_METADATA_SERVICE_ENDPOINT"].rstrip("/")
    if os.environ.get("AWS_ENDPOINT_URL"):
        found["ec2"] = found["autoscaling"] = os.environ["AWS_ENDPOINT_URL"].rstrip("/")
    return found


def _call(
    service: str, action: str, version: str, params: Mapping[str, str], *, region: str, endpoints: Mapping[str, str],
    creds: Credentials, now: _dt.datetime | None,
) -> ET.Element:
    """One signed Query-API GET; its XML answer."""
    base = endpoints.get(service, f"https://{service}.{region}.amazonaws.com")
    url = f"{base}/?{urllib.parse.urlencode({'Action': action, 'Version': version, **params})}"
    headers = sign(
        method="GET", url=url, region=region, service=service, access_key=creds.access_key, secret_key=creds.secret_key,
        session_token=creds.token, now=now or _dt.datetime.now(_dt.timezone.utc),
    )
    return ET.fromstring(_http.request("GET", url, headers))


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    """The items of the list element ``name`` directly under ``element``."""
    return [item for child in element if local_name(child) == name for item in child]


def _text(element: ET.Element, name: str) -> str:
    return next((child.text or "" for child in element if local_name(child) == name), "")


def running_ips(group: str, region: str, *, endpoints: Mapping[str, str] | None = None, now: _dt.datetime | None = None) -> list[str]:
    """Private IPs of the group's in-service, running instances."""
    endpoints = {**_sdk_endpoints(), **(endpoints or {})}
    creds = instance_credentials(endpoints.get("imds", IMDS))
    call = dict(region=region, endpoints=endpoints, creds=creds, now=now)
    root = _call("autoscaling", "DescribeAutoScalingGroups", AUTOSCALING_API_VERSION, {"AutoScalingGroupNames.member.1": group}, **call)
    ids: list[str] = []
    for element in root.iter():
        if local_name(element) == "AutoScalingGroups":
            for found in element:
                if _text(found, "AutoScalingGroupName") != group:
                    continue
                ids += [_text(i, "InstanceId") for i in _children(found, "Instances") if _text(i, "LifecycleState") == IN_SERVICE]
    ips: set[str] = set()
    for start in range(0, len(ids), INSTANCE_IDS_PER_CALL):
        params = {f"InstanceId.{n}": i for n, i in enumerate(sorted(ids)[start:start + INSTANCE_IDS_PER_CALL], 1)}
        params |= {"Filter.1.Name": "instance-state-name", "Filter.1.Value.1": "running"}
        answer = _call("ec2", "DescribeInstances", EC2_API_VERSION, params, **call)
        for element in answer.iter():
            if local_name(element) == "instancesSet":
                ips.update(_text(item, "privateIpAddress") for item in element)
    return sorted(ip for ip in ips if ip)
