"""The load-balancer controller of k8s-local: gives every LoadBalancer Service a loopback address.

On a cloud, the cloud controller manager provisions a load balancer for a `type: LoadBalancer`
Service and writes its address to `status.loadBalancer.ingress`; Pulumi's Service await waits
for exactly that. k8s-local has no cloud, so this loop plays that part (like MetalLB or
cloud-provider-kind elsewhere) and assigns 127.0.0.1. It only writes the status: kwok runs no
containers, so no traffic flows to it.

Only the Python standard library and PyYAML (a dependency of the project) are used, so it
runs before any extra is installed. It reads the kubeconfig that tools/k8s-local.sh writes
(one cluster, a bearer token, an inline CA).
"""

from __future__ import annotations

import argparse
import base64
import json
import ssl
import sys
import time
import urllib.error
import urllib.request

import yaml

POLL_INTERVAL_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 10.0
LOOPBACK_ADDRESS = "127.0.0.1"


class _Client:
    def __init__(self, kubeconfig: str) -> None:
        config = yaml.safe_load(open(kubeconfig))
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.server = cluster["server"].rstrip("/")
        self.token = user["token"]
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        self.context = ssl.create_default_context(cadata=ca)

    def call(self, method: str, path: str, body: object | None = None, content_type: str = "application/json") -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.server + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Content-Type", content_type)
        with urllib.request.urlopen(request, context=self.context, timeout=REQUEST_TIMEOUT_SECONDS) as response:
            return json.load(response)


def _assign_pending(client: _Client) -> int:
    """Give every LoadBalancer Service without an address the loopback one; returns how many."""
    assigned = 0
    for service in client.call("GET", "/api/v1/services")["items"]:
        if service["spec"].get("type") != "LoadBalancer":
            continue
        if service.get("status", {}).get("loadBalancer", {}).get("ingress"):
            continue
        meta = service["metadata"]
        patch = {"status": {"loadBalancer": {"ingress": [{"ip": LOOPBACK_ADDRESS, "ipMode": "VIP"}]}}}
        client.call(
            "PATCH",
            f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}/status",
            patch,
            content_type="application/merge-patch+json",
        )
        assigned += 1
    return assigned


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args(argv)
    client = _Client(args.kubeconfig)
    while True:
        try:
            _assign_pending(client)
        except (urllib.error.URLError, OSError, KeyError, ValueError) as exc:
            # The API server may be starting or stopping; try again on the next tick.
            print(f"loadbalancer: {exc}", file=sys.stderr, flush=True)
        time.sleep(POLL_INTERVAL_SECONDS)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
