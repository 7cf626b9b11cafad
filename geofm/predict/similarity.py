"""The similarity product of text queries: checked texts and value ranges (its QGIS colour
ramp is :func:`geofm.io.cog.write_ramp_qml`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import rasterio

from geofm.errors import GeofmError


def query_texts(text: str | Sequence[str]) -> list[str]:
    """One text or several, checked: each a non-blank string, surrounding space removed.

    Raises:
        GeofmError: No text, an empty or blank text, or something other than strings.
    """
    texts = [text] if isinstance(text, str) else list(text)
    if not texts:
        raise GeofmError("no query text given", hint='give a text, e.g. "flooded fields"')
    out = []
    for t in texts:
        if not isinstance(t, str):
            raise GeofmError(f"query texts must be strings, got {type(t).__name__}")
        if not t.strip():
            raise GeofmError("the query text is empty", hint='give a text, e.g. "flooded '
                             'fields"')
        out.append(t.strip())
    return out


def value_ranges(path: Path) -> list[tuple[float, float]]:
    """``(min, max)`` of each band's finite values, read block by block (NaN if none)."""
    with rasterio.open(path) as ds:
        lo = np.full(ds.count, np.inf)
        hi = np.full(ds.count, -np.inf)
        for _, window in ds.block_windows(1):
            data = ds.read(window=window)  # [T, n, m]
            finite = np.isfinite(data)
            lo = np.minimum(lo, np.where(finite, data, np.inf).min(axis=(1, 2)))
            hi = np.maximum(hi, np.where(finite, data, -np.inf).max(axis=(1, 2)))
    return [(float(a), float(b)) if a <= b else (math.nan, math.nan) for a, b in zip(lo, hi)]
