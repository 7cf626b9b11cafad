"""OpticalRS-13M-style pretraining pool → chip store: exclusion, slicing and deduplication.

SelectiveMAE's OpticalRS-13M (arXiv 2406.11933) gathers 13.2 M optical images from public
remote-sensing datasets and makes them a pretraining set by exclusion, slicing and deduplication.
:func:`build_opticalrs` runs that pipeline over a manifest of sources::

    sources:
      - name: million_aid          # letters, digits, '_', '.', '-'; the chip table's ``source``
        path: /data/MillionAID     # a folder (searched recursively for image files) or a list of
                                   # files, folders and globs; relative to the manifest's folder
        role: pretrain             # pretrain: chips go to the store; eval: only guards leakage
        licence: CC-BY-4.0
        gsd_m: 0.5                 # optional, metres per pixel
        bands: [B04, B03, B02]     # optional: red, green, blue by description or 1-based index
        sensor: S2                 # optional: the band-registry sensor naming the bands
        stretch: [0, 3000]         # optional, images that are not 8-bit: fixed range or
                                   # ``percentile`` (the default)

Image files are ``.tif .tiff .png .jpg .jpeg .jp2 .bmp .webp``; all are decoded with GDAL
(rasterio), so GeoTIFFs keep their georeferencing. Every image gets one outcome, the first that
applies (:data:`REASONS`): ``unreadable`` (GDAL cannot decode it), ``no_rgb``, ``too_small``
(shorter side below ``min_size``; pretrain sources only), ``mostly_nodata`` (more than
``max_nodata`` of its pixels), ``near_constant`` (largest per-band standard deviation below
``min_std`` on the 0–255 scale), then ``eval_duplicate``, ``exact_duplicate`` or
``near_duplicate`` from deduplication; otherwise it is ``kept`` (pretrain) or ``eval``.

Choices:

* **RGB.** In order: the source's ``bands``; band descriptions naming ``red``/``green``/``blue``;
  band descriptions that are band names of exactly one registry sensor with those common names
  (``B04, B03, B02`` → Sentinel-2; ``sensor`` settles ties such as MODIS against Sentinel-2);
  GDAL's colour interpretation (PNG, JPEG and RGB TIFFs); the three bands of a 3-band 8-bit
  image. Otherwise ``no_rgb``. The store's bands are ``rgb`` (``RGB.R``, ``RGB.G``, ``RGB.B``).
* **8-bit.** 8-bit images are stored as they are. Other dtypes (Sentinel-2's reflectance × 10⁴,
  16-bit aerial imagery, floats) are stretched linearly to 0–255 and rounded: with the source's
  fixed ``stretch: [lo, hi]``, or by default between the 2nd and 98th percentile of the image's
  valid red, green and blue values together (one range for the three bands keeps the colour
  balance; percentiles of the preview, see below).
* **Nodata.** A pixel is nodata where all three bands equal the declared nodata value, where the
  alpha band is 0, or, for images declaring neither, where all three are 0 (the black fill of
  rotated or clipped scenes); nodata pixels are stored as 0. Floats' NaN are nodata too.
* **Slicing.** Chips of ``chip`` × ``chip`` px every ``chip - overlap`` px from the top-left
  corner; when the strip left over at the right or bottom edge is wider than half a chip, one more
  chip aligned with that edge covers it, narrower strips are left out. Images whose shorter side
  lies between ``min_size`` (default half a chip) and the chip are upsampled (bilinear) so that
  side equals the chip, keeping the aspect ratio, and then sliced the same way. Chips that are
  mostly nodata or near-constant by the image rules are left out (counted in the report).
* **Deduplication** is per source image, across all sources (:mod:`geofm.curation.dedup`): exact
  duplicates share the SHA-1 of their 8-bit RGB pixels, near duplicates are within
  ``hash_radius`` bits of 64-bit perceptual hash (default 4: re-encoding and rescaling of the
  real test scenes move 0 bits, different scenes 16 or more; at 13 M evenly spread hashes it
  leaves about 3 chance pairs). Clusters are connected components. A cluster holding an eval image
  sends all its pretrain images to ``eval_duplicate``; otherwise it keeps the largest image (most
  pixels), then the first by ``source/path``. Crops of one image inside another are not detected.
* **Reading.** Images of up to 2048 × 2048 px (4.2 MP) are decoded once, whole. Larger ones are
  read twice, so memory stays bounded: a preview decimated by GDAL (``average``) to 512 px on the
  longer side, then every pixel in strips one chip high for the SHA-1 and the per-chip tests. The
  percentile stretch and the image-level nodata and contrast tests use at most 512 × 512 px of the
  image (every k-th pixel, or the preview); the perceptual hash uses the image or the preview.
* **Chip table.** ``chip_id`` is ``source/relative path/row/col`` (pixel offsets in the possibly
  upsampled image). Georeferenced images give EPSG:4326 footprints, native CRS, transform and
  centre; others have a null geometry, NaN centroid and centre, and null ``crs``/``transform``.
  ``time`` and ``tile`` are null, ``split`` is ``train``; extra columns ``licence``,
  ``image_path``, ``image_row``, ``image_col``, ``image_scale``, ``gsd_m``, ``image_sha1``.
* **Report.** ``report.json`` (counts per source and reason, every duplicate cluster, unreadable
  files), ``report.md`` and ``images.parquet`` (one row per image: outcome, hashes, cluster) are
  written inside the store just before it is marked complete. ``geofm build opticalrs`` names
  the first unreadable image in a warning line; a build left with no chip fails with a line
  that counts the outcomes and names the first unreadable image.

Scale: the driver lists files and fingerprints them (manifest, names, sizes, mtimes); Dask tasks
decode and hash batches of images into ``<out>.scan/`` (one parquet per batch); the driver
deduplicates the hashes (a few bytes per image); Dask tasks write shard-aligned regions of chips
with the writer's markers. A rerun after a crash reuses finished batches and regions and gives the
same store; ``<out>.scan`` is removed once the store is complete.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from affine import Affine
from pyproj import Transformer
from rasterio.errors import RasterioError
from rasterio.windows import Window
from shapely.geometry import Polygon

from geofm.bands import BAND_SETS
from geofm.builders.opticalrs_manifest import (
    PREVIEW_PX,
    STRIP_ROWS,
    WHOLE_PIXELS,
    Params,
    Source,
    fingerprint,
    list_images,
)
from geofm.builders.opticalrs_pixels import (
    _Excluded,
    _Layout,
    _layout,
    _open,
    _PixelDigest,
    _quality,
    _read_raw,
    _resize,
    _stretch_of,
    _to_u8,
    chip_offsets,
    grid_shape,
)
from geofm.builders.opticalrs_report import _write_parquet_atomic, _write_report, build_report
from geofm.builders.runner import check_engine, close_quietly, run_regions, start_local_cluster
from geofm.curation.dedup import cluster_labels, duplicate_edges, hamming, phash64
from geofm.errors import BuildError, StoreError
from geofm.io.schema import SHARD_CHIPS
from geofm.io.space import reporting_full_disk
from geofm.io.writer import (
    StoreSpec,
    check_store_output,
    completed_regions,
    create_store,
    finalize_store,
    write_region,
)

# ---------------------------------------------------------------------------------------------
# Scan: decode, test, hash and lay out chips (one Dask task per batch of images)


def _empty_record() -> dict[str, Any]:
    return {"status": "ok", "detail": "", "width": 0, "height": 0, "bands": "", "lo": np.nan,
            "hi": np.nan, "nodata": np.nan, "std": np.nan, "sha1": "", "phash": 0,
            "grid_h": 0, "grid_w": 0, "chip_y": [], "chip_x": [], "chip_status": []}


def _strip_chips(u8: np.ndarray, valid: np.ndarray, xs: list[int], params: Params) -> list[str]:
    c = params.chip
    return [_quality(u8[:, x:x + c], valid[:, x:x + c], params)[0] for x in xs]


def _scan_pixels(ds: Any, layout: _Layout, stretch: tuple[float, float] | None,
                 full: tuple[np.ndarray, np.ndarray] | None, pretrain: bool,
                 params: Params, rec: dict[str, Any]) -> None:
    """SHA-1 over every pixel and, for pretrain images, the chip grid and per-chip tests."""
    h, w = ds.height, ds.width
    digest = _PixelDigest(h, w)
    gh, gw = grid_shape(h, w, params.chip) if pretrain else (h, w)
    ys, xs = chip_offsets(gh, params.chip, params.overlap), chip_offsets(gw, params.chip,
                                                                         params.overlap)
    chips: list[tuple[int, int, str]] = []
    if full is None and (gh, gw) != (h, w):
        full = _read_u8(ds, layout, stretch)
    if full is not None:
        digest.update(0, full[0])
        grid = full if (gh, gw) == (h, w) else _resize(*full, (gh, gw))
        if pretrain:
            for y in ys:
                rows = (grid[0][y:y + params.chip], grid[1][y:y + params.chip])
                chips += [(y, x, s) for x, s in zip(xs, _strip_chips(*rows, xs, params))]
    else:
        for y in ys if pretrain else []:
            u8, ok = _read_u8(ds, layout, stretch, Window(0, y, w, params.chip))
            digest.update(y, u8)
            chips += [(y, x, s) for x, s in zip(xs, _strip_chips(u8, ok, xs, params))]
        for y in range(digest.rows, h, STRIP_ROWS):
            digest.update(y, _read_u8(ds, layout, stretch,
                                      Window(0, y, w, min(STRIP_ROWS, h - y)))[0])
    rec.update(sha1=digest.hexdigest(), grid_h=gh, grid_w=gw,
               chip_y=[c[0] for c in chips], chip_x=[c[1] for c in chips],
               chip_status=[c[2] for c in chips])


def _read_u8(ds: Any, layout: _Layout, stretch: tuple[float, float] | None,
             window: Window | None = None) -> tuple[np.ndarray, np.ndarray]:
    rgb, valid = _read_raw(ds, layout, window)
    return _to_u8(rgb, valid, stretch), valid


def _scan_dataset(ds: Any, source: Source, params: Params, rec: dict[str, Any]) -> None:
    layout = _layout(ds, source)
    h, w = ds.height, ds.width
    rec.update(width=w, height=h, bands=",".join(map(str, layout.bands)))
    pretrain = source.role == "pretrain"
    if pretrain and min(h, w) < params.min_size:
        raise _Excluded("too_small", f"{w}×{h} px")
    whole = h * w <= WHOLE_PIXELS
    scale = PREVIEW_PX / max(h, w)
    shape = None if whole else (max(1, round(h * scale)), max(1, round(w * scale)))
    rgb, valid = _read_raw(ds, layout, out_shape=shape)  # the whole image or a preview
    step = -(-max(rgb.shape[1:]) // PREVIEW_PX)  # stretch and tests from at most 512 × 512 px
    stretch = _stretch_of(layout, source, rgb[:, ::step, ::step], valid[::step, ::step])
    preview = _to_u8(rgb, valid, stretch)
    reason, nodata, std = _quality(preview[::step, ::step], valid[::step, ::step], params)
    rec.update(lo=stretch[0] if stretch else np.nan, hi=stretch[1] if stretch else np.nan,
               nodata=nodata, std=std)
    if reason != "ok":
        raise _Excluded(reason, f"nodata {nodata:.2f}, std {std:.2f}")
    rec["phash"] = phash64(preview)
    _scan_pixels(ds, layout, stretch, (preview, valid) if whole else None, pretrain, params, rec)
    rec["status"] = "ok" if pretrain else "eval"


def _unreadable_detail(path: str | Path, e: BaseException) -> str:
    """Why GDAL could not decode ``path``, in a few words that do not repeat the path."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
    except OSError:
        pass
    cause = e.__cause__ or e  # rasterio's "Read failed" wraps GDAL's message
    text = (str(cause).splitlines() or [""])[0] or type(cause).__name__
    return text.replace(f"'{path}' ", "").replace(f"{path}: ", "")


def scan_image(path: str | Path, source: Source, params: Params) -> dict[str, Any]:
    """Decode one image, test it, hash it and lay out its chips.

    Returns:
        A record: ``status`` (``ok``, ``eval`` or a reason), ``detail``, size, bands, stretch,
        nodata fraction, contrast, ``sha1``, ``phash``, the chip grid's size and the chips'
        ``chip_y``, ``chip_x`` and ``chip_status``.
    """
    rec = _empty_record()
    try:
        with _open(path) as ds:
            _scan_dataset(ds, source, params, rec)
    except _Excluded as e:
        rec.update(status=e.reason, detail=e.detail)
    except (RasterioError, OSError) as e:
        rec.update(status="unreadable", detail=_unreadable_detail(path, e))
    if rec["status"] not in ("ok", "eval"):
        rec.update(sha1="", phash=0, chip_y=[], chip_x=[], chip_status=[])
    return rec


_SCAN_SCHEMA = pa.schema([
    ("image", pa.int64()), ("status", pa.string()), ("detail", pa.string()),
    ("width", pa.int64()), ("height", pa.int64()), ("bands", pa.string()),
    ("lo", pa.float64()), ("hi", pa.float64()), ("nodata", pa.float64()), ("std", pa.float64()),
    ("sha1", pa.string()), ("phash", pa.uint64()), ("grid_h", pa.int64()), ("grid_w", pa.int64()),
    ("chip_y", pa.list_(pa.int32())), ("chip_x", pa.list_(pa.int32())),
    ("chip_status", pa.list_(pa.string())),
])




@dataclass
class _ScanTask:
    """Picklable Dask task scanning one batch of images into ``batch-NNNNNN.parquet``."""

    scan_dir: Path
    sources: dict[str, Source]
    params: Params

    def __call__(self, batch: int) -> None:
        files = pq.ParquetFile(self.scan_dir / "files.parquet").read_row_group(batch).to_pandas()
        records = []
        for row in files.itertuples():
            rec = scan_image(row.path, self.sources[row.source], self.params)
            records.append({"image": row.image, **rec})
        table = pa.Table.from_pylist(records, schema=_SCAN_SCHEMA)
        _write_parquet_atomic(table, self.scan_dir / f"batch-{batch:06d}.parquet")


# ---------------------------------------------------------------------------------------------
# Dedup and outcomes (driver)


def _cluster_members(images: pd.DataFrame, radius: int) -> pd.DataFrame:
    """Hashed images in clusters of two or more: ``cluster`` and anchor first within each.

    Sorted by cluster, then eval images first, most pixels, ``source/path``: the first row of a
    cluster is its anchor, the image kept or, for clusters with eval images, the largest of those.
    """
    hashed = images[images["status"].isin(["ok", "eval"])]
    if hashed.empty:
        return hashed
    phash = hashed["phash"].to_numpy(np.uint64)
    labels = cluster_labels(len(hashed), duplicate_edges(phash, radius, hashed["sha1"].to_numpy()))
    df = hashed.assign(cluster=labels, key=hashed["source"] + "/" + hashed["relpath"],
                       pixels=hashed["width"] * hashed["height"],
                       is_eval=hashed["status"].eq("eval"))
    df = df[df.groupby("cluster")["cluster"].transform("size") > 1]
    df = df.assign(cluster=df["cluster"].rank(method="dense").astype(np.int64) - 1)
    return df.sort_values(["cluster", "is_eval", "pixels", "key"],
                          ascending=[True, False, False, True], kind="stable")


def _decide(images: pd.DataFrame, radius: int) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Every image's ``outcome``, ``cluster`` (-1: none) and ``distance`` to its cluster's anchor
    (bits), and the clusters for the report."""
    out = images[["image"]].assign(outcome=images["status"].replace("ok", "kept"), cluster=-1,
                                   distance=-1)
    members = _cluster_members(images, radius)
    if members.empty:
        return out.drop(columns="image"), []
    first = members.groupby("cluster")
    anchor_hash = first["phash"].transform("first").to_numpy(np.uint64)
    anchor_eval = first["is_eval"].transform("first").to_numpy(bool)
    is_anchor = ~members["cluster"].duplicated().to_numpy()
    same = (members["sha1"] == first["sha1"].transform("first")).to_numpy()
    outcome = np.select(
        [anchor_eval & members["is_eval"].to_numpy(), anchor_eval, is_anchor, same],
        ["eval", "eval_duplicate", "kept", "exact_duplicate"], "near_duplicate")
    distance = hamming(members["phash"].to_numpy(np.uint64), anchor_hash).astype(np.int64)
    out.loc[members.index, ["outcome", "cluster", "distance"]] = \
        pd.DataFrame({"outcome": outcome, "cluster": members["cluster"].to_numpy(),
                      "distance": distance}, index=members.index)
    table = members.assign(outcome=outcome, distance=distance).sort_values(
        ["cluster", "image"], kind="stable")
    return out.drop(columns="image"), _cluster_list(table)


def _cluster_list(table: pd.DataFrame) -> list[dict[str, Any]]:
    """Clusters for the report from members sorted by cluster, then image."""
    keys, outcomes = table["key"].tolist(), table["outcome"].tolist()
    distances, evals = table["distance"].tolist(), table["is_eval"].tolist()
    bounds = [0, *(np.flatnonzero(np.diff(table["cluster"].to_numpy())) + 1).tolist(), len(table)]
    clusters = []
    for number, (start, stop) in enumerate(pairwise(bounds)):
        kept = [keys[i] for i in range(start, stop) if outcomes[i] == "kept"]
        clusters.append({
            "cluster": number, "kept": kept[0] if kept else None,
            "eval": any(evals[start:stop]),
            "members": [{"image": keys[i], "outcome": outcomes[i], "distance": distances[i]}
                        for i in range(start, stop)],
        })
    return clusters


# ---------------------------------------------------------------------------------------------
# Writing chips (one Dask task per shard-aligned region)


def _footprint(t: Affine, chip: int, to_wgs84: Transformer) -> tuple[Polygon, float, float,
                                                                      float, float]:
    """EPSG:4326 footprint (edges densified), centroid, and the native centre."""
    side = np.linspace(0, chip, 9)
    xs = np.concatenate([side, np.full(9, chip), side[::-1], np.zeros(9)])
    ys = np.concatenate([np.zeros(9), side, np.full(9, chip), side[::-1]])
    ex, ey = cast(Any, t) @ (xs, ys)  # affine maps arrays; its annotations say floats
    lon, lat = to_wgs84.transform(ex, ey)
    cx, cy = t @ (chip / 2, chip / 2)
    clon, clat = to_wgs84.transform(cx, cy)
    return Polygon(zip(lon, lat)), float(clon), float(clat), float(cx), float(cy)


def _geo(ds: Any) -> tuple[Any, Transformer] | None:
    if ds.crs is None or ds.transform.is_identity:
        return None
    return ds.crs, Transformer.from_crs(ds.crs, "EPSG:4326", always_xy=True)


def _chip_rows(ds: Any, group: pd.DataFrame, source: Source, params: Params) -> list[dict]:
    """Chip-table rows of one image's chips in ``group``."""
    geo = _geo(ds)
    first = group.iloc[0]
    sx, sy = ds.width / first.grid_w, ds.height / first.grid_h
    scale = min(first.grid_h, first.grid_w) / min(ds.height, ds.width)
    rows = []
    for r in group.itertuples():
        t = ds.transform @ Affine.scale(sx, sy) @ Affine.translation(r.x, r.y)
        row: dict[str, Any] = {
            "chip_id": f"{source.name}/{r.relpath}/{r.y}/{r.x}", "geometry": None,
            "centroid_lon": np.nan, "centroid_lat": np.nan, "crs": None, "transform": None,
            "native_x": np.nan, "native_y": np.nan}
        gsd = source.gsd_m / scale if source.gsd_m else np.nan
        if geo is not None:
            poly, clon, clat, cx, cy = _footprint(t, params.chip, geo[1])
            row.update(geometry=poly, centroid_lon=clon, centroid_lat=clat,
                       crs=geo[0].to_string(), transform=list(tuple(t)[:6]), native_x=cx,
                       native_y=cy)
            if np.isnan(gsd) and geo[0].is_projected and geo[0].linear_units_factor[1] == 1.0:
                gsd = abs(t.a)
        row.update(time=pd.NaT, source=source.name, tile=None, split="train",
                   licence=source.licence, image_path=r.path, image_row=int(r.y),
                   image_col=int(r.x), image_scale=float(scale), gsd_m=float(gsd),
                   image_sha1=r.sha1)
        rows.append(row)
    return rows


def _chip_pixels(ds: Any, group: pd.DataFrame, source: Source, params: Params) -> np.ndarray:
    """``[n, 3, chip, chip]`` uint8 pixels of one image's chips, as the scan saw them."""
    layout = _layout(ds, source)
    first = group.iloc[0]
    stretch = None if np.isnan(first.lo) else (float(first.lo), float(first.hi))
    c = params.chip
    out = np.empty((len(group), 3, c, c), np.uint8)
    if (first.grid_h, first.grid_w) != (ds.height, ds.width):
        u8, _ = _resize(*_read_u8(ds, layout, stretch), (first.grid_h, first.grid_w))
        for k, r in enumerate(group.itertuples()):
            out[k] = u8[r.y:r.y + c, r.x:r.x + c].transpose(2, 0, 1)
        return out
    ys = group["y"].to_numpy()
    xs = group["x"].to_numpy()
    for y in np.unique(ys):
        sel = np.flatnonzero(ys == y)
        x0, x1 = int(xs[sel].min()), int(xs[sel].max()) + c
        u8, _ = _read_u8(ds, layout, stretch, Window(x0, int(y), x1 - x0, c))
        for j in sel:
            out[j] = u8[:, xs[j] - x0:xs[j] - x0 + c].transpose(2, 0, 1)
    return out


@dataclass
class _ChipTask:
    """Picklable Dask task writing one shard-aligned region of chips."""

    out: Path
    scan_dir: Path
    sources: dict[str, Source]
    params: Params

    def __call__(self, region: int) -> None:
        plan = pq.ParquetFile(self.scan_dir / "plan.parquet").read_row_group(region).to_pandas()
        pixels, rows = [], []
        for _, group in plan.groupby("image", sort=False):
            source = self.sources[group["source"].iloc[0]]
            path = group["path"].iloc[0]
            try:
                with _open(path) as ds:
                    pixels.append(_chip_pixels(ds, group, source, self.params))
                    rows.extend(_chip_rows(ds, group, source, self.params))
            except (RasterioError, OSError, _Excluded) as e:
                raise BuildError(f"cannot read the image again ({e})", path,
                                 "the file changed since it was scanned; rerun the build") from None
        table = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
        table["time"] = pd.Series(pd.NaT, index=table.index, dtype="datetime64[ns, UTC]")
        write_region(self.out, region, np.concatenate(pixels), table)


# ---------------------------------------------------------------------------------------------
# The build


class _Engine:
    """The Dask scheduler of both stages: one local cluster, started on first use, or the given
    scheduler."""

    def __init__(self, scheduler: str | None, workers: int | None, output: Path):
        check_engine(scheduler, workers)
        self.scheduler, self.workers, self.output = scheduler, workers, output
        self._cluster: Any = None

    def run(self, task: Any, regions: list[int], desc: str, progress: bool) -> None:
        if not regions:
            return
        address = self.scheduler
        if address is None:
            if self._cluster is None:
                self._cluster = start_local_cluster(self.workers)
            address = self._cluster.scheduler_address
        run_regions(task, regions, scheduler=address, desc=desc, progress=progress,
                    output=self.output)

    def close(self) -> None:
        if self._cluster is not None:
            cluster, self._cluster = self._cluster, None
            close_quietly(cluster)


def _dropped_summary(images: pd.DataFrame) -> str:
    """``'3 images: 2 unreadable (first /a/x.tif: empty file (0 bytes)), 1 too_small'``."""
    counts = images["outcome"].value_counts()
    parts = [f"{n} {reason}" for reason, n in counts.items()]
    bad = images[images["outcome"] == "unreadable"]
    if not bad.empty:
        first = bad.iloc[0]
        k = parts.index(f"{counts['unreadable']} unreadable")
        parts[k] += f" (first {first['path']}: {first['detail']})"
    n = len(images)
    return f"{n} image{'' if n == 1 else 's'}: " + ", ".join(parts)


def _check_output(out: Path, scan_dir: Path, fp: str) -> None:
    """Refuse an output or scan folder that holds something other than this build."""
    check_store_output(out, fp)
    marker = scan_dir / "fingerprint"
    stale = marker.read_text() != fp if marker.exists() else \
        scan_dir.exists() and any(scan_dir.iterdir())
    if stale:
        raise StoreError("holds a scan of different inputs", scan_dir,
                         "delete it or pass --overwrite")


def _prepare_scan(scan_dir: Path, files: pd.DataFrame, fp: str, params: Params) -> list[int]:
    """Create the scan folder and its file list; return the batches still to scan."""
    scan_dir.mkdir(parents=True, exist_ok=True)
    marker = scan_dir / "fingerprint"
    if not marker.exists():
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(fp)
        os.replace(tmp, marker)
    table = pa.Table.from_pandas(files[["image", "source", "path"]], preserve_index=False)
    _write_parquet_atomic(table, scan_dir / "files.parquet", row_group_size=params.batch_images)
    batches = -(-len(files) // params.batch_images)
    if pq.ParquetFile(scan_dir / "files.parquet").num_row_groups != batches:
        raise RuntimeError(f"{scan_dir / 'files.parquet'}: row groups are not batches of "
                           f"{params.batch_images} images")
    return [b for b in range(batches) if not (scan_dir / f"batch-{b:06d}.parquet").exists()]


def _load_scan(scan_dir: Path, files: pd.DataFrame, params: Params) -> tuple[pd.DataFrame,
                                                                               pd.DataFrame]:
    """Images (one row each, with the file list's columns) and chips (one row per chip)."""
    batches = -(-len(files) // params.batch_images)
    table = pa.concat_tables([pq.read_table(scan_dir / f"batch-{b:06d}.parquet")
                              for b in range(batches)])
    counts = pc.list_value_length(table["chip_y"]).to_numpy(zero_copy_only=False)
    chips = pd.DataFrame({
        "image": np.repeat(table["image"].to_numpy(), counts),
        "y": pc.list_flatten(table["chip_y"]).to_numpy(),
        "x": pc.list_flatten(table["chip_x"]).to_numpy(),
        "chip_status": pc.list_flatten(table["chip_status"]).to_numpy(
            zero_copy_only=False),
    })
    images = table.drop(["chip_y", "chip_x", "chip_status"]).to_pandas()
    return files.merge(images, on="image", how="left", validate="one_to_one"), chips


def _plan(images: pd.DataFrame, chips: pd.DataFrame) -> pd.DataFrame:
    """The store's chips in order: kept images in build order, chips row-major."""
    kept = images[images["outcome"] == "kept"]
    columns = ["image", "source", "relpath", "path", "lo", "hi", "grid_h", "grid_w", "sha1"]
    ok = chips.loc[chips["chip_status"] == "ok", ["image", "y", "x"]]
    plan = ok.merge(kept[columns], on="image", how="inner")
    return plan.sort_values(["image", "y", "x"], kind="stable").reset_index(drop=True)


def build_opticalrs(
    manifest: str | Path,
    out: str | Path,
    *,
    chip: int = 224,
    overlap: int = 0,
    hash_radius: int = 4,
    min_size: int | None = None,
    min_std: float = 2.0,
    max_nodata: float = 0.5,
    scheduler: str | None = None,
    workers: int | None = None,
    batch_images: int = 256,
    shard_chips: int = SHARD_CHIPS,
    progress: bool = True,
) -> Path:
    """Build an RGB pretraining chip store from a manifest of image collections.

    Args:
        manifest: YAML manifest (see the module doc).
        out: Output ``.zarr`` path; an unfinished build of the same inputs there is resumed.
        chip: Chip side in pixels.
        overlap: Pixels shared by neighbouring chips.
        hash_radius: Largest perceptual-hash distance (bits) of near duplicates.
        min_size: Shorter side below which pretrain images are too small (default chip // 2).
        min_std: Largest per-band standard deviation (0–255) of near-constant content.
        max_nodata: Nodata fraction above which an image or chip is left out.
        scheduler: Dask scheduler (see :func:`geofm.builders.runner.run_regions`).
        workers: Local worker processes.
        batch_images: Images per scan task.
        shard_chips: Chips per shard (and per write task).
        progress: Show progress bars.

    Returns:
        The finished store's path; its ``report.json``, ``report.md`` and ``images.parquet``
        say what happened to every image.

    Raises:
        BuildError: A manifest problem, a missing source path, or no chip left to store.
        StoreError: The output holds something else.
    """
    params = Params(chip=chip, overlap=overlap, hash_radius=hash_radius,
                    min_size=chip // 2 if min_size is None else min_size, min_std=min_std,
                    max_nodata=max_nodata, batch_images=batch_images, shard_chips=shard_chips)
    params.check()
    manifest, out = Path(manifest), Path(out)
    sources, files = list_images(manifest)
    files.insert(0, "image", np.arange(len(files), dtype=np.int64))
    files["role"] = files["source"].map({s.name: s.role for s in sources})
    fp = fingerprint(sources, files, params)
    scan_dir = out.with_name(out.name + ".scan")
    _check_output(out, scan_dir, fp)
    by_name = {s.name: s for s in sources}
    engine = _Engine(scheduler, workers, out)
    try:
        with reporting_full_disk(out):
            todo = _prepare_scan(scan_dir, files, fp, params)
        engine.run(_ScanTask(scan_dir, by_name, params), todo, "opticalrs scan", progress)
        images, chips = _load_scan(scan_dir, files, params)
        decided, clusters = _decide(images, params.hash_radius)
        images = images.join(decided)
        plan = _plan(images, chips)
        images["chips"] = images["image"].map(plan["image"].value_counts()).fillna(0).astype(int)
        if plan.empty:
            shutil.rmtree(scan_dir, ignore_errors=True)
            raise BuildError("no chip left for the pretraining pool after exclusion and "
                             f"deduplication ({_dropped_summary(images)})", manifest,
                             "check the sources and thresholds")
        with reporting_full_disk(out):
            _write_parquet_atomic(pa.Table.from_pandas(plan, preserve_index=False),
                                  scan_dir / "plan.parquet", row_group_size=shard_chips)
        gsds = {by_name[s].gsd_m for s in plan["source"].unique()}
        spec = StoreSpec(
            num_chips=len(plan), bands=list(BAND_SETS["rgb"]), chip_size=(chip, chip),
            dtype="uint8", gsd_m=gsds.pop() if len(gsds) == 1 else None,
            provenance={"builder": "opticalrs", "source": str(manifest.resolve()),
                        "params": asdict(params),
                        "sources": [asdict(s) for s in sources],
                        "conversion": "8-bit as is; other dtypes stretched linearly to 0-255 "
                                      "(fixed range or 2nd-98th percentile of the image's RGB)"},
            fingerprint=fp, shard_chips=shard_chips,
        )
        create_store(out, spec)
        regions = sorted(set(range(spec.num_regions)) - completed_regions(out))
        engine.run(_ChipTask(out, scan_dir, by_name, params), regions, "opticalrs chips",
                   progress)
    finally:
        engine.close()
    chips = chips.merge(images[["image", "source", "outcome"]], on="image")
    report = build_report(sources, images, chips, clusters, params, manifest)
    with reporting_full_disk(out):
        _write_report(out, report, images)
    eval_sources = [s.name for s in sources if s.role == "eval"]
    finalize_store(out, {
        "split": {"method": "opticalrs-pretrain", "counts": {"train": len(plan)},
                  "params": {"eval_sources": eval_sources, "hash_radius": hash_radius}},
        "opticalrs": {"report": "report.json", "images": report["totals"]["images"],
                      "kept_images": report["totals"]["kept"],
                      "dropped": report["totals"]["dropped"]},
    })
    shutil.rmtree(scan_dir, ignore_errors=True)
    return out
