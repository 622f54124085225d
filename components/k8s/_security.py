"""Pod security of the stack's pods, as plain values (no Pulumi runtime; tested directly).

- The gateway and the scaler always run under Kubernetes' Pod Security "restricted" profile: a
  non-root user, a read-only root filesystem (writable emptyDirs where they write), no
  capabilities, RuntimeDefault seccomp, no privilege escalation. The gateway still binds 80/443:
  the namespaced sysctl `net.ipv4.ip_unprivileged_port_start=0` (in the "safe" set every
  profile admits) lets a non-root process do that, with no capability.
- Replicas run the service's own image, usually as root (dstack's base images do): they get the
  "baseline" hardening that keeps root images working (no privilege escalation, RuntimeDefault
  seccomp), and the full restricted context only when the stack asks for it
  (`serveform:policy.pod_security: restricted`).
- The namespace serveform creates enforces the stack's level (`namespace_labels`) and warns and
  audits against "restricted", so the API server itself refuses what the policy forbids.
- Network: replicas accept traffic from the gateway's pods only; the gateway's metrics port
  from the scaler's pods only; the scaler accepts nothing (its /healthz is on loopback).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = [
    "NON_ROOT_UID",
    "PodSecurityLevel",
    "gateway_network_policy_spec",
    "namespace_labels",
    "pod_security_level",
    "replica_container_context",
    "replica_network_policy_spec",
    "restricted_container_context",
    "restricted_pod_context",
    "scaler_network_policy_spec",
]

PodSecurityLevel = Literal["restricted", "baseline", "privileged"]
# Not 0 and not any image's usual first user (1000): a uid that owns nothing in the image.
NON_ROOT_UID = 10001
_PSA = "pod-security.kubernetes.io"


def restricted_container_context() -> dict[str, Any]:
    """A container securityContext that passes the "restricted" profile, with a read-only root."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_pod_context(*, bind_low_ports: bool = False) -> dict[str, Any]:
    """The pod-level securityContext of the gateway and scaler pods."""
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": NON_ROOT_UID,
        "runAsGroup": NON_ROOT_UID,
        # emptyDirs and the secret volume are group-owned by this gid, so the user can read them.
        "fsGroup": NON_ROOT_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if bind_low_ports:
        context["sysctls"] = [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}]
    return context


def replica_container_context(*, privileged: bool, level: PodSecurityLevel) -> dict[str, Any] | None:
    """A replica container's securityContext at the namespace's level (None: the runtime's defaults)."""
    if privileged:
        return {"privileged": True}
    if level == "restricted":
        context = restricted_container_context()
        # The service's image writes where it likes (pip caches, model downloads): keep its root writable.
        context["readOnlyRootFilesystem"] = False
        return context
    return {"allowPrivilegeEscalation": False, "seccompProfile": {"type": "RuntimeDefault"}}


def pod_security_level(explicit: PodSecurityLevel | None, *, needs_privileges: bool) -> PodSecurityLevel:
    """The level enforced on the namespace: the stack's choice, else baseline (privileged if allowed and used)."""
    if explicit is not None:
        return explicit
    return "privileged" if needs_privileges else "baseline"


def namespace_labels(level: PodSecurityLevel) -> dict[str, str]:
    """Pod Security admission labels: enforce the stack's level, warn and audit against restricted."""
    return {
        f"{_PSA}/enforce": level,
        f"{_PSA}/enforce-version": "latest",
        f"{_PSA}/warn": "restricted",
        f"{_PSA}/warn-version": "latest",
        f"{_PSA}/audit": "restricted",
        f"{_PSA}/audit-version": "latest",
    }


def replica_network_policy_spec(replica_labels: dict[str, str], gateway_labels: dict[str, str], port: str) -> dict[str, Any]:
    """Replicas of one service accept connections on their port from the gateway's pods only."""
    return {
        "podSelector": {"matchLabels": dict(replica_labels)},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"podSelector": {"matchLabels": dict(gateway_labels)}}], "ports": [{"port": port}]}],
    }


def gateway_network_policy_spec(
    gateway_labels: dict[str, str], scaler_labels: dict[str, str], public_ports: list[str], metrics_port: str
) -> dict[str, Any]:
    """The gateway accepts its public ports from anywhere and its metrics port from the scaler only."""
    return {
        "podSelector": {"matchLabels": dict(gateway_labels)},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"ports": [{"port": p} for p in public_ports]},
            {"from": [{"podSelector": {"matchLabels": dict(scaler_labels)}}], "ports": [{"port": metrics_port}]},
        ],
    }


def scaler_network_policy_spec(scaler_labels: dict[str, str]) -> dict[str, Any]:
    """The scaler serves nothing to the network (its /healthz listens on loopback): deny all ingress."""
    return {"podSelector": {"matchLabels": dict(scaler_labels)}, "policyTypes": ["Ingress"], "ingress": []}
