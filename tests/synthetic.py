"""Generated stores for configs whose real builders need data not shipped here."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
from shapely.geometry import box

from geofm.io.writer import StoreSpec, create_store, finalize_store, write_region


def make_store(path: Path, bands: list[str], n: int = 4, size: int = 32, seed: int = 0) -> Path:
    """A complete store of smooth random fields (structure a masked model can learn)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    image = np.empty((n, len(bands), size, size), np.float32)
    for i in range(n):
        for c in range(len(bands)):
            fx, fy, ph = rng.uniform(1, 4, 3)
            image[i, c] = 100 + 50 * np.sin(2 * np.pi * (fx * xx + fy * yy) + ph)
    spec = StoreSpec(num_chips=n, bands=bands, chip_size=(size, size), dtype="float32",
                     provenance={"builder": "synthetic"}, fingerprint="synthetic")
    create_store(path, spec)
    rows = gpd.GeoDataFrame({
        "chip_id": [f"chip{i}" for i in range(n)],
        "geometry": [box(10 + i, 45, 10.01 + i, 45.01) for i in range(n)],
        "centroid_lon": [10.005 + i for i in range(n)], "centroid_lat": [45.005] * n,
        "crs": ["EPSG:4326"] * n, "transform": [[0.01 / size, 0, 10 + i, 0, -0.01 / size, 45.01]
                                                 for i in range(n)],
        "native_x": [10.005 + i for i in range(n)], "native_y": [45.005] * n,
        "time": [pd.Timestamp("2024-01-01", tz="UTC")] * n, "source": ["synthetic"] * n,
        "tile": [None] * n, "split": ["train"] * n,
    }, geometry="geometry", crs="EPSG:4326")
    write_region(path, 0, image, rows)
    finalize_store(path)
    return path
