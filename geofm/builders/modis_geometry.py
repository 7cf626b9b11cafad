"""MODIS swath geometry: geolocation grids, chip origins and footprints."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.geometry.base import BaseGeometry

from geofm.builders import modis_constants as mc
from geofm.builders.modis_granule import _SIDE_POINTS, Granule, _open_hdf, _read, _select
from geofm.errors import BuildError


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
    parts: list[Any] = []  # shapely polygons
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


