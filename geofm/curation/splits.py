"""Geography-aware train/validation/test splits over chip centroids.

Every function here is a plain function over numpy arrays (centroid longitudes and latitudes,
native coordinates, tile ids, region names) and returns one split label per chip:
``"train"``, ``"validation"``, ``"test"``, or ``""`` for a chip deliberately left out (a buffer
chip, a chip outside every polygon, a chip without a region). Results depend only on the inputs
and the seed, never on the order of the chips or on global random state.

Four rules:

- :func:`reben_tile_split` — reBEN's tile-border rule for any Sentinel-2-tiled data: each tile's
  outer ring is train (50 % of its area), the middle ring validation (25 %), the inner square test
  (25 %), by chip centroid.
- :func:`block_split` — equal-area spatial blocks shuffled into splits to match target ratios,
  with a buffer that drops chips close to a block of another split.
- :func:`region_split` — whole regions (a ``country`` column, say) assigned to splits.
- :func:`polygon_split` — the split of the polygon (from any vector file) holding each centroid.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyproj

from geofm.errors import GeofmError

__all__ = [
    "SPLIT_NAMES",
    "block_split",
    "mgrs_tile_origin",
    "polygon_split",
    "reben_tile_split",
    "region_split",
]

SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")
"""The split labels, in code order 0, 1, 2; code -1 is the excluded label ``""``."""

# Code -1 indexes the last entry, so ``_LABELS[codes]`` maps -1 to "".
_LABELS = np.array([*SPLIT_NAMES, ""], dtype=object)

# --- Sentinel-2 tiles and the MGRS 100 km grid ------------------------------------------------

S2_TILE_SIDE_M = 109_800.0
"""Side of a Sentinel-2 tile in metres (the 100 km MGRS square plus a 9.8 km overlap)."""

REBEN_TRAIN_WIDTH_M = S2_TILE_SIDE_M * (2.0 - math.sqrt(2.0)) / 4.0  # 16,079.6 m
REBEN_TEST_DISTANCE_M = S2_TILE_SIDE_M / 4.0  # 27,450 m: the inner square of side s/2

# Centroids may lie this far outside the nominal tile square: real S2 tile origins sit 0-40 m off
# the 100 km grid corner, and chip grids are cut from those origins.
_TILE_TOLERANCE_M = 100.0

_COLUMN_SETS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")  # indexed by zone % 3
_ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"  # cycles every 2,000,000 m of northing
_ROW_CYCLE_M = 2_000_000.0
_TILE_RE = re.compile(r"^T?(\d{1,2})([C-HJ-NP-X])([A-HJ-NP-Z])([A-HJ-NP-V])$")
_UTM_EPSG_RE = re.compile(r"^EPSG:(32[67])(\d{2})$", re.IGNORECASE)

# --- EASE-Grid 2.0 (EPSG:6933): Lambert cylindrical equal-area on WGS 84, true at ±30° -------

_WGS84_E2 = 0.00669437999014132
_EASE_K0 = math.cos(math.radians(30.0)) / math.sqrt(
    1.0 - _WGS84_E2 * math.sin(math.radians(30.0)) ** 2
)
_TO_EASE2 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:6933", always_xy=True)

# Neighbour offsets (column step, row step) of a block: 4 edges, then 4 corners.
_NEIGHBOURS = ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (1, -1), (-1, 1), (1, 1))

# Dense block grids up to this many cells are indexed directly; larger ones are sorted.
_DENSE_GRID_CELLS = 1 << 26


# --- input checks --------------------------------------------------------------------------


def _float_array(name: str, values: Any, n: int | None = None) -> np.ndarray:
    """Return ``values`` as a finite 1-D float64 array, raising GeofmError otherwise."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeofmError(f"{name} must be numeric: {exc}") from None
    if arr.ndim != 1:
        raise GeofmError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise GeofmError(f"{name} is empty: there are no chips to split")
    if n is not None and arr.size != n:
        raise GeofmError(f"{name} has {arr.size} values but there are {n} chips")
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr))[0])
        raise GeofmError(f"{name} holds a non-finite value (chip {bad}: {arr[bad]})")
    return arr


def _lonlat(lon: Any, lat: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check centroid longitudes and latitudes (degrees, EPSG:4326)."""
    lon_a = _float_array("lon", lon)
    lat_a = _float_array("lat", lat, lon_a.size)
    if np.abs(lat_a).max() > 90.0:
        raise GeofmError(f"lat must lie in [-90, 90] degrees, got {np.abs(lat_a).max():g}")
    if np.abs(lon_a).max() > 180.0:
        raise GeofmError(f"lon must lie in [-180, 180] degrees, got {np.abs(lon_a).max():g}")
    return lon_a, lat_a


def _check_ratios(ratios: Sequence[float]) -> np.ndarray:
    """Return (train, validation, test) ratios as a float64 array of shape [3]."""
    try:
        r = np.asarray(ratios, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        r = np.array([np.nan])
    if r.size != 3 or not np.isfinite(r).all() or (r < 0).any() or abs(r.sum() - 1.0) > 1e-6:
        raise GeofmError(
            "split ratios must be three non-negative numbers (train, validation, test) "
            f"summing to 1, got {ratios!r}"
        )
    return r / r.sum()


def _factorize(name: str, values: Any, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Codes [N] int64 (-1 for null) and unique values of a column of labels."""
    if not isinstance(values, (pd.Series, pd.Index, pd.Categorical, np.ndarray)):
        values = np.asarray(values, dtype=object)
    if getattr(values, "ndim", 1) != 1:
        raise GeofmError(f"{name} must be one-dimensional")
    if len(values) == 0:
        raise GeofmError(f"{name} is empty: there are no chips to split")
    if n is not None and len(values) != n:
        raise GeofmError(f"{name} has {len(values)} values but there are {n} chips")
    codes, uniques = pd.factorize(values, use_na_sentinel=True)
    return np.asarray(codes, dtype=np.int64), np.asarray(uniques, dtype=object)


# --- reBEN tile-border rule -----------------------------------------------------------------


def _parse_tile(tile: str) -> tuple[int, bool, float, float]:
    """Zone, northern hemisphere, 100 km column easting and row northing (mod 2,000 km)."""
    m = _TILE_RE.match(str(tile).strip().upper())
    zone = int(m.group(1)) if m else 0
    if m is None or not 1 <= zone <= 60:
        raise GeofmError(
            f"unknown Sentinel-2 tile id {tile!r}: expected an MGRS tile such as '29UPU' "
            "(UTM zone 1-60, latitude band, 100 km column and row letters)"
        )
    band, col, row = m.group(2), m.group(3), m.group(4)  # bands N-X are northern
    columns = _COLUMN_SETS[zone % 3]
    if col not in columns:
        raise GeofmError(
            f"unknown Sentinel-2 tile id {tile!r}: column letter {col} is not used in UTM zone "
            f"{zone} (its columns are {columns[0]}-{columns[-1]})"
        )
    easting = (columns.index(col) + 1) * 100_000.0
    # Even zones start the row lettering 5 letters later (F sits at northing 0).
    row_index = (_ROW_LETTERS.index(row) - (5 if zone % 2 == 0 else 0)) % len(_ROW_LETTERS)
    return zone, band >= "N", easting, row_index * 100_000.0


def mgrs_tile_origin(tile: str, northing: float) -> tuple[float, float]:
    """Upper-left corner of a Sentinel-2 tile in its UTM CRS.

    The tile's upper-left corner is the upper-left corner of its MGRS 100 km square; the tile
    extends 109,800 m east and south from it. Row letters repeat every 2,000 km of northing, so
    a northing inside the tile picks the right repeat.

    Args:
        tile: MGRS tile id such as ``"29UPU"`` (a leading ``"T"`` is accepted).
        northing: a UTM northing (m) inside the tile, e.g. a chip centroid's.

    Returns:
        ``(x, y)`` of the tile's upper-left corner in metres.

    Raises:
        GeofmError: if the tile id is not a valid MGRS tile id.
    """
    _, _, easting, row_base = _parse_tile(tile)
    # The tile spans from 100 km above to 9.8 km below its square's southern edge.
    cycle = math.floor((northing - row_base + (S2_TILE_SIDE_M - 100_000.0)) / _ROW_CYCLE_M)
    return easting, row_base + cycle * _ROW_CYCLE_M + 100_000.0


def _utm_zone(crs: str) -> tuple[int, bool]:
    """UTM zone and hemisphere of a WGS 84 / UTM CRS given as text (``"EPSG:32629"``, WKT...)."""
    text = str(crs).strip()
    m = _UTM_EPSG_RE.match(text)
    if m is None:
        try:
            epsg = pyproj.CRS.from_user_input(text).to_epsg()
        except pyproj.exceptions.CRSError:
            epsg = None
        m = _UTM_EPSG_RE.match(f"EPSG:{epsg}") if epsg else None
    zone = int(m.group(2)) if m else 0
    if m is None or not 1 <= zone <= 60:
        raise GeofmError(
            f"CRS {text!r} is not a WGS 84 / UTM CRS (EPSG:326zz or EPSG:327zz), "
            "which Sentinel-2 tiles use"
        )
    return zone, m.group(1) == "326"


def reben_tile_split(tile: Any, native_x: Any, native_y: Any, crs: Any) -> np.ndarray:
    """reBEN's tile-border split, for any data cut from Sentinel-2 tiles.

    Each Sentinel-2 tile (side s = 109,800 m) is cut into an outer ring of width
    s(2-√2)/4 = 16,079.6 m (train, 50 % of the area), a middle ring of width s(√2-1)/4 =
    11,370.4 m (validation, 25 %) and an inner square of side s/2 (test, 25 %). A chip goes where
    its centroid lies, measured from the tile's upper-left corner, which comes from the MGRS tile
    id (see :func:`mgrs_tile_origin`). Chips of two overlapping tiles are split by their own tile.

    Args:
        tile: [N] MGRS tile ids such as ``"29UPU"`` (a leading ``"T"`` is accepted).
        native_x: [N] centroid easting in the chip's UTM CRS, metres.
        native_y: [N] centroid northing in the chip's UTM CRS, metres.
        crs: the chips' CRS, one string for all (``"EPSG:32629"``) or [N] strings.

    Returns:
        [N] object array of ``"train"``, ``"validation"`` or ``"test"``.

    Raises:
        GeofmError: on an empty input, a missing or malformed tile id, a CRS that is not the
            tile's UTM zone and hemisphere, or a centroid that lies outside its tile.
    """
    x = _float_array("native_x", native_x)
    y = _float_array("native_y", native_y, x.size)
    tile_codes, tiles = _factorize("tile", tile, x.size)  # [N], [T]
    if (tile_codes < 0).any():
        bad = int(np.flatnonzero(tile_codes < 0)[0])
        raise GeofmError(
            f"{int((tile_codes < 0).sum())} chips have no tile id (first: chip {bad}); "
            "the reBEN rule needs each chip's Sentinel-2 tile"
        )
    tile_crs = np.zeros(tiles.size, np.int64)  # [T] index into crs_values
    if isinstance(crs, (str, pyproj.CRS)):
        crs_values = np.array([str(crs)], dtype=object)
    else:
        crs_codes, crs_values = _factorize("crs", crs, x.size)
        if (crs_codes < 0).any():
            raise GeofmError(f"{int((crs_codes < 0).sum())} chips have no CRS")
        # One CRS per tile: record a CRS seen for each tile, then check every chip agrees.
        tile_crs[tile_codes] = crs_codes
        mixed = tile_crs[tile_codes] != crs_codes
        if mixed.any():
            i = int(np.flatnonzero(mixed)[0])
            raise GeofmError(
                f"tile {tiles[tile_codes[i]]} has chips in more than one CRS "
                f"({crs_values[crs_codes[i]]} and {crs_values[tile_crs[tile_codes[i]]]})"
            )
        del crs_codes, mixed

    zones = [_utm_zone(c) for c in crs_values]
    easting = np.empty(tiles.size)  # [T] upper-left x of each tile
    row_base = np.empty(tiles.size)  # [T] southern northing of its 100 km square, mod 2,000 km
    for t, name in enumerate(tiles):
        zone, north, easting[t], row_base[t] = _parse_tile(name)
        crs_zone, crs_north = zones[tile_crs[t]]
        if (zone, north) != (crs_zone, crs_north):
            raise GeofmError(
                f"tile {name} is in UTM zone {zone}{'N' if north else 'S'} but its chips are in "
                f"{crs_values[tile_crs[t]]} (zone {crs_zone}{'N' if crs_north else 'S'})"
            )

    half = S2_TILE_SIDE_M / 2.0
    # Work in place on [N] arrays: 13 M chips make every temporary cost ~0.1 s.
    base = row_base[tile_codes]  # [N] southern northing of the chip's square, mod 2,000 km
    # Take the 2,000 km repeat that puts the tile (100 km above to 9.8 km below its square's
    # southern edge) around the centroid; then centre the offsets on the tile's centre.
    from_centre_y = y - base
    from_centre_y += S2_TILE_SIDE_M - 100_000.0
    from_centre_y /= _ROW_CYCLE_M
    np.floor(from_centre_y, out=from_centre_y)
    from_centre_y *= _ROW_CYCLE_M
    from_centre_y += base
    from_centre_y += 100_000.0 - half
    from_centre_y -= y  # [N] metres the centroid lies below the tile's centre line
    del base
    from_centre_x = easting[tile_codes]
    from_centre_x += half
    np.subtract(x, from_centre_x, out=from_centre_x)  # [N] metres right of the centre line
    np.abs(from_centre_x, out=from_centre_x)
    np.abs(from_centre_y, out=from_centre_y)
    edge = np.maximum(from_centre_x, from_centre_y, out=from_centre_x)
    np.subtract(half, edge, out=edge)  # [N] distance to the nearest tile edge, m (< 0 outside)
    del from_centre_y
    outside = edge < -_TILE_TOLERANCE_M
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise GeofmError(
            f"{int(outside.sum())} chip centroids lie outside their Sentinel-2 tile; e.g. chip "
            f"{i} at ({x[i]:.1f}, {y[i]:.1f}) is {-edge[i]:,.0f} m outside tile "
            f"{tiles[tile_codes[i]]}",
            hint="check that tile, native_x/native_y and crs belong together",
        )
    codes = (edge >= REBEN_TRAIN_WIDTH_M).astype(np.int8)
    codes += edge >= REBEN_TEST_DISTANCE_M
    return _LABELS[codes]


# --- spatial blocks -------------------------------------------------------------------------


def _assign_by_cumulative_count(
    counts: np.ndarray, ratios: np.ndarray, order: np.ndarray
) -> np.ndarray:
    """Split codes [B] for groups taken in ``order``, filling train, then validation, then test.

    A group goes to the split whose share of the cumulative chip count holds the group's
    midpoint, so each boundary between splits lands within half a group of its target.
    """
    c = counts[order].astype(np.float64)  # [B] chips per group, shuffled
    mid = np.cumsum(c) - 0.5 * c
    bounds = np.cumsum(ratios)[:2] * c.sum()
    codes = np.empty(counts.size, np.int8)
    codes[order] = np.searchsorted(bounds, mid, side="right")
    return codes


def _ease2_parallel_scale(lat_deg: np.ndarray) -> np.ndarray:
    """EASE-Grid 2.0 scale along the parallel (projected m per ground m) at ``lat_deg``.

    The projection is equal-area, so the scale along the meridian is its reciprocal.
    """
    cos2 = np.cos(np.radians(lat_deg)) ** 2
    # sin² = 1 - cos²; the floor keeps the poles finite.
    return _EASE_K0 * np.sqrt(1.0 - _WGS84_E2 * (1.0 - cos2)) / np.sqrt(np.maximum(cos2, 1e-24))


def _buffer_conflicts(
    dx: np.ndarray,
    dy: np.ndarray,
    scale: np.ndarray,
    own: np.ndarray,
    neighbour_split: Any,
    block_m: float,
    buffer_m: float,
) -> np.ndarray:
    """Mask [M] of chips within ``buffer_m`` (ground metres) of a block of another split.

    Args:
        dx: [M] projected metres from the chip to its block's left (west) edge.
        dy: [M] projected metres from the chip to its block's bottom (south) edge.
        scale: [M] EASE-Grid 2.0 parallel scale at the chip (``_ease2_parallel_scale``).
        own: [M] the chip's split code.
        neighbour_split: callable ``(k, index) -> [m] split codes`` of neighbour ``k`` of the
            chips ``index`` (-1 where that block holds no chips).
        block_m: block side, projected metres.
        buffer_m: buffer, ground metres.

    Returns:
        [M] bool, True for a chip to drop.
    """
    # Ground distances to the four edges: projected x shrinks by the scale, y grows by it.
    west, east = dx / scale, (block_m - dx) / scale
    south, north = dy * scale, (block_m - dy) * scale
    conflict = np.zeros(dx.size, bool)
    for k, (di, dj) in enumerate(_NEIGHBOURS):
        gx = west if di < 0 else east if di > 0 else None
        gy = south if dj < 0 else north if dj > 0 else None
        if gx is None:
            dist = gy
        elif gy is None:
            dist = gx
        else:  # the nearest point of a diagonal block is the shared corner
            dist = np.hypot(gx, gy)
        assert dist is not None  # _NEIGHBOURS holds no (0, 0)
        index = np.flatnonzero((dist < buffer_m) & ~conflict)
        if index.size:
            other = neighbour_split(k, index)
            conflict[index] = (other >= 0) & (other != own[index])
    return conflict


def block_split(
    lon: Any,
    lat: Any,
    block_km: float,
    buffer_km: float,
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
) -> np.ndarray:
    """Spatial-block split with a buffer, on an equal-area grid.

    Centroids are projected to EASE-Grid 2.0 (EPSG:6933, equal-area) and binned into square
    blocks of ``block_km`` projected kilometres anchored at (0, 0) (lon 0°, equator); every block
    covers the same ground area, block_km². The non-empty blocks, in grid order, are shuffled with
    ``np.random.default_rng(seed)`` and filled greedily into train, then validation, then test, so
    each boundary between splits lands within half a block of its target chip count.

    Buffer: a chip whose ground distance to a block of a *different* split is below
    ``buffer_km`` is **dropped** (label ``""``), not moved to another split — moving would
    re-create the contact the buffer is there to prevent. The distance comes from the chip's
    distances to its block's 4 edges and 4 corners and the splits of the 8 neighbouring blocks,
    with projected distances turned into ground distances by the projection's scale at the chip
    (exact but for that scale's change across the buffer: under 0.1 % for 2 km at 70°).
    Because both sides of a border lose their buffer, kept chips of different splits are at
    least ``2 × buffer_km`` apart. As the buffer takes more from the small, mostly surrounded
    validation and test blocks than from train, the blocks are assigned a second time with
    ratios corrected by the first pass's kept fractions, so the ratios hold closely for the
    chips that remain. Blocks do not wrap across the antimeridian.

    Args:
        lon: [N] centroid longitudes, degrees (EPSG:4326).
        lat: [N] centroid latitudes, degrees (EPSG:4326).
        block_km: block side, km (projected, equal-area).
        buffer_km: buffer, ground km; 0 for none. Must reach less than one block.
        ratios: target (train, validation, test) fractions of chips, summing to 1.
        seed: seed of the block shuffle.

    Returns:
        [N] object array of ``"train"``, ``"validation"``, ``"test"`` or ``""`` (buffer).

    Raises:
        GeofmError: on empty input, bad coordinates, non-positive ``block_km``, negative
            ``buffer_km`` or one that reaches past the neighbouring blocks, or bad ratios.
    """
    lon_a, lat_a = _lonlat(lon, lat)
    r = _check_ratios(ratios)
    if not (np.isfinite(block_km) and block_km > 0):
        raise GeofmError(f"block_km must be a positive number of kilometres, got {block_km!r}")
    if not (np.isfinite(buffer_km) and buffer_km >= 0):
        raise GeofmError(f"buffer_km must be zero or a positive number of km, got {buffer_km!r}")
    block_m, buffer_m = float(block_km) * 1000.0, float(buffer_km) * 1000.0

    # In-place arithmetic throughout: at 10⁷ chips every fresh [N] temporary costs ~0.1 s.
    x, y = _TO_EASE2.transform(lon_a, lat_a)  # [N] projected metres
    corner_x = np.floor(np.divide(x, block_m), out=np.empty_like(x))  # [N] block column
    corner_y = np.floor(np.divide(y, block_m), out=np.empty_like(y))  # [N] block row
    key = corner_x.astype(np.int64)
    iy = corner_y.astype(np.int64)
    key -= key.min() - 1  # a one-block margin keeps neighbour keys inside the grid
    iy -= iy.min() - 1
    rows = int(iy.max()) + 2
    cells = (int(key.max()) + 2) * rows
    key *= rows
    key += iy  # [N] block key, ordered by (column, row)
    del iy

    if cells <= min(_DENSE_GRID_CELLS, 8 * key.size + 1_000_000):
        counts = np.bincount(key, minlength=cells)  # [cells]
        occupied = np.flatnonzero(counts)  # [B] keys of non-empty blocks, sorted
        block_of_cell = np.full(cells, -1, np.int64)
        block_of_cell[occupied] = np.arange(occupied.size)
        block = block_of_cell[key]  # [N]
        counts = counts[occupied]  # [B]

        def neighbour_block(k: int, index: np.ndarray) -> np.ndarray:
            di, dj = _NEIGHBOURS[k]
            return block_of_cell[key[index] + di * rows + dj]

    else:
        occupied, block, counts = np.unique(key, return_inverse=True, return_counts=True)
        table: dict[int, np.ndarray] = {}

        def neighbour_block(k: int, index: np.ndarray) -> np.ndarray:
            if k not in table:  # [B] neighbour k of every block, -1 where empty
                di, dj = _NEIGHBOURS[k]
                want = occupied + di * rows + dj
                pos = np.minimum(np.searchsorted(occupied, want), occupied.size - 1)
                table[k] = np.where(occupied[pos] == want, pos, -1)
            return table[k][block[index]]

    order = np.random.default_rng(seed).permutation(counts.size)
    block_codes = _assign_by_cumulative_count(counts, r, order)  # [B]
    if buffer_m == 0:
        return _LABELS[block_codes[block]]

    # The scale grows with |lat|, so its extremes over the chips sit at the extreme latitudes.
    abs_lat = np.abs(lat_a)
    extremes = _ease2_parallel_scale(np.array([abs_lat.min(), abs_lat.max()]))
    reach = buffer_m * max(extremes[1], 1.0 / extremes[0])  # projected metres
    del abs_lat
    if reach >= block_m:
        raise GeofmError(
            f"buffer_km={buffer_km:g} reaches {reach / 1000:.1f} projected km at these latitudes, "
            f"past the neighbouring {block_km:g} km blocks; use larger blocks or a smaller buffer"
        )
    # Only chips within the buffer's projected reach of their block's edge can be dropped.
    corner_x *= block_m
    dx = np.subtract(x, corner_x, out=corner_x)  # [N] projected metres from the block's west
    corner_y *= block_m
    dy = np.subtract(y, corner_y, out=corner_y)  # [N] projected metres from the block's south
    del x, y
    near = (dx < reach) | (dx > block_m - reach)
    near |= dy < reach
    near |= dy > block_m - reach
    near = np.flatnonzero(near)  # [M]
    dx, dy = dx[near], dy[near]
    scale = _ease2_parallel_scale(lat_a[near])  # [M]

    def drop_mask(block_codes: np.ndarray) -> np.ndarray:
        own = block_codes[block[near]]

        def neighbour_split(k: int, index: np.ndarray) -> np.ndarray:
            nb = neighbour_block(k, near[index])
            return np.where(nb >= 0, block_codes[nb], -1)

        return _buffer_conflicts(dx, dy, scale, own, neighbour_split, block_m, buffer_m)

    drop = drop_mask(block_codes)
    assigned = np.bincount(block_codes, weights=counts, minlength=3)  # [3]
    lost = np.bincount(block_codes[block[near[drop]]], minlength=3)  # [3]
    kept = np.where(assigned > 0, (assigned - lost) / np.maximum(assigned, 1), 1.0)
    if (kept > 0).all() and (lost > 0).any():
        corrected = r / kept
        block_codes = _assign_by_cumulative_count(counts, corrected / corrected.sum(), order)
        drop = drop_mask(block_codes)

    codes = block_codes[block]  # [N]
    codes[near[drop]] = -1
    return _LABELS[codes]


# --- regions and polygons -------------------------------------------------------------------


def region_split(
    values: Any, ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> np.ndarray:
    """Assign whole regions (a ``country`` column, say) to splits, approximating the ratios.

    Every chip of a region gets the same split. Regions are taken in random orders drawn from
    ``np.random.default_rng(seed)``; in each order every region goes to the split furthest below
    its target chip count, and the order whose chip fractions come closest to the ratios (the
    smallest largest deviation) wins. The regions are sorted by name first, so the result does not
    depend on the order of the chips.

    Args:
        values: [N] region of each chip; null or empty values are excluded (label ``""``).
        ratios: target (train, validation, test) fractions of chips, summing to 1.
        seed: seed of the region orders.

    Returns:
        [N] object array of ``"train"``, ``"validation"``, ``"test"`` or ``""``.

    Raises:
        GeofmError: on empty input, bad ratios, or fewer regions than splits with a
            non-zero ratio.
    """
    r = _check_ratios(ratios)
    codes, uniques = _factorize("values", values)
    names = np.array([str(u) for u in uniques], dtype=object)
    codes = np.where((codes >= 0) & (names[np.maximum(codes, 0)] != ""), codes, -1)
    # Renumber regions in name order so the chips' order cannot change the outcome.
    rank = np.empty(names.size, np.int64)
    rank[np.argsort(names.astype(str), kind="stable")] = np.arange(names.size)
    codes = np.where(codes >= 0, rank[np.maximum(codes, 0)], -1)
    counts = np.bincount(codes[codes >= 0], minlength=names.size).astype(np.float64)
    regions = np.flatnonzero(counts)  # [G] regions with chips
    needed = int((r > 0).sum())
    if regions.size < needed:
        raise GeofmError(
            f"region split needs at least {needed} regions for ratios {tuple(ratios)!r}, "
            f"got {regions.size}"
        )
    sizes = counts[regions].tolist()  # [G] chips per region
    total = float(sum(sizes))
    target = (r * total).tolist()
    active = [k for k in range(3) if r[k] > 0]
    rng = np.random.default_rng(seed)
    tries = max(1, min(256, 500_000 // regions.size))  # about a second of Python at most
    best_codes, best_err = np.zeros(regions.size, np.int8), np.inf
    for _ in range(tries):
        filled = [0.0, 0.0, 0.0]
        trial = np.empty(regions.size, np.int8)
        for g in rng.permutation(regions.size).tolist():
            s = max(active, key=lambda k: target[k] - filled[k])
            trial[g] = s
            filled[s] += sizes[g]
        err = max(abs(filled[k] / total - r[k]) for k in range(3))
        if err < best_err:
            best_codes, best_err = trial, err
    region_codes = np.full(names.size, -1, np.int8)
    region_codes[regions] = best_codes
    out = np.where(codes >= 0, region_codes[np.maximum(codes, 0)], -1)
    return _LABELS[out]


def polygon_split(lon: Any, lat: Any, vector_path: str | Path, column: str = "split") -> np.ndarray:
    """Give each chip the split of the polygon holding its centroid.

    The polygons come from any vector file geopandas reads (GeoPackage, Shapefile, GeoJSON,
    FlatGeobuf, ...), reprojected to EPSG:4326 (a file without a CRS is taken to be in
    EPSG:4326). Centroids are joined to polygons through a spatial index; a centroid on a
    polygon's boundary counts as inside. Chips outside every polygon, in polygons with an empty
    split, or in overlapping polygons of different splits are excluded (label ``""``).

    Args:
        lon: [N] centroid longitudes, degrees (EPSG:4326).
        lat: [N] centroid latitudes, degrees (EPSG:4326).
        vector_path: path of the vector file.
        column: the attribute holding each polygon's split
            (``"train"``, ``"validation"``, ``"test"``, or empty).

    Returns:
        [N] object array of ``"train"``, ``"validation"``, ``"test"`` or ``""``.

    Raises:
        GeofmError: on empty input, an unreadable file, a missing column or an unknown split
            name in it.
    """
    import geopandas as gpd
    import shapely

    lon_a, lat_a = _lonlat(lon, lat)
    path = Path(vector_path)
    if not path.exists():
        raise GeofmError("vector file not found", path=path)
    try:
        polygons = gpd.read_file(path)
    except Exception as exc:  # the I/O engines raise many types
        raise GeofmError(f"cannot read vector file: {exc}", path=path) from None
    if column not in polygons.columns:
        raise GeofmError(
            f"no column {column!r}; columns are {[c for c in polygons.columns if c != 'geometry']}",
            path=path,
        )
    if polygons.crs is None:
        polygons = polygons.set_crs("EPSG:4326")
    elif not polygons.crs.equals("EPSG:4326"):
        polygons = polygons.to_crs("EPSG:4326")
    names = polygons[column].fillna("").astype(str).str.strip().to_numpy()
    unknown = sorted(set(names) - {*SPLIT_NAMES, ""})
    if unknown:
        raise GeofmError(
            f"column {column!r} holds unknown split names {unknown}; "
            f"use {', '.join(SPLIT_NAMES)} or leave empty",
            path=path,
        )
    poly_codes = np.array([SPLIT_NAMES.index(s) if s else -1 for s in names], dtype=np.int8)

    points = shapely.points(lon_a, lat_a)  # [N]
    chip, poly = polygons.sindex.query(points, predicate="intersects")  # [P] matching pairs
    found = poly_codes[poly]
    codes = np.full(lon_a.size, -1, np.int8)
    if chip.size:
        lo = np.full(lon_a.size, 127, np.int8)
        hi = np.full(lon_a.size, -2, np.int8)
        np.minimum.at(lo, chip, found)
        np.maximum.at(hi, chip, found)
        agree = (lo == hi) & (lo >= 0)
        codes[agree] = lo[agree]
    return _LABELS[codes]
