"""The shared mock runtime (`_pulumi_harness`) as the Kubernetes tests use it: programs run as stack `k8s`.

The mocks play the API server's part the components read back (generated names for objects
without `metadata.name`, `LB_ADDRESS` on LoadBalancer Services) in `_pulumi_harness.Mocks`.
"""

from __future__ import annotations

import functools

import _pulumi_harness
from _pulumi_harness import LB_ADDRESS, Recording, Registered, secret_paths, unwrap

__all__ = ["LB_ADDRESS", "Recording", "Registered", "run_program", "secret_paths", "unwrap"]

run_program = functools.partial(_pulumi_harness.run_program, stack="k8s")
