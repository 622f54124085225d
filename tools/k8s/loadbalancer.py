"""The load-balancer controller of k8s-local: a loopback address per LoadBalancer Service, forwarded to its pods.

On a cloud, the cloud controller manager provisions a load balancer for a `type: LoadBalancer`
Service and writes its address to `status.loadBalancer.ingress`; Pulumi's Service await waits
for exactly that. k8s-local has no cloud, so this loop plays that part (like MetalLB or
cloud-provider-kind elsewhere): it gives each such Service an address of its own in 127.0.0.0/8
(so two clusters, or two Services, can both have port 443) and listens on every port of the
Service there, forwarding each connection to a ready endpoint of that port (round robin over
the Service's EndpointSlices). The real node's pod network is routed from the host, so the
connections reach real pods; kwok's pods have no network and connections to them fail.

Only the Python standard library and PyYAML (a dependency of the project) are used, so it
runs before any extra is installed. It reads the kubeconfig that tools/k8s-local.sh writes
(one cluster, a bearer token, an inline CA).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import json
import ssl
import sys
import urllib.error
import urllib.request

import yaml

POLL_INTERVAL_SECONDS = 1.0
REQUEST_TIMEOUT_SECONDS = 10.0
CONNECT_TIMEOUT_SECONDS = 5.0
COPY_CHUNK_BYTES = 65536


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


def _base_address(kubeconfig: str) -> tuple[int, int]:
    """127.A.B.x for this cluster: A.B from its kubeconfig's path, so clusters do not collide."""
    digest = hashlib.sha256(kubeconfig.encode()).digest()
    return 1 + digest[0] % 254, digest[1]


class _Balancer:
    def __init__(self, client: _Client, kubeconfig: str) -> None:
        self.client = client
        self.base = _base_address(kubeconfig)
        self.listeners: dict[tuple[str, int], asyncio.base_events.Server] = {}
        # (address, port) → (namespace, service, port name)
        self.routes: dict[tuple[str, int], tuple[str, str, str]] = {}
        # (namespace, service, port name) → ready endpoint (ip, port) list, and a round-robin counter
        self.endpoints: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
        self.turns = itertools.count()

    def _address_for(self, used: set[str]) -> str:
        for last in range(1, 255):
            address = f"127.{self.base[0]}.{self.base[1]}.{last}"
            if address not in used:
                return address
        raise RuntimeError("no free loopback address left for LoadBalancer Services")

    def sync(self) -> None:
        """Assign addresses, read ports and endpoints (blocking: runs in a thread)."""
        services = [s for s in self.client.call("GET", "/api/v1/services")["items"] if s["spec"].get("type") == "LoadBalancer"]
        used = {i.get("ip") for s in services for i in s.get("status", {}).get("loadBalancer", {}).get("ingress") or []}
        routes: dict[tuple[str, int], tuple[str, str, str]] = {}
        for service in services:
            meta = service["metadata"]
            ingress = service.get("status", {}).get("loadBalancer", {}).get("ingress") or []
            address = ingress[0].get("ip") if ingress else None
            if not address:
                address = self._address_for(used)
                used.add(address)
                patch = {"status": {"loadBalancer": {"ingress": [{"ip": address, "ipMode": "VIP"}]}}}
                self.client.call(
                    "PATCH",
                    f"/api/v1/namespaces/{meta['namespace']}/services/{meta['name']}/status",
                    patch,
                    content_type="application/merge-patch+json",
                )
            for port in service["spec"].get("ports", []):
                routes[(address, port["port"])] = (meta["namespace"], meta["name"], port.get("name") or "")
        endpoints: dict[tuple[str, str, str], list[tuple[str, int]]] = {}
        for slice_ in self.client.call("GET", "/apis/discovery.k8s.io/v1/endpointslices")["items"]:
            owner = (slice_.get("metadata", {}).get("labels") or {}).get("kubernetes.io/service-name")
            if not owner:
                continue
            namespace = slice_["metadata"]["namespace"]
            ready = [
                address
                for endpoint in slice_.get("endpoints") or []
                if (endpoint.get("conditions") or {}).get("ready", True)
                for address in endpoint.get("addresses", [])
            ]
            for port in slice_.get("ports") or []:
                key = (namespace, owner, port.get("name") or "")
                endpoints.setdefault(key, []).extend((address, port["port"]) for address in ready)
        self.routes, self.endpoints = routes, endpoints

    async def listen(self) -> None:
        for key in list(self.listeners):
            if key not in self.routes:
                self.listeners.pop(key).close()
        for address, port in self.routes:
            if (address, port) in self.listeners:
                continue
            try:
                self.listeners[(address, port)] = await asyncio.start_server(
                    lambda r, w, key=(address, port): self.forward(key, r, w), address, port
                )
            except OSError as exc:
                # A port below 1024 without root, or one taken: the Service keeps its address.
                print(f"loadbalancer: cannot listen on {address}:{port}: {exc}", file=sys.stderr, flush=True)

    async def forward(self, key: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        targets = self.endpoints.get(self.routes.get(key, ("", "", "")), [])
        upstream = None
        for _ in range(len(targets)):
            target = targets[next(self.turns) % len(targets)]
            try:
                upstream = await asyncio.wait_for(asyncio.open_connection(*target), CONNECT_TIMEOUT_SECONDS)
                break
            except (OSError, asyncio.TimeoutError):
                continue
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(COPY_CHUNK_BYTES):
                    sink.write(data)
                    await sink.drain()
                if sink.can_write_eof():
                    sink.write_eof()
            except (OSError, ConnectionError):
                pass

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        for stream in (writer, up_writer):
            stream.close()


async def _run(balancer: _Balancer) -> None:
    while True:
        try:
            await asyncio.to_thread(balancer.sync)
            await balancer.listen()
        except (urllib.error.URLError, OSError, KeyError, ValueError, RuntimeError) as exc:
            # The API server may be starting or stopping; try again on the next tick.
            print(f"loadbalancer: {exc}", file=sys.stderr, flush=True)
        await asyncio.sleep(POLL_INTERVAL_SECONDS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", required=True)
    args = parser.parse_args(argv)
    asyncio.run(_run(_Balancer(_Client(args.kubeconfig), args.kubeconfig)))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
