#!/usr/bin/python3
"""serveform-fetch: what an AWS VM fetches at boot, with the instance's identity, checked by digest.

The gateway's user data writes this file to /opt/serveform/bin/serveform-fetch (and what every
cloud's fetcher shares, `_fetch.py`, beside it) and runs it before anything of serveform is
installed, so it uses Python's standard library only (Debian's python3): no awscli, no SDK,
nothing from a package index.

    serveform-fetch artifact NAME SHA256 BUCKET KEY REGION DEST   # S3 object -> DEST, digest checked
    serveform-fetch secret SECRET_ID REGION                        # Secrets Manager SecretString -> stdout

Credentials come from the instance metadata service (IMDSv2: a session token first, then the
instance role's temporary keys); requests are signed with Signature Version 4. Both are
`serveform.aws.client` (standard library only too), written beside this file as `serveform_aws.py`. A digest that does
not match, or an object that is not there, ends the boot with one line on the console:

    serveform: artifact caddy: sha256 mismatch (expected 3f…, got 9a…)

The AWS SDKs' own variables AWS_ENDPOINT_URL and AWS_EC2_METADATA_SERVICE_ENDPOINT redirect the
calls; only the boot test sets them (to moto), production user data never does.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

try:
    from . import _fetch  # imported as part of serveform (tests)
    from ...aws import client as aws
except ImportError:  # the VM: /opt/serveform/bin/_fetch.py and serveform_aws.py, beside this script
    import _fetch
    import serveform_aws as aws  # serveform.aws.client

FetchError = _fetch.FetchError
_Transient = _fetch.Transient
_open = _fetch.open_url
_retrying = _fetch.retrying


def _credentials() -> aws.Credentials:
    try:
        return aws.instance_credentials()
    except LookupError as exc:  # no role yet: a fresh instance's profile may lag its boot
        raise _Transient(str(exc)) from None
    except (OSError, ValueError, KeyError) as exc:
        raise _Transient(f"instance credentials: {exc}") from None


def _signed(method: str, url: str, region: str, service: str, headers: dict[str, str], body: bytes) -> urllib.request.Request:
    # S3 wants the payload's digest signed too.
    headers = {**headers, "x-amz-content-sha256": hashlib.sha256(body).hexdigest()}
    return aws.signed_request(method, url, region=region, service=service, credentials=_credentials(), body=body, headers=headers)


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
