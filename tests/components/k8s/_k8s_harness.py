"""Pulumi's mock runtime for the Kubernetes backend.

Reuses the shared harness's recording types; the mocks play the API server's part that the
components read back: generated names for objects without `metadata.name` (Pulumi's
auto-naming), and a load-balancer address on LoadBalancer Services.
"""

from __future__ import annotations

import pulumi
from _pulumi_harness import Recording, Registered, secret_paths, unwrap
from pulumi.runtime import mocks as _mocks
from pulumi.runtime import rpc
from pulumi.runtime.settings import SETTINGS
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

__all__ = ["LB_ADDRESS", "Recording", "Registered", "run_program", "secret_paths", "unwrap"]

LB_ADDRESS = "198.51.100.7"


class _Mocks(_mocks.Mocks):
    def new_resource(self, args: _mocks.MockResourceArgs):
        state = unwrap(dict(args.inputs))
        if args.typ.startswith("kubernetes:") and args.typ != "pulumi:providers:kubernetes":
            metadata = dict(state.get("metadata") or {})
            metadata.setdefault("name", f"{args.name}-a1b2c3")
            state["metadata"] = metadata
            if args.typ == "kubernetes:core/v1:Service":
                if (state.get("spec") or {}).get("type") == "LoadBalancer":
                    state["status"] = {"loadBalancer": {"ingress": [{"ip": LB_ADDRESS}]}}
        return f"{args.name}-id", state

    def call(self, args: _mocks.MockCallArgs):
        return {}, []


class _Monitor(_mocks.MockMonitor):
    def __init__(self, recording: Recording) -> None:
        super().__init__(_Mocks())
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
                )
            )
        return response


def run_program(program, *, stack: str = "k8s") -> Recording:
    """Run ``program`` under the mock runtime; raise what it raises."""
    recording = Recording()
    monitor = _Monitor(recording)
    SETTINGS.rpc_manager.clear()
    SETTINGS.outputs.clear()
    pulumi.runtime.set_mocks(_Mocks(), project="serveform", stack=stack, preview=False, monitor=monitor)
    _sync_await(run_pulumi_func(program))
    root = pulumi.runtime.settings.get_root_resource()
    if root is not None and hasattr(root, "outputs"):
        for key, value in root.outputs.items():
            recording.outputs.setdefault(key, _sync_await(pulumi.Output.from_input(value).future()))
    return recording
