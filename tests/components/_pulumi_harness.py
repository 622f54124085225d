"""Pulumi's mock runtime for every backend's component tests.

`run_program(fn)` installs mocks, runs ``fn`` as the Pulumi program, waits for every
registration and returns a `Recording`: each resource's type, logical name, parent URN,
inputs (with secrets still marked) and the stack's exports. Tests that run a backend in their
own event loop call `install(stack=...)` instead and read what the returned `Mocks` saw.
Cloud functions (`getAmi`, `getSubnets`, ...) answer from `CALLS`; resource outputs echo the
inputs plus the few computed attributes the components read (IDs, ARNs, addresses, the names
and load-balancer address the Kubernetes API server fills in, the local daemons' pids and ports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc
from pulumi.runtime.settings import SETTINGS
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

__all__ = [
    "CALLS",
    "GATEWAY_IP",
    "LB_ADDRESS",
    "Mocks",
    "Recording",
    "Registered",
    "install",
    "run_program",
    "secret_paths",
    "unwrap",
]

GATEWAY_IP = "203.0.113.10"
LB_ADDRESS = "198.51.100.7"
# The local backend's dynamic providers (`components/local/`) register under this type prefix.
_LOCAL = "pulumi-python:dynamic/serveform-local:"

CALLS: dict[str, dict[str, Any]] = {
    "aws:ec2/getAmi:getAmi": {"id": "ami-0123456789abcdef0", "name": "mock-ami"},
    "aws:ec2/getVpc:getVpc": {"id": "vpc-0mock", "cidr_block": "10.0.0.0/16"},
    "aws:ec2/getSubnets:getSubnets": {"ids": ["subnet-0b", "subnet-0a"], "id": "us-east-1"},
    "aws:ec2/getSubnet:getSubnet": {"availability_zone": "us-east-1a"},
    "gcp:organizations/getProject:getProject": {"number": "123456789012", "project_id": "mock-project"},
    "azure-native:authorization:getClientConfig": {
        "subscriptionId": "00000000-0000-0000-0000-000000000001",
        "tenantId": "00000000-0000-0000-0000-000000000002",
        "clientId": "00000000-0000-0000-0000-000000000003",
        "objectId": "00000000-0000-0000-0000-000000000004",
    },
}


def unwrap(value: Any) -> Any:
    """The value with every secret marker removed."""
    if rpc.is_rpc_secret(value):
        return unwrap(rpc.unwrap_rpc_secret(value))
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    return value


def secret_paths(value: Any, path: str = "") -> list[str]:
    """Dotted paths of the values marked secret."""
    if rpc.is_rpc_secret(value):
        return [path or "."]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in secret_paths(v, f"{path}.{k}" if path else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in secret_paths(v, f"{path}[{i}]")]
    return []


@dataclass
class Registered:
    type: str
    name: str
    urn: str
    parent: str
    custom: bool
    raw_inputs: dict[str, Any]
    retain_on_delete: bool = False
    ignore_changes: tuple[str, ...] = ()

    @property
    def inputs(self) -> dict[str, Any]:
        return unwrap(self.raw_inputs)

    @property
    def secret_inputs(self) -> list[str]:
        return secret_paths(self.raw_inputs)


@dataclass
class Recording:
    resources: list[Registered] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)

    def of_type(self, type_: str) -> list[Registered]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str, name: str | None = None) -> Registered:
        found = [r for r in self.of_type(type_) if name is None or r.name == name]
        assert len(found) == 1, f"expected one {type_} {name or ''}, found {[r.name for r in found]}"
        return found[0]

    def named(self, name: str) -> Registered:
        found = [r for r in self.resources if r.name == name]
        assert len(found) == 1, f"expected one resource named {name}, found {len(found)}"
        return found[0]


class Mocks(_mocks.Mocks):
    """Answers registrations and calls; keeps every registration's arguments in `registered`."""

    def __init__(self) -> None:
        self.registered: list[_mocks.MockResourceArgs] = []

    def of_type(self, typ: str) -> list[_mocks.MockResourceArgs]:
        return [r for r in self.registered if r.typ == typ]

    def named(self, name: str) -> _mocks.MockResourceArgs:
        (found,) = [r for r in self.registered if r.name == name]
        return found

    def new_resource(self, args: _mocks.MockResourceArgs) -> tuple[str | None, dict]:
        self.registered.append(args)
        if args.typ.startswith(_LOCAL):
            return f"{args.name}-id", _local_outputs(args)
        state = unwrap(dict(args.inputs))
        ident = f"{args.name}-id"
        typ = args.typ
        if typ.startswith("aws:"):
            state.setdefault("arn", f"arn:aws:mock:::{args.name}")
            if typ == "aws:ec2/eip:Eip":
                state["public_ip"] = GATEWAY_IP
            if typ == "aws:ebs/volume:Volume":
                ident = "vol-0" + args.name.replace("-", "")[:12]
            if typ == "aws:autoscaling/group:Group":
                ident = state.get("name") or ident
            if typ == "aws:s3/bucket:Bucket":
                state.setdefault("bucket", f"{args.name}-0mock")
            state.setdefault("name", args.name)
        elif typ.startswith("gcp:"):
            state.setdefault("self_link", f"https://www.googleapis.com/compute/v1/projects/mock-project/{args.name}")
            state.setdefault("selfLinkUnique", state["self_link"] + "?uniqueId=1")
            state.setdefault("name", args.name)
            if typ == "gcp:compute/address:Address":
                state["address"] = GATEWAY_IP
            if typ == "gcp:serviceaccount/account:Account":
                state["email"] = f"{state.get('account_id', args.name)}@mock-project.iam.gserviceaccount.com"
                state["member"] = f"serviceAccount:{state['email']}"
            if typ == "gcp:secretmanager/secret:Secret":
                state["name"] = f"projects/mock-project/secrets/{state.get('secret_id', args.name)}"
                state["id"] = state["name"]
        elif typ.startswith("azure-native:"):
            ident = f"/subscriptions/00000000-0000-0000-0000-000000000001/resourceGroups/mock/providers/{typ}/{args.name}"
            state.setdefault("name", args.name)
            # Inputs list identity IDs; the output is a map keyed by ID (absent outputs fall back to inputs).
            identity = state.get("identity")
            if isinstance(identity, dict) and isinstance(identity.get("userAssignedIdentities"), list):
                state["identity"] = {**identity, "userAssignedIdentities": {i: {} for i in identity["userAssignedIdentities"]}}
            if typ == "azure-native:network:PublicIPAddress":
                state["ipAddress"] = GATEWAY_IP
            if typ == "azure-native:managedidentity:UserAssignedIdentity":
                state["clientId"] = f"client-{args.name}"
                state["principalId"] = f"principal-{args.name}"
            if typ == "azure-native:keyvault:Vault":
                state["properties"] = {**state.get("properties", {}), "vaultUri": f"https://{state.get('vaultName', args.name)}.vault.azure.net/"}
            if typ == "azure-native:keyvault:Secret":
                state["properties"] = {"secretUri": f"https://vault.vault.azure.net/secrets/{state.get('secretName', args.name)}"}
        elif typ.startswith("kubernetes:"):
            # Pulumi auto-names objects without `metadata.name`; a LoadBalancer Service gets an address.
            metadata = dict(state.get("metadata") or {})
            metadata.setdefault("name", f"{args.name}-a1b2c3")
            state["metadata"] = metadata
            if typ == "kubernetes:core/v1:Service" and (state.get("spec") or {}).get("type") == "LoadBalancer":
                state["status"] = {"loadBalancer": {"ingress": [{"ip": LB_ADDRESS}]}}
        return ident, state

    def call(self, args: _mocks.MockCallArgs) -> tuple[dict, list | None]:
        result = dict(CALLS.get(args.token, {}))
        if args.token == "aws:ec2/getSubnet:getSubnet":
            result["id"] = args.args.get("id")
        return result, []


def _local_outputs(args: _mocks.MockResourceArgs) -> dict:
    """A local daemon's outputs: the inputs as given (secrets still marked) plus what starting it reports."""
    outputs = dict(args.inputs)
    kind = args.typ[len(_LOCAL):]
    if kind == "Replica":
        port = 40000 + int(args.inputs["replica"])
        outputs.update(pid=1000, start_time=1, port=port, address=f"127.0.0.1:{port}", log_inode=1)
    elif kind == "Token":
        outputs["value"] = "generated-token-value"
    elif kind == "Daemon":
        outputs.update(pid=1000, start_time=1, port=19465)
    return outputs


class _Monitor(_mocks.MockMonitor):
    def __init__(self, mocks: Mocks, recording: Recording) -> None:
        super().__init__(mocks)
        self.recording = recording

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        response = super().RegisterResource(request)
        if request.type != "pulumi:pulumi:Stack":
            self.recording.resources.append(
                Registered(
                    type=request.type,
                    name=request.name,
                    urn=response.urn,
                    parent=request.parent,
                    custom=request.custom,
                    raw_inputs=rpc.deserialize_properties(request.object),
                    retain_on_delete=bool(getattr(request, "retainOnDelete", False)),
                    ignore_changes=tuple(getattr(request, "ignoreChanges", ())),
                )
            )
        return response

    def RegisterResourceOutputs(self, request):  # noqa: N802
        if request.urn.split("::")[2] == "pulumi:pulumi:Stack":
            self.recording.outputs.update(rpc.deserialize_properties(request.outputs))
        return super().RegisterResourceOutputs(request)


def install(*, stack: str = "dev", recording: Recording | None = None) -> Mocks:
    """Install fresh mocks (no root stack, no pending RPCs) for project `serveform` and ``stack``.

    Every registration lands in the returned `Mocks` and, with ``recording``, in it too.
    """
    mocks = Mocks()
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    pulumi.runtime.settings.ROOT.set(None)  # a fresh root stack for this program
    monitor = _Monitor(mocks, Recording() if recording is None else recording)
    pulumi.runtime.set_mocks(mocks, project="serveform", stack=stack, preview=False, monitor=monitor)
    return mocks


def _ensure_event_loop() -> None:
    """The SDK's synchronous waits need a current loop; an async test before this one may have
    closed and unset the main thread's (pytest-asyncio does), which breaks any later sync run."""
    import asyncio

    try:
        asyncio.get_event_loop()
    except RuntimeError:
        asyncio.set_event_loop(asyncio.new_event_loop())


def run_program(program, *, stack: str = "dev", recording: Recording | None = None) -> Recording:
    """Run ``program`` (a no-argument callable) under the mock runtime; raise what it raises.

    Pass ``recording`` to see what was registered even when the program raises.
    """
    recording = Recording() if recording is None else recording
    _ensure_event_loop()
    try:
        install(stack=stack, recording=recording)
        _sync_await(run_pulumi_func(program))
        # Stack outputs are registered when the root stack finishes; mocks keep them in the stack object.
        root = pulumi.runtime.settings.get_root_resource()
        if root is not None and hasattr(root, "outputs"):
            for key, value in root.outputs.items():
                recording.outputs.setdefault(key, _sync_await(pulumi.Output.from_input(value).future()))
    finally:
        # Leave no root stack behind: later tests (in this context or tasks copied from it) start clean.
        pulumi.runtime.settings.ROOT.set(None)
    return recording
