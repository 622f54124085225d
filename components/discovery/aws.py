"""AWS: running instances of an auto scaling group, via EC2 DescribeInstances.

Credentials come from the instance role through IMDSv2; requests are signed with AWS
Signature Version 4 (`sign`), so no SDK is needed on the gateway host.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from . import _http

__all__ = ["running_ips", "sign"]

IMDS = "http://169.254.169.254"
EC2_API_VERSION = "2016-11-15"
IMDS_TOKEN_TTL_SECONDS = 300


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(
    *,
    method: str,
    url: str,
    region: str,
    service: str,
    access_key: str,
    secret_key: str,
    now: _dt.datetime,
    session_token: str | None = None,
    body: bytes = b"",
) -> dict[str, str]:
    """The headers (`X-Amz-Date`, `Authorization`, ...) of a SigV4-signed request."""
    parts = urllib.parse.urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    headers = {"host": parts.netloc, "x-amz-date": amz_date}
    if session_token:
        headers["x-amz-security-token"] = session_token
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical_query = "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in query)
    signed = ";".join(sorted(headers))
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(parts.path or "/", safe="/-_.~"),
            canonical_query,
            "".join(f"{k}:{headers[k].strip()}\n" for k in sorted(headers)),
            signed,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), date), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {
        "X-Amz-Date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={signed}, Signature={signature}",
    }
    if session_token:
        out["X-Amz-Security-Token"] = session_token
    return out


def _credentials(imds: str) -> dict[str, str]:
    token = _http.request("PUT", f"{imds}/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_SECONDS)}).decode()
    headers = {"X-aws-ec2-metadata-token": token}
    role = _http.request("GET", f"{imds}/latest/meta-data/iam/security-credentials/", headers).decode().split()[0]
    return json.loads(_http.request("GET", f"{imds}/latest/meta-data/iam/security-credentials/{role}", headers))


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
    creds = _credentials(endpoints.get("imds", IMDS))
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
        method="GET", url=url, region=region, service="ec2", access_key=creds["AccessKeyId"], secret_key=creds["SecretAccessKey"],
        session_token=creds.get("Token"), now=now or _dt.datetime.now(_dt.timezone.utc),
    )
    root = ET.fromstring(_http.request("GET", url, headers))
    ips = []
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "instancesSet":
            for item in element:
                for child in item:
                    if child.tag.rsplit("}", 1)[-1] == "privateIpAddress" and child.text:
                        ips.append(child.text)
    return sorted(set(ips))
