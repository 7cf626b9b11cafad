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
* **Deduplication** is per source image, across all sources (:mod:`geofm.build.dedup`): exact
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
  written inside the store just before it is marked complete.

Scale: the driver lists files and fingerprints them (manifest, names, sizes, mtimes); Dask tasks
decode and hash batches of images into ``<out>.scan/`` (one parquet per batch); the driver
deduplicates the hashes (a few bytes per image); Dask tasks write shard-aligned regions of chips
with the writer's markers. A rerun after a crash reuses finished batches and regions and gives the
same store; ``<out>.scan`` is removed once the store is complete.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import rasterio
import yaml
from affine import Affine
from PIL import Image
from pyproj import Transformer
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from shapely.geometry import Polygon

from geofm.bands import BAND_SETS, BANDS
from geofm.build.dedup import cluster_labels, duplicate_edges, hamming, phash64
from geofm.build.runner import run_regions
from geofm.errors import BuildError, StoreError
from geofm.io.schema import SHARD_CHIPS
from geofm.io.writer import (
    StoreSpec,
    completed_regions,
    create_store,
    finalize_store,
    load_spec,
    write_region,
)

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".bmp", ".webp")
ROLES = ("pretrain", "eval")
REASONS = ("unreadable", "no_rgb", "too_small", "mostly_nodata", "near_constant",
           "eval_duplicate", "exact_duplicate", "near_duplicate")
CHIP_REASONS = ("mostly_nodata", "near_constant")
WHOLE_PIXELS = 2048 * 2048
PREVIEW_PX = 512
STRIP_ROWS = 256
PERCENTILES = (2.0, 98.0)
SCAN_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SOURCE_KEYS = {"name", "path", "role", "licence", "license", "gsd_m", "bands", "sensor",
                "stretch"}
_RGB = ("red", "green", "blue")


@dataclass(frozen=True)
class Source:
    """One manifest entry (its files are listed separately).

    Attributes:
        name: Unique source name, the chip table's ``source``.
        role: ``pretrain`` or ``eval``.
        licence: Licence of the source's images.
        gsd_m: Metres per pixel, if known.
        bands: Red, green, blue as band descriptions or 1-based indices, if given.
        sensor: Band-registry sensor naming the bands, if given.
        stretch: Fixed ``(lo, hi)`` range for images that are not 8-bit; None: percentiles.
    """

    name: str
    role: str
    licence: str
    gsd_m: float | None = None
    bands: tuple[str | int, ...] | None = None
    sensor: str | None = None
    stretch: tuple[float, float] | None = None


@dataclass(frozen=True)
class Params:
    """The build's settings (all of them enter the fingerprint).

    Attributes:
        chip: Chip side in pixels.
        overlap: Pixels shared by neighbouring chips.
        hash_radius: Largest perceptual-hash distance (bits of 64) of near duplicates.
        min_size: Shorter image side below which pretrain images are too small.
        min_std: Largest per-band standard deviation (0–255) below which content is constant.
        max_nodata: Nodata fraction above which an image or chip is left out.
        batch_images: Images per scan task.
        shard_chips: Chips per shard (and per write task).
    """

    chip: int = 224
    overlap: int = 0
    hash_radius: int = 4
    min_size: int = 112
    min_std: float = 2.0
    max_nodata: float = 0.5
    batch_images: int = 256
    shard_chips: int = SHARD_CHIPS

    def check(self) -> None:
        """Raise :class:`BuildError` for settings that make no sense."""
        problems = [
            (self.chip < 8, f"chip must be at least 8 px, got {self.chip}"),
            (not 0 <= self.overlap < self.chip,
             f"overlap must be in 0..{self.chip - 1} px, got {self.overlap}"),
            (not 0 <= self.hash_radius <= 16, f"hash radius must be in 0..16, got "
                                              f"{self.hash_radius}"),
            (not 1 <= self.min_size <= self.chip,
             f"minimum size must be in 1..{self.chip} px, got {self.min_size}"),
            (self.min_std < 0, f"minimum standard deviation must be >= 0, got {self.min_std}"),
            (not 0 <= self.max_nodata <= 1, f"nodata fraction must be in 0..1, got "
                                            f"{self.max_nodata}"),
            (self.batch_images < 1 or self.shard_chips < 1, "batch and shard sizes must be >= 1"),
        ]
        for bad, message in problems:
            if bad:
                raise BuildError(message)


# ---------------------------------------------------------------------------------------------
# Manifest


def _manifest_error(manifest: Path, message: str, hint: str | None = None) -> BuildError:
    return BuildError(message, manifest, hint or "see geofm.build.opticalrs for the format")


def _parse_bands(value: Any, where: str, manifest: Path) -> tuple[str | int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3 or \
            not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        raise _manifest_error(manifest, f"{where}: 'bands' must list red, green and blue as "
                                        "band descriptions or 1-based indices")
    return tuple(value)


def _parse_stretch(value: Any, where: str, manifest: Path) -> tuple[float, float] | None:
    if value is None or value == "percentile":
        return None
    ok = isinstance(value, list) and len(value) == 2 and \
        all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or value[1] <= value[0]:
        raise _manifest_error(manifest, f"{where}: 'stretch' must be 'percentile' or [lo, hi] "
                                        "with lo < hi")
    return float(value[0]), float(value[1])


def _parse_source(entry: Any, i: int, manifest: Path) -> tuple[Source, Any]:
    """A manifest entry as a :class:`Source` plus its raw ``path`` value."""
    where = f"source {i + 1}"
    if not isinstance(entry, dict):
        raise _manifest_error(manifest, f"{where} is not a mapping")
    unknown = sorted(set(entry) - _SOURCE_KEYS)
    if unknown:
        raise _manifest_error(manifest, f"{where}: unknown keys {unknown} (allowed: "
                                        f"{sorted(_SOURCE_KEYS - {'license'})})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _manifest_error(manifest, f"{where}: 'name' must be letters, digits, '_', '.', '-'")
    where = f"source {name!r}"
    for key in ("path", "role"):
        if not entry.get(key):
            raise _manifest_error(manifest, f"{where} has no '{key}'")
    if entry["role"] not in ROLES:
        raise _manifest_error(manifest, f"{where}: role must be one of {list(ROLES)}, "
                                        f"got {entry['role']!r}")
    licence = entry.get("licence", entry.get("license"))
    if not isinstance(licence, str) or not licence.strip():
        raise _manifest_error(manifest, f"{where} has no 'licence'",
                              "name the licence under which the images are used")
    gsd = entry.get("gsd_m")
    if gsd is not None and (isinstance(gsd, bool) or not isinstance(gsd, int | float) or gsd <= 0):
        raise _manifest_error(manifest, f"{where}: 'gsd_m' must be a positive number")
    sensor = entry.get("sensor")
    sensors = sorted({b.sensor for b in BANDS.values()})
    if sensor is not None and sensor not in sensors:
        raise _manifest_error(manifest, f"{where}: unknown sensor {sensor!r} (known: {sensors})")
    source = Source(
        name=name, role=entry["role"], licence=licence.strip(),
        gsd_m=float(gsd) if gsd is not None else None,
        bands=_parse_bands(entry.get("bands"), where, manifest), sensor=sensor,
        stretch=_parse_stretch(entry.get("stretch"), where, manifest),
    )
    return source, entry["path"]


def load_manifest(manifest: str | Path) -> list[tuple[Source, Any]]:
    """Read and check a manifest; return each source with its raw ``path`` value.

    Raises:
        BuildError: The manifest is missing, not YAML, empty or malformed.
    """
    path = Path(manifest)
    if not path.exists():
        raise BuildError("manifest not found", path, "pass the path of a YAML manifest")
    if path.is_dir():
        raise BuildError("is a directory, not a manifest", path, "pass the YAML file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BuildError(f"not valid YAML ({str(e).splitlines()[0]})", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BuildError(f"cannot read the manifest ({e})", path) from None
    if doc is None or (isinstance(doc, dict) and not doc.get("sources")):
        raise BuildError("lists no sources", path, "add a 'sources:' list of image collections")
    if not isinstance(doc, dict) or not isinstance(doc["sources"], list):
        raise _manifest_error(path, "must be a mapping with a 'sources' list")
    if set(doc) - {"sources"}:
        raise _manifest_error(path, f"unknown top-level keys {sorted(set(doc) - {'sources'})}")
    sources = [_parse_source(e, i, path) for i, e in enumerate(doc["sources"])]
    names = [s.name for s, _ in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _manifest_error(path, f"source names used twice: {dupes}")
    if not any(s.role == "pretrain" for s, _ in sources):
        raise _manifest_error(path, "has no 'pretrain' source", "mark at least one role: pretrain")
    return sources


def _walk_images(folder: Path) -> list[Path]:
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(Path(parent) / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return found


def _resolve_entry(entry: str, source: Source, base: Path) -> list[Path]:
    """Files named by one ``path`` entry: a file, a folder or a glob."""
    target = Path(os.path.abspath(base / os.path.expanduser(entry)))
    if glob.has_magic(entry):
        hits = [Path(p) for p in sorted(glob.glob(str(target), recursive=True))]
        files = [p for p in hits if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise BuildError(f"source {source.name!r}: pattern matches no image file", target,
                             f"image files end in {' '.join(IMAGE_SUFFIXES)}")
        return files
    if not target.exists():
        raise BuildError(f"source {source.name!r}: path not found", target,
                         "fix 'path' in the manifest")
    return _walk_images(target) if target.is_dir() else [target]


def list_images(manifest: str | Path) -> tuple[list[Source], pd.DataFrame]:
    """Check the manifest and list every source's images in build order.

    Returns:
        The sources and one row per image (``source``, ``relpath``, ``path``, ``size``,
        ``mtime_ns``), sources in manifest order, paths sorted within each.

    Raises:
        BuildError: A manifest problem, a path that does not exist, a source without images.
    """
    path = Path(manifest)
    base = Path(os.path.abspath(path.parent))
    sources, frames = [], []
    for source, raw in load_manifest(path):
        entries = [raw] if isinstance(raw, str) else raw
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise _manifest_error(path, f"source {source.name!r}: 'path' must be a path or a list "
                                        "of paths")
        files = list(dict.fromkeys(f for e in entries for f in _resolve_entry(e, source, base)))
        if not files:
            raise BuildError(f"source {source.name!r} holds no image files", base / entries[0],
                             f"image files end in {' '.join(IMAGE_SUFFIXES)}")
        first = Path(os.path.abspath(base / os.path.expanduser(entries[0])))
        single_folder = len(entries) == 1 and first.is_dir()
        root = first if single_folder else Path(os.path.commonpath([str(f.parent) for f in files]))
        rows = []
        for f in files:
            st = f.stat()
            rows.append((source.name, f.relative_to(root).as_posix(), str(f), st.st_size,
                         st.st_mtime_ns))
        frame = pd.DataFrame(rows, columns=["source", "relpath", "path", "size", "mtime_ns"])
        frames.append(frame.sort_values("relpath", kind="stable"))
        sources.append(source)
    table = pd.concat(frames, ignore_index=True)
    return sources, table


def fingerprint(sources: list[Source], files: pd.DataFrame, params: Params) -> str:
    """Hash of the sources, every file's name, size and mtime, and the build's settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"builder": "opticalrs", "version": SCAN_VERSION, "params": asdict(params),
                         "sources": [asdict(s) for s in sources]}, sort_keys=True).encode())
    for row in zip(files["source"], files["path"], files["size"], files["mtime_ns"]):
        h.update("\0".join(map(str, row)).encode() + b"\n")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# Reading RGB


class _Excluded(Exception):
    """An image left out for ``reason`` (one of :data:`REASONS`)."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class _Layout:
    """Where an image's red, green, blue and validity come from."""

    bands: tuple[int, int, int]  # 1-based
    alpha: int | None
    nodata: float | None
    eight_bit: bool
    floating: bool


@contextmanager
def _open(path: str | Path) -> Iterator[rasterio.io.DatasetReader]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            yield ds


def _by_description(descriptions: list[str], sensor: str | None) -> tuple[int, int, int] | None:
    """Red, green, blue from band descriptions: common names, else one sensor's band names."""
    named = {d.lower(): i for i, d in enumerate(descriptions, 1) if d}
    if not named:
        return None
    if all(c in named for c in _RGB):
        return named["red"], named["green"], named["blue"]
    answers = set()
    for s in sorted({b.sensor for b in BANDS.values()} if sensor is None else {sensor}):
        by_name = {b.band.lower(): b for b in BANDS.values() if b.sensor == s}
        if not all(d in by_name for d in named):
            continue
        colour = {by_name[d].common_name: i for d, i in named.items()}
        if all(c in colour for c in _RGB):
            answers.add((colour["red"], colour["green"], colour["blue"]))
    if len(answers) > 1:
        raise _Excluded("no_rgb", "band descriptions fit several sensors; set 'sensor'")
    return answers.pop() if answers else None


def _explicit_bands(ds: Any, wanted: tuple[str | int, ...]) -> tuple[int, int, int]:
    lower = [(d or "").lower() for d in ds.descriptions]
    out = []
    for w in wanted:
        if isinstance(w, int):
            if not 1 <= w <= ds.count:
                raise _Excluded("no_rgb", f"band {w} requested, image has {ds.count}")
            out.append(w)
        elif w.lower() in lower:
            out.append(lower.index(w.lower()) + 1)
        else:
            raise _Excluded("no_rgb", f"no band described as {w!r}")
    return out[0], out[1], out[2]


def _rgb_bands(ds: Any, source: Source) -> tuple[int, int, int]:
    """The 1-based red, green and blue bands of an open dataset (see the module doc)."""
    if source.bands is not None:
        return _explicit_bands(ds, source.bands)
    found = _by_description([(d or "").strip() for d in ds.descriptions], source.sensor)
    if found:
        return found
    interp = list(ds.colorinterp)
    wanted = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)
    if all(c in interp for c in wanted):
        return interp.index(wanted[0]) + 1, interp.index(wanted[1]) + 1, interp.index(wanted[2]) + 1
    if ds.count == 3 and ds.dtypes[0] == "uint8":
        return 1, 2, 3
    raise _Excluded("no_rgb", f"{ds.count} band(s) of {ds.dtypes[0]}, none known as red, green, "
                              "blue")


def _layout(ds: Any, source: Source) -> _Layout:
    bands = _rgb_bands(ds, source)
    interp = list(ds.colorinterp)
    alpha = interp.index(ColorInterp.alpha) + 1 if ColorInterp.alpha in interp else None
    dtype = np.dtype(ds.dtypes[bands[0] - 1])
    return _Layout(bands=bands, alpha=alpha, nodata=ds.nodata, eight_bit=dtype == np.uint8,
                   floating=dtype.kind == "f")


def _read(ds: Any, indexes: list[int], window: Window | None,
          out_shape: tuple[int, int] | None) -> np.ndarray:
    if out_shape is not None:
        return ds.read(indexes, out_shape=(len(indexes), *out_shape),
                       resampling=Resampling.average)
    win = window or Window(0, 0, ds.width, ds.height)
    whole = win.col_off == 0 and win.row_off == 0 and (win.width, win.height) == (ds.width,
                                                                                  ds.height)
    if whole and ds.driver == "PNG" and ds.height > 1:
        # GDAL's PNG driver returns a truncated file's whole-image read without an error
        # (GDAL 3.10), while reads of part of the image report it; so read two halves.
        half = ds.height // 2
        return np.concatenate([ds.read(indexes, window=Window(0, 0, ds.width, half)),
                               ds.read(indexes, window=Window(0, half, ds.width,
                                                              ds.height - half))], axis=1)
    return ds.read(indexes, window=win)


def _read_raw(ds: Any, layout: _Layout, window: Window | None = None,
              out_shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``[3, h, w]`` red, green, blue in the file's dtype and ``[h, w]`` validity."""
    indexes = [*layout.bands] + ([layout.alpha] if layout.alpha else [])
    data = _read(ds, indexes, window, out_shape)
    rgb = data[:3]
    if layout.alpha:
        valid = data[3] > 0
    elif layout.nodata is not None and not np.isnan(layout.nodata):
        valid = ~np.all(rgb == layout.nodata, axis=0)
    else:
        valid = np.any(rgb != 0, axis=0)
    if layout.floating:
        valid &= np.all(np.isfinite(rgb), axis=0)
    return rgb, valid


def _stretch_of(layout: _Layout, source: Source, rgb: np.ndarray,
                valid: np.ndarray) -> tuple[float, float] | None:
    """The 8-bit conversion range: None for 8-bit images, else fixed or percentiles."""
    if layout.eight_bit:
        return None
    if source.stretch is not None:
        return source.stretch
    values = rgb.ravel() if valid.all() else rgb[:, valid]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = _percentiles(values, PERCENTILES)
    return lo, hi if hi > lo else lo + 1.0


def _percentiles(values: np.ndarray, qs: tuple[float, ...]) -> tuple[float, ...]:
    """``np.percentile(values, qs)`` (linear), from a histogram for 8- and 16-bit integers."""
    if values.dtype not in (np.uint8, np.uint16):
        return tuple(float(v) for v in np.percentile(values.astype(np.float64), qs))
    cum = np.cumsum(np.bincount(values.ravel()))
    out = []
    for q in qs:
        pos = q / 100 * (values.size - 1)
        k = int(pos)
        t = pos - k
        a = float(np.searchsorted(cum, k + 1, side="left"))  # the k-th smallest value
        b = float(np.searchsorted(cum, k + 2, side="left")) if t > 0 else a
        out.append(b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t)  # numpy's _lerp
    return tuple(out)


def _to_u8(rgb: np.ndarray, valid: np.ndarray, stretch: tuple[float, float] | None) -> np.ndarray:
    """``[h, w, 3]`` uint8 pixels, 0 where invalid."""
    if stretch is None:
        out = rgb.astype(np.uint8, copy=False)
    elif rgb.dtype == np.uint16:  # one table lookup instead of five passes over the pixels
        out = _stretched(np.arange(65536, dtype=np.uint16), stretch)[rgb]
    else:
        out = _stretched(np.where(valid, rgb, 0), stretch)
    out = np.ascontiguousarray(out.transpose(1, 2, 0))
    if not valid.all():
        out[~valid] = 0
    return out


def _stretched(values: np.ndarray, stretch: tuple[float, float]) -> np.ndarray:
    lo, hi = stretch
    x = (values.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _band_std(u8: np.ndarray, valid: np.ndarray) -> float:
    """Largest standard deviation of the three bands over valid pixels, exact, via histograms."""
    if valid.all():
        px = np.ascontiguousarray(u8.transpose(2, 0, 1)).reshape(3, -1)  # [3, n]
    else:
        px = np.ascontiguousarray(u8[valid].T)
    hist = np.stack([np.bincount(band, minlength=256) for band in px])
    levels = np.arange(256, dtype=np.int64)
    n = px.shape[1]
    total, squares = hist @ levels, hist @ (levels * levels)  # exact int64 sums
    var = (squares * n - total * total) / float(n * n)
    return float(np.sqrt(max(var.max(), 0.0)))


def _verdict(nodata: float, std: float, params: Params) -> str:
    if nodata > params.max_nodata:
        return "mostly_nodata"
    if std < params.min_std:
        return "near_constant"
    return "ok"


def _quality(u8: np.ndarray, valid: np.ndarray, params: Params) -> tuple[str, float, float]:
    """``(reason or "ok", nodata fraction, largest per-band standard deviation)``."""
    count = int(np.count_nonzero(valid))
    nodata = 1.0 - count / valid.size if valid.size else 1.0
    std = _band_std(u8, valid) if count else 0.0
    return _verdict(nodata, std, params), nodata, std


# ---------------------------------------------------------------------------------------------
# Slicing


def chip_offsets(length: int, chip: int, overlap: int = 0) -> list[int]:
    """Chip start offsets along one axis (see the module doc's slicing rule)."""
    if length < chip:
        return []
    starts = list(range(0, length - chip + 1, chip - overlap))
    if 2 * (length - starts[-1] - chip) > chip:
        starts.append(length - chip)
    return starts


def grid_shape(height: int, width: int, chip: int) -> tuple[int, int]:
    """Size of the image once its shorter side is brought up to ``chip`` (if below)."""
    short = min(height, width)
    if short >= chip:
        return height, width
    if height <= width:
        return chip, max(chip, round(width * chip / height))
    return max(chip, round(height * chip / width)), chip


def _resize(u8: np.ndarray, valid: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray,
                                                                                np.ndarray]:
    h, w = shape
    out = np.asarray(Image.fromarray(u8).resize((w, h), Image.Resampling.BILINEAR))
    ok = np.asarray(Image.fromarray(valid.astype(np.uint8)).resize(
        (w, h), Image.Resampling.NEAREST)) > 0
    out = out.copy()
    out[~ok] = 0
    return out, ok


class _PixelDigest:
    """SHA-1 of an image's 8-bit RGB pixels, fed strip by strip in row order."""

    def __init__(self, height: int, width: int):
        self._sha = hashlib.sha1(f"{height}x{width}x3:".encode())
        self.rows = 0

    def update(self, first_row: int, strip: np.ndarray) -> None:
        if first_row > self.rows:
            raise ValueError(f"strip starts at row {first_row}, {self.rows} rows digested")
        fresh = strip[self.rows - first_row:]
        self._sha.update(np.ascontiguousarray(fresh).tobytes())
        self.rows = max(self.rows, first_row + len(strip))

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


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
        cause = e.__cause__ or e  # rasterio's "Read failed" wraps GDAL's message
        rec.update(status="unreadable", detail=(str(cause).splitlines() or [type(e).__name__])[0])
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


def _write_parquet_atomic(table: pa.Table, path: Path, **kwargs: Any) -> None:
    tmp = path.with_suffix(".tmp")
    pq.write_table(table, tmp, **kwargs)
    os.replace(tmp, path)


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
    ex, ey = t @ (xs, ys)
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
        row = {"chip_id": f"{source.name}/{r.relpath}/{r.y}/{r.x}", "geometry": None,
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
        for k in sel:
            out[k] = u8[:, xs[k] - x0:xs[k] - x0 + c].transpose(2, 0, 1)
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
# Report


def _counts(frame: pd.DataFrame, column: str) -> dict[str, int]:
    return {k: int(v) for k, v in frame[column].value_counts().sort_index().items()}


def _source_report(source: Source, images: pd.DataFrame, chips: pd.DataFrame) -> dict[str, Any]:
    mine = images[images["source"] == source.name]
    my_chips = chips[(chips["source"] == source.name) & (chips["outcome"] == "kept")]
    outcomes = _counts(mine, "outcome")
    return {
        "role": source.role, "licence": source.licence, "gsd_m": source.gsd_m,
        "images": len(mine), "kept": outcomes.pop("kept", 0), "eval": outcomes.pop("eval", 0),
        "dropped": {r: outcomes.get(r, 0) for r in REASONS if outcomes.get(r, 0)},
        "chips": int((my_chips["chip_status"] == "ok").sum()),
        "chips_dropped": {r: n for r, n in _counts(my_chips, "chip_status").items() if r != "ok"},
    }


def build_report(sources: list[Source], images: pd.DataFrame, chips: pd.DataFrame,
                 clusters: list[dict[str, Any]], params: Params,
                 manifest: Path) -> dict[str, Any]:
    """The build report: counts per source and reason, clusters and unreadable files."""
    per_source = {s.name: _source_report(s, images, chips) for s in sources}
    totals: dict[str, Any] = {"images": len(images)}
    for key in ("kept", "eval", "chips"):
        totals[key] = sum(r[key] for r in per_source.values())
    totals["dropped"] = {r: sum(s["dropped"].get(r, 0) for s in per_source.values())
                         for r in REASONS}
    totals["chips_dropped"] = {r: sum(s["chips_dropped"].get(r, 0) for s in per_source.values())
                               for r in CHIP_REASONS}
    bad = images[images["outcome"] == "unreadable"]
    return {
        "builder": "opticalrs", "manifest": str(manifest), "params": asdict(params),
        "totals": totals, "sources": per_source,
        "clusters": clusters,
        "unreadable": [{"image": f"{s}/{p}", "detail": d}
                       for s, p, d in zip(bad["source"], bad["relpath"], bad["detail"])],
    }


def report_markdown(report: dict[str, Any], max_clusters: int = 50) -> str:
    """The report as Markdown: per-source table, totals, the first clusters, unreadable files."""
    reasons = [r for r in REASONS if report["totals"]["dropped"][r]]
    head = ["source", "role", "licence", "images", "kept", "eval", *reasons, "chips",
            "chips dropped"]
    lines = ["# OpticalRS build report", "", f"Manifest: `{report['manifest']}`", "",
             "Parameters: " + ", ".join(f"{k}={v}" for k, v in report["params"].items()), "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(name: str, role: str, licence: str, r: dict[str, Any]) -> str:
        cells = [name, role, licence, r["images"], r["kept"], r["eval"],
                 *[r["dropped"].get(k, 0) for k in reasons], r["chips"],
                 sum(r["chips_dropped"].values())]
        return "| " + " | ".join(str(c) for c in cells) + " |"

    for name, r in report["sources"].items():
        lines.append(row(name, r["role"], r["licence"], r))
    lines.append(row("**total**", "", "", report["totals"]))
    clusters = report["clusters"]
    lines += ["", f"## Duplicate clusters ({len(clusters)})", ""]
    if len(clusters) > max_clusters:
        lines += [f"The first {max_clusters}; all are in report.json.", ""]
    for c in clusters[:max_clusters]:
        kept = f"kept `{c['kept']}`" if c["kept"] else "holds eval images: no pretrain image kept"
        lines.append(f"- cluster {c['cluster']}, {kept}: " + ", ".join(
            f"`{m['image']}` ({m['outcome']}, {m['distance']} bits)" for m in c["members"]))
    if report["unreadable"]:
        lines += ["", f"## Unreadable images ({len(report['unreadable'])})", ""]
        lines += [f"- `{u['image']}`: {u['detail']}" for u in report["unreadable"][:max_clusters]]
    return "\n".join(lines) + "\n"


def _write_report(out: Path, report: dict[str, Any], images: pd.DataFrame) -> None:
    for name, text in (("report.json", json.dumps(report, indent=1)),
                       ("report.md", report_markdown(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, out / name)
    columns = ["image", "source", "relpath", "outcome", "detail", "width", "height", "bands",
               "lo", "hi", "sha1", "phash", "cluster", "distance", "chips"]
    _write_parquet_atomic(pa.Table.from_pandas(images[columns], preserve_index=False),
                          out / "images.parquet")


# ---------------------------------------------------------------------------------------------
# The build


class _Engine:
    """The Dask scheduler of both stages: one local cluster, started on first use, or the given
    scheduler."""

    def __init__(self, scheduler: str | None, workers: int | None):
        self.scheduler, self.workers = scheduler, workers
        self._cluster: Any = None

    def run(self, task: Any, regions: list[int], desc: str, progress: bool) -> None:
        if not regions:
            return
        address = self.scheduler
        if address is None:
            if self._cluster is None:
                from dask.distributed import LocalCluster

                self._cluster = LocalCluster(n_workers=self.workers or os.cpu_count() or 1,
                                             threads_per_worker=1, processes=True,
                                             dashboard_address=None)
            address = self._cluster.scheduler_address
        run_regions(task, regions, scheduler=address, desc=desc, progress=progress)

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def _check_output(out: Path, scan_dir: Path, fp: str) -> None:
    """Refuse an output or scan folder that holds something other than this build."""
    if out.exists():
        old = load_spec(out)
        if old is None:
            raise StoreError("output already exists", out, "choose a new path or pass --overwrite")
        if old.fingerprint != fp:
            raise StoreError("holds an unfinished build of different inputs", out,
                             "delete it or pass --overwrite")
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
        scheduler: Dask scheduler (see :func:`geofm.build.runner.run_regions`).
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
    engine = _Engine(scheduler, workers)
    try:
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
                             "deduplication", manifest, "check the sources and thresholds")
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
