#!/usr/bin/python3
"""serveform-fetch: what an Azure VM fetches at boot, with its managed identity, checked by digest.

The gateway's user data writes this file to /opt/serveform/bin/serveform-fetch (with `_fetch.py`,
what every cloud's fetcher shares, beside it) and runs it before anything of serveform is
installed, so it uses Python's standard library only (Debian's python3): no az CLI, no SDK.

    serveform-fetch artifact NAME SHA256 BLOB_URL CLIENT_ID DEST   # blob -> DEST, digest checked
    serveform-fetch secret SECRET_URL CLIENT_ID                     # Key Vault secret's value -> stdout

Tokens come from the instance metadata service for the user-assigned identity CLIENT_ID, one per
resource (`https://storage.azure.com/` for blobs, `https://vault.azure.net` for Key Vault); a
blob is read with `Authorization: Bearer` and `x-ms-version`, a secret with Key Vault's REST API
(`api-version=7.4`). A digest that does not match, or a blob that is not there, ends the boot
with one line on the console.

AZURE_POD_IDENTITY_AUTHORITY_HOST (azure-identity's) redirects the metadata service. Azure has no
SDK-wide variable for the data plane's hosts, so SERVEFORM_TEST_AZURE_ENDPOINT, when set, sends
`https://HOST/PATH` to `<it>/HOST/PATH`. Only the boot test sets either (to its stub);
production user data never does.
"""

from __future__ import annotations

import email.utils
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

IMDS = "http://169.254.169.254"
IMDS_API_VERSION = "2018-02-01"
STORAGE_RESOURCE = "https://storage.azure.com/"
VAULT_RESOURCE = "https://vault.azure.net"
# Blob service version of the requests: OAuth (Bearer) needs 2017-11-09 or later.
BLOB_API_VERSION = "2021-08-06"
VAULT_API_VERSION = "7.4"
_BLOB_URL = re.compile(r"^https://[a-z0-9]{3,24}\.blob\.core\.windows\.net/[a-z0-9-]{3,63}/[A-Za-z0-9/._-]+$")
_SECRET_URL = re.compile(r"^https://[A-Za-z0-9-]{3,24}\.vault\.azure\.net/secrets/[A-Za-z0-9-]{1,127}$")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def _token(resource: str, client_id: str) -> str:
    base = os.environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST", IMDS).rstrip("/")
    query = urllib.parse.urlencode({"api-version": IMDS_API_VERSION, "resource": resource, "client_id": client_id})
    request = urllib.request.Request(f"{base}/metadata/identity/oauth2/token?{query}", headers={"Metadata": "true"})
    try:
        return _fetch.read_json(request)["access_token"]
    except urllib.error.HTTPError as exc:
        # 400 "Identity not found": the identity is attached to the VM moments after it boots.
        raise _fetch.Transient(f"instance metadata token: HTTP {exc.code}") from None
    except (KeyError, TypeError):
        raise _fetch.Transient("instance metadata token: no access_token in the answer") from None


def _url(url: str) -> str:
    """The URL to send: as given, or under SERVEFORM_TEST_AZURE_ENDPOINT (the boot test's stub)."""
    override = os.environ.get("SERVEFORM_TEST_AZURE_ENDPOINT")
    return f"{override.rstrip('/')}/{url.removeprefix('https://')}" if override else url


def _checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.match(value):
        raise _fetch.FetchError(f"serveform: {what}: unexpected {value!r}")
    return value


def fetch_artifact(name: str, sha256: str, blob_url: str, client_id: str, dest: str) -> None:
    """Download the blob at BLOB_URL to DEST (0644, atomically) if and only if its digest is SHA256."""
    _checked(blob_url, _BLOB_URL, f"artifact {name}: blob URL")
    _checked(client_id, _CLIENT_ID, f"artifact {name}: identity")

    def request() -> urllib.request.Request:
        headers = {
            "Authorization": f"Bearer {_token(STORAGE_RESOURCE, client_id)}",
            "x-ms-version": BLOB_API_VERSION,
            "x-ms-date": email.utils.formatdate(usegmt=True),
        }
        return urllib.request.Request(_url(blob_url), headers=headers)

    _fetch.fetch_checked(name, sha256, blob_url, request, dest)


def fetch_secret(secret_url: str, client_id: str) -> str:
    """The value of the Key Vault secret at SECRET_URL (its latest version)."""
    _checked(secret_url, _SECRET_URL, "secret URL")
    _checked(client_id, _CLIENT_ID, "identity")

    def attempt() -> str:
        request = urllib.request.Request(
            _url(f"{secret_url}?api-version={VAULT_API_VERSION}"),
            headers={"Authorization": f"Bearer {_token(VAULT_RESOURCE, client_id)}"},
        )
        try:
            value = _fetch.read_json(request).get("value")
        except urllib.error.HTTPError as exc:
            raise _fetch.FetchError(f"serveform: secret {secret_url}: HTTP {exc.code}") from None
        if not isinstance(value, str):
            raise _fetch.FetchError(f"serveform: secret {secret_url}: expected a value in the answer")
        return value

    return _fetch.retrying(f"secret {secret_url}", attempt)


def main(argv: list[str]) -> int:
    return _fetch.main(argv, {"artifact": (5, fetch_artifact), "secret": (2, fetch_secret)}, __doc__.split("\n\n")[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
