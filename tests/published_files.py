"""Release files for tests: random weights saved in the published format (the writers of
``scripts/published_refs``), and a labelled 13-band L1C chip store cut from the real Sentinel-2
scene (the reBEN sample is L2A and has no B10, which the 13-band SSL4EO ViT-S needs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import geopandas as gpd
import numpy as np
import pandas as pd
import rasterio
import torch
from shapely.geometry import box

from geofm.io.writer import StoreSpec, create_store, finalize_store, write_region
from geofm.published import PUBLISHED
from tests.conftest import S2_SCENE

REFS = Path(__file__).resolve().parents[1] / "scripts" / "published_refs"


def ref_module(family: str) -> ModuleType:
    """``scripts/published_refs/<family>.py`` (the release-format writers)."""
    spec = importlib.util.spec_from_file_location(f"published_refs_{family}",
                                                  REFS / f"{family}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_release(name: str, folder: Path) -> Path:
    """Random weights of release ``name`` as its published file (key names, no extra parts)."""
    path = folder / PUBLISHED[name].weights_file
    if name.startswith("dofa"):
        state = ref_module("dofa").release_state(name)
    elif name.startswith("ssl4eo"):
        state = ref_module("ssl4eo").release_state()
    elif name == "copernicusfm_base":
        state = ref_module("copernicusfm").release_state()
    else:
        raise ValueError(name)
    torch.save(state, path)
    return path


def l1c_store(path: Path, size: int = 64) -> Path:
    """A labelled store of the real 13-band L1C scene cut into ``size`` px chips: two classes
    (brighter / darker than the median near-infrared), alternate chips train / validation."""
    with rasterio.open(S2_SCENE) as src:
        scene = src.read().astype(np.float32)  # [13, 256, 256] DN
        bounds = src.bounds
    per = scene.shape[1] // size
    chips = [scene[:, r * size:(r + 1) * size, c * size:(c + 1) * size]
             for r in range(per) for c in range(per)]
    image = np.stack(chips)  # [N, 13, s, s]
    n = len(image)
    nir = image[:, 7].mean(axis=(1, 2))
    bright = nir > np.median(nir)
    label = np.stack([bright, ~bright], axis=1).astype(np.uint8)  # [N, 2]
    bands = [f"S2.B{b}" for b in ("01", "02", "03", "04", "05", "06", "07", "08", "8A", "09",
                                  "10", "11", "12")]
    spec = StoreSpec(num_chips=n, bands=bands, chip_size=(size, size), dtype="float32",
                     classes=["bright", "dark"], has_label=True, gsd_m=10.0,
                     provenance={"builder": "test-l1c"}, fingerprint="l1c-scene")
    create_store(path, spec)
    lon0 = 10.0
    rows = gpd.GeoDataFrame({
        "chip_id": [f"chip{i}" for i in range(n)],
        "geometry": [box(lon0 + i, 45, lon0 + i + 0.01, 45.01) for i in range(n)],
        "centroid_lon": [lon0 + i + 0.005 for i in range(n)], "centroid_lat": [45.005] * n,
        "crs": ["EPSG:4326"] * n,
        "transform": [[0.01 / size, 0, lon0 + i, 0, -0.01 / size, 45.01] for i in range(n)],
        "native_x": [bounds.left] * n, "native_y": [bounds.top] * n,
        "time": [pd.Timestamp("2024-01-01", tz="UTC")] * n, "source": ["s2_l1c"] * n,
        "tile": [None] * n, "split": ["train" if i % 2 == 0 else "validation" for i in range(n)],
    }, geometry="geometry", crs="EPSG:4326")
    write_region(path, 0, image, rows, label=label)
    finalize_store(path)
    return path
