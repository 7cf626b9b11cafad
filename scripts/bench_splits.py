"""Benchmark: split and audit 13 million chip footprints on one core.

Generates reBEN-like chips (1.2 km × 1.2 km, 91 × 91 per Sentinel-2 tile) over a compact set of
real-geometry Sentinel-2 tiles in Europe (UTM zones 28-38, MGRS tile ids from the 100 km grid),
with native UTM centroids, tile ids and CRS as a chip store holds them, and lon/lat from pyproj.
Then it times, single-threaded:

  (a) reben_tile_split on tile / native x, y / CRS,
  (b) block_split with 50 km blocks and a 2 km buffer,
  (c) leakage_audit of the block split at 2 km,
  (d) leakage_audit of the reBEN split at 2 km, for comparison (no buffer: many close pairs),

and prints a table followed by ``RESULT`` lines. ``split_13m_seconds`` is (b) + (c), the split
and audit of the block split. Generation time is not counted.

Usage::

    python scripts/bench_splits.py            # 13,000,000 chips
    python scripts/bench_splits.py --n 200000 # a quick run
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import pyproj  # noqa: E402
import scipy  # noqa: E402

from geofm.curation.audit import leakage_audit  # noqa: E402
from geofm.curation.splits import block_split, reben_tile_split  # noqa: E402

CHIP_M = 1200.0
CHIPS_PER_SIDE = 91  # floor(109,800 m / 1,200 m), as in reBEN
TILE_SIDE_M = 109_800.0
COLUMN_SETS = ("STUVWXYZ", "ABCDEFGH", "JKLMNPQR")
ROW_LETTERS = "ABCDEFGHJKLMNPQRSTUV"
BAND_LETTERS = "CDEFGHJKLMNPQRSTUVWX"
CENTRE_LON, CENTRE_LAT = 12.0, 50.0  # tiles are taken nearest first from here


def europe_tiles() -> list[tuple[str, int, float, float, float]]:
    """Northern Sentinel-2 tiles of UTM zones 28-38 between 35° and 71° N.

    As in the real tiling, a zone's tiles reach up to 0.6° past its edges, so neighbouring
    zones' tiles overlap there.

    Returns:
        (tile id, zone, upper-left x, upper-left y, distance of the centre from CENTRE in
        degrees of arc) per tile.
    """
    tiles = []
    c_lam, c_phi = math.radians(CENTRE_LON), math.radians(CENTRE_LAT)
    for zone in range(28, 39):
        to_ll = pyproj.Transformer.from_crs(f"EPSG:326{zone:02d}", "EPSG:4326", always_xy=True)
        central = -183.0 + 6.0 * zone
        for c, col in enumerate(COLUMN_SETS[zone % 3]):
            easting = (c + 1) * 100_000.0
            for south in np.arange(3_800_000.0, 8_000_000.0, 100_000.0):
                top = south + 100_000.0
                lon, lat = to_ll.transform(easting + TILE_SIDE_M / 2, top - TILE_SIDE_M / 2)
                if abs(lon - central) > 3.6 or not 35.0 <= lat <= 71.0:
                    continue
                row = ROW_LETTERS[(int(south // 100_000) + (5 if zone % 2 == 0 else 0)) % 20]
                band = BAND_LETTERS[min(int((lat + 80.0) // 8.0), 19)]
                lam, phi = math.radians(lon), math.radians(lat)
                arc = math.acos(
                    min(
                        1.0,
                        math.sin(phi) * math.sin(c_phi)
                        + math.cos(phi) * math.cos(c_phi) * math.cos(lam - c_lam),
                    )
                )
                tiles.append((f"{zone:02d}{band}{col}{row}", zone, easting, top, arc))
    tiles.sort(key=lambda t: t[4])
    return tiles


def generate(n: int) -> dict[str, np.ndarray]:
    """Centroids of ``n`` chips: tile [N] object, crs [N] object, native x/y, lon/lat [N]."""
    tiles = europe_tiles()
    per_tile = CHIPS_PER_SIDE * CHIPS_PER_SIDE
    n_tiles = -(-n // per_tile)
    if n_tiles > len(tiles):
        raise SystemExit(f"--n {n} needs {n_tiles} tiles; this generator has {len(tiles)}")
    tiles = tiles[:n_tiles]
    offsets = (np.arange(CHIPS_PER_SIDE) + 0.5) * CHIP_M  # [91] chip centres from the tile edge
    dx = np.tile(offsets, CHIPS_PER_SIDE)  # [8281]
    dy = np.repeat(offsets, CHIPS_PER_SIDE)
    ulx = np.array([t[2] for t in tiles])
    uly = np.array([t[3] for t in tiles])
    x = (ulx[:, None] + dx[None, :]).ravel()[:n]  # [N] metres
    y = (uly[:, None] - dy[None, :]).ravel()[:n]
    which = np.repeat(np.arange(n_tiles), per_tile)[:n]
    tile = np.array([t[0] for t in tiles], dtype=object)[which]
    zones = np.array([t[1] for t in tiles])[which]
    crs_names = np.array([f"EPSG:326{z:02d}" for z in range(61)], dtype=object)
    crs = crs_names[zones]
    lon = np.empty(n)
    lat = np.empty(n)
    for zone in np.unique(zones):
        sel = zones == zone
        to_ll = pyproj.Transformer.from_crs(f"EPSG:326{zone:02d}", "EPSG:4326", always_xy=True)
        lon[sel], lat[sel] = to_ll.transform(x[sel], y[sel])
    return {"tile": tile, "crs": crs, "x": x, "y": y, "lon": lon, "lat": lat, "n_tiles": n_tiles}


def timed(fn, *args, **kwargs):
    """Run ``fn`` once; return its result, wall seconds and CPU seconds."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def shares(labels: np.ndarray) -> str:
    """Split fractions of all chips, as text."""
    n = labels.size
    return ", ".join(
        f"{name or 'excluded'} {np.count_nonzero(labels == name) / n:.3f}"
        for name in ("train", "validation", "test", "")
    )


def cpu_model() -> str:
    """The processor's name, as the OS reports it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=13_000_000, help="number of chips")
    parser.add_argument("--block-km", type=float, default=50.0)
    parser.add_argument("--buffer-km", type=float, default=2.0)
    parser.add_argument("--audit-km", type=float, default=2.0)
    args = parser.parse_args()

    print(
        f"{cpu_model()}; Python {platform.python_version()}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}, pyproj {pyproj.__version__}; one thread"
    )
    t0 = time.perf_counter()
    chips = generate(args.n)
    print(
        f"generated {args.n:,} chips in {chips['n_tiles']:,} Sentinel-2 tiles "
        f"({time.perf_counter() - t0:.1f} s, not counted)"
    )

    reben, t_reben, c_reben = timed(
        reben_tile_split, chips["tile"], chips["x"], chips["y"], chips["crs"]
    )
    blocks, t_block, c_block = timed(
        block_split, chips["lon"], chips["lat"], args.block_km, args.buffer_km, seed=0
    )
    audit, t_audit, c_audit = timed(
        leakage_audit, chips["lon"], chips["lat"], blocks, args.audit_km
    )

    reben_audit, t_reben_audit, c_reben_audit = timed(
        leakage_audit, chips["lon"], chips["lat"], reben, args.audit_km
    )

    rows = [
        ("(a) reben_tile_split", t_reben, c_reben, shares(reben)),
        (
            f"(b) block_split {args.block_km:g} km, buffer {args.buffer_km:g} km",
            t_block,
            c_block,
            shares(blocks),
        ),
        (f"(c) leakage_audit {args.audit_km:g} km of (b)", t_audit, c_audit, ""),
        (f"(d) leakage_audit {args.audit_km:g} km of (a)", t_reben_audit, c_reben_audit, ""),
        ("(b) + (c)", t_block + t_audit, c_block + c_audit, ""),
    ]
    print(f"\n{'step':<42} {'wall s':>8} {'cpu s':>8}  result")
    for name, wall, cpu, note in rows:
        print(f"{name:<42} {wall:>8.2f} {cpu:>8.2f}  {note}")
    for name, report in (("block", audit), ("reBEN", reben_audit)):
        print(f"\naudit of the {name} split:")
        for pair, stats in report["pairs"].items():
            within = ", ".join(f"{k} {v:,}" for k, v in stats["within"].items())
            print(
                f"  {pair:<18} min distance {stats['min_distance_km']:.3f} km; "
                f"within {args.audit_km:g} km: {within}"
            )
        print(f"  counts: {report['counts']}")
    print(f"\nRESULT split_13m_seconds={t_block + t_audit:.2f}")
    print(f"RESULT reben_split_13m_seconds={t_reben:.2f}")
    print(f"RESULT audit_13m_seconds={t_audit:.2f}")


if __name__ == "__main__":
    main()
