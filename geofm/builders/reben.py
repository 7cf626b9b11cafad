"""reBEN (BigEarthNet v2.0) → chip store.

Reads the release's own layout::

    SRC/metadata.parquet
    SRC/BigEarthNet-S2/<tile dir>/<patch_id>/<patch_id>_B01.tif ... _B12.tif, _B8A.tif
    SRC/BigEarthNet-S1/<s1 dir>/<s1_name>/<s1_name>_VV.tif, _VH.tif
    SRC/Reference_Maps/<tile dir>/<patch_id>/<patch_id>_reference_map.tif   (optional)

and writes 14-band ``s1s2`` chips (12 Sentinel-2 L2A bands, then VV, VH) of 120 × 120 px on the
10 m grid. Resampling: the 20 m and 60 m bands are read onto the 10 m grid with GDAL's bilinear
resampling (``rasterio`` ``read(out_shape=...)``), the call torchgeo's ``BigEarthNetV2`` makes,
so both give identical pixels; 10 m bands and Sentinel-1 are copied unchanged (S1 keeps its
float dB values). Scene labels become 19-class multi-hot vectors; reference maps (CLC codes)
become class-index masks with :data:`~geofm.io.schema.MASK_IGNORE` for codes outside the
nomenclature. reBEN's own split is kept both as ``source_split`` and as the initial ``split``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import pandas as pd
from pyproj import Transformer
from rasterio.enums import Resampling
from shapely.geometry import Polygon

from geofm.bands import BAND_SETS
from geofm.builders.reben_classes import CLASS_COLORS, CLASS_NAMES, clc_lookup
from geofm.builders.runner import check_engine, run_regions
from geofm.errors import BuildError, GeofmError
from geofm.io.raster import BandRead, read_band
from geofm.io.schema import MASK_IGNORE, SHARD_CHIPS
from geofm.io.writer import StoreSpec, completed_regions, create_store, finalize_store, write_region
from geofm.levels import BUILDER_LEVELS

S2_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
S1_BANDS = ("VV", "VH")
CHIP = 120
METADATA_COLUMNS = ("patch_id", "labels", "split", "country", "s1_name",
                    "contains_seasonal_snow", "contains_cloud_or_shadow")
_SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "test": "test"}


@dataclass(frozen=True)
class PatchPaths:
    """Files of one reBEN patch pair."""

    patch_id: str
    s2: tuple[Path, ...]
    s1: tuple[Path, ...]
    reference_map: Path | None


def patch_paths(root: Path, patch_id: str, s1_name: str) -> PatchPaths:
    """Locate a patch pair's files in the reBEN layout."""
    s2_dir = root / "BigEarthNet-S2" / "_".join(patch_id.split("_")[:-2]) / patch_id
    s1_dir = root / "BigEarthNet-S1" / "_".join(s1_name.split("_")[:-3]) / s1_name
    ref = root / "Reference_Maps" / "_".join(patch_id.split("_")[:-2]) / patch_id / \
        f"{patch_id}_reference_map.tif"
    return PatchPaths(
        patch_id=patch_id,
        s2=tuple(s2_dir / f"{patch_id}_{b}.tif" for b in S2_BANDS),
        s1=tuple(s1_dir / f"{s1_name}_{b}.tif" for b in S1_BANDS),
        reference_map=ref if (root / "Reference_Maps").is_dir() else None,
    )


def read_metadata(root: Path) -> pd.DataFrame:
    """reBEN's ``metadata.parquet``, sorted by patch id, checked for the expected columns."""
    meta_path = root / "metadata.parquet"
    if not root.is_dir():
        raise BuildError("source directory not found", root, "pass the reBEN root directory")
    if not meta_path.exists():
        raise BuildError("metadata.parquet missing", meta_path,
                         "pass the reBEN root (the folder holding metadata.parquet)")
    try:
        meta = pd.read_parquet(meta_path)
    except Exception as e:
        raise BuildError(f"cannot read parquet ({str(e).splitlines()[0]})", meta_path) from None
    missing = [c for c in METADATA_COLUMNS if c not in meta.columns]
    if missing:
        raise BuildError(f"missing columns {missing} (have {list(meta.columns)})", meta_path,
                         "use reBEN's metadata.parquet")
    if meta.empty:
        raise BuildError("holds no patches", meta_path)
    return meta.sort_values("patch_id", kind="stable").reset_index(drop=True)


def _check_files(root: Path, meta: pd.DataFrame) -> list[PatchPaths]:
    """Every patch's files, checked for existence before anything is written."""
    out = []
    for row in meta.itertuples():
        p = patch_paths(root, row.patch_id, row.s1_name)
        for f in (*p.s2, *p.s1):
            if not f.exists():
                raise BuildError(f"band file missing for patch {row.patch_id}", f,
                                 "the download is incomplete; restore the file or drop the patch")
        if p.reference_map is not None and not p.reference_map.exists():
            raise BuildError(f"reference map missing for patch {row.patch_id}", p.reference_map)
        out.append(p)
    return out


def fingerprint(root: Path, meta: pd.DataFrame) -> str:
    """Hash of the inputs and the builder's parameters; a resumed build must match it."""
    h = hashlib.sha256()
    h.update((root / "metadata.parquet").read_bytes())
    h.update(json.dumps({"builder": "reben", "version": 1, "chip": CHIP, "s2": S2_BANDS,
                         "s1": S1_BANDS, "resampling": "bilinear"}).encode())
    return h.hexdigest()[:16]


def _footprint(read: BandRead, to_wgs84: Transformer) -> tuple[Polygon, float, float, float, float]:
    """EPSG:4326 footprint (edges densified) and centroid, plus the native centroid."""
    t = read.transform
    h, w = read.data.shape
    xs = np.concatenate([np.linspace(0, w, 9), np.full(9, w), np.linspace(w, 0, 9), np.zeros(9)])
    ys = np.concatenate([np.zeros(9), np.linspace(0, h, 9), np.full(9, h), np.linspace(h, 0, 9)])
    ex, ey = cast(Any, t) @ (xs, ys)  # affine maps arrays; its annotations say floats
    lon, lat = to_wgs84.transform(ex, ey)
    cx, cy = t @ (w / 2, h / 2)
    clon, clat = to_wgs84.transform(cx, cy)
    return Polygon(zip(lon, lat)), float(clon), float(clat), float(cx), float(cy)


def _same_grid(a: BandRead, b: BandRead) -> bool:
    return a.crs == b.crs and a.data.shape == b.data.shape and \
        np.allclose(tuple(a.transform)[:6], tuple(b.transform)[:6], atol=1e-6)


def read_patch(
    p: PatchPaths, row: pd.Series, lookup: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Read one patch pair: ``[14, 120, 120]`` float32 image, mask and chip-table row."""
    s2 = [read_band(f, out_shape=(CHIP, CHIP), resampling=Resampling.bilinear) for f in p.s2]
    ref10 = s2[S2_BANDS.index("B02")]
    if ref10.crs is None:
        raise BuildError(f"Sentinel-2 patch {p.patch_id} has no CRS", p.s2[0],
                         "use the georeferenced BigEarthNet v2 (reBEN) GeoTIFFs")
    s1 = [read_band(f) for f in p.s1]
    for f, r in zip(p.s1, s1):
        if r.data.shape != (CHIP, CHIP):
            raise BuildError(f"Sentinel-1 band is {r.data.shape[1]}×{r.data.shape[0]} px, "
                             f"expected {CHIP}×{CHIP}", f, "check the S1/S2 pairing")
        if r.crs != ref10.crs or not np.allclose(tuple(r.transform)[:6],
                                                  tuple(ref10.transform)[:6], atol=1.0):
            raise BuildError(f"Sentinel-1 patch does not cover Sentinel-2 patch {p.patch_id} "
                             f"(CRS or transform differ)", f,
                             "check metadata.parquet's s1_name for this patch")
    image = np.stack([r.data.astype(np.float32) for r in (*s2, *s1)])  # [14, H, W]
    mask = None
    placeholder = False
    if p.reference_map is not None:
        ref = read_band(p.reference_map)
        if not _same_grid(ref, ref10):
            raise BuildError(f"reference map grid differs from the 10 m bands of {p.patch_id}",
                             p.reference_map)
        mask = lookup[np.clip(ref.data.astype(np.int64), 0, 999)]
        placeholder = ref.tags.get("PLACEHOLDER", "").upper() == "YES"
    tile_field = p.patch_id.split("_")[-3]
    sensing = p.patch_id.split("_")[2]
    to_wgs84 = Transformer.from_crs(ref10.crs, "EPSG:4326", always_xy=True)
    geom, clon, clat, cx, cy = _footprint(ref10, to_wgs84)
    out_row = {
        "chip_id": p.patch_id,
        "geometry": geom,
        "centroid_lon": clon,
        "centroid_lat": clat,
        "crs": ref10.crs.to_string(),
        "transform": list(tuple(ref10.transform)[:6]),
        "native_x": cx,
        "native_y": cy,
        "time": pd.Timestamp(sensing, tz="UTC"),
        "source": "reben",
        "tile": tile_field[1:] if tile_field.startswith("T") else tile_field,
        "country": row["country"],
        "s1_name": row["s1_name"],
        "labels": list(row["labels"]),
        "source_split": _SPLIT_NAMES.get(str(row["split"]), str(row["split"])),
        "split": _SPLIT_NAMES.get(str(row["split"]), ""),
        "snow": bool(row["contains_seasonal_snow"]),
        "cloud_or_shadow": bool(row["contains_cloud_or_shadow"]),
        "mask_placeholder": placeholder,
    }
    return image, mask, out_row


@dataclass
class _RegionTask:
    """Picklable Dask task writing one region of the store."""

    root: Path
    out: Path
    meta: pd.DataFrame
    paths: list[PatchPaths]
    shard_chips: int
    has_mask: bool

    def __call__(self, region: int) -> None:
        lookup = clc_lookup(MASK_IGNORE)
        index = {n: i for i, n in enumerate(CLASS_NAMES)}
        start = region * self.shard_chips
        stop = min(start + self.shard_chips, len(self.paths))
        images, masks, rows, labels = [], [], [], []
        for i in range(start, stop):
            row = self.meta.iloc[i]
            image, mask, out_row = read_patch(self.paths[i], row, lookup)
            unknown = [name for name in row["labels"] if name not in index]
            if unknown:
                raise BuildError(f"patch {row['patch_id']} has labels outside the 19-class "
                                 f"nomenclature: {unknown}", self.root / "metadata.parquet")
            hot = np.zeros(len(CLASS_NAMES), np.uint8)
            hot[[index[name] for name in row["labels"]]] = 1
            images.append(image)
            masks.append(mask)
            rows.append(out_row)
            labels.append(hot)
        write_region(
            self.out, region, np.stack(images),
            gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326"),
            label=np.stack(labels),
            mask=np.stack(cast(list[np.ndarray], masks)) if self.has_mask else None,
        )


def build_reben(
    src: str | Path,
    out: str | Path,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    shard_chips: int = SHARD_CHIPS,
    limit: int | None = None,
    progress: bool = True,
) -> Path:
    """Build a chip store from a reBEN release (or any subset in its layout).

    Args:
        src: reBEN root (holding ``metadata.parquet``).
        out: Output ``.zarr`` path; an unfinished build of the same inputs there is resumed.
        scheduler: Dask scheduler (see :func:`geofm.builders.runner.run_regions`).
        workers: Local worker processes.
        shard_chips: Chips per shard (and per build task).
        limit: Build only the first ``limit`` patches (by patch id).
        progress: Show a progress bar.

    Returns:
        The finished store's path.
    """
    root, out = Path(src), Path(out)
    check_engine(scheduler, workers)
    if limit is not None and limit < 1:
        raise GeofmError(f"--limit must be at least 1 (got {limit})",
                         hint="give the number of patches to build, or leave it out for all")
    meta = read_metadata(root)
    if limit is not None:
        meta = meta.iloc[:limit].reset_index(drop=True)
    paths = _check_files(root, meta)
    has_mask = paths[0].reference_map is not None
    spec = StoreSpec(
        num_chips=len(meta),
        bands=list(BAND_SETS["s1s2"]),
        chip_size=(CHIP, CHIP),
        dtype="float32",
        classes=list(CLASS_NAMES),
        class_colors=list(CLASS_COLORS),
        has_label=True,
        has_mask=has_mask,
        gsd_m=10.0,
        provenance={"builder": "reben", "source": str(root.resolve()),
                    "resampling": "bilinear (GDAL) for 20 m and 60 m bands onto the 10 m grid"},
        fingerprint=fingerprint(root, meta) + (f"-limit{limit}" if limit else ""),
        shard_chips=shard_chips,
    )
    create_store(out, spec)
    todo = sorted(set(range(spec.num_regions)) - completed_regions(out))
    task = _RegionTask(root, out, meta, paths, shard_chips, has_mask)
    run_regions(task, todo, scheduler=scheduler, workers=workers, desc="reben", progress=progress,
                output=out)
    finalize_store(out, {"split": {"method": "reben-official",
                                   "params": {"source": "metadata.parquet split column"}},
                         "processing_levels": BUILDER_LEVELS["reben"]})
    return out
