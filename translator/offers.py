"""Instance offers that satisfy a service's `resources`, from a gpuhunt catalog.

Matching is gpuhunt's own (``gpuhunt.matches`` over a ``QueryFilter``), the function dstack's
offer search uses, so a `resources` section selects here what it selects there. The catalog is
the shipped snapshot (:mod:`serveform.translator.catalog`) unless the context names another:

- a CSV with a ``provider`` column (the snapshot's shape),
- gpuhunt's per-provider ``<provider>.csv`` (the provider taken from the file name),
- a directory of those (``GPUHUNT_CATALOG_DIR``'s layout), or gpuhunt's ``catalog.zip``.

Offers are filtered by the stack's backend, `backends`, `regions` (the service's and the
stack's), `instance_types`, `spot_policy` and `max_price`, sorted cheapest first, and the
cheapest :data:`MAX_OFFERS_PER_REGION` per region and market are kept, so plans stay small.
"""

from __future__ import annotations

import csv
import io
import threading
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gpuhunt
from gpuhunt._internal.storage import item_from_row  # gpuhunt 0.1.34's CSV row reader (pinned)

from .catalog import SNAPSHOT, SNAPSHOT_DATE
from .plan import OfferPlan

if TYPE_CHECKING:
    from .compiler import CompileContext
    from .spec import ServiceSpec

__all__ = ["CatalogError", "MAX_OFFERS_PER_REGION", "NoOffers", "load_catalog", "offers_for"]

MAX_OFFERS_PER_REGION = 10
"""Cheapest offers kept per (region, spot/on-demand): enough choice for capacity fallbacks."""

# serveform backend → gpuhunt provider, and the name dstack's `backends:` uses for it
_PROVIDERS = {"aws": "aws", "gcp": "gcp", "azure": "azure"}
_DSTACK_BACKEND = {"aws": "aws", "gcp": "gcp", "azure": "azure"}
_KNOWN_PROVIDERS = frozenset({"aws", "gcp", "azure", "lambdalabs", "nebius", "oci", "runpod", "verda", "cloudrift"})


class CatalogError(Exception):
    """The offers catalog cannot be read."""


_cache: dict[tuple[str, float], dict[str, list[gpuhunt.CatalogItem]]] = {}
_cache_lock = threading.Lock()


def load_catalog(path: Path | None = None) -> dict[str, list[gpuhunt.CatalogItem]]:
    """Catalog items by provider (cached per file and modification time)."""
    path = Path(path) if path is not None else SNAPSHOT
    try:
        key = (str(path.resolve()), path.stat().st_mtime)
    except OSError as exc:
        raise CatalogError(f"{path}: {exc.strerror or exc}") from None
    with _cache_lock:
        cached = _cache.get(key)
    if cached is not None:
        return cached
    by_provider: dict[str, list[gpuhunt.CatalogItem]] = {}
    for item in _read(path):
        by_provider.setdefault(item.provider, []).append(item)
    with _cache_lock:
        _cache[key] = by_provider
    return by_provider


def _read(path: Path) -> Iterator[gpuhunt.CatalogItem]:
    if path.is_dir():
        files = sorted(path.glob("*.csv"))
        if not files:
            raise CatalogError(f"{path}: no `<provider>.csv` files in the directory")
        for file in files:
            with open(file, encoding="utf-8", newline="") as f:
                yield from _rows(f, file.stem, file)
    elif path.suffix == ".zip":
        try:
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name.endswith(".csv"):
                        with archive.open(name) as raw:
                            yield from _rows(io.TextIOWrapper(raw, "utf-8"), Path(name).stem, path)
        except zipfile.BadZipFile as exc:
            raise CatalogError(f"{path}: {exc}") from None
    else:
        with open(path, encoding="utf-8", newline="") as f:
            yield from _rows(f, path.stem, path)


def _rows(stream: Iterable[str], stem: str, origin: Path) -> Iterator[gpuhunt.CatalogItem]:
    reader = csv.DictReader(stream)
    if not reader.fieldnames or "instance_name" not in reader.fieldnames:
        raise CatalogError(f"{origin}: not a gpuhunt catalog (no `instance_name` column)")
    has_provider = "provider" in reader.fieldnames
    if not has_provider and stem not in _KNOWN_PROVIDERS:
        raise CatalogError(f"{origin}: no `provider` column and the file name `{stem}` names no provider")
    for row in reader:
        provider = row["provider"] if has_provider else stem
        try:
            yield item_from_row(row, provider=provider)
        except (ValueError, KeyError, TypeError) as exc:
            raise CatalogError(f"{origin}:{reader.line_num}: malformed offer: {exc}") from None


def _region(provider: str, location: str) -> tuple[str, str | None]:
    """(region, zone): gpuhunt lists GCP offers per zone (`us-central1-a`)."""
    if provider == "gcp" and location.count("-") == 2 and len(location.rsplit("-", 1)[1]) == 1:
        return location.rsplit("-", 1)[0], location
    return location, None


def _query(spec: ServiceSpec, provider: str) -> gpuhunt.QueryFilter:
    r = spec.resources
    gpu = r.gpu
    spot = {"spot": True, "on-demand": False, "auto": None}[spec.spot_policy or "on-demand"]
    query = gpuhunt.QueryFilter(
        provider=[provider],
        cpu_arch=gpuhunt.CPUArchitecture.cast(r.cpu.arch) if r.cpu.arch else None,
        min_cpu=r.cpu.count.min,
        max_cpu=r.cpu.count.max,
        min_memory=r.memory.min,
        max_memory=r.memory.max,
        min_disk_size=int(r.disk.size.min) if r.disk and r.disk.size.min is not None else None,
        max_disk_size=int(r.disk.size.max) if r.disk and r.disk.size.max is not None else None,
        max_price=spec.max_price,
        spot=spot,
    )
    if gpu is None:
        query.min_gpu_count = 0
    else:
        query.min_gpu_count = gpu.count.min if gpu.count.min is not None else 0
        query.max_gpu_count = gpu.count.max
        query.gpu_vendor = gpuhunt.AcceleratorVendor.cast(gpu.vendor) if gpu.vendor else None
        query.gpu_name = list(gpu.name) if gpu.name else None
        if gpu.memory is not None:
            query.min_gpu_memory, query.max_gpu_memory = gpu.memory.min, gpu.memory.max
        if gpu.total_memory is not None:
            query.min_total_gpu_memory, query.max_total_gpu_memory = gpu.total_memory.min, gpu.total_memory.max
        query.min_compute_capability = gpu.compute_capability
    return query


def offers_for(spec: ServiceSpec, context: CompileContext) -> tuple[tuple[OfferPlan, ...], list[tuple[tuple[Any, ...], str]]]:
    """The offers of the context's backend that satisfy `spec`, cheapest first, and notes.

    Backends without instances to choose (local, k8s) get no offers. A cloud backend with no
    matching offer raises :class:`NoOffers` (an error of the file, not of the catalog).
    """
    provider = _PROVIDERS.get(context.backend)
    if provider is None:
        return (), []
    if spec.backends is not None and _DSTACK_BACKEND[context.backend] not in spec.backends:
        return (), []  # the backend check already warns about it
    catalog_path = Path(context.offers_catalog) if context.offers_catalog is not None else None
    items = load_catalog(catalog_path).get(provider, [])
    query = _query(spec, provider)
    regions = _allowed_regions(spec.regions, context.regions)
    wanted_types = set(spec.instance_types) if spec.instance_types else None
    matched: list[OfferPlan] = []
    for item in items:
        region, zone = _region(provider, item.location)
        if regions is not None and region not in regions and (zone is None or zone not in regions):
            continue
        if wanted_types is not None and item.instance_name not in wanted_types:
            continue
        if not gpuhunt.matches(item, query):
            continue
        matched.append(
            OfferPlan(
                backend=context.backend,
                region=region,
                zone=zone,
                instance_type=item.instance_name,
                price_per_hour=item.price,
                spot=item.spot,
                cpus=item.cpu,
                memory_gb=item.memory,
                gpu_vendor=item.gpu_vendor.value if item.gpu_vendor else None,
                gpu_name=item.gpu_name,
                gpu_count=item.gpu_count,
                gpu_memory_gb=item.gpu_memory,
                disk_gb=item.disk_size,
            )
        )
    matched.sort(key=lambda o: (o.price_per_hour, o.instance_type, o.region, o.zone or "", o.spot))
    kept: list[OfferPlan] = []
    per_region: dict[tuple[str, bool], int] = {}
    for offer in matched:
        slot = (offer.region, offer.spot)
        if per_region.get(slot, 0) < MAX_OFFERS_PER_REGION:
            per_region[slot] = per_region.get(slot, 0) + 1
            kept.append(offer)
    notes: list[tuple[tuple[Any, ...], str]] = []
    if not kept:
        source = str(catalog_path) if catalog_path is not None else f"the {SNAPSHOT_DATE} snapshot"
        raise NoOffers(
            f"no {context.backend} offer in {source} satisfies `resources`"
            + (f", spot_policy `{spec.spot_policy}`" if spec.spot_policy else "")
            + (f", max_price {spec.max_price}" if spec.max_price is not None else "")
            + (f", regions {sorted(regions)}" if regions is not None else "")
            + (f", instance_types {sorted(wanted_types)}" if wanted_types else "")
        )
    return tuple(kept), notes


class NoOffers(Exception):
    """No offer of the catalog satisfies the service."""


def _allowed_regions(service: list[str] | None, stack: Iterable[str]) -> set[str] | None:
    stack_regions = set(stack)
    if service is None:
        return stack_regions or None
    if not stack_regions:
        return set(service)
    return set(service) & stack_regions

