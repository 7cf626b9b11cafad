"""Leakage audit of a split, and a map of it.

A geography-aware split is only as good as the distance it keeps between its parts. The audit
measures, for every pair of splits, the smallest great-circle distance between two chip
centroids of different splits and how many chips of each lie within a given distance of the
other. Centroids become points on the unit sphere and each split gets a k-d tree
(:class:`scipy.spatial.cKDTree`); pairs of trees are compared by dual-tree traversal, which skips
whole groups of chips that are far apart, so nothing is O(N²). Distances in the trees are chord
lengths, converted to great-circle kilometres on a sphere of the Earth's mean radius
(6371.0088 km), which is within 0.5 % of the ellipsoidal distance.
"""

from __future__ import annotations

import math
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from geofm.curation.splits import SPLIT_NAMES
from geofm.errors import GeofmError

__all__ = ["EARTH_RADIUS_KM", "leakage_audit", "split_map_png"]

EARTH_RADIUS_KM = 6371.0088
"""Mean Earth radius (IUGG), km."""

# Pairs of chips within the audit distance are listed explicitly up to this many; beyond it the
# audit switches to one bounded nearest-neighbour query per chip, which needs O(N) memory.
_PAIR_LIMIT = 20_000_000
# While searching for the closest pair beyond the audit distance, the search radius is narrowed
# until at most this many pairs fall inside it before the pairs are listed.
_REFINE_LIMIT = 1_000_000

_SPLIT_COLOURS = {
    "train": "#1f77b4",
    "validation": "#ff7f0e",
    "test": "#2ca02c",
    "": "#b0b0b0",
}
_OTHER_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
_SCATTER_LIMIT = 300_000  # chips drawn one by one; more are rasterised


def _chord(km: float) -> float:
    """Chord length on the unit sphere for a great-circle distance in km."""
    return 2.0 * math.sin(min(km / EARTH_RADIUS_KM, math.pi) / 2.0)


def _great_circle_km(chord: float) -> float:
    """Great-circle distance in km for a chord length on the unit sphere."""
    return 2.0 * EARTH_RADIUS_KM * math.asin(min(chord / 2.0, 1.0))


def _unit_vectors(lon: np.ndarray, lat: np.ndarray, index: np.ndarray) -> np.ndarray:
    """[M, 3] float64 points on the unit sphere for the centroids ``index`` (degrees in).

    Works through the chips in cache-sized chunks with reused buffers: at 10⁷ chips, fresh
    full-length temporaries cost more in page faults than the trigonometry itself.
    """
    xyz = np.empty((index.size, 3))
    chunk = min(1 << 16, index.size)
    phi, lam, tmp = np.empty(chunk), np.empty(chunk), np.empty(chunk)
    for start in range(0, index.size, chunk):
        stop = min(start + chunk, index.size)
        m, rows = stop - start, index[start:stop]
        p, q, t = phi[:m], lam[:m], tmp[:m]
        np.radians(np.take(lat, rows, out=p), out=p)
        np.radians(np.take(lon, rows, out=q), out=q)
        np.sin(p, out=xyz[start:stop, 2])
        np.cos(p, out=p)
        np.multiply(p, np.cos(q, out=t), out=xyz[start:stop, 0])
        np.multiply(p, np.sin(q, out=t), out=xyz[start:stop, 1])
    return xyz


def _inputs(lon: Any, lat: Any, split: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Checked lon [N], lat [N], split codes [N] (-1 excluded) and the split names, ordered."""
    try:
        lon_a = np.asarray(lon, dtype=np.float64)
        lat_a = np.asarray(lat, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise GeofmError(f"lon and lat must be numeric: {exc}") from None
    if lon_a.ndim != 1 or lon_a.shape != lat_a.shape or len(split) != lon_a.size:
        raise GeofmError(
            f"lon, lat and split must be 1-D and of one length, got {lon_a.shape}, "
            f"{lat_a.shape} and {len(split)}"
        )
    if lon_a.size == 0:
        raise GeofmError("there are no chips to audit")
    if not (np.isfinite(lon_a).all() and np.isfinite(lat_a).all()):
        raise GeofmError("lon and lat must be finite")
    if np.abs(lat_a).max() > 90.0:
        raise GeofmError(f"lat must lie in [-90, 90] degrees, got {np.abs(lat_a).max():g}")
    if not isinstance(split, (pd.Series, pd.Index, pd.Categorical, np.ndarray)):
        split = np.asarray(split, dtype=object)
    codes, uniques = pd.factorize(split, use_na_sentinel=True)
    labels = [str(u) for u in uniques]
    order = sorted(
        (i for i, s in enumerate(labels) if s != ""),
        key=lambda i: (SPLIT_NAMES.index(labels[i]) if labels[i] in SPLIT_NAMES else 3, labels[i]),
    )
    remap = np.full(len(labels) + 1, -1, np.int64)  # slot -1 keeps nulls excluded
    remap[order] = np.arange(len(order))
    return lon_a, lat_a, remap[codes], [labels[i] for i in order]


def _count_pairs(a: cKDTree, b: cKDTree, r: float) -> int:
    """Number of (a, b) pairs at chord distance <= r."""
    return int(a.count_neighbors(b, r))


def _closest_beyond(a: cKDTree, b: cKDTree, r: float) -> float:
    """Smallest chord distance between trees known to have no pair within ``r``.

    The radius doubles until some pair falls inside it, is narrowed by bisection until few
    pairs do, and those pairs are listed: the result is exact.
    """
    lo, hi = r, max(2.0 * r, _chord(0.1))
    n_hi = _count_pairs(a, b, hi)
    while n_hi == 0 and hi < 2.0:  # a chord of 2 spans the sphere: every pair is inside
        lo, hi = hi, min(2.0 * hi, 2.0)
        n_hi = _count_pairs(a, b, hi)
    while n_hi > _REFINE_LIMIT and hi - lo > 1e-15:
        mid = 0.5 * (lo + hi)
        n_mid = _count_pairs(a, b, mid)
        if n_mid > 0:
            hi, n_hi = mid, n_mid
        else:
            lo = mid
    pairs = a.sparse_distance_matrix(b, hi, output_type="ndarray")
    return float(pairs["v"].min())


def _pair_stats(a: cKDTree, b: cKDTree, r: float) -> tuple[int, int, float]:
    """Chips of a within r of b, chips of b within r of a, and the minimum chord distance."""
    n_pairs = _count_pairs(a, b, r)
    if n_pairs == 0:
        return 0, 0, _closest_beyond(a, b, r)
    if n_pairs <= _PAIR_LIMIT:
        pairs = a.sparse_distance_matrix(b, r, output_type="ndarray")  # [P] (i, j, v)
        near_a = np.zeros(a.n, bool)
        near_a[pairs["i"]] = True
        near_b = np.zeros(b.n, bool)
        near_b[pairs["j"]] = True
        return int(near_a.sum()), int(near_b.sum()), float(pairs["v"].min())
    r_query = np.nextafter(r, np.inf)  # the query bound is strict; pairs at exactly r count
    d_a, _ = b.query(a.data, k=1, distance_upper_bound=r_query, workers=1)  # [Na]
    d_b, _ = a.query(b.data, k=1, distance_upper_bound=r_query, workers=1)  # [Nb]
    return int(np.isfinite(d_a).sum()), int(np.isfinite(d_b).sum()), float(d_a.min())


def leakage_audit(lon: Any, lat: Any, split: Any, distance_km: float) -> dict[str, Any]:
    """Measure how close the splits come to each other.

    For every unordered pair of non-empty splits (train/validation, train/test,
    validation/test, and any other labels present) the audit gives the exact minimum
    great-circle distance between centroids of the two splits, and the number of chips of each
    split that lie within ``distance_km`` (inclusive) of some chip of the other. Chips with an
    empty or null split (e.g. buffer chips) are counted as excluded and otherwise ignored.

    Args:
        lon: [N] centroid longitudes, degrees (EPSG:4326).
        lat: [N] centroid latitudes, degrees (EPSG:4326).
        split: [N] split label of each chip.
        distance_km: leakage distance, km.

    Returns:
        A JSON-serialisable dict::

            {"distance_km": 2.0, "n_chips": N,
             "counts": {"train": ..., "validation": ..., "test": ..., "excluded": ...},
             "pairs": {"train/validation": {"min_distance_km": 4.1,
                                            "within": {"train": 0, "validation": 0}}, ...}}

    Raises:
        GeofmError: on empty or mismatched inputs, non-finite coordinates or a negative
            distance.
    """
    if not (np.isfinite(distance_km) and distance_km >= 0):
        raise GeofmError(f"distance_km must be zero or a positive number, got {distance_km!r}")
    lon_a, lat_a, codes, names = _inputs(lon, lat, split)
    counts = np.bincount(codes[codes >= 0], minlength=len(names))
    report: dict[str, Any] = {
        "distance_km": float(distance_km),
        "n_chips": int(lon_a.size),
        "counts": {name: int(c) for name, c in zip(names, counts)},
        "pairs": {},
    }
    report["counts"]["excluded"] = int((codes < 0).sum())
    if len(names) < 2:
        return report

    r = _chord(float(distance_km))
    trees = []
    for k in range(len(names)):
        xyz = _unit_vectors(lon_a, lat_a, np.flatnonzero(codes == k))  # [Nk, 3]
        trees.append(cKDTree(xyz, leafsize=32, balanced_tree=False, compact_nodes=False))
    for i, j in combinations(range(len(names)), 2):
        near_i, near_j, chord = _pair_stats(trees[i], trees[j], r)
        report["pairs"][f"{names[i]}/{names[j]}"] = {
            "min_distance_km": _great_circle_km(chord),
            "within": {names[i]: near_i, names[j]: near_j},
        }
    return report


def split_map_png(lon: Any, lat: Any, split: Any, out_png: str | Path, title: str) -> Path:
    """Draw chips on a lon/lat map, coloured by split, and save it as a PNG.

    Up to 300,000 chips are drawn as small dots. Beyond that the map is rasterised: the plot
    area is cut into about 1000 × 700 cells and each cell takes the colour of its most frequent
    split, so millions of chips draw in about a second and every chip counts; the title says so.

    Args:
        lon: [N] centroid longitudes, degrees.
        lat: [N] centroid latitudes, degrees.
        split: [N] split label of each chip (empty or null: excluded, drawn grey).
        out_png: output path.
        title: figure title.

    Returns:
        The path of the PNG.

    Raises:
        GeofmError: on empty or mismatched inputs, or an unwritable output path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    from geofm.io.outputs import require_suffix

    out = require_suffix(out_png, (".png",), "a PNG image")
    lon_a, lat_a, codes, names = _inputs(lon, lat, split)
    if not out.parent.exists():
        raise GeofmError("output folder does not exist", path=out.parent)
    labels = [*names, ""]  # code -1 is the last entry: excluded
    others = iter(_OTHER_COLOURS * (len(names) // len(_OTHER_COLOURS) + 1))
    colours = [_SPLIT_COLOURS.get(s) or next(others) for s in labels]
    slot = np.where(codes >= 0, codes, len(names))  # [N] index into labels

    west, east = float(lon_a.min()), float(lon_a.max())
    south, north = float(lat_a.min()), float(lat_a.max())
    pad_x, pad_y = max(0.02 * (east - west), 0.01), max(0.02 * (north - south), 0.01)
    extent = (west - pad_x, east + pad_x, south - pad_y, north + pad_y)
    mid_lat = math.radians(0.5 * (south + north))

    fig, ax = plt.subplots(figsize=(10, 7), dpi=110)
    if lon_a.size <= _SCATTER_LIMIT:
        ax.scatter(
            lon_a,
            lat_a,
            c=np.asarray(colours)[slot],
            # Visible markers for a handful of chips, fine dots for hundreds of thousands.
            s=float(np.clip(4000.0 / max(lon_a.size, 1), 2.0, 60.0)),
            marker="o" if lon_a.size <= 1000 else ".",
            edgecolors="black" if lon_a.size <= 1000 else "none",
            linewidths=0.5 if lon_a.size <= 1000 else 0,
            rasterized=True,
        )
        shown = f"{lon_a.size:,} chips"
    else:
        nx, ny = 1000, 700
        cx = ((lon_a - extent[0]) / (extent[1] - extent[0]) * nx).astype(np.int64).clip(0, nx - 1)
        cy = ((lat_a - extent[2]) / (extent[3] - extent[2]) * ny).astype(np.int64).clip(0, ny - 1)
        cell = cy * nx + cx  # [N]
        hist = np.zeros((len(labels), ny * nx), np.int64)  # [S, cells] chips per split and cell
        for k in range(len(labels)):
            hist[k] = np.bincount(cell[slot == k], minlength=ny * nx)
        image = np.where(hist.sum(0) > 0, hist.argmax(0), -1).reshape(ny, nx).astype(float)
        image[image < 0] = np.nan
        ax.imshow(
            image,
            origin="lower",
            extent=extent,
            cmap=ListedColormap(colours),
            vmin=-0.5,
            vmax=len(labels) - 0.5,
            interpolation="nearest",
            aspect="auto",
        )
        shown = f"{lon_a.size:,} chips, rasterised: each cell shows its most frequent split"
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_aspect(1.0 / max(math.cos(mid_lat), 0.1))
    ax.set_xlabel("lon (°)")
    ax.set_ylabel("lat (°)")
    ax.set_title(f"{title}\n{shown}", fontsize=10)
    handles = [
        Patch(color=colours[k], label=f"{labels[k] or 'excluded'} ({int((slot == k).sum()):,})")
        for k in range(len(labels))
        if (slot == k).any()
    ]
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    try:
        fig.savefig(out, bbox_inches="tight")
    except OSError as exc:
        raise GeofmError(f"cannot write the split map: {exc.strerror or exc}", path=out) from None
    finally:
        plt.close(fig)
    return out
