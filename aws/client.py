"""AWS's HTTP APIs with Python's standard library: credentials, Signature Version 4, two protocols.

Nothing here imports anything but the standard library, because it runs where nothing else is:
the AWS VMs' boot fetcher (`components/boot/aws_fetch.py`) imports it from the file the user data
writes beside it (`serveform_aws.py`) before serveform is installed. The gateway's replica
discovery and the scaler's Auto Scaling applier import it as `serveform.aws.client`.

- credentials: the instance role's temporary keys through IMDSv2 (`instance_credentials`), or
  the operator's from the environment or the shared credentials file (`default_credentials`);
- `sign`: the SigV4 headers of one request (AWS's published test vectors pass,
  tests/components/test_discovery.py);
- `query_call`: the Query protocol of EC2 and Auto Scaling (form-encoded `Action`, XML answer);
  `json_call`: the JSON protocol of Secrets Manager (`X-Amz-Target`).

The AWS SDKs' own variables redirect the calls: `AWS_ENDPOINT_URL` (every service) and
`AWS_EC2_METADATA_SERVICE_ENDPOINT` (the metadata service). Only the tests set them (to moto);
production configuration never does.

Error tree::

    AwsError            an AWS API answered an error (HTTP status, AWS error code, message)
"""

from __future__ import annotations

import configparser
import datetime as _dt
import hashlib
import hmac
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "AUTOSCALING_API_VERSION",
    "AwsError",
    "Credentials",
    "EC2_API_VERSION",
    "IMDS",
    "default_credentials",
    "endpoint",
    "environment_credentials",
    "instance_credentials",
    "json_call",
    "local_name",
    "query_call",
    "sign",
    "signed_request",
]

IMDS = "http://169.254.169.254"
IMDS_TOKEN_TTL_SECONDS = 300
TIMEOUT_SECONDS = 30
EC2_API_VERSION = "2016-11-15"
AUTOSCALING_API_VERSION = "2011-01-01"
# An error body is read this far, for its code and message (they carry no secret).
_ERROR_BODY_LIMIT_BYTES = 64 * 1024


class AwsError(OSError):
    """An AWS API answered an error: its HTTP status, AWS's error code (`Throttling`,
    `AccessDenied`, `ValidationError`, ...) and message."""

    def __init__(self, status: int, code: str, message: str, *, url: str = "") -> None:
        super().__init__(f"{url.split('?')[0]}: HTTP {status}: {code}: {message}" if url else f"HTTP {status}: {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class Credentials(NamedTuple):
    """One set of AWS keys; `token` for temporary ones (an instance role's, an assumed role's)."""

    access_key: str
    secret_key: str
    token: str | None = None


def _imds_base() -> str:
    return os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS).rstrip("/")


def instance_credentials(imds: str | None = None, *, timeout: float = TIMEOUT_SECONDS) -> Credentials:
    """The instance role's temporary keys through IMDSv2: a session token first (PUT), then the role's keys.

    Raises OSError (urllib's errors are) when the metadata service cannot be reached, and
    LookupError when the instance has no role (yet: a fresh instance's profile may lag its boot).
    """
    base = (imds or _imds_base()).rstrip("/")
    token_request = urllib.request.Request(
        f"{base}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_SECONDS)}
    )
    with urllib.request.urlopen(token_request, timeout=timeout) as response:
        token = response.read().decode()
    headers = {"X-aws-ec2-metadata-token": token}
    listing = urllib.request.Request(f"{base}/latest/meta-data/iam/security-credentials/", headers=headers)
    with urllib.request.urlopen(listing, timeout=timeout) as response:
        roles = response.read().decode().split()
    if not roles:
        raise LookupError("the instance has no role (yet)")
    keys = urllib.request.Request(f"{base}/latest/meta-data/iam/security-credentials/{roles[0]}", headers=headers)
    with urllib.request.urlopen(keys, timeout=timeout) as response:
        data = json.loads(response.read())
    return Credentials(data["AccessKeyId"], data["SecretAccessKey"], data.get("Token"))


def environment_credentials(environ: Mapping[str, str] = os.environ) -> Credentials | None:
    """The keys of `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`), else the
    `AWS_PROFILE` (or `default`) profile's static keys in the shared credentials file; None without either.

    What CI's role (configure-aws-credentials exports it) and a person's profile look like; a
    profile that only names a role to assume or an SSO session needs the AWS CLI to export keys first.
    """
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(environ["AWS_ACCESS_KEY_ID"], environ["AWS_SECRET_ACCESS_KEY"], environ.get("AWS_SESSION_TOKEN") or None)
    path = Path(environ.get("AWS_SHARED_CREDENTIALS_FILE") or Path.home() / ".aws" / "credentials").expanduser()
    profile = environ.get("AWS_PROFILE") or "default"
    parser = configparser.ConfigParser()
    try:
        parser.read(path)
    except configparser.Error:
        return None
    if parser.has_option(profile, "aws_access_key_id") and parser.has_option(profile, "aws_secret_access_key"):
        return Credentials(
            parser.get(profile, "aws_access_key_id"),
            parser.get(profile, "aws_secret_access_key"),
            parser.get(profile, "aws_session_token", fallback=None) or None,
        )
    return None


# Off EC2 nothing answers the metadata address: give up as fast as the AWS SDKs do.
_IMDS_PROBE_TIMEOUT_SECONDS = 2


def default_credentials() -> Credentials:
    """The environment's or the shared file's keys (`environment_credentials`), else the instance role's.

    Raises LookupError naming what was tried when there are none.
    """
    found = environment_credentials()
    if found is not None:
        return found
    try:
        return instance_credentials(timeout=_IMDS_PROBE_TIMEOUT_SECONDS)
    except (OSError, LookupError, ValueError, KeyError) as exc:
        raise LookupError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), "
            f"or AWS_PROFILE with keys in the shared credentials file; the instance metadata service: {exc}"
        ) from None


def endpoint(service: str, region: str) -> str:
    """`https://<service>.<region>.amazonaws.com`, or `AWS_ENDPOINT_URL` when set (tests only)."""
    override = os.environ.get("AWS_ENDPOINT_URL")
    return override.rstrip("/") if override else f"https://{service}.{region}.amazonaws.com"


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
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The headers of a SigV4-signed request: ``headers`` (all signed) plus `X-Amz-Date`,
    `Authorization` and, with temporary keys, `X-Amz-Security-Token`."""
    parts = urllib.parse.urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    given = {k.lower(): v for k, v in (headers or {}).items()}
    signed_headers = {**given, "host": parts.netloc, "x-amz-date": amz_date}
    if session_token:
        signed_headers["x-amz-security-token"] = session_token
    names = sorted(signed_headers)
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(parts.path or "/", safe="/-_.~"),
            "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in query),
            "".join(f"{n}:{signed_headers[n].strip()}\n" for n in names),
            ";".join(names),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + secret_key).encode(), date), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out = {
        **dict(headers or {}),
        "X-Amz-Date": amz_date,
        "Authorization": f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={signature}",
    }
    if session_token:
        out["X-Amz-Security-Token"] = session_token
    return out


def signed_request(
    method: str,
    url: str,
    *,
    region: str,
    service: str,
    credentials: Credentials,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
    now: _dt.datetime | None = None,
) -> urllib.request.Request:
    """A `urllib.request.Request` signed with ``credentials``."""
    all_headers = sign(
        method=method, url=url, region=region, service=service, access_key=credentials.access_key,
        secret_key=credentials.secret_key, session_token=credentials.token, body=body, headers=headers,
        now=now or _dt.datetime.now(_dt.timezone.utc),
    )
    return urllib.request.Request(url, data=body or None, method=method, headers=all_headers)


def local_name(element: ET.Element) -> str:
    """An XML element's tag without its namespace (AWS's answers are namespaced by API version)."""
    return element.tag.rsplit("}", 1)[-1]


def _error(exc: urllib.error.HTTPError, url: str) -> AwsError:
    raw = exc.read(_ERROR_BODY_LIMIT_BYTES)
    code, message = "", raw[:500].decode("utf-8", "replace")
    try:
        data = json.loads(raw)
        code = str(data.get("__type") or data.get("code") or "").rsplit("#", 1)[-1]
        message = str(data.get("message") or data.get("Message") or message)
    except ValueError:
        try:
            root = ET.fromstring(raw)
            for element in root.iter():
                if local_name(element) == "Code" and element.text and not code:
                    code = element.text
                elif local_name(element) == "Message" and element.text:
                    message = element.text
        except ET.ParseError:
            pass
    return AwsError(exc.code, code or "Unknown", " ".join(message.split()), url=url)


def _send(request: urllib.request.Request, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise _error(exc, request.full_url) from None


def query_call(
    service: str,
    region: str,
    action: str,
    params: Mapping[str, str],
    *,
    version: str,
    credentials: Credentials,
    timeout: float = TIMEOUT_SECONDS,
) -> ET.Element:
    """One call of a Query-protocol API (EC2, Auto Scaling): a signed form POST; its XML answer.

    Raises `AwsError` for an error answer and OSError when the endpoint cannot be reached.
    """
    url = endpoint(service, region) + "/"
    body = urllib.parse.urlencode({"Action": action, "Version": version, **params}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    request = signed_request("POST", url, region=region, service=service, credentials=credentials, body=body, headers=headers)
    return ET.fromstring(_send(request, timeout))


def json_call(
    service: str,
    region: str,
    target: str,
    payload: Mapping[str, object],
    *,
    credentials: Credentials,
    timeout: float = TIMEOUT_SECONDS,
) -> dict:
    """One call of a JSON-protocol API (Secrets Manager): `X-Amz-Target: <target>`; its JSON answer."""
    url = endpoint(service, region) + "/"
    body = json.dumps(dict(payload)).encode()
    headers = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": target}
    request = signed_request("POST", url, region=region, service=service, credentials=credentials, body=body, headers=headers)
    return json.loads(_send(request, timeout))
