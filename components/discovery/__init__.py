"""Replica discovery on a VM gateway: list each group's instances, tell the gateway their addresses.

A systemd timer on the gateway host runs ``python -m serveform.components.discovery --config
/etc/serveform/discovery.json --state-dir DIR`` every few seconds. For every target (one per
service) it asks the cloud which instances of the service's group are running and publishes
``IP:PORT`` for each with `serveform.gateway.publish_replicas`, which the gateway probes and
serves without reloading Caddy. It imports nothing of Pulumi and needs no cloud SDK: each cloud
module speaks the cloud's HTTP API with the instance's own identity (IMDSv2 role credentials
and Signature Version 4 on AWS, the metadata server's token on GCP, the managed identity on
Azure), so the gateway host installs only serveform.

A target whose lookup fails keeps its last published list (a cloud API hiccup must not empty a
service); the command exits non-zero so the failure shows in the unit's status.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["DiscoveryError", "discover", "list_addresses"]

log = logging.getLogger("serveform.discovery")


class DiscoveryError(RuntimeError):
    """A cloud API call failed or answered something unexpected; names the target."""


Publish = Callable[[str, str, Sequence[str]], None]
"""``(state_dir, service, addresses)`` — `serveform.gateway.publish_replicas` in production."""


def list_addresses(target: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The private IPs of the running instances of one target's group."""
    cloud = target.get("cloud")
    endpoints = config.get("endpoints", {})
    if cloud == "aws":
        from . import aws

        return aws.running_ips(target["group"], target["region"], endpoints=endpoints)
    if cloud == "gcp":
        from . import gcp

        return gcp.running_ips(target["project"], target["region"], stack=config["stack"], service=target["service"], endpoints=endpoints)
    if cloud == "azure":
        from . import azure

        return azure.running_ips(target["resource_group"], target["group"], client_id=config.get("azure_client_id"), endpoints=endpoints)
    raise DiscoveryError(f"target {target.get('service')!r}: unknown cloud {cloud!r}")


def discover(config: Mapping[str, Any], state_dir: str, *, publish: Publish | None = None) -> list[str]:
    """Publish every target's addresses; return the services whose lookup failed."""
    if publish is None:
        from serveform.gateway import publish_replicas

        def publish(state: str, service: str, addresses: Sequence[str]) -> None:
            publish_replicas(state, service, list(addresses))

    failed = []
    for target in config.get("targets", []):
        service = target["service"]
        try:
            ips = list_addresses(target, config)
        except (DiscoveryError, OSError, ValueError, KeyError) as exc:
            log.error("discovery of %s failed, keeping its last addresses: %s", service, exc)
            failed.append(service)
            continue
        addresses = sorted(f"[{ip}]:{target['port']}" if ":" in ip else f"{ip}:{target['port']}" for ip in ips)
        publish(state_dir, service, addresses)
        log.info("%s: %d replica(s)", service, len(addresses))
    return failed


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path, encoding="utf-8") as f:
        return json.load(f)
