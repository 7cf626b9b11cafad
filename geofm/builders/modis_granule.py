"""MODIS L1B granules: reading HDF4, calibration attributes and geolocation files."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from geofm.builders import modis_constants as mc
from geofm.errors import BuildError
from geofm.extras import require

if TYPE_CHECKING:
    from pyhdf.error import HDF4Error
    from pyhdf.SD import SD, SDC
else:  # pyhdf is the optional "modis" extra
    _pyhdf_sd = require("pyhdf.SD", "modis")
    SD, SDC = _pyhdf_sd.SD, _pyhdf_sd.SDC
    HDF4Error = require("pyhdf.error", "modis").HDF4Error

CHIP = 128
SPLIT_METHODS = ("blocks", "time")
_GRANULE_RE = re.compile(r"(M[OY]D021KM)\.(A\d{7}\.\d{4})\.(\d{3})")
_GEO_RE = re.compile(r"(M[OY]D03)\.(A\d{7}\.\d{4})\.(\d{3})")
_DAY_NIGHT = {"day": "day", "night": "night", "both": "mixed"}
_SIDE_POINTS = 9



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


