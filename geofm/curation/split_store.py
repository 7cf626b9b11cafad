"""Splitting and auditing a chip store: the split rules applied to a store's chip table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from geofm.curation.audit import leakage_audit, split_map_png
from geofm.curation.splits import block_split, polygon_split, reben_tile_split, region_split
from geofm.errors import GeofmError
from geofm.io.store import ChipStore, open_store

METHODS = ("reben", "blocks", "region", "polygons")


def split_store(
    store: ChipStore | str | Path,
    method: str,
    *,
    seed: int = 0,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    block_km: float = 50.0,
    buffer_km: float = 0.0,
    column: str = "country",
    vector: str | Path | None = None,
) -> dict[str, int]:
    """Assign every chip of ``store`` to a split and record the rule in the store.

    Args:
        store: An open store, or its path.
        method: ``reben`` (tile-border rule), ``blocks`` (spatial blocks + buffer), ``region``
            (whole values of ``column`` per split) or ``polygons`` (split column of ``vector``).
        seed: Random seed (blocks, region).
        ratios: Target train/validation/test fractions (blocks, region).
        block_km: Block side (blocks).
        buffer_km: Chips within this distance of another split's block are excluded (blocks).
        column: Chip-table column naming regions (region).
        vector: Vector file with polygons and a ``split`` column (polygons).

    Returns:
        Chips per split (``excluded`` for buffer drops).
    """
    if not isinstance(store, ChipStore):
        store = open_store(store)
    chips = store.chips
    lon = chips["centroid_lon"].to_numpy()
    lat = chips["centroid_lat"].to_numpy()
    params: dict[str, Any]
    if method == "reben":
        split = reben_tile_split(chips["tile"].to_numpy(), chips["native_x"].to_numpy(),
                                 chips["native_y"].to_numpy(), chips["crs"].to_numpy())
        params = {"tile_side_m": 109_800}
    elif method == "blocks":
        split = block_split(lon, lat, block_km=block_km, buffer_km=buffer_km, ratios=ratios,
                            seed=seed)
        params = {"block_km": block_km, "buffer_km": buffer_km, "ratios": list(ratios),
                  "seed": seed, "grid": "EPSG:6933", "buffer": "drop"}
    elif method == "region":
        if column not in chips.columns:
            raise GeofmError(f"chip table has no column {column!r} "
                             f"(have {', '.join(c for c in chips.columns if c != 'geometry')})",
                             store.path, "pass --column with one of those")
        split = region_split(chips[column].to_numpy(), ratios=ratios, seed=seed)
        params = {"column": column, "ratios": list(ratios), "seed": seed}
    elif method == "polygons":
        if vector is None:
            raise GeofmError("the polygons method needs a vector file", hint="pass --vector FILE")
        split = polygon_split(lon, lat, str(vector), column="split")
        params = {"vector": str(Path(vector).resolve())}
    else:
        raise GeofmError(f"unknown split method {method!r}",
                         hint=f"use one of {', '.join(METHODS)}")
    store.write_split(np.asarray(split, dtype=object), method, params)
    return dict(store.attrs["split"]["counts"])


def audit_store(
    store: ChipStore, distance_km: float = 2.0, map_png: str | Path | None = None
) -> dict[str, Any]:
    """Leakage audit of the store's current split, optionally with a PNG split map."""
    chips = store.chips
    lon = chips["centroid_lon"].to_numpy()
    lat = chips["centroid_lat"].to_numpy()
    split = chips["split"].to_numpy()
    report = leakage_audit(lon, lat, split, distance_km)
    if map_png is not None:
        method = store.attrs["split"]["method"]
        split_map_png(lon, lat, split, str(map_png), title=f"{store.path.name}: {method} split")
    return report
