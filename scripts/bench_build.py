"""Benchmark: ``geofm build reben`` rate in patches/s/core, against loading with torchgeo.

Writes a reBEN-layout tree of ``--n`` patches (default 1,024 = 4 shards of 256) made of
byte-for-byte copies of the six real patches of ``datasets/reben_mini``
(``scripts/_reben_synth.py``), reads every file once (page cache warm), then times

  (0) the baseline: torchgeo's ``BigEarthNetV2(root, "train", bands="all")`` loading
      ``--read-n`` patches one by one (``ds[i]``), before and after the builds (mean of both);
  (a) ``build_reben(..., scheduler="synchronous")``: one process, one core;
  (b) ``build_reben(..., workers=--workers)``: the default local Dask cluster (one
      single-threaded worker process per core), start-up included; the start-up of such a
      cluster alone is timed separately and printed;

and checks (a) and (b) wrote identical pixels, labels and chip ids. A build reads the same 15
GeoTIFFs per patch as torchgeo (plus the footprint, labels, statistics, compression and the
shard writes), so ``reben_build_over_torchgeo_read`` says what the build costs over simply
loading the data once. BLAS/OpenMP/GDAL use one thread per process.

Usage::

    .venv/bin/python scripts/bench_build.py               # 1,024 patches
    .venv/bin/python scripts/bench_build.py --n 512 --read-n 128   # a quick run

Output ends with ``RESULT reben_patches_per_s_core=<synchronous patches/s>``,
``RESULT reben_build_over_torchgeo_read=<synchronous rate ÷ torchgeo rate>`` and the Dask
figures.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "GDAL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numcodecs.blosc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _reben_synth import make_reben_tree, tree_bytes, warm_page_cache  # noqa: E402
from torchgeo.datasets import BigEarthNetV2  # noqa: E402

from geofm.builders.reben import build_reben  # noqa: E402
from geofm.io.store import open_store  # noqa: E402


def torchgeo_read(root: Path, count: int) -> tuple[float, float]:
    """Load ``count`` patches one by one with torchgeo; (wall s, CPU s)."""
    ds = BigEarthNetV2(root=str(root), split="train", bands="all")
    ds[0]  # warm-up: GDAL drivers, first allocations
    count = min(count, len(ds))
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        ds[i]
    return time.perf_counter() - wall, time.process_time() - cpu


def children_cpu() -> float:
    """CPU seconds of this process's finished child processes (the Dask workers, once reaped)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def cluster_startup(workers: int) -> float:
    """Seconds to start and stop the local Dask cluster ``build_reben`` starts by default."""
    from dask.distributed import Client, LocalCluster

    t = time.perf_counter()
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        pass
    return time.perf_counter() - t


def same_stores(a: Path, b: Path) -> str:
    """Compare two builds chip by chip; raise if they differ."""
    sa, sb = open_store(a), open_store(b)
    if list(sa.chips["chip_id"]) != list(sb.chips["chip_id"]):
        raise SystemExit("builds differ: chip ids")
    for start in range(0, len(sa), 256):
        idx = np.arange(start, min(len(sa), start + 256))
        ra, rb = sa.read(idx), sb.read(idx)
        for name in ra:
            if not np.array_equal(ra[name], rb[name], equal_nan=True):
                raise SystemExit(f"builds differ: {name} of chips {idx[0]}..{idx[-1]}")
    if sa.attrs["stats"] != sb.attrs["stats"]:
        raise SystemExit("builds differ: band statistics")
    return f"{len(sa)} chips: image, label, mask, chip ids and statistics identical"


def main() -> None:
    """Parse the arguments, run the benchmark in a work directory, clean up."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--n", type=int, default=1024, help="patches to build (default 1024)")
    parser.add_argument("--read-n", type=int, default=256,
                        help="patches torchgeo loads per baseline pass (default 256)")
    parser.add_argument("--workers", type=int, default=2,
                        help="local Dask worker processes for (b) (default 2)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to write the tree and stores (default: a temporary directory, "
                             "removed at the end); an existing generated tree there is reused")
    parser.add_argument("--link", action="store_true",
                        help="hard-link the GeoTIFFs instead of copying them")
    args = parser.parse_args()

    torch.set_num_threads(1)
    numcodecs.blosc.set_nthreads(1)
    tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench_build_")) if tmp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work)
    finally:
        if tmp:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path) -> None:
    """The benchmark proper (see the module doc)."""
    src = work / "reben"
    t = time.perf_counter()
    make_reben_tree(src, args.n, link=args.link)
    files, size = tree_bytes(src)
    print(f"tree: {args.n:,} patches, {files:,} files, {size / 2**20:.0f} MiB "
          f"({'hard links' if args.link else 'copies'} of the 6 real reBEN patches) "
          f"({time.perf_counter() - t:.1f} s, not counted)")
    warm_page_cache(src)
    out_sync, out_dask = work / "sync.zarr", work / "dask.zarr"
    for p in (out_sync, out_dask):
        if p.exists():
            shutil.rmtree(p)

    read_n = min(args.read_n, args.n)
    tg1 = torchgeo_read(src, read_n)
    print(f"(0) torchgeo load, before: {read_n / tg1[0]:.1f} patches/s "
          f"({read_n} in {tg1[0]:.1f} s, {read_n / tg1[1]:.1f} per CPU-s)")

    t = time.perf_counter()
    cpu = time.process_time()
    build_reben(src, out_sync, scheduler="synchronous", progress=False)
    t_sync, c_sync = time.perf_counter() - t, time.process_time() - cpu
    print(f"(a) build, synchronous: {args.n / t_sync:.1f} patches/s "
          f"({t_sync:.1f} s, {args.n / c_sync:.1f} per CPU-s)")

    t = time.perf_counter()
    cpu = time.process_time() + children_cpu()
    build_reben(src, out_dask, workers=args.workers, progress=False)
    t_dask = time.perf_counter() - t
    c_dask = time.process_time() + children_cpu() - cpu
    print(f"(b) build, local Dask, {args.workers} workers: {args.n / t_dask:.1f} patches/s "
          f"({t_dask:.1f} s, {args.n / c_dask:.1f} per CPU-s of the client and its workers)")

    tg2 = torchgeo_read(src, read_n)
    print(f"(0) torchgeo load, after: {read_n / tg2[0]:.1f} patches/s "
          f"({read_n} in {tg2[0]:.1f} s, {read_n / tg2[1]:.1f} per CPU-s)")
    startup = cluster_startup(args.workers)
    print(f"    local Dask cluster start + stop alone, {args.workers} workers: {startup:.1f} s")
    print("check:", same_stores(out_sync, out_dask))

    tg_rate = 2 * read_n / (tg1[0] + tg2[0])
    tg_cpu_rate = 2 * read_n / (tg1[1] + tg2[1])
    sync_rate, dask_rate = args.n / t_sync, args.n / t_dask
    n_shards = -(-args.n // 256)
    rows = [
        ("(0) torchgeo BigEarthNetV2 load, 1 core", tg_rate, tg_rate, tg_cpu_rate),
        ("(a) geofm build, synchronous, 1 core", sync_rate, sync_rate, args.n / c_sync),
        (f"(b) geofm build, Dask, {args.workers} workers", dask_rate,
         dask_rate / args.workers, args.n / c_dask),
    ]
    print(f"\n{'':<42} {'patches/s':>10} {'/core':>8} {'per CPU-s':>10}")
    for name, r, per_core, per_cpu in rows:
        print(f"{name:<42} {r:>10.1f} {per_core:>8.1f} {per_cpu:>10.1f}")
    print(f"build / torchgeo load (1 core): {sync_rate / tg_rate:.2f}× wall, "
          f"{(args.n / c_sync) / tg_cpu_rate:.2f}× per CPU-s; Dask speed-up over synchronous "
          f"{dask_rate / sync_rate:.2f}× on {args.workers} workers ({n_shards} regions)")

    print(f"\nRESULT reben_patches_per_s_core={sync_rate:.2f}")
    print(f"RESULT reben_build_over_torchgeo_read={sync_rate / tg_rate:.3f}")
    print(f"RESULT reben_dask_patches_per_s={dask_rate:.2f}")
    print(f"RESULT reben_dask_patches_per_s_core={dask_rate / args.workers:.2f}")
    print(f"RESULT torchgeo_load_patches_per_s={tg_rate:.2f}")


if __name__ == "__main__":
    main()
