"""Instance offers that satisfy a service's resources (placeholder until the catalog lands)."""

from __future__ import annotations

from typing import Any

from .plan import OfferPlan

__all__ = ["offers_for"]


def offers_for(spec: Any, context: Any) -> tuple[tuple[OfferPlan, ...], list[tuple[tuple[Any, ...], str]]]:
    return (), []
