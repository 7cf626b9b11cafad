"""Benchmark: OpticalRS decode + hash + dedup in images/s/core, and the 13.2 M-image projection.

Writes ``--n`` images (default 1,500) cut from the real scenes of the repository: random crops
of the Sentinel-2 L1C scene (``datasets/sentinel2_l1c``) and of the six reBEN patches
(``datasets/reben_mini``), rotated or flipped, resized (nearest) to 256, 512, 600 or 800 px,
written as JPEG (quality 90, 50 %), PNG (30 %) and 4-band uint16 GeoTIFF (B02, B03, B04, B08
reflectance, deflate, 20 %), plus 5 % exact copies and 5 % near copies (rescaled by 0.8, JPEG
quality 75). Every file is read once first (page cache warm), then, on one core (one process,
BLAS/GDAL single-threaded):

  (0) the baseline: decode only, every band of every image (``rasterio`` ``read()``, the decoder
      the builder uses);
  (a) the builder's scan of every image (:func:`geofm.builders.opticalrs.scan_image`: decode, RGB,
      8-bit conversion, nodata and contrast tests, perceptual hash, SHA-1 of all pixels, chip
      layout with per-chip tests);
  (b) deduplication of those hashes (index, clusters), and of ``--dedup-n`` random 64-bit hashes
      (default 1 M and 2 M), fitted as ``a·N·log N + b·N²`` to project the driver's dedup of
      13,203,698 images;
  (c) with ``--build``: the whole build (``build_opticalrs``, synchronous, 224 px chips), for the
      chip-writing cost.

Projection: 13,203,698 images ÷ (scan images/s/core × ``--cores``) plus the projected driver
dedup (one core), in hours. File listing and chip writing are not in it (see (c)).

Usage::

    .venv/bin/python scripts/bench_opticalrs.py            # ~1.5 min (2.5 on a busy machine)
    .venv/bin/python scripts/bench_opticalrs.py --build    # and the whole build, ~2 min more
    .venv/bin/python scripts/bench_opticalrs.py --n 300 --dedup-n 100000,200000   # a quick run

Output ends with ``RESULT opticalrs_images_per_s_core=<(a)+(b) rate>`` and
``RESULT opticalrs_13m_cluster_hours_<cores>cores=<projection>``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "GDAL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import rasterio  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402
from rasterio.errors import NotGeoreferencedWarning  # noqa: E402

from geofm.builders.opticalrs import Params, Source, build_opticalrs, scan_image  # noqa: E402
from geofm.curation.dedup import cluster_labels, duplicate_edges, near_duplicate_pairs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
S2_SCENE = REPO / "datasets" / "sentinel2_l1c" / "s2_l1c_13band_10m_256px.tif"
REBEN = REPO / "datasets" / "reben_mini"
OPTICALRS_IMAGES = 13_203_698
SIZES = (256, 512, 600, 800)


def real_scenes() -> list[np.ndarray]:
    """``[4, H, W]`` uint16 B02, B03, B04, B08 of the S2 scene and the six reBEN patches."""
    with rasterio.open(S2_SCENE) as ds:
        scenes = [ds.read([2, 3, 4, 8])]
    for red in sorted(REBEN.glob("BigEarthNet-S2/*/*/*_B04.tif")):
        bands = []
        for b in ("B02", "B03", "B04", "B08"):
            with rasterio.open(str(red).replace("_B04.tif", f"_{b}.tif")) as ds:
                bands.append(ds.read(1))
        scenes.append(np.stack(bands))
    return scenes


def to_rgb8(bgrn: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 true colour, 2nd–98th percentile stretch."""
    rgb = bgrn[[2, 1, 0]].astype(np.float32)
    lo, hi = np.percentile(rgb, [2, 98])
    return np.clip((rgb - lo) * 255 / (hi - lo), 0, 255).astype(np.uint8).transpose(1, 2, 0)


def random_crop(rng: np.random.Generator, scene: np.ndarray, size: int) -> np.ndarray:
    """A random square crop of ``[C, H, W]``, rotated/flipped, resized (nearest) to ``size``."""
    side = int(rng.integers(min(scene.shape[1:]) // 2, min(scene.shape[1:]) + 1))
    y = int(rng.integers(0, scene.shape[1] - side + 1))
    x = int(rng.integers(0, scene.shape[2] - side + 1))
    crop = np.rot90(scene[:, y:y + side, x:x + side], int(rng.integers(4)), axes=(1, 2))
    if rng.random() < 0.5:
        crop = crop[:, :, ::-1]
    index = np.arange(size) * side // size
    return np.ascontiguousarray(crop[:, index][:, :, index])


def write_image(path: Path, raw: np.ndarray, rgb8: np.ndarray, kind: str) -> Path:
    """Write a 4-band uint16 GeoTIFF of ``raw``, or a JPEG or PNG of ``rgb8`` (``[3, H, W]``)."""
    if kind == "tif":
        path = path.with_suffix(".tif")
        with rasterio.open(path, "w", driver="GTiff", width=raw.shape[2], height=raw.shape[1],
                           count=4, dtype="uint16", compress="deflate") as ds:
            ds.write(raw)
            for i, d in enumerate(("B02", "B03", "B04", "B08"), 1):
                ds.set_band_description(i, d)
        return path
    path = path.with_suffix(f".{kind}")
    Image.fromarray(np.ascontiguousarray(rgb8.transpose(1, 2, 0))).save(path, quality=90,
                                                                       compress_level=1)
    return path


def make_set(root: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` images under ``root/pool``: 90 % distinct crops, 5 % exact and 5 % near copies."""
    rng = np.random.default_rng(seed)
    raws = real_scenes()
    rgbs = [to_rgb8(r).transpose(2, 0, 1) for r in raws]  # one stretch per scene
    pool = root / "pool"
    pool.mkdir(parents=True)
    files: list[Path] = []
    for i in range(n):
        r = rng.random()
        if files and r < 0.05:
            src = files[int(rng.integers(len(files)))]
            dst = pool / f"copy_{i:06d}{src.suffix}"
            shutil.copyfile(src, dst)
            files.append(dst)
            continue
        picture = [f for f in files if f.suffix != ".tif"]
        if picture and r < 0.10:
            im = Image.open(picture[int(rng.integers(len(picture)))]).convert("RGB")
            dst = pool / f"near_{i:06d}.jpg"
            im.resize((im.width * 4 // 5, im.height * 4 // 5)).save(dst, quality=75)
            files.append(dst)
            continue
        k = int(rng.integers(len(raws)))
        kind = str(rng.choice(["jpg"] * 5 + ["png"] * 3 + ["tif"] * 2))
        size = int(rng.choice(SIZES))
        state = rng.bit_generator.state
        raw = random_crop(rng, raws[k], size)
        rng.bit_generator.state = state  # the same crop of the 8-bit rendering
        rgb8 = random_crop(rng, rgbs[k], size)
        files.append(write_image(pool / f"img_{i:06d}", raw, rgb8, kind))
    return files


def decode_only(files: list[Path]) -> float:
    """Seconds to decode every band of every file."""
    t = time.perf_counter()
    for f in files:
        with rasterio.open(f) as ds:
            ds.read()
    return time.perf_counter() - t


def scan_all(files: list[Path]) -> tuple[float, list[dict]]:
    """Seconds to scan every file as a pretrain image with 224 px chips, and the records."""
    source, params = Source("pool", "pretrain", "CC0"), Params()
    t = time.perf_counter()
    records = [scan_image(f, source, params) for f in files]
    return time.perf_counter() - t, records


def dedup(hashes: np.ndarray, digests: np.ndarray | None, radius: int) -> tuple[float, int]:
    """Seconds for the index and the clusters, and the number of clusters."""
    t = time.perf_counter()
    labels = cluster_labels(len(hashes), duplicate_edges(hashes, radius, digests))
    return time.perf_counter() - t, int(labels.max()) + 1 if len(labels) else 0


def dedup_scaling(sizes: list[int], radius: int) -> list[tuple[int, float, int]]:
    """``(N, seconds, candidates)`` of the index on N random 64-bit hashes."""
    rng = np.random.default_rng(1)
    rows = []
    for n in sizes:
        h = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
        counts: dict[str, int] = {}
        t = time.perf_counter()
        near_duplicate_pairs(h, radius, counts=counts)
        rows.append((n, time.perf_counter() - t, counts["candidates"]))
    return rows


def project_dedup(rows: list[tuple[int, float, int]], n: int) -> float:
    """Seconds for ``n`` hashes from a fit ``a·N·log2 N + b·N²`` (both >= 0) to the rows."""
    x = np.array([[r[0] * np.log2(r[0]), float(r[0]) ** 2] for r in rows])
    y = np.array([r[1] for r in rows])
    coef = np.linalg.lstsq(x, y, rcond=None)[0]
    if (coef < 0).any():  # fall back to N·log N only
        coef = np.array([float(np.linalg.lstsq(x[:, :1], y, rcond=None)[0][0]), 0.0])
    return float(coef[0] * n * np.log2(n) + coef[1] * float(n) ** 2)


def full_build(root: Path, files: list[Path]) -> float:
    """Seconds for ``build_opticalrs`` of the set, synchronous, 224 px chips."""
    manifest = root / "manifest.yaml"
    manifest.write_text(yaml.safe_dump({"sources": [
        {"name": "pool", "path": "pool", "role": "pretrain", "licence": "CC0"}]}))
    out = root / "pool.zarr"
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    build_opticalrs(manifest, out, scheduler="synchronous", progress=False)
    return time.perf_counter() - t


def main() -> None:
    """Parse the arguments, run the benchmark in a work directory, clean up."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--n", type=int, default=1500, help="images to generate (default 1500)")
    parser.add_argument("--cores", type=int, default=256,
                        help="cluster cores for the projection (default 256)")
    parser.add_argument("--radius", type=int, default=4, help="hash radius (default 4)")
    parser.add_argument("--dedup-n", default="1000000,2000000",
                        help="random-hash counts for the dedup fit (default 1000000,2000000)")
    parser.add_argument("--build", action="store_true", help="also run (c), the whole build")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to write the images (default: a temporary directory, "
                             "removed at the end); images already there are reused")
    args = parser.parse_args()
    warnings.simplefilter("ignore", NotGeoreferencedWarning)
    tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench_opticalrs_")) if tmp else args.workdir
    try:
        run(args, work)
    finally:
        if tmp:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    """The benchmark proper (see the module doc)."""
    t = time.perf_counter()
    pool = work / "pool"
    files = sorted(pool.iterdir()) if pool.is_dir() else make_set(work, args.n)
    size = sum(f.stat().st_size for f in files)
    kinds = {s: sum(f.suffix == s for f in files) for s in (".jpg", ".png", ".tif")}
    print(f"set: {len(files):,} images ({', '.join(f'{v} {k}' for k, v in kinds.items())}), "
          f"{size / 2**20:.0f} MiB, cut from the real S2 scene and reBEN patches "
          f"({time.perf_counter() - t:.1f} s, not counted)")
    decode_only(files)  # page cache and GDAL drivers warm

    t_decode = decode_only(files)
    t_scan, records = scan_all(files)
    hashed = [r for r in records if r["status"] == "ok"]
    hashes = np.array([r["phash"] for r in hashed], dtype=np.uint64)
    digests = np.array([r["sha1"] for r in hashed])
    t_dedup, n_clusters = dedup(hashes, digests, args.radius)
    n = len(files)
    print(f"(0) decode only:            {n / t_decode:8.1f} images/s ({t_decode:.1f} s)")
    outcomes = Counter(r["status"] for r in records)
    print(f"(a) scan (decode+hash+...): {n / t_scan:8.1f} images/s ({t_scan:.1f} s); "
          f"{len(hashed)} hashed, outcomes {dict(sorted(outcomes.items()))}")
    print(f"(b) dedup of {len(hashed)} hashes: {t_dedup * 1e3:.1f} ms; {n_clusters} clusters "
          f"(singletons included), {len(hashed) - n_clusters} duplicates to drop (the planted "
          f"copies and overlapping crops of the same small scenes)")
    rate = n / (t_scan + t_dedup)
    print(f"    decode + hash + dedup:  {rate:8.1f} images/s/core; scan ÷ decode-only "
          f"{t_scan / t_decode:.2f}×")

    sizes = [int(s) for s in args.dedup_n.split(",")]
    rows = dedup_scaling(sizes, args.radius)
    for m, sec, cand in rows:
        print(f"    index on {m:>10,} random hashes: {sec:6.2f} s, {cand:,} candidates "
              f"({cand / (m * (m - 1) / 2):.1e} of all pairs)")
    dedup_13m = project_dedup(rows, OPTICALRS_IMAGES)
    scan_13m = OPTICALRS_IMAGES / (n / t_scan) / args.cores
    print(f"projection, {OPTICALRS_IMAGES:,} images on {args.cores} cores: scan "
          f"{scan_13m / 3600:.2f} h + driver dedup {dedup_13m / 60:.1f} min (one core)")

    if args.build:
        t_build = full_build(work, files)
        print(f"(c) whole build, synchronous: {n / t_build:8.1f} images/s/core ({t_build:.1f} s, "
              f"chip writing included)")
        print(f"RESULT opticalrs_build_images_per_s_core={n / t_build:.2f}")
    print(f"RESULT opticalrs_decode_only_images_per_s_core={n / t_decode:.2f}")
    print(f"RESULT opticalrs_scan_images_per_s_core={n / t_scan:.2f}")
    print(f"RESULT opticalrs_dedup_13m_minutes={dedup_13m / 60:.2f}")
    print(f"RESULT opticalrs_images_per_s_core={rate:.2f}")
    print(f"RESULT opticalrs_13m_cluster_hours_{args.cores}cores="
          f"{(scan_13m + dedup_13m) / 3600:.3f}")


if __name__ == "__main__":
    main()
