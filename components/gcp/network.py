"""`Network`: the stack's own VPC on GCP — a custom-mode network, one subnet, Cloud NAT for egress.

GCP's `default` network allows all internal traffic and SSH (22) from anywhere, so any VM in
the project reaches the replicas. The stack gets its own network instead: no rule but the
ones serveform adds (80/443 to the gateway, the service port from the gateway to replicas).
Replicas have no external address; they reach image registries and Google APIs through a
Cloud Router with Cloud NAT (and Private Google Access on the subnet).

Children (logical names `<name>-<role>`): `-vpc` Network, `-subnet` Subnetwork, `-router`
Router, `-nat` RouterNat.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from .._vm import short_name

__all__ = ["DEFAULT_SUBNET_CIDR", "NETWORK_TYPE", "Network", "NetworkArgs"]

NETWORK_TYPE = "serveform:gcp:Network"
# A /20 (4096 addresses) in 10.0.0.0/8, away from the `default` network's auto ranges (10.128.0.0/9).
DEFAULT_SUBNET_CIDR = "10.64.0.0/20"


@dataclass(frozen=True, kw_only=True)
class NetworkArgs:
    """Inputs of a `Network`."""

    stack: str
    """The stack name, for resource names."""
    project: str
    """The GCP project."""
    region: str
    """The region of the subnet, router and NAT (the zone's region)."""
    subnet_cidr: str = DEFAULT_SUBNET_CIDR
    """The subnet's primary IPv4 range (`serveform:gcp.subnet_cidr`)."""


class Network(pulumi.ComponentResource):
    """A custom-mode VPC with one subnet and Cloud NAT."""

    network: pulumi.Output[str]
    """The network's self link (for instances and firewalls)."""
    subnetwork: pulumi.Output[str]
    """The subnet's self link."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__(NETWORK_TYPE, name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        vpc = gcp.compute.Network(
            f"{name}-vpc",
            name=short_name("serveform", args.stack, limit=63),
            project=args.project,
            # Custom mode: no subnet in every region, and none of `default`'s allow rules.
            auto_create_subnetworks=False,
            description=f"serveform stack {args.stack}",
            opts=child,
        )
        subnet = gcp.compute.Subnetwork(
            f"{name}-subnet",
            name=short_name("serveform", args.stack, args.region, limit=63),
            project=args.project,
            region=args.region,
            network=vpc.id,
            ip_cidr_range=args.subnet_cidr,
            # Secret Manager and the Compute API without external addresses.
            private_ip_google_access=True,
            opts=child,
        )
        router = gcp.compute.Router(
            f"{name}-router",
            name=short_name("serveform", args.stack, "nat", limit=63),
            project=args.project,
            region=args.region,
            network=vpc.id,
            opts=child,
        )
        gcp.compute.RouterNat(
            f"{name}-nat",
            name=short_name("serveform", args.stack, "nat", limit=63),
            project=args.project,
            region=args.region,
            router=router.name,
            nat_ip_allocate_option="AUTO_ONLY",
            source_subnetwork_ip_ranges_to_nat="LIST_OF_SUBNETWORKS",
            subnetworks=[{"name": subnet.id, "source_ip_ranges_to_nats": ["ALL_IP_RANGES"]}],
            log_config={"enable": True, "filter": "ERRORS_ONLY"},
            opts=child,
        )
        self.network = vpc.self_link
        self.subnetwork = subnet.self_link
        self.register_outputs({"network": self.network, "subnetwork": self.subnetwork})
