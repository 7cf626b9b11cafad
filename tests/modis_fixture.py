"""Generator of small MODIS Level-1B 1 km granules (MOD021KM / MYD021KM) and MOD03 files.

geofm ships no real granule, so the tests build their own: HDF4 files laid out as the MODIS
L1B 1 km file specification describes them.

- Earth-view SDS ``EV_250_Aggr1km_RefSB`` (bands 1-2), ``EV_500_Aggr1km_RefSB`` (3-7),
  ``EV_1KM_RefSB`` (8-19 with 13lo/hi, 14lo/hi, and 26) and ``EV_1KM_Emissive`` (20-25, 27-36):
  ``uint16 [band, 10*nscans, Max_EV_frames]`` with dimension names
  ``Band_250M:MODIS_SWATH_Type_L1B`` …, ``10*nscans:MODIS_SWATH_Type_L1B``,
  ``Max_EV_frames:MODIS_SWATH_Type_L1B``; attributes ``long_name``, ``units``, ``band_names``,
  ``valid_range`` [0, 32767], ``_FillValue`` 65535, ``radiance_scales``/``_offsets``/``_units``
  and, on the reflective SDS, ``reflectance_scales``/``_offsets``/``_units`` and
  ``corrected_counts_scales``/``_offsets``/``_units``.
- ``Latitude``/``Longitude`` ``float32 [2*nscans, 1KM_geo_dim]`` sampled at lines and frames
  2, 7, 12, …; ``SolarZenith`` ``int16`` with ``scale_factor`` 0.01 on the same grid.
- Global attributes ``CoreMetadata.0`` (ECS ODL text with LOCALGRANULEID, DAYNIGHTFLAG,
  SHORTNAME, RANGEBEGINNINGDATE/TIME, ASSOCIATEDPLATFORMSHORTNAME), ``Number of Scans`` and
  ``Max Earth View Frames``.

Pixels come from smooth seeded fields: reflectance about 0.17-0.59 and brightness temperature
about 240-296 K, turned into scaled integers with plausible per-band scales and offsets. Geolocation
is an affine function of (line, frame), so interpolated footprints can be checked exactly. At
night the reflective SDS hold fill, as real night granules do.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyhdf.SD import SD, SDC

SWATH = ":MODIS_SWATH_Type_L1B"
SDS_BANDS: dict[str, tuple[str, str]] = {
    "EV_250_Aggr1km_RefSB": ("Band_250M", "1,2"),
    "EV_500_Aggr1km_RefSB": ("Band_500M", "3,4,5,6,7"),
    "EV_1KM_RefSB": ("Band_1KM_RefSB", "8,9,10,11,12,13lo,13hi,14lo,14hi,15,16,17,18,19,26"),
    "EV_1KM_Emissive": ("Band_1KM_Emissive", "20,21,22,23,24,25,27,28,29,30,31,32,33,34,35,36"),
}
EMISSIVE_UM: dict[str, float] = {
    "20": 3.79, "21": 3.99, "22": 3.97, "23": 4.06, "24": 4.47, "25": 4.55, "27": 6.77,
    "28": 7.34, "29": 8.53, "30": 9.73, "31": 11.01, "32": 12.03, "33": 13.36, "34": 13.68,
    "35": 13.91, "36": 14.19,
}
EMISSIVE_RADIANCE_SCALES: dict[str, float] = {
    "20": 6.9e-5, "21": 3.1e-3, "22": 6.9e-5, "23": 7.9e-5, "24": 3.2e-5, "25": 5.6e-5,
    "27": 1.2e-4, "28": 2.0e-4, "29": 4.9e-4, "30": 3.2e-4, "31": 8.4e-4, "32": 7.3e-4,
    "33": 3.1e-4, "34": 2.4e-4, "35": 2.0e-4, "36": 1.2e-4,
}
FILL = 65535
SATURATED = 65533
L1A_MISSING = 65534
_C1, _C2 = 1.191042e8, 1.4387752e4
_TYPES = {np.dtype(np.uint16): SDC.UINT16, np.dtype(np.int16): SDC.INT16,
          np.dtype(np.int32): SDC.INT32, np.dtype(np.float32): SDC.FLOAT32,
          np.dtype(np.float64): SDC.FLOAT64}


def granule_name(platform: str, start: str, product: str = "021KM", collection: str = "061") -> str:
    """LAADS DAAC file name, e.g. ``MOD021KM.A2024001.1200.061.2024001120000.hdf``."""
    t = pd.Timestamp(start)
    prefix = "MOD" if platform == "Terra" else "MYD"
    return f"{prefix}{product}.A{t:%Y%j}.{t:%H%M}.{collection}.{t:%Y%j%H%M%S}.hdf"


def geolocation(line: np.ndarray, frame: np.ndarray, lines: int, frames: int, lat0: float,
                lon0: float) -> tuple[np.ndarray, np.ndarray]:
    """(lat, lon) of swath positions: an affine, slightly skewed ~1 km grid around (lat0, lon0)."""
    dl, df = line - lines / 2, frame - frames / 2
    lat = lat0 - 0.009 * dl + 0.0005 * df
    lon = lon0 + 0.009 / np.cos(np.radians(lat0)) * df + 0.001 * dl
    return lat, lon


def solar_zenith(frame: np.ndarray, frames: int, sza0: float) -> np.ndarray:
    """Solar zenith (degrees) rising across the swath."""
    return sza0 + 0.02 * (frame - frames / 2)


def _odl(name: str, value: str) -> str:
    return (f"    OBJECT                 = {name}\n      NUM_VAL              = 1\n"
            f"      VALUE                = {value}\n    END_OBJECT             = {name}\n")


def core_metadata(short_name: str, local_id: str, start: str, day_night: str,
                  platform: str) -> str:
    """ECS inventory metadata (the parts the builder reads) as ODL text."""
    t0 = pd.Timestamp(start)
    t1 = t0 + pd.Timedelta(minutes=5)
    body = (
        "GROUP                  = INVENTORYMETADATA\n  GROUPTYPE            = MASTERGROUP\n\n"
        "  GROUP                  = ECSDATAGRANULE\n"
        + _odl("LOCALGRANULEID", f'"{local_id}"') + _odl("DAYNIGHTFLAG", f'"{day_night}"')
        + "  END_GROUP              = ECSDATAGRANULE\n\n"
        "  GROUP                  = COLLECTIONDESCRIPTIONCLASS\n"
        + _odl("SHORTNAME", f'"{short_name}"') + _odl("VERSIONID", "61")
        + "  END_GROUP              = COLLECTIONDESCRIPTIONCLASS\n\n"
        "  GROUP                  = RANGEDATETIME\n"
        + _odl("RANGEBEGINNINGDATE", f'"{t0:%Y-%m-%d}"')
        + _odl("RANGEBEGINNINGTIME", f'"{t0:%H:%M:%S}.000000"')
        + _odl("RANGEENDINGDATE", f'"{t1:%Y-%m-%d}"')
        + _odl("RANGEENDINGTIME", f'"{t1:%H:%M:%S}.000000"')
        + "  END_GROUP              = RANGEDATETIME\n\n"
        "  GROUP                  = ASSOCIATEDPLATFORMINSTRUMENTSENSOR\n"
        + _odl("ASSOCIATEDPLATFORMSHORTNAME", f'"{platform}"')
        + _odl("ASSOCIATEDINSTRUMENTSHORTNAME", '"MODIS"')
        + "  END_GROUP              = ASSOCIATEDPLATFORMINSTRUMENTSENSOR\n\n"
        "END_GROUP              = INVENTORYMETADATA\n\nEND\n"
    )
    return body


def _set_attr(obj: Any, name: str, value: Any) -> None:
    if isinstance(value, str):
        obj.attr(name).set(SDC.CHAR8, value)
        return
    arr = np.atleast_1d(np.asarray(value))
    values = arr.tolist() if arr.size > 1 else arr.tolist()[0]
    obj.attr(name).set(_TYPES[arr.dtype], values)


def _write_sds(sd: SD, name: str, data: np.ndarray, dims: tuple[str, ...],
               attrs: Mapping[str, Any]) -> None:
    sds = sd.create(name, _TYPES[data.dtype], data.shape)
    for k, dim in enumerate(dims):
        sds.dim(k).setname(dim)
    sds[:] = data
    for key, value in attrs.items():
        if value is not None:
            _set_attr(sds, key, value)
    sds.endaccess()


def _smooth(rng: np.random.Generator, lines: int, frames: int) -> np.ndarray:
    """A smooth field in [0, 1] of shape [lines, frames]."""
    y, x = np.mgrid[0:lines, 0:frames] / max(lines, frames)
    fy, fx, ph = rng.uniform(1.0, 4.0, 3)
    wave = np.sin(2 * np.pi * (fx * x + fy * y) + ph)
    return 0.5 + 0.25 * wave + 0.2 * rng.random((lines, frames))


def _planck_radiance(t: np.ndarray, um: float) -> np.ndarray:
    """Spectral radiance (W m⁻² sr⁻¹ µm⁻¹) of a black body at ``t`` K and ``um`` µm."""
    return _C1 / (um**5 * np.expm1(_C2 / (um * t)))


def _earth_view(rng: np.random.Generator, sds: str, bands: list[str], lines: int, frames: int,
                night: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """Scaled integers and calibration attributes of one Earth-view SDS."""
    n = len(bands)
    reflective = sds != "EV_1KM_Emissive"
    rad_scales = np.array([EMISSIVE_RADIANCE_SCALES[b] for b in bands] if not reflective else
                          rng.uniform(0.005, 0.03, n), np.float32)
    rad_offsets = np.array(rng.uniform(1000.0, 2800.0, n).round(2) if not reflective else
                           np.zeros(n), np.float32)
    refl_scales = rng.uniform(2.5e-5, 5.5e-5, n).astype(np.float32)
    refl_offsets = np.full(n, 316.9722 if sds == "EV_1KM_RefSB" else 0.0, np.float32)
    si = np.empty((n, lines, frames), np.float64)
    for k, band in enumerate(bands):
        field = _smooth(rng, lines, frames)
        if reflective:
            si[k] = (0.02 + 0.6 * field) / refl_scales[k] + refl_offsets[k]
        else:
            radiance = _planck_radiance(220.0 + 80.0 * field, EMISSIVE_UM[band])
            si[k] = radiance / rad_scales[k] + rad_offsets[k]
    si = np.clip(np.rint(si), 0, 32767).astype(np.uint16)
    if reflective and night:
        si[:] = FILL
    attrs: dict[str, Any] = {
        "long_name": f"Earth View {sds[3:].replace('_', ' ')} Scaled Integers",
        "units": "none",
        "valid_range": np.array([0, 32767], np.uint16),
        "_FillValue": np.uint16(FILL),
        "band_names": ",".join(bands),
        "radiance_scales": rad_scales,
        "radiance_offsets": rad_offsets,
        "radiance_units": "Watts/m^2/micrometer/steradian",
    }
    if reflective:
        attrs.update({
            "reflectance_scales": refl_scales, "reflectance_offsets": refl_offsets,
            "reflectance_units": "none",
            "corrected_counts_scales": np.full(n, 0.1245, np.float32),
            "corrected_counts_offsets": np.zeros(n, np.float32),
            "corrected_counts_units": "counts",
        })
    return si, attrs


def write_mod021km(
    path: str | Path,
    *,
    lines: int = 260,
    frames: int = 270,
    seed: int = 0,
    start: str = "2024-01-01T12:00:00",
    platform: str = "Terra",
    day_night: str = "Day",
    lat0: float = 45.0,
    lon0: float = 10.0,
    sza0: float = 35.0,
    flags: Mapping[tuple[str, int, int], int] | None = None,
    attrs: Mapping[str, Mapping[str, Any]] | None = None,
    omit: tuple[str, ...] = (),
) -> Path:
    """Write a MOD021KM/MYD021KM-structured granule.

    Args:
        path: File to write, or a folder to write it into under its LAADS DAAC name.
        lines: Swath lines (a multiple of 10: 10 detectors per scan; real granules: 2030).
        frames: Earth-view frames (real granules: 1354).
        seed: Seed of the pixel fields and calibration coefficients.
        start: Granule start time (UTC).
        platform: ``"Terra"`` (MOD021KM) or ``"Aqua"`` (MYD021KM).
        day_night: DAYNIGHTFLAG, ``"Day"``, ``"Night"`` or ``"Both"``; at ``"Night"`` the
            reflective SDS hold fill.
        lat0: Latitude of the swath centre.
        lon0: Longitude of the swath centre.
        sza0: Solar zenith at the swath centre (degrees).
        flags: ``{(band, line, frame): value}`` scaled integers to plant (fill, saturated...).
        attrs: ``{sds: {attribute: value}}`` overrides; a value of None removes the attribute.
        omit: SDS names to leave out.

    Returns:
        The written file.
    """
    if lines % 10:
        raise ValueError("lines must be a multiple of 10 (10 detectors per scan)")
    short = ("MOD" if platform == "Terra" else "MYD") + "021KM"
    path = Path(path)
    if path.is_dir():
        path = path / granule_name(platform, start)
    rng = np.random.default_rng(seed)
    sd = SD(str(path), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    dims = (SWATH, "10*nscans" + SWATH, "Max_EV_frames" + SWATH)
    for sds, (band_dim, names) in SDS_BANDS.items():
        bands = names.split(",")
        si, sds_attrs = _earth_view(rng, sds, bands, lines, frames, day_night == "Night")
        for (band, line, frame), value in (flags or {}).items():
            if band in bands:
                si[bands.index(band), line, frame] = value
        if sds in omit:
            continue
        _write_sds(sd, sds, si, (band_dim + dims[0], *dims[1:]),
                   {**sds_attrs, **(attrs or {}).get(sds, {})})
    _write_geolocation(sd, lines, frames, lat0, lon0, sza0, omit, attrs or {})
    _set_attr(sd, "CoreMetadata.0", core_metadata(short, path.name, start, day_night, platform))
    _set_attr(sd, "Number of Scans", np.int32(lines // 10))
    _set_attr(sd, "Max Earth View Frames", np.int32(frames))
    sd.end()
    return path


def _write_geolocation(sd: SD, lines: int, frames: int, lat0: float, lon0: float, sza0: float,
                       omit: tuple[str, ...], attrs: Mapping[str, Mapping[str, Any]]) -> None:
    """5 km Latitude, Longitude, SolarZenith at lines and frames 2, 7, 12, …"""
    rows = np.arange(2, lines, 5, dtype=np.float64)
    cols = np.arange(2, frames - 1, 5, dtype=np.float64)
    line, frame = np.meshgrid(rows, cols, indexing="ij")
    lat, lon = geolocation(line, frame, lines, frames, lat0, lon0)
    sza = np.rint(solar_zenith(frame, frames, sza0) / 0.01).astype(np.int16)
    dims = ("2*nscans" + SWATH, "1KM_geo_dim" + SWATH)
    for name, data, extra in (
        ("Latitude", lat.astype(np.float32), {"valid_range": np.array([-90, 90], np.float32)}),
        ("Longitude", lon.astype(np.float32), {"valid_range": np.array([-180, 180], np.float32)}),
        ("SolarZenith", sza, {"scale_factor": np.float64(0.01),
                              "valid_range": np.array([0, 18000], np.int16)}),
    ):
        if name in omit:
            continue
        fill = np.int16(-32767) if data.dtype == np.int16 else np.float32(-999.0)
        _write_sds(sd, name, data, dims, {"units": "degrees", "_FillValue": fill, **extra,
                                          **attrs.get(name, {})})


def write_mod03(
    path: str | Path,
    *,
    lines: int = 260,
    frames: int = 270,
    start: str = "2024-01-01T12:00:00",
    platform: str = "Terra",
    lat0: float = 45.0,
    lon0: float = 10.0,
    sza0: float = 35.0,
) -> Path:
    """Write a MOD03/MYD03-structured geolocation file (full-resolution Latitude, Longitude,
    SolarZenith on ``nscans*10 × mframes``), consistent with :func:`write_mod021km`'s grid."""
    path = Path(path)
    if path.is_dir():
        path = path / granule_name(platform, start, product="03")
    short = ("MOD" if platform == "Terra" else "MYD") + "03"
    sd = SD(str(path), SDC.WRITE | SDC.CREATE | SDC.TRUNC)
    line, frame = np.meshgrid(np.arange(lines, dtype=np.float64),
                              np.arange(frames, dtype=np.float64), indexing="ij")
    lat, lon = geolocation(line, frame, lines, frames, lat0, lon0)
    sza = np.rint(solar_zenith(frame, frames, sza0) / 0.01).astype(np.int16)
    dims = ("nscans*10:MODIS_Swath_Type_GEO", "mframes:MODIS_Swath_Type_GEO")
    _write_sds(sd, "Latitude", lat.astype(np.float32), dims,
               {"units": "degrees", "_FillValue": np.float32(-999.0)})
    _write_sds(sd, "Longitude", lon.astype(np.float32), dims,
               {"units": "degrees", "_FillValue": np.float32(-999.0)})
    _write_sds(sd, "SolarZenith", sza, dims,
               {"units": "degrees", "_FillValue": np.int16(-32767),
                "scale_factor": np.float64(0.01)})
    _set_attr(sd, "CoreMetadata.0", core_metadata(short, path.name, start, "Day", platform))
    sd.end()
    return path
