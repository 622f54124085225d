#!/usr/bin/python3
"""serveform-fetch: what a GCP VM fetches at boot, with its service account, checked by digest.

The gateway's user data writes this file to /opt/serveform/bin/serveform-fetch (with `_fetch.py`,
what every cloud's fetcher shares, beside it) and runs it before anything of serveform is
installed, so it uses Python's standard library only (Debian's python3): no gcloud, no SDK.

    serveform-fetch artifact NAME SHA256 BUCKET OBJECT DEST   # Cloud Storage object -> DEST, digest checked
    serveform-fetch secret projects/P/secrets/S               # Secret Manager's latest version -> stdout

The token is the instance's service account's, from the metadata server; objects come from the
Cloud Storage JSON API (`alt=media`), secrets from Secret Manager's `versions/latest:access`
(base64 payload). A digest that does not match, or an object that is not there, ends the boot
with one line on the console.

The Google tools' own variables redirect the calls: GCE_METADATA_HOST (google-auth),
STORAGE_EMULATOR_HOST (google-cloud-storage) and CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER
(gcloud). Only the boot test sets them (to its stub); production user data never does.
"""

from __future__ import annotations

import base64
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request

try:
    from . import _fetch  # imported as part of serveform (tests)
except ImportError:  # the VM: /opt/serveform/bin/_fetch.py, beside this script
    import _fetch

METADATA_HOST = "metadata.google.internal"
STORAGE = "https://storage.googleapis.com"
SECRET_MANAGER = "https://secretmanager.googleapis.com/"
_SECRET = re.compile(r"^projects/[^/]+/secrets/[^/]+$")


def _token() -> str:
    host = os.environ.get("GCE_METADATA_HOST", METADATA_HOST)
    request = urllib.request.Request(
        f"http://{host}/computeMetadata/v1/instance/service-accounts/default/token", headers={"Metadata-Flavor": "Google"}
    )
    try:
        return _fetch.read_json(request)["access_token"]
    except urllib.error.HTTPError as exc:
        # 404: no service account on the instance (yet); the grant may lag the boot.
        raise _fetch.Transient(f"metadata server token: HTTP {exc.code}") from None
    except (KeyError, TypeError):
        raise _fetch.Transient("metadata server token: no access_token in the answer") from None


def _authorized(url: str) -> urllib.request.Request:
    return urllib.request.Request(url, headers={"Authorization": f"Bearer {_token()}"})


def _storage_base() -> str:
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if not emulator:
        return STORAGE
    # google-cloud-storage takes the host with or without a scheme.
    return (emulator if "://" in emulator else f"http://{emulator}").rstrip("/")


def object_url(bucket: str, name: str) -> str:
    """The JSON API's media URL of an object (its name fully escaped: `/` is `%2F`)."""
    return f"{_storage_base()}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/o/{urllib.parse.quote(name, safe='')}?alt=media"


def fetch_artifact(name: str, sha256: str, bucket: str, object_name: str, dest: str) -> None:
    """Download gs://BUCKET/OBJECT to DEST (0644, atomically) if and only if its digest is SHA256."""
    url = object_url(bucket, object_name)
    _fetch.fetch_checked(name, sha256, f"gs://{bucket}/{object_name}", lambda: _authorized(url), dest)


def fetch_secret(secret: str) -> str:
    """The latest version of a Secret Manager secret (`projects/P/secrets/S`), decoded."""
    if not _SECRET.match(secret):
        raise _fetch.FetchError(f"serveform: secret {secret}: expected projects/PROJECT/secrets/SECRET")
    base = os.environ.get("CLOUDSDK_API_ENDPOINT_OVERRIDES_SECRETMANAGER", SECRET_MANAGER)
    url = f"{base.rstrip('/')}/v1/{secret}/versions/latest:access"

    def attempt() -> str:
        try:
            answer = _fetch.read_json(_authorized(url))
        except urllib.error.HTTPError as exc:
            raise _fetch.FetchError(f"serveform: secret {secret}: HTTP {exc.code}") from None
        try:
            return base64.b64decode(answer["payload"]["data"], validate=True).decode()
        except (KeyError, TypeError, ValueError):
            raise _fetch.FetchError(f"serveform: secret {secret}: expected a base64 payload.data in the answer") from None

    return _fetch.retrying(f"secret {secret}", attempt)


def main(argv: list[str]) -> int:
    return _fetch.main(argv, {"artifact": (5, fetch_artifact), "secret": (1, fetch_secret)}, __doc__.split("\n\n")[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
