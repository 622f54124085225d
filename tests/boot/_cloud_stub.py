"""The few GCP or Azure endpoints a booting gateway VM calls, answered by a small aiohttp server.

Run as `python _cloud_stub.py CLOUD CONFIG_JSON LOG HOST PORT` (the project's venv has aiohttp).
CONFIG_JSON holds what the stub serves: the token it hands out, the objects or blobs (path ->
local file), the secrets (name -> value) and the replica addresses discovery asks for. Every
request is written to LOG as one `METHOD /path` line (an Azure token's with its `resource`; plus
` 401`/` 404` when refused): the boot
test compares that list with the calls the README documents. A request without the token the
metadata service handed out is refused, as the cloud would.

No emulator of either cloud runs here (moto is AWS only): the stub answers exactly the documented
request shapes and nothing else (404), so a new call the boot starts making fails the test.
"""

from __future__ import annotations

import base64
import json
import sys
import urllib.parse
from pathlib import Path

from aiohttp import web


def _gcp(config: dict, log) -> web.Application:
    token = config["token"]

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?")[0]
        query = dict(urllib.parse.parse_qsl(request.raw_path.partition("?")[2]))
        if path == "/computeMetadata/v1/instance/service-accounts/default/token":
            if request.headers.get("Metadata-Flavor") != "Google":
                return log(request, web.Response(status=403))
            return log(request, web.json_response({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}))
        if request.headers.get("Authorization") != f"Bearer {token}":
            return log(request, web.Response(status=401))
        if path.startswith("/storage/v1/b/") and query.get("alt") == "media":
            bucket, _, name = path.removeprefix("/storage/v1/b/").partition("/o/")
            found = config["objects"].get(f"{urllib.parse.unquote(bucket)}/{urllib.parse.unquote(name)}")
            return log(request, web.FileResponse(found) if found else web.Response(status=404))
        if path.startswith("/v1/projects/") and path.endswith("/versions/latest:access"):
            value = config["secrets"].get(path.removeprefix("/v1/").removesuffix("/versions/latest:access"))
            if value is None:
                return log(request, web.Response(status=404))
            return log(request, web.json_response({"name": path[4:], "payload": {"data": base64.b64encode(value.encode()).decode()}}))
        if path.startswith("/compute/v1/projects/") and path.endswith("/instances"):
            items = [{"status": "RUNNING", "networkInterfaces": [{"networkIP": ip}]} for ip in config["replicas"]]
            return log(request, web.json_response({"items": items}))
        return log(request, web.Response(status=404))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def _azure(config: dict, log) -> web.Application:
    tokens = {resource: f"{config['token']}-{i}" for i, resource in enumerate(("https://storage.azure.com/", "https://vault.azure.net", "https://management.azure.com/"))}

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.raw_path.split("?")[0]
        query = dict(urllib.parse.parse_qsl(request.raw_path.partition("?")[2]))
        if path == "/metadata/identity/oauth2/token":
            if request.headers.get("Metadata") != "true" or query.get("resource") not in tokens or query.get("client_id") != config["client_id"]:
                return log(request, web.Response(status=400))
            return log(request, web.json_response({"access_token": tokens[query["resource"]], "expires_in": "3599", "token_type": "Bearer"}))
        if path == "/metadata/instance/compute/subscriptionId":
            return log(request, web.Response(text=config["subscription"]) if request.headers.get("Metadata") == "true" else web.Response(status=400))
        auth = request.headers.get("Authorization")
        host, _, rest = path.lstrip("/").partition("/")
        if host.endswith(".blob.core.windows.net"):
            if auth != f"Bearer {tokens['https://storage.azure.com/']}" or not request.headers.get("x-ms-version"):
                return log(request, web.Response(status=403))
            found = config["blobs"].get(f"{host}/{urllib.parse.unquote(rest)}")
            return log(request, web.FileResponse(found) if found else web.Response(status=404))
        if host.endswith(".vault.azure.net"):
            if auth != f"Bearer {tokens['https://vault.azure.net']}" or query.get("api-version") != "7.4":
                return log(request, web.Response(status=401))
            value = config["secrets"].get(f"{host}/{rest}")
            return log(request, web.json_response({"value": value}) if value is not None else web.Response(status=404))
        if host == "management.azure.com" and rest.endswith("/networkInterfaces"):
            if auth != f"Bearer {tokens['https://management.azure.com/']}":
                return log(request, web.Response(status=401))
            nics = [{"properties": {"ipConfigurations": [{"properties": {"privateIPAddress": ip}}]}} for ip in config["replicas"]]
            return log(request, web.json_response({"value": nics}))
        return log(request, web.Response(status=404))

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def main() -> None:
    cloud, config_file, log_file, host, port = sys.argv[1:6]
    config = json.loads(Path(config_file).read_text())

    def log(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        status = "" if response.status < 400 else f" {response.status}"
        path = request.raw_path.split("?")[0]
        if path == "/metadata/identity/oauth2/token":  # which token: the resource it is for
            path += "?resource=" + request.query.get("resource", "")
        with open(log_file, "a") as out:
            out.write(f"{request.method} {path}{status}\n")
        return response

    app = {"gcp": _gcp, "azure": _azure}[cloud](config, log)
    web.run_app(app, host=host, port=int(port), print=None, access_log=None)


if __name__ == "__main__":
    main()
