"""MODIS Level-1B 1 km granules (MOD021KM / MYD021KM, HDF4) → chip store of SatVision-TOA's bands.

Input: granules named ``M?D021KM.AYYYYDDD.HHMM.CCC.*.hdf`` (a directory or a list of files),
optionally with their MOD03/MYD03 geolocation files (matched on ``AYYYYDDD.HHMM``). HDF4 is read
with ``pyhdf.SD``.

Output: ``float32`` chips of the 14 bands of ``BAND_SETS["modis14"]`` and a ``valid`` mask.

- Reflective bands 1, 2, 3, 6, 7, 26: TOA reflectance as the L1B defines it,
  ``reflectance_scales[i] × (SI − reflectance_offsets[i])``, ``i`` the band's position in its
  SDS's ``band_names``. That is the reflectance factor times the cosine of the solar zenith
  angle (ρ cos θ₀); it is not divided by cos θ₀ here.
- Emissive bands 21, 27-33: radiance ``radiance_scales[i] × (SI − radiance_offsets[i])``
  (W m⁻² sr⁻¹ µm⁻¹), then brightness temperature by the inverse Planck function at the band's
  effective central wavelength, with the band's temperature correction for the platform (see
  :mod:`geofm.build.modis_constants`). A pixel whose radiance is not positive has no
  brightness temperature and is invalid.
- A scaled integer outside the SDS's ``valid_range`` (at most 0-32767), equal to its
  ``_FillValue``, or any L1B flag value (65535 fill, 65534 L1A DN missing, 65533 saturated,
  65532-65501 others) is invalid: False in ``valid`` and NaN in ``image``.

Chips are cut from the swath grid (lines × frames) on a regular grid centred in the granule:
the remainder of ``lines`` and ``frames`` modulo the chip size is dropped, split evenly between
both ends (the swath edges, where pixels are largest). A chip whose geolocation holds fill is
skipped. Footprints are EPSG:4326 polygons through the chip's outer pixel centres (9 points per
side), interpolated from the granule's 5 km ``Latitude``/``Longitude`` within each scan (or taken
from MOD03 at full resolution); a footprint crossing the antimeridian is split into a
MultiPolygon. A swath has no affine transform, so ``transform`` holds six NaN and ``crs`` is
``EPSG:4326``; ``native_x``/``native_y`` repeat the centroid's longitude/latitude.

Splits are computed from the plan before any pixel is read, so every task writes its final
rows: ``blocks`` (spatial blocks of :func:`geofm.build.splits.block_split` on chip centroids,
default) or ``time`` (by the UTC date of the granule start: explicit cut-off dates, or whole
days in time order filled into train, validation, test by the ratios).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
from pyhdf.error import HDF4Error
from pyhdf.SD import SD, SDC
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from geofm.bands import BAND_SETS, modis_band
from geofm.build import modis_constants as mc
from geofm.build.runner import run_regions
from geofm.build.splits import SPLIT_NAMES, block_split
from geofm.errors import BuildError, GeofmError
from geofm.io.schema import BUILD_DIR, SHARD_CHIPS
from geofm.io.writer import StoreSpec, completed_regions, create_store, finalize_store, write_region

CHIP = 128
SPLIT_METHODS = ("blocks", "time")
_GRANULE_RE = re.compile(r"(M[OY]D021KM)\.(A\d{7}\.\d{4})\.(\d{3})")
_GEO_RE = re.compile(r"(M[OY]D03)\.(A\d{7}\.\d{4})\.(\d{3})")
_DAY_NIGHT = {"day": "day", "night": "night", "both": "mixed"}
_SIDE_POINTS = 9


# --- reading HDF4 ---------------------------------------------------------------------------


@contextmanager
def _open_hdf(path: Path) -> Iterator[SD]:
    """An open ``pyhdf.SD`` file; a file HDF4 cannot read raises BuildError."""
    try:
        sd = SD(str(path), SDC.READ)
    except HDF4Error as e:
        raise BuildError(f"not a readable HDF4 file ({e})", path,
                         "re-download the granule from LAADS DAAC") from None
    try:
        yield sd
    finally:
        sd.end()


def _select(sd: SD, name: str, path: Path) -> Any:
    try:
        return sd.select(name)
    except HDF4Error:
        raise BuildError(f"SDS {name} is missing", path,
                         "expected a MOD021KM/MYD021KM (or MOD03/MYD03) granule") from None


def _read(sds: Any, name: str, path: Path, start: Sequence[int] | None = None,
          count: Sequence[int] | None = None) -> np.ndarray:
    try:
        return np.asarray(sds.get() if start is None else sds.get(start=start, count=count))
    except HDF4Error as e:
        raise BuildError(f"cannot read SDS {name} ({e})", path,
                         "the file is damaged; re-download it") from None


def _odl_value(text: str, name: str) -> str | None:
    """The VALUE of ODL object ``name`` in an ECS metadata text (quotes removed)."""
    obj = re.search(rf"OBJECT\s*=\s*{name}\s(.*?)END_OBJECT\s*=\s*{name}\s", text, re.S)
    if obj is None:
        return None
    val = re.search(r"VALUE\s*=\s*(\"[^\"]*\"|\S+)", obj.group(1))
    return val.group(1).strip('"').strip() if val else None


# --- granules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class BandCal:
    """How one output band is read and calibrated.

    Attributes:
        band: L1B band name (``"21"``).
        sds: SDS holding it.
        index: Its position along the SDS's band axis.
        scale: ``reflectance_scales`` or ``radiance_scales`` entry.
        offset: ``reflectance_offsets`` or ``radiance_offsets`` entry.
        lo: Smallest valid scaled integer.
        hi: Largest valid scaled integer.
        fill: The SDS's ``_FillValue``.
        planck: (wavenumber cm⁻¹, correction slope, correction intercept K) for an emissive
            band; None for a reflective one.
    """

    band: str
    sds: str
    index: int
    scale: float
    offset: float
    lo: int
    hi: int
    fill: int
    planck: tuple[float, float, float] | None


@dataclass(frozen=True)
class Granule:
    """A checked MOD021KM/MYD021KM granule.

    Attributes:
        path: The HDF4 file.
        granule_id: ``MOD021KM.A2024001.1200.061``.
        short_name: ``MOD021KM`` or ``MYD021KM``.
        platform: ``Terra`` or ``Aqua``.
        key: ``A2024001.1200``, shared with its MOD03/MYD03 file.
        start: Granule start (ISO 8601, UTC).
        lines: Swath lines (10 per scan).
        frames: Earth-view frames per line.
        bands: Calibration of the 14 output bands, in output order.
        day_night_flag: ``day``, ``night`` or ``mixed`` from DAYNIGHTFLAG, or None.
        geolocation: Its MOD03/MYD03 file, or None to use the granule's 5 km geolocation.
    """

    path: Path
    granule_id: str
    short_name: str
    platform: str
    key: str
    start: str
    lines: int
    frames: int
    bands: tuple[BandCal, ...]
    day_night_flag: str | None
    geolocation: Path | None


def find_granules(src: str | Path | Sequence[str | Path]) -> list[Path]:
    """The granule files of ``src``: a directory (``*021KM*.hdf``) or a list of files.

    Raises:
        BuildError: A missing path, or a directory without granules.
    """
    if isinstance(src, str | Path):
        root = Path(src)
        if not root.exists():
            raise BuildError("source not found", root, "pass a folder of MOD021KM/MYD021KM files")
        if root.is_dir():
            files = sorted(p for p in root.iterdir()
                           if p.is_file() and "021KM" in p.name.upper()
                           and p.suffix.lower() == ".hdf")
            if not files:
                raise BuildError("holds no MOD021KM/MYD021KM granules (*021KM*.hdf)", root,
                                 "download granules from LAADS DAAC into it")
            return files
        return [root]
    files = [Path(p) for p in src]
    if not files:
        raise BuildError("no granules given", hint="pass a folder or a list of MOD021KM files")
    for f in files:
        if not f.is_file():
            raise BuildError("granule file not found", f)
    return files


def _identity(path: Path, core: str) -> tuple[str, str, str]:
    """(granule id, short name, key) from the file name, else from LOCALGRANULEID."""
    for text in (path.name, _odl_value(core, "LOCALGRANULEID") or ""):
        m = _GRANULE_RE.search(text)
        if m:
            short, key, collection = m.groups()
            return f"{short}.{key}.{collection}", short, key
    raise BuildError("cannot identify the granule: neither the file name nor LOCALGRANULEID "
                     "reads M?D021KM.AYYYYDDD.HHMM.CCC", path, "keep LAADS DAAC's file names")


def _start_time(path: Path, core: str, key: str) -> str:
    """Granule start from RANGEBEGINNINGDATE/TIME, else from the ``AYYYYDDD.HHMM`` key."""
    date, time = _odl_value(core, "RANGEBEGINNINGDATE"), _odl_value(core, "RANGEBEGINNINGTIME")
    try:
        if date and time:
            return pd.Timestamp(f"{date}T{time}", tz="UTC").isoformat()
        return pd.to_datetime(key[1:], format="%Y%j.%H%M", utc=True).isoformat()
    except ValueError:
        raise BuildError(f"unreadable granule start time ({date!r} {time!r})", path) from None


def _numbers(attrs: dict[str, Any], name: str, n: int, sds: str, path: Path) -> np.ndarray:
    """Attribute ``name`` as [n] finite float64, or BuildError."""
    if name not in attrs:
        raise BuildError(f"SDS {sds} has no {name} attribute", path)
    values = np.atleast_1d(np.asarray(attrs[name], dtype=np.float64))
    if values.shape != (n,) or not np.isfinite(values).all():
        raise BuildError(f"{sds} attribute {name} has {values.size} values, expected {n} "
                         "finite numbers (one per band)", path)
    return values


def _sds_bands(sd: SD, name: str, path: Path) -> tuple[list[str], dict[str, Any], tuple[int, ...]]:
    """Band names, attributes and shape of one Earth-view SDS, checked."""
    sds = _select(sd, name, path)
    _, rank, shape, dtype, _ = sds.info()
    if rank != 3 or dtype != SDC.UINT16:
        raise BuildError(f"SDS {name} is not a uint16 [band, line, frame] array", path)
    attrs = sds.attributes()
    if not isinstance(attrs.get("band_names"), str):
        raise BuildError(f"SDS {name} has no band_names attribute", path)
    names = [b.strip() for b in attrs["band_names"].split(",")]
    if len(names) != shape[0]:
        raise BuildError(f"{name} band_names lists {len(names)} bands for {shape[0]} planes", path)
    return names, attrs, tuple(shape)


def _valid_bounds(attrs: dict[str, Any], sds: str, path: Path) -> tuple[int, int, int]:
    """(lo, hi, fill) of an SDS from ``valid_range`` and ``_FillValue``."""
    vr = np.atleast_1d(np.asarray(attrs.get("valid_range", []), dtype=np.float64))
    if vr.shape != (2,) or not vr[0] <= vr[1]:
        raise BuildError(f"SDS {sds} has no valid_range [min, max] attribute", path)
    if "_FillValue" not in attrs:
        raise BuildError(f"SDS {sds} has no _FillValue attribute", path)
    lo, hi = max(int(vr[0]), 0), min(int(vr[1]), mc.SI_VALID_MAX)
    return lo, hi, int(np.asarray(attrs["_FillValue"]).ravel()[0])


def _band_calibrations(sd: SD, path: Path, platform: str) -> tuple[tuple[BandCal, ...], int, int]:
    """The 14 bands' calibrations and the swath's (lines, frames)."""
    found: dict[str, BandCal] = {}
    grid: tuple[int, int] | None = None
    for name in mc.EV_SDS:
        names, attrs, shape = _sds_bands(sd, name, path)
        if grid is not None and shape[1:] != grid:
            raise BuildError(f"SDS {name} is {shape[1]}×{shape[2]}, the other Earth-view SDS "
                             f"{grid[0]}×{grid[1]}", path)
        grid = (shape[1], shape[2])
        kind = "reflectance" if name in mc.REFLECTIVE_SDS else "radiance"
        scales = _numbers(attrs, f"{kind}_scales", shape[0], name, path)
        offsets = _numbers(attrs, f"{kind}_offsets", shape[0], name, path)
        lo, hi, fill = _valid_bounds(attrs, name, path)
        wanted = mc.REFLECTIVE_BANDS if kind == "reflectance" else mc.EMISSIVE_BANDS_OUT
        for band in wanted:
            if band in names:
                i = names.index(band)
                planck = None if kind == "reflectance" else \
                    mc.EMISSIVE_COEFFICIENTS[platform][band]
                found[band] = BandCal(band, name, i, float(scales[i]), float(offsets[i]),
                                      lo, hi, fill, planck)
    missing = [b for b in mc.OUTPUT_BANDS if b not in found]
    if missing:
        raise BuildError(f"band_names of the Earth-view SDS lack band(s) {', '.join(missing)}",
                         path, "expected standard MOD021KM/MYD021KM band_names")
    assert grid is not None
    return tuple(found[b] for b in mc.OUTPUT_BANDS), grid[0], grid[1]


def read_granule(path: Path, geolocation: Path | None = None) -> Granule:
    """Open and check one granule (all SDS and attributes the build needs).

    Args:
        path: A MOD021KM/MYD021KM HDF4 file.
        geolocation: Its MOD03/MYD03 file, if any.

    Raises:
        BuildError: Unreadable file, missing SDS or attribute, wrong shapes, or a MOD03 that
            does not belong to the granule.
    """
    with _open_hdf(path) as sd:
        core = sd.attributes().get("CoreMetadata.0", "")
        if not isinstance(core, str):
            core = ""
        granule_id, short, key = _identity(path, core)
        platform = mc.PLATFORMS[short[:3]]
        bands, lines, frames = _band_calibrations(sd, path, platform)
        if lines % mc.LINES_PER_SCAN or lines == 0:
            raise BuildError(f"{lines} lines is not a whole number of 10-line scans", path)
        flag = _odl_value(core, "DAYNIGHTFLAG")
        start = _start_time(path, core, key)
    granule = Granule(path, granule_id, short, platform, key, start, lines, frames, bands,
                      _DAY_NIGHT.get((flag or "").lower()), geolocation)
    if geolocation is not None:
        _check_geolocation(granule, geolocation)
    return granule


def _check_geolocation(granule: Granule, geo: Path) -> None:
    """A MOD03/MYD03 file must cover the granule's swath at the same start time."""
    with _open_hdf(geo) as sd:
        core = sd.attributes().get("CoreMetadata.0", "")
        for name in ("Latitude", "Longitude"):
            _, rank, shape, _, _ = _select(sd, name, geo).info()
            if rank != 2 or tuple(shape) != (granule.lines, granule.frames):
                raise BuildError(f"{name} is {'×'.join(map(str, np.atleast_1d(shape)))}, "
                                 f"granule {granule.granule_id} is "
                                 f"{granule.lines}×{granule.frames}", geo,
                                 "pass the MOD03/MYD03 file of the same granule")
    if isinstance(core, str) and _odl_value(core, "RANGEBEGINNINGDATE"):
        start = _start_time(geo, core, granule.key)
        if start != granule.start:
            raise BuildError(f"geolocation starts {start}, granule {granule.granule_id} "
                             f"starts {granule.start}", geo,
                             "pass the MOD03/MYD03 file of the same granule")


def match_geolocation(geolocation: str | Path | Sequence[str | Path] | None,
                      granules: Sequence[Path]) -> dict[Path, Path]:
    """Each granule's MOD03/MYD03 file, matched on platform and ``AYYYYDDD.HHMM``.

    Raises:
        BuildError: A granule without its geolocation file (when ``geolocation`` is given).
    """
    if geolocation is None:
        return {}
    if isinstance(geolocation, str | Path) and not Path(geolocation).exists():
        raise BuildError("geolocation path not found", geolocation,
                         "pass the folder of MOD03/MYD03 files")
    if isinstance(geolocation, str | Path) and Path(geolocation).is_dir():
        files = sorted(Path(geolocation).iterdir())
    elif isinstance(geolocation, str | Path):
        files = [Path(geolocation)]
    else:
        files = [Path(g) for g in geolocation]
    index: dict[tuple[str, str], Path] = {}
    for f in files:
        m = _GEO_RE.search(f.name)
        if m and f.is_file():
            index[(m.group(1)[:3], m.group(2))] = f
    out = {}
    for g in granules:
        m = _GRANULE_RE.search(g.name)
        geo = index.get((m.group(1)[:3], m.group(2))) if m else None
        if geo is None:
            raise BuildError(f"no {'MYD03' if m and m.group(1).startswith('MYD') else 'MOD03'} "
                             f"geolocation file for this granule in {geolocation}", g,
                             "download the matching M?D03.AYYYYDDD.HHMM file")
        out[g] = geo
    return out


# --- geolocation ----------------------------------------------------------------------------


def _scaled(sds: Any, name: str, path: Path) -> np.ndarray:
    """An SDS as float64 with ``_FillValue`` → NaN and ``scale_factor`` applied."""
    data = _read(sds, name, path).astype(np.float64)
    attrs = sds.attributes()
    if "_FillValue" in attrs:
        data[data == float(np.asarray(attrs["_FillValue"]).ravel()[0])] = np.nan
    data *= float(attrs.get("scale_factor", 1.0))
    return data


@dataclass
class GeoGrid:
    """Latitude, longitude and solar zenith on a granule's swath grid, for interpolation.

    Attributes:
        lat: ``[rows, cols]`` degrees (NaN where fill).
        lon: ``[rows, cols]`` degrees.
        sza: ``[rows, cols]`` solar zenith in degrees, or None.
        step: 1 (MOD03, every pixel) or 5 (the granule's own 5 km grid).
        offset: Line/frame of the first sample (0 or 2).
    """

    lat: np.ndarray
    lon: np.ndarray
    sza: np.ndarray | None
    step: int
    offset: int

    @classmethod
    def load(cls, granule: Granule) -> GeoGrid:
        """The granule's geolocation: MOD03 if given, else its 5 km Latitude/Longitude."""
        path = granule.geolocation or granule.path
        full = granule.geolocation is not None
        with _open_hdf(path) as sd:
            lat = _scaled(_select(sd, "Latitude", path), "Latitude", path)
            lon = _scaled(_select(sd, "Longitude", path), "Longitude", path)
            sza = _scaled(sd.select("SolarZenith"), "SolarZenith", path) \
                if "SolarZenith" in sd.datasets() else None
        want = (granule.lines, granule.frames) if full else \
            (granule.lines // mc.GEO_STEP, (granule.frames - 3) // mc.GEO_STEP + 1)
        if min(want) < 2:
            raise BuildError(f"a {granule.lines}×{granule.frames} swath is too small to "
                             "geolocate (fewer than 2 × 2 geolocation points)", granule.path)
        for name, a in (("Latitude", lat), ("Longitude", lon), ("SolarZenith", sza)):
            if a is not None and a.shape != want:
                raise BuildError(f"{name} is {a.shape[0]}×{a.shape[1]}, expected "
                                 f"{want[0]}×{want[1]} for a {granule.lines}×{granule.frames} "
                                 "swath", path)
        return cls(lat, lon, sza, 1 if full else mc.GEO_STEP, 0 if full else mc.GEO_OFFSET)

    def _weights(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, ...]:
        """Corner indices and weights for swath positions (extrapolating at the edges)."""
        ny, nx = self.lat.shape
        if self.step == 1:
            i0 = np.clip(np.floor(rows), 0, ny - 2).astype(np.int64)
            wy = rows - i0
        else:
            # Interpolate within a scan only: scans overlap (bow-tie) toward the swath edges.
            scan = np.clip(np.floor(rows / mc.LINES_PER_SCAN), 0, ny // 2 - 1).astype(np.int64)
            i0 = 2 * scan
            wy = (rows - mc.LINES_PER_SCAN * scan - self.offset) / self.step
        j0 = np.clip(np.floor((cols - self.offset) / self.step), 0, nx - 2).astype(np.int64)
        wx = (cols - self.offset - self.step * j0) / self.step
        return i0, j0, wy, wx

    @staticmethod
    def _bilinear(a: np.ndarray, i0: np.ndarray, j0: np.ndarray, wy: np.ndarray,
                  wx: np.ndarray, wrap: bool) -> np.ndarray:
        v00, v01 = a[i0, j0], a[i0, j0 + 1]
        v10, v11 = a[i0 + 1, j0], a[i0 + 1, j0 + 1]
        if wrap:  # longitudes relative to one corner, so the antimeridian does not tear
            v01, v10, v11 = ((v - v00 + 180.0) % 360.0 - 180.0 + v00 for v in (v01, v10, v11))
        top = v00 + (v01 - v00) * wx
        out = top + (v10 + (v11 - v10) * wx - top) * wy
        return (out + 180.0) % 360.0 - 180.0 if wrap else out

    def sample(self, rows: np.ndarray, cols: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(lon, lat, solar zenith) at fractional swath positions (any equal shapes)."""
        i0, j0, wy, wx = self._weights(rows, cols)
        lon = self._bilinear(self.lon, i0, j0, wy, wx, wrap=True)
        lat = self._bilinear(self.lat, i0, j0, wy, wx, wrap=False)
        sza = None if self.sza is None else self._bilinear(self.sza, i0, j0, wy, wx, False)
        return lon, lat, sza


def chip_origins(lines: int, frames: int, chip: int) -> list[tuple[int, int, int, int]]:
    """(chip row, chip col, first line, first frame) of the chips of a swath, row-major.

    The chip grid is centred: the remainders of ``lines`` and ``frames`` modulo ``chip`` are
    dropped, half at each end.
    """
    nr, nc = lines // chip, frames // chip
    r_off, c_off = (lines - nr * chip) // 2, (frames - nc * chip) // 2
    return [(i, j, r_off + i * chip, c_off + j * chip) for i in range(nr) for j in range(nc)]


def _sample_positions(r0: np.ndarray, c0: np.ndarray, chip: int) -> tuple[np.ndarray, np.ndarray]:
    """[n, 4·8 + 1] swath positions: the ring of outer pixel centres, then the chip centre."""
    p = np.linspace(0.0, chip - 1.0, _SIDE_POINTS)
    last = np.full(_SIDE_POINTS - 1, chip - 1.0)
    first = np.zeros(_SIDE_POINTS - 1)
    dy = np.concatenate([first, p[:-1], last, p[::-1][:-1], [(chip - 1) / 2]])
    dx = np.concatenate([p[:-1], last, p[::-1][:-1], first, [(chip - 1) / 2]])
    return r0[:, None] + dy[None, :], c0[:, None] + dx[None, :]


def footprint_polygon(lon: np.ndarray, lat: np.ndarray) -> BaseGeometry:
    """EPSG:4326 polygon of a ring of points; split at the antimeridian, capped at a pole."""
    step = (np.diff(lon, append=lon[:1]) + 180.0) % 360.0 - 180.0
    if abs(step.sum()) > 180.0:  # the ring winds around a pole
        pole = 90.0 if lat.mean() > 0 else -90.0
        return box(-180.0, min(lat.min(), pole), 180.0, max(lat.max(), pole))
    unwrapped = lon[0] + np.concatenate([[0.0], np.cumsum(step[:-1])])
    poly = Polygon(zip(unwrapped, lat))
    if not poly.is_valid:  # a ring folded by the bow-tie at the swath edge
        poly = poly.convex_hull
    if unwrapped.min() >= -180.0 and unwrapped.max() <= 180.0:
        return poly
    parts = []
    for turn in (-1, 0, 1):
        piece = poly.intersection(box(turn * 360 - 180, -90, turn * 360 + 180, 90))
        if not piece.is_empty and piece.area > 0:
            piece = affinity.translate(piece, xoff=-turn * 360.0)
            parts.extend(getattr(piece, "geoms", [piece]))
    return MultiPolygon([p for p in parts if isinstance(p, Polygon)])


def _day_night(sza: np.ndarray | None, flag: str | None) -> str:
    """Day/night of a chip from its solar zeniths, else the granule's DAYNIGHTFLAG."""
    if sza is None or not np.isfinite(sza).all():
        return flag or "unknown"
    day = sza < mc.DAY_SOLAR_ZENITH_DEG
    return "day" if day.all() else "night" if not day.any() else "mixed"


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChipPlan:
    """Every chip of the build, in store order.

    Attributes:
        granule: [N] index into the granule list.
        chip_row: [N] chip row in its granule's chip grid.
        chip_col: [N] chip column.
        line: [N] first swath line.
        frame: [N] first swath frame.
        lon: [N] centroid longitude.
        lat: [N] centroid latitude.
    """

    granule: np.ndarray
    chip_row: np.ndarray
    chip_col: np.ndarray
    line: np.ndarray
    frame: np.ndarray
    lon: np.ndarray
    lat: np.ndarray

    def __len__(self) -> int:
        return len(self.granule)


def _geolocate(geo: GeoGrid, line: np.ndarray, frame: np.ndarray, chip: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """[n, 33] lon, lat (and solar zenith) at the chips' sample positions."""
    rows, cols = _sample_positions(line.astype(np.float64), frame.astype(np.float64), chip)
    return geo.sample(rows, cols)


def plan_chips(granules: Sequence[Granule], chip: int) -> ChipPlan:
    """All chips of all granules (granule order, then row-major), skipping chips whose
    geolocation holds fill."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ChipPlan.__dataclass_fields__}
    for g, granule in enumerate(granules):
        origins = np.array(chip_origins(granule.lines, granule.frames, chip), np.int64)
        if origins.size == 0:
            continue
        lon, lat, _ = _geolocate(GeoGrid.load(granule), origins[:, 2], origins[:, 3], chip)
        ok = np.isfinite(lon).all(1) & np.isfinite(lat).all(1) & (np.abs(lat) <= 90).all(1)
        cols["granule"].append(np.full(int(ok.sum()), g, np.int64))
        for k, name in enumerate(("chip_row", "chip_col", "line", "frame")):
            cols[name].append(origins[ok, k])
        cols["lon"].append(lon[ok, -1])
        cols["lat"].append(lat[ok, -1])
    if not cols["granule"] or sum(a.size for a in cols["granule"]) == 0:
        raise BuildError(f"no {chip}×{chip} chip with valid geolocation fits in any granule",
                         granules[0].path.parent if granules else None,
                         "use a smaller chip size or check the granules' geolocation")
    return ChipPlan(**{k: np.concatenate(v) for k, v in cols.items()})


def split_chips(plan: ChipPlan, granules: Sequence[Granule], method: str, *,
                block_km: float, buffer_km: float, ratios: Sequence[float], seed: int,
                time_cutoffs: Sequence[str] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """[N] split labels and the store's ``split`` attribute."""
    if method == "blocks":
        labels = block_split(plan.lon, plan.lat, block_km=block_km, buffer_km=buffer_km,
                             ratios=ratios, seed=seed)
        params: dict[str, Any] = {"block_km": block_km, "buffer_km": buffer_km,
                                  "ratios": list(ratios), "seed": seed, "grid": "EPSG:6933",
                                  "buffer": "drop", "on": "chip centroids"}
    elif method == "time":
        days = np.array([granules[g].start[:10] for g in plan.granule])
        labels, params = _time_split(days, ratios, time_cutoffs)
    else:
        raise GeofmError(f"unknown split method {method!r}",
                         hint=f"use one of {', '.join(SPLIT_METHODS)}")
    labels = np.asarray(labels, dtype=object)
    counts = {s: int((labels == s).sum()) for s in SPLIT_NAMES}
    counts["excluded"] = int((labels == "").sum())
    return labels, {"method": method, "params": params, "counts": counts}


def _time_split(days: np.ndarray, ratios: Sequence[float],
                cutoffs: Sequence[str] | None) -> tuple[np.ndarray, dict[str, Any]]:
    """Split by granule start date: before/after cut-offs, or whole days in time order."""
    names = np.array(SPLIT_NAMES, dtype=object)
    if cutoffs is not None:
        try:
            cuts = [pd.Timestamp(c).strftime("%Y-%m-%d") for c in cutoffs]
        except ValueError:
            raise GeofmError(f"time cut-offs must be dates, got {list(cutoffs)!r}") from None
        if len(cuts) != 2 or cuts[0] > cuts[1]:
            raise GeofmError("time cut-offs must be two dates, validation start ≤ test start, "
                             f"got {list(cutoffs)!r}")
        codes = (days >= cuts[0]).astype(np.int64) + (days >= cuts[1])
        return names[codes], {"by": "granule start date (UTC)", "validation_from": cuts[0],
                              "test_from": cuts[1]}
    r = np.asarray(ratios, dtype=np.float64)
    if r.shape != (3,) or (r < 0).any() or abs(r.sum() - 1) > 1e-6:
        raise GeofmError(f"split ratios must be three non-negative numbers summing to 1, "
                         f"got {list(ratios)!r}")
    unique, inverse, counts = np.unique(days, return_inverse=True, return_counts=True)
    mid = np.cumsum(counts) - 0.5 * counts
    day_codes = np.searchsorted(np.cumsum(r)[:2] * counts.sum(), mid, side="right")
    return names[day_codes[inverse]], {"by": "granule start date (UTC), whole days in time "
                                       "order", "ratios": list(ratios),
                                       "days": {s: [str(d) for d in unique[day_codes == k]]
                                                for k, s in enumerate(SPLIT_NAMES)}}


# --- calibration ----------------------------------------------------------------------------


def calibrate(si: np.ndarray, cal: BandCal) -> tuple[np.ndarray, np.ndarray]:
    """Scaled integers of one band → (float32 reflectance or brightness temperature, valid).

    Args:
        si: Scaled integers (any shape, uint16).
        cal: The band's calibration.

    Returns:
        Values (NaN where invalid) and the validity mask, both ``si``'s shape.
    """
    valid = (si >= cal.lo) & (si <= cal.hi) & (si != cal.fill)
    x = cal.scale * (si.astype(np.float64) - cal.offset)
    if cal.planck is not None:
        wavenumber, slope, intercept = cal.planck
        lam = 1.0e4 / wavenumber  # µm
        valid &= x > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            t_eff = mc.PLANCK_C2 / (lam * np.log1p(mc.PLANCK_C1 / (lam**5 * x)))
        x = (t_eff - intercept) / slope
    return np.where(valid, x, np.nan).astype(np.float32), valid


def _read_strip(sd: SD, granule: Granule, line: int, chip: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """[14, chip, frames] calibrated values and validity of the lines ``line:line+chip``."""
    image = np.empty((len(granule.bands), chip, granule.frames), np.float32)
    valid = np.empty(image.shape, bool)
    by_sds: dict[str, list[int]] = {}
    for k, cal in enumerate(granule.bands):
        by_sds.setdefault(cal.sds, []).append(k)
    for name, ks in by_sds.items():
        first = min(granule.bands[k].index for k in ks)
        last = max(granule.bands[k].index for k in ks)
        si = _read(_select(sd, name, granule.path), name, granule.path,
                   start=(first, line, 0), count=(last - first + 1, chip, granule.frames))
        for k in ks:
            cal = granule.bands[k]
            image[k], valid[k] = calibrate(si[cal.index - first], cal)
    return image, valid


# --- the build ------------------------------------------------------------------------------


PLAN_FILE = "modis_plan.npy"
FILES_FILE = "modis_files.npy"
_PLAN_DTYPE = np.dtype([("granule", "<i4"), ("chip_row", "<i4"), ("chip_col", "<i4"),
                        ("line", "<i4"), ("frame", "<i4"), ("split", "i1")])


def _save_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def save_plan(out: Path, plan: ChipPlan, labels: np.ndarray, granules: Sequence[Granule]) -> None:
    """Write the plan beside the unfinished store, where every task reads its slice.

    Tasks then carry only the store path, however many chips there are: ``modis_plan.npy``
    (one 21-byte record per chip) and ``modis_files.npy`` (granule and geolocation paths), both
    memory-mapped, in the store's build directory (removed when the store is finalized).
    """
    rec = np.empty(len(plan), _PLAN_DTYPE)
    for name in ("granule", "chip_row", "chip_col", "line", "frame"):
        rec[name] = getattr(plan, name)
    codes = {s: k for k, s in enumerate(SPLIT_NAMES)}
    rec["split"] = [codes.get(label, -1) for label in labels]
    files = np.array([[str(g.path.resolve()), str(g.geolocation.resolve())
                       if g.geolocation is not None else ""] for g in granules])
    _save_npy(out / BUILD_DIR / PLAN_FILE, rec)
    _save_npy(out / BUILD_DIR / FILES_FILE, files)


@dataclass(frozen=True)
class _RegionTask:
    """Picklable Dask task writing one region of the store from the saved plan."""

    out: Path
    chip: int
    shard_chips: int

    def __call__(self, region: int) -> None:
        build = self.out / BUILD_DIR
        plan = np.load(build / PLAN_FILE, mmap_mode="r")
        recs = np.array(plan[region * self.shard_chips:(region + 1) * self.shard_chips])
        files = np.load(build / FILES_FILE, mmap_mode="r")
        n, c = len(recs), len(BAND_SETS["modis14"])
        image = np.empty((n, c, self.chip, self.chip), np.float32)
        valid = np.empty(image.shape, bool)
        rows: list[dict[str, Any]] = []
        for g in dict.fromkeys(recs["granule"].tolist()):
            # The plan is granule-major, so a granule's chips are contiguous in the region.
            pos = np.flatnonzero(recs["granule"] == g)
            part = slice(int(pos[0]), int(pos[-1]) + 1)
            path, geo = (str(f) for f in files[g])
            granule = read_granule(Path(path), Path(geo) if geo else None)
            rows += self._granule_chips(granule, recs[part], image[part], valid[part])
        table = gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326")
        table["tile"] = table["tile"].astype("string")  # all null, typed as reBEN's tile ids
        write_region(self.out, region, image, table, valid=valid)

    def _granule_chips(self, granule: Granule, recs: np.ndarray, image: np.ndarray,
                       valid: np.ndarray) -> list[dict[str, Any]]:
        """Fill ``image``/``valid`` (``[n, C, H, W]`` views) with the chips ``recs`` of one
        granule; return their chip-table rows."""
        chip = self.chip
        lon, lat, sza = _geolocate(GeoGrid.load(granule), recs["line"], recs["frame"], chip)
        rows = []
        with _open_hdf(granule.path) as sd:
            strip_line, strip = -1, (np.empty(0), np.empty(0))
            for k, rec in enumerate(recs):
                line, frame = int(rec["line"]), int(rec["frame"])
                if line != strip_line:
                    strip_line, strip = line, _read_strip(sd, granule, line, chip)
                image[k] = strip[0][:, :, frame:frame + chip]
                valid[k] = strip[1][:, :, frame:frame + chip]
                rows.append(_chip_row(granule, rec, lon[k], lat[k],
                                      None if sza is None else sza[k], float(valid[k].mean())))
        return rows


def _chip_row(granule: Granule, rec: np.void, lon: np.ndarray, lat: np.ndarray,
              sza: np.ndarray | None, valid_fraction: float) -> dict[str, Any]:
    """The chip-table row of one chip; ``lon``/``lat``/``sza`` at its sample positions."""
    return {
        "chip_id": f"{granule.granule_id}_r{int(rec['chip_row']):04d}_c{int(rec['chip_col']):04d}",
        "geometry": footprint_polygon(lon[:-1], lat[:-1]),
        "centroid_lon": float(lon[-1]),
        "centroid_lat": float(lat[-1]),
        "crs": "EPSG:4326",
        "transform": np.full(6, np.nan),
        "native_x": float(lon[-1]),
        "native_y": float(lat[-1]),
        "time": pd.Timestamp(granule.start),
        "source": granule.short_name,
        "tile": None,
        "split": SPLIT_NAMES[rec["split"]] if rec["split"] >= 0 else "",
        "day_night": _day_night(sza, granule.day_night_flag),
        "valid_fraction": valid_fraction,
        "granule": granule.granule_id,
        "platform": granule.platform,
        "line": int(rec["line"]),
        "frame": int(rec["frame"]),
    }


def fingerprint(granules: Sequence[Granule], params: dict[str, Any]) -> str:
    """Hash of the input files (name, size, modification time) and the build parameters."""
    files = []
    for g in granules:
        for f in (g.path, g.geolocation):
            if f is not None:
                st = f.stat()
                files.append([f.name, st.st_size, st.st_mtime_ns])
    blob = json.dumps({"builder": "modis", "version": 1, "files": files, "params": params},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_params(chip: int, split: str) -> None:
    if not isinstance(chip, int | np.integer) or chip < 2:
        raise GeofmError(f"chip must be an integer of at least 2 pixels, got {chip!r}")
    if split not in SPLIT_METHODS:
        raise GeofmError(f"unknown split method {split!r}",
                         hint=f"use one of {', '.join(SPLIT_METHODS)}")


def build_modis(
    src: str | Path | Sequence[str | Path],
    out: str | Path,
    *,
    geolocation: str | Path | Sequence[str | Path] | None = None,
    chip: int = CHIP,
    split: str = "blocks",
    block_km: float = 512.0,
    buffer_km: float = 0.0,
    ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    time_cutoffs: tuple[str, str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    shard_chips: int = SHARD_CHIPS,
    progress: bool = True,
) -> Path:
    """Build a chip store of SatVision-TOA's 14 MODIS bands from L1B 1 km granules.

    Args:
        src: Folder of ``M?D021KM.*.hdf`` granules, or a list of granule files.
        out: Output ``.zarr``; an unfinished build of the same inputs there is resumed.
        geolocation: Folder or list of MOD03/MYD03 files (one per granule) for full-resolution
            footprints; default: the granules' own 5 km Latitude/Longitude.
        chip: Chip side in pixels (SatVision-TOA: 128).
        split: ``"blocks"`` (spatial blocks on an equal-area grid) or ``"time"``.
        block_km: Block side for ``blocks``.
        buffer_km: Chips this close to a block of another split are excluded (``blocks``).
        ratios: Train/validation/test fractions (``blocks``; ``time`` without cut-offs).
        seed: Block shuffle seed.
        time_cutoffs: ``(validation_from, test_from)`` dates for ``time``: granules starting
            before the first are train, before the second validation, the rest test.
        scheduler: Dask scheduler (see :func:`geofm.build.runner.run_regions`).
        workers: Local worker processes.
        shard_chips: Chips per shard (and per build task).
        progress: Show a progress bar.

    Returns:
        The finished store's path.

    Raises:
        BuildError: Missing, unreadable or malformed granules or geolocation files.
        GeofmError: Bad parameters.
    """
    _check_params(chip, split)
    files = find_granules(src)
    geo = match_geolocation(geolocation, files)
    granules = sorted((read_granule(f, geo.get(f)) for f in files),
                      key=lambda g: (g.start, g.granule_id, g.path.name))
    ids = [g.granule_id for g in granules]
    dup = next((g for g in granules if ids.count(g.granule_id) > 1), None)
    if dup is not None:
        raise BuildError(f"granule {dup.granule_id} is given twice", dup.path,
                         "keep one file per granule")
    plan = plan_chips(granules, chip)
    labels, split_attrs = split_chips(plan, granules, split, block_km=block_km,
                                      buffer_km=buffer_km, ratios=ratios, seed=seed,
                                      time_cutoffs=time_cutoffs)
    params = {"chip": chip, "split": split_attrs["method"], "split_params": split_attrs["params"],
              "shard_chips": shard_chips}
    out = Path(out)
    spec = StoreSpec(
        num_chips=len(plan),
        bands=list(BAND_SETS["modis14"]),
        chip_size=(chip, chip),
        dtype="float32",
        has_valid=True,
        gsd_m=1000.0,
        provenance={
            "builder": "modis",
            "source": [str(g.path.resolve()) for g in granules],
            "geolocation": "MOD03/MYD03" if geo else "granule 5 km Latitude/Longitude",
            "calibration": "reflective: reflectance_scales × (SI − reflectance_offsets); "
                           "emissive: inverse Planck of radiance_scales × (SI − radiance_offsets) "
                           "at effective wavenumbers with temperature correction (modis_bright, "
                           "Gumley 2002)",
            "l1b_bands": [modis_band(b) for b in mc.OUTPUT_BANDS],
            "chip_grid": "centred in the swath, edge remainders dropped",
        },
        fingerprint=fingerprint(granules, params),
        shard_chips=shard_chips,
    )
    create_store(out, spec)
    save_plan(out, plan, labels, granules)
    todo = sorted(set(range(spec.num_regions)) - completed_regions(out))
    task = _RegionTask(out, chip, shard_chips)
    run_regions(task, todo, scheduler=scheduler, workers=workers, desc="modis", progress=progress)
    finalize_store(out, {"split": split_attrs})
    return out
