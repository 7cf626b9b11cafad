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
  :mod:`geofm.builders.modis_constants`). A pixel whose radiance is not positive has no
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
rows: ``blocks`` (spatial blocks of :func:`geofm.curation.splits.block_split` on chip centroids,
default) or ``time`` (by the UTC date of the granule start: explicit cut-off dates, or whole
days in time order filled into train, validation, test by the ratios).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import geopandas as gpd
import numpy as np
import pandas as pd

from geofm.bands import BAND_SETS, modis_band
from geofm.builders import modis_constants as mc
from geofm.builders.modis_geometry import (
    GeoGrid,
    _day_night,
    _sample_positions,
    chip_origins,
    footprint_polygon,
)
from geofm.builders.modis_granule import (
    CHIP,
    SPLIT_METHODS,
    BandCal,
    Granule,
    _open_hdf,
    _read,
    _select,
    find_granules,
    match_geolocation,
    read_granule,
)
from geofm.builders.runner import check_engine, run_regions
from geofm.curation.splits import SPLIT_NAMES, block_split
from geofm.errors import BuildError, GeofmError
from geofm.io.schema import BUILD_DIR, SHARD_CHIPS
from geofm.io.space import reporting_full_disk
from geofm.io.writer import StoreSpec, completed_regions, create_store, finalize_store, write_region
from geofm.levels import BUILDER_LEVELS

if TYPE_CHECKING:
    from pyhdf.SD import SD

__all__ = [
    "CHIP",
    "SPLIT_METHODS",
    "BandCal",
    "GeoGrid",
    "Granule",
    "build_modis",
    "calibrate",
    "chip_origins",
    "find_granules",
    "fingerprint",
    "footprint_polygon",
    "match_geolocation",
    "plan_chips",
    "read_granule",
    "split_chips",
]

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
        scheduler: Dask scheduler (see :func:`geofm.builders.runner.run_regions`).
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
    check_engine(scheduler, workers)
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
    with reporting_full_disk(out, spec.region_bytes(range(spec.num_regions))):
        save_plan(out, plan, labels, granules)
    todo = sorted(set(range(spec.num_regions)) - completed_regions(out))
    task = _RegionTask(out, chip, shard_chips)
    run_regions(task, todo, scheduler=scheduler, workers=workers, desc="modis", progress=progress,
                output=out)
    finalize_store(out, {"split": split_attrs,
                         "processing_levels": BUILDER_LEVELS["modis"]})
    return out
