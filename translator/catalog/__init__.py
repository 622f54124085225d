"""The offers snapshot shipped with serveform (gpuhunt's catalog item format).

``offers-2026-11.csv`` holds AWS, GCP and Azure GPU (and a few CPU) instance offers: gpuhunt's
v2 catalog columns with a leading ``provider`` column, since one file carries three providers.
It is written by ``_build.py`` from the table there. gpuhunt's live catalog is not reachable
from build machines, so this snapshot is the default; point ``CompileContext.offers_catalog``
(stack config ``serveform:offersCatalog``) at a fresh one for current prices.
"""

from pathlib import Path

__all__ = ["SNAPSHOT", "SNAPSHOT_DATE"]

SNAPSHOT_DATE = "2026-11"
SNAPSHOT = Path(__file__).with_name(f"offers-{SNAPSHOT_DATE}.csv")
