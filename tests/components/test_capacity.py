"""`capacity`: the plan's offers and spot_policy → instance types and market mix (pure)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cloud_examples import example_plans  # noqa: E402

from serveform.components._vm import VmConfigError, capacity, short_name  # noqa: E402
from serveform.translator.plan import OfferPlan  # noqa: E402

_TYPES = ["m5.large", "g5.xlarge", "g6.xlarge", "m6g.large", "g5g.xlarge", "p4d.24xlarge"]


def _offer(itype: str, price: float, spot: bool, region: str = "us-east-1") -> OfferPlan:
    return OfferPlan(backend="aws", region=region, instance_type=itype, price_per_hour=price, spot=spot, cpus=4, memory_gb=16)


offers_strategy = st.lists(
    st.builds(_offer, st.sampled_from(_TYPES), st.floats(min_value=0.01, max_value=50), st.booleans(),
              st.sampled_from(["us-east-1", "eu-west-1"])),
    min_size=1, max_size=12,
)


@given(offers_strategy, st.sampled_from(["spot", "on-demand", "auto"]), st.integers(0, 3))
@settings(max_examples=200, deadline=None)
def test_capacity_properties(offers, policy, minimum):
    plan = example_plans("aws")["http-server-service"]
    plan = plan.model_copy(update={"offers": tuple(offers), "spot_policy": policy,
                                   "replicas": plan.replicas.model_copy(update={"min": minimum, "max": max(minimum, 3)})})
    eligible = [o for o in offers if o.region == "us-east-1" and not o.instance_type.startswith(("m6g", "g5g"))
                and (policy == "auto" or o.spot == (policy == "spot"))]
    if not eligible:
        with pytest.raises(VmConfigError, match="no aws offer"):
            capacity(plan, "aws", region="us-east-1")
        return
    cap = capacity(plan, "aws", region="us-east-1")
    # Distinct, x86-only, in the region, cheapest first.
    assert len(set(cap.instance_types)) == len(cap.instance_types)
    assert set(cap.instance_types) == {o.instance_type for o in eligible}
    cheapest = {t: min(o.price_per_hour for o in eligible if o.instance_type == t) for t in cap.instance_types}
    assert [cheapest[t] for t in cap.instance_types] == sorted(cheapest[t] for t in cap.instance_types)
    assert 0 <= cap.on_demand_percentage <= 100
    if policy == "spot":
        assert cap.spot and cap.on_demand_base == 0 and cap.on_demand_percentage == 0
    elif policy == "on-demand":
        assert not cap.spot and cap.on_demand_percentage == 100
    elif any(o.spot for o in eligible):
        assert cap.spot and cap.on_demand_base == minimum and cap.on_demand_percentage == 0
    else:
        assert not cap.spot and cap.on_demand_percentage == 100


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=80), st.integers(12, 64))
@settings(max_examples=200, deadline=None)
def test_short_names_fit_and_stay_distinct(a, b, limit):
    name = short_name("sf", a, b, limit=limit)
    assert len(name) <= limit
    assert all(c.isascii() and (c.isalnum() or c == "-") for c in name)
    assert name != short_name("sf", a + "x", b, limit=limit)  # a cut name keeps a hash of the whole
