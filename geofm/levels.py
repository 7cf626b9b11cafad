"""Processing levels: part of the band contract beside band names and resolution.

The same Sentinel-2 band holds top-of-atmosphere reflectance in a Level-1C product and
surface (bottom-of-atmosphere) reflectance in a Level-2A one; the values differ by the
atmosphere (haze lifts the blue bands of L1C). A model trained on one and applied to the other
still runs, so the level is recorded and compared, per sensor: ``{"S2": "L2A", "S1": "GRD"}``.

Stores record ``processing_levels`` in their attributes (stores built before that are known by
their builder); checkpoints copy their stores' levels into the header; inputs name theirs in
their metadata (``PROCESSING_LEVEL``/``LEVEL``/``PRODUCT_TYPE`` tags, a ``MSIL1C``/``MSIL2A``
product name).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

LEVEL_MEANING = {
    "L1C": "top-of-atmosphere reflectance",
    "L2A": "surface reflectance",
    "L1B": "top-of-atmosphere radiance/reflectance",
    "GRD": "ground-range detected backscatter",
}
"""What each level's values are, for messages."""

BUILDER_LEVELS: dict[str, dict[str, str]] = {
    "reben": {"S2": "L2A", "S1": "GRD"},  # BigEarthNet v2 / reBEN: Sen2Cor L2A, S1 GRD
    "modis": {"MODIS": "L1B"},  # MOD021KM / MYD021KM calibrated radiances
}
"""Levels of the stores each builder writes (used for stores that predate the attribute)."""

_S2_PATTERNS = (
    ("L1C", re.compile(r"(?<![A-Z0-9])(?:MSI)?L1C(?![A-Z0-9])|LEVEL-?1C|S2MSI1C")),
    ("L2A", re.compile(r"(?<![A-Z0-9])(?:MSI)?L2A(?![A-Z0-9])|LEVEL-?2A|S2MSI2A")),
)


def store_levels(attrs: Mapping[str, Any]) -> dict[str, str]:
    """A chip store's processing levels per sensor (``{}`` where unknown)."""
    levels = attrs.get("processing_levels")
    if isinstance(levels, dict):
        return {str(k): str(v) for k, v in levels.items()}
    builder = (attrs.get("provenance") or {}).get("builder")
    return dict(BUILDER_LEVELS.get(str(builder), {}))


def merged_levels(levels: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Several stores' levels as one mapping; a sensor seen at two levels is left out."""
    out: dict[str, str] = {}
    clash: set[str] = set()
    for mapping in levels:
        for sensor, level in mapping.items():
            if out.setdefault(sensor, level) != level:
                clash.add(sensor)
    return {k: v for k, v in out.items() if k not in clash}


def detect_levels(texts: Iterable[str]) -> dict[str, str]:
    """Sentinel-2 processing level named by an input's metadata values or file name.

    >>> detect_levels(["L1C (TOA reflectance x10000, DN)"])
    {'S2': 'L1C'}
    >>> detect_levels(["S2B_MSIL2A_20230601T103629_N0509_R008_T32TMT.SAFE"])
    {'S2': 'L2A'}
    >>> detect_levels(["scene.tif"])
    {}
    """
    text = " ".join(str(t) for t in texts).upper()
    found = {level for level, pattern in _S2_PATTERNS if pattern.search(text)}
    return {"S2": found.pop()} if len(found) == 1 else {}


def level_mismatches(model: Mapping[str, str], data: Mapping[str, str],
                     sensors: Iterable[str]) -> list[tuple[str, str, str]]:
    """``(sensor, model level, input level)`` for each of ``sensors`` known to both and
    different."""
    return [(s, model[s], data[s]) for s in dict.fromkeys(sensors)
            if s in model and s in data and model[s] != data[s]]


def describe(level: str) -> str:
    """``"L2A"`` → ``"L2A (surface reflectance)"``."""
    meaning = LEVEL_MEANING.get(level)
    return f"{level} ({meaning})" if meaning else level
