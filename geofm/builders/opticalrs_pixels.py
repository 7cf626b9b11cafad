"""OpticalRS pixels: choosing RGB bands, 8-bit stretch, quality checks and slicing."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from geofm.bands import BANDS
from geofm.builders.opticalrs_manifest import _RGB, PERCENTILES, Params, Source

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


