"""A store described for people: bands and their statistics, classes, the split and its
leakage audit, as ``geofm info`` prints it (or as JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geofm.curation.split_store import audit_store
from geofm.io.store import ChipStore, open_store


@dataclass(frozen=True)
class StoreReport:
    """A store and the leakage audit of its split.

    Attributes:
        store: The open store.
        audit: :func:`~geofm.curation.split_store.audit_store`'s report.
        distance_km: The audit's distance.
        map_png: The split map written, if any.
    """

    store: ChipStore
    audit: dict[str, Any]
    distance_km: float
    map_png: str | Path | None = None

    def to_json(self) -> str:
        """The store's attributes and the audit as indented JSON."""
        return json.dumps({"attrs": self.store.attrs, "audit": self.audit}, indent=2,
                          default=str)

    def text(self) -> str:
        """The report as aligned lines of text."""
        store, at = self.store, self.store.attrs
        sp, st = at["split"], store.stats
        lines = [
            f"store      {store.path}",
            f"chips      {len(store)} of {store.chip_size[0]}×{store.chip_size[1]} px, "
            f"{at.get('gsd_m')} m, dtype {at['dtype']}, arrays {', '.join(store.arrays)}",
            f"builder    {at['provenance'].get('builder')} from "
            f"{at['provenance'].get('source')}",
            f"classes    {len(store.classes)}",
            f"split      {sp['method']} {json.dumps(sp.get('params', {}))}",
            "           " + ", ".join(f"{k} {v}" for k, v in sp.get("counts", {}).items()),
            f"{'band':<10}{'mean':>12}{'std':>12}{'min':>12}{'max':>12}",
        ]
        lines += [f"{b:<10}{st.mean[i]:>12.2f}{st.std[i]:>12.2f}{st.minimum[i]:>12.2f}"
                  f"{st.maximum[i]:>12.2f}" for i, b in enumerate(store.bands)]
        lines.append(f"leakage audit (chips within {self.distance_km} km of another split):")
        for pair, row in self.audit.get("pairs", {}).items():
            d = row.get("min_distance_km")
            near = ", ".join(f"{k} {v}" for k, v in row.get("within", {}).items())
            shown = "—" if d is None else f"{d:,.2f} km"
            lines.append(f"  {pair:<22} closest {shown:>14}   within {self.distance_km} km: "
                         f"{near}")
        if self.map_png:
            lines.append(f"split map  {self.map_png}")
        return "\n".join(lines)


def store_report(path: str | Path, distance_km: float = 2.0,
                 map_png: str | Path | None = None) -> StoreReport:
    """Open a store and audit its split for leakage (optionally drawing a PNG split map).

    Raises:
        StoreError: Missing, unfinished or unreadable store.
    """
    store = open_store(path)
    audit = audit_store(store, distance_km, map_png)
    return StoreReport(store, audit, distance_km, map_png)
