#!/usr/bin/python3
"""serveform-fetch: what an AWS VM fetches at boot, with the instance's identity, checked by digest.

The gateway's user data writes this file to /opt/serveform/bin/serveform-fetch (and what every
cloud's fetcher shares, `_fetch.py`, beside it) and runs it before anything of serveform is
installed, so it uses Python's standard library only (Debian's python3): no awscli, no SDK,
nothing from a package index.

    serveform-fetch artifact NAME SHA256 BUCKET KEY REGION DEST   # S3 object -> DEST, digest checked
    serveform-fetch secret SECRET_ID REGION                        # Secrets Manager SecretString -> stdout

Credentials come from the instance metadata service (IMDSv2: a session token first, then the
instance role's temporary keys); requests are signed with Signature Version 4. A digest that does
not match, or an object that is not there, ends the boot with one line on the console:

    serveform: artifact caddy: sha256 mismatch (expected 3f…, got 9a…)

The AWS SDKs' own variables AWS_ENDPOINT_URL and AWS_EC2_METADATA_SERVICE_ENDPOINT redirect the
calls; only the boot test sets them (to moto), production user data never does.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

try:
    from . import _fetch  # imported as part of serveform (tests)
except ImportError:  # the VM: /opt/serveform/bin/_fetch.py, beside this script
    import _fetch

IMDS = "http://169.254.169.254"
IMDS_TOKEN_TTL_SECONDS = 300
FetchError = _fetch.FetchError
_Transient = _fetch.Transient
_open = _fetch.open_url
_retrying = _fetch.retrying


def _credentials() -> dict[str, str]:
    base = os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT", IMDS).rstrip("/")
    token_request = urllib.request.Request(
        f"{base}/latest/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": str(IMDS_TOKEN_TTL_SECONDS)}
    )
    with _open(token_request) as response:
        token = response.read().decode()
    headers = {"X-aws-ec2-metadata-token": token}
    with _open(urllib.request.Request(f"{base}/latest/meta-data/iam/security-credentials/", headers=headers)) as response:
        roles = response.read().decode().split()
    if not roles:
        raise _Transient("the instance has no role yet")
    with _open(urllib.request.Request(f"{base}/latest/meta-data/iam/security-credentials/{roles[0]}", headers=headers)) as response:
        return json.loads(response.read())


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def _signed(method: str, url: str, region: str, service: str, headers: dict[str, str], body: bytes) -> urllib.request.Request:
    creds = _credentials()
    now = _dt.datetime.now(_dt.timezone.utc)
    amz_date, date = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    parts = urllib.parse.urlsplit(url)
    payload = hashlib.sha256(body).hexdigest()
    all_headers = {**{k.lower(): v for k, v in headers.items()}, "host": parts.netloc, "x-amz-date": amz_date, "x-amz-content-sha256": payload}
    if creds.get("Token"):
        all_headers["x-amz-security-token"] = creds["Token"]
    names = sorted(all_headers)
    signed = ";".join(names)
    query = sorted(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
    canonical = "\n".join(
        [
            method,
            urllib.parse.quote(parts.path or "/", safe="/-_.~"),
            "&".join(f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}" for k, v in query),
            "".join(f"{n}:{all_headers[n].strip()}\n" for n in names),
            signed,
            payload,
        ]
    )
    scope = f"{date}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = _hmac(_hmac(_hmac(_hmac(("AWS4" + creds["SecretAccessKey"]).encode(), date), region), service), "aws4_request")
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    all_headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={creds['AccessKeyId']}/{scope}, SignedHeaders={signed}, Signature={signature}"
    all_headers.pop("host")
    return urllib.request.Request(url, data=body or None, method=method, headers=all_headers)


def _object_url(bucket: str, key: str, region: str) -> str:
    path = urllib.parse.quote(key, safe="/-_.~")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{path}"
    return f"https://{bucket}.s3.{region}.amazonaws.com/{path}"


def fetch_artifact(name: str, sha256: str, bucket: str, key: str, region: str, dest: str) -> None:
    """Download s3://BUCKET/KEY to DEST (0644, atomically) if and only if its digest is SHA256."""
    url = _object_url(bucket, key, region)
    _fetch.fetch_checked(name, sha256, f"s3://{bucket}/{key}", lambda: _signed("GET", url, region, "s3", {}, b""), dest)


def fetch_secret(secret_id: str, region: str) -> str:
    """The SecretString of a Secrets Manager secret."""
    url = os.environ.get("AWS_ENDPOINT_URL", f"https://secretsmanager.{region}.amazonaws.com").rstrip("/") + "/"
    body = json.dumps({"SecretId": secret_id}).encode()
    headers = {"content-type": "application/x-amz-json-1.1", "x-amz-target": "secretsmanager.GetSecretValue"}

    def attempt() -> str:
        try:
            with _open(_signed("POST", url, region, "secretsmanager", headers, body)) as response:
                return json.loads(response.read())["SecretString"]
        except urllib.error.HTTPError as exc:
            raise FetchError(f"serveform: secret {secret_id}: HTTP {exc.code}") from None

    return _retrying(f"secret {secret_id}", attempt)


def main(argv: list[str]) -> int:
    return _fetch.main(argv, {"artifact": (6, fetch_artifact), "secret": (2, fetch_secret)}, __doc__.split("\n\n")[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
