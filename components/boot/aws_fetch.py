#!/usr/bin/python3
"""serveform-fetch: what an AWS VM fetches at boot, with the instance's identity, checked by digest.

The gateway's user data writes this file to /opt/serveform/bin/serveform-fetch and runs it before
anything of serveform is installed, so it uses Python's standard library only (Debian's python3):
no awscli, no SDK, nothing from a package index.

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
import time
import urllib.error
import urllib.parse
import urllib.request

IMDS = "http://169.254.169.254"
IMDS_TOKEN_TTL_SECONDS = 300
TIMEOUT_SECONDS = 30
# A fresh instance's role and network may lag its boot by tens of seconds; a missing object or a
# wrong digest never gets better and fails at once.
ATTEMPTS = 30
RETRY_SECONDS = 5
CHUNK_BYTES = 1 << 20
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class FetchError(Exception):
    """A fetch that cannot succeed; its message is the console line."""


class _Transient(Exception):
    """A failure worth retrying (connection, throttling, 5xx, a role not yet effective)."""


def _console(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
    # The serial console too: cloud-init's log is not where an operator looks first.
    try:
        with open("/dev/console", "w") as console:
            console.write(line + "\n")
    except OSError:
        pass


def _open(request: urllib.request.Request):
    try:
        return urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS)
    except urllib.error.HTTPError as exc:
        if exc.code in (403, 429) or exc.code >= 500:
            raise _Transient(f"HTTP {exc.code} from {request.full_url}") from None
        raise
    except (urllib.error.URLError, OSError) as exc:
        raise _Transient(f"{request.full_url}: {exc}") from None


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


def _retrying(what: str, call):
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return call()
        except _Transient as exc:
            if attempt == ATTEMPTS:
                raise FetchError(f"serveform: {what}: giving up after {ATTEMPTS} attempts ({exc})") from None
            time.sleep(RETRY_SECONDS)
    raise AssertionError("unreachable")


def _object_url(bucket: str, key: str, region: str) -> str:
    path = urllib.parse.quote(key, safe="/-_.~")
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        return f"{endpoint.rstrip('/')}/{bucket}/{path}"
    return f"https://{bucket}.s3.{region}.amazonaws.com/{path}"


def fetch_artifact(name: str, sha256: str, bucket: str, key: str, region: str, dest: str) -> None:
    """Download s3://BUCKET/KEY to DEST (0644, atomically) if and only if its digest is SHA256."""
    url = _object_url(bucket, key, region)
    tmp = f"{dest}.fetch-{os.getpid()}"

    def attempt() -> str:
        digest = hashlib.sha256()
        try:
            response = _open(_signed("GET", url, region, "s3", {}, b""))
        except urllib.error.HTTPError as exc:
            raise FetchError(f"serveform: artifact {name}: not found at s3://{bucket}/{key} (HTTP {exc.code})") from None
        with response, open(tmp, "wb") as out:
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    digest.update(chunk)
                    out.write(chunk)
            except OSError as exc:
                raise _Transient(f"reading s3://{bucket}/{key}: {exc}") from None
        return digest.hexdigest()

    try:
        got = _retrying(f"artifact {name}", attempt)
        if got != sha256:
            raise FetchError(f"serveform: artifact {name}: sha256 mismatch (expected {sha256}, got {got})")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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
    try:
        if len(argv) == 8 and argv[1] == "artifact":
            fetch_artifact(*argv[2:])
            return 0
        if len(argv) == 4 and argv[1] == "secret":
            sys.stdout.write(fetch_secret(argv[2], argv[3]))
            return 0
    except FetchError as exc:
        _console(str(exc))
        return 1
    print(__doc__.split("\n\n")[2], file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
