"""Benchmark: random batches of 64 from a geofm chip store vs torchgeo's BigEarthNetV2, one core.

Both read the same real reBEN patches. The embedded sample (``datasets/reben_mini``, six patches)
fits in one shard and says nothing about random access, so the script first writes a larger
reBEN-layout tree (``--n`` patches, default 1,536) whose GeoTIFFs are byte-for-byte copies of the
six real ones under new patch ids (``scripts/_reben_synth.py``), then:

  1. builds a geofm store from it with ``build_reben(..., scheduler="synchronous")`` (timed:
     the one-core build rate);
  2. reads every file of the tree and of the store once (page cache warm for both), checks one
     random batch gives the same Sentinel-2 pixels, labels and masks from both, and checks that
     torch's DataLoader fetches a geofm batch with one ``ChipDataset.__getitems__`` call;
  3. times ``--rounds`` interleaved rounds (the order alternates) of random batches:
     torchgeo ``DataLoader(BigEarthNetV2(root, "train", bands="all"), batch_size=64,
     shuffle=True, num_workers=0)`` for ``--torchgeo-batches`` batches and geofm
     ``DataLoader(ChipDataset(store, "train"), batch_size=64, shuffle=True, num_workers=0,
     collate_fn=collate_samples)`` for ``--geofm-batches`` batches (default: one epoch);
  4. breaks one geofm batch down into its steps (shard read, store read, ``__getitems__``,
     collate) and, when the ratio misses the goal or with ``--profile``, prints a cProfile of a
     geofm epoch.

One core: BLAS/OpenMP/GDAL/torch/Blosc use one thread each and no worker processes run, so the
process never computes on more than one core at a time (the CPU/wall column shows it);
``--cpu N`` also pins it to CPU N. Samples/s are medians over the rounds of wall-clock time;
rates per CPU-second are printed beside them because the machine may be shared.

Usage::

    .venv/bin/python scripts/bench_store.py             # 1,536 patches, 3 rounds
    .venv/bin/python scripts/bench_store.py --n 512 --rounds 1   # a quick run

Output ends with ``RESULT store_vs_torchgeo=<geofm samples/s ÷ torchgeo samples/s>``,
``RESULT geofm_samples_per_s=...``, ``RESULT torchgeo_samples_per_s=...`` and
``RESULT reben_build_patches_per_s=...``.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "GDAL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import pstats  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numcodecs.blosc  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from _reben_synth import make_reben_tree, tree_bytes, warm_page_cache  # noqa: E402
from torch.utils.data import DataLoader, default_collate  # noqa: E402
from torchgeo.datasets import BigEarthNetV2  # noqa: E402

from geofm.builders.reben import build_reben  # noqa: E402
from geofm.data import ChipDataset, collate_samples  # noqa: E402
from geofm.io.store import open_store  # noqa: E402

GOAL = 20.0


def one_core(cpu: int) -> str:
    """Limit torch and Blosc to one thread and pin the process to ``cpu`` (-1: no pinning)."""
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    numcodecs.blosc.set_nthreads(1)
    if cpu >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    return "not pinned"


def loaders(tg: BigEarthNetV2, ds: ChipDataset, batch: int, seed: int
            ) -> tuple[DataLoader, DataLoader]:
    """Shuffling, in-process DataLoaders over torchgeo's and geofm's datasets."""
    tg_dl = DataLoader(tg, batch_size=batch, shuffle=True, num_workers=0,
                       generator=torch.Generator().manual_seed(seed))
    g_dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=0,
                      collate_fn=collate_samples, generator=torch.Generator().manual_seed(seed))
    return tg_dl, g_dl


def batches(dl: DataLoader, count: int) -> Iterator[Any]:
    """``count`` batches, starting new epochs as needed."""
    done = 0
    while True:
        for b in dl:
            yield b
            done += 1
            if done == count:
                return


def timed_batches(dl: DataLoader, count: int, key: str) -> tuple[int, float, float]:
    """Pull ``count`` batches; (samples, wall s, CPU s)."""
    n = 0
    wall, cpu = time.perf_counter(), time.process_time()
    for b in batches(dl, count):
        n += len(b[key])
    return n, time.perf_counter() - wall, time.process_time() - cpu


def check_equivalent(tg: BigEarthNetV2, ds: ChipDataset, batch: int, seed: int) -> str:
    """Compare one random batch from both datasets; raise if they disagree.

    Sentinel-2 pixels, labels and masks must be identical. torchgeo reads Sentinel-1 float dB
    into int32 and orders it [VH, VV]; geofm keeps float32 [VV, VH], so S1 agrees to < 1 dB.
    """
    rng = np.random.default_rng(seed)
    tg_idx = rng.choice(len(tg), size=min(batch, len(tg)), replace=False)
    t = default_collate([tg[int(i)] for i in tg_idx])
    position = {cid: k for k, cid in enumerate(ds.store.chips["chip_id"])}
    ds_pos = {int(s): k for k, s in enumerate(ds.indices)}
    g_idx = [ds_pos[position[tg.metadata_df.iloc[int(i)]["patch_id"]]] for i in tg_idx]
    g = collate_samples(ds.__getitems__(g_idx))
    img = g["image"]
    if not torch.equal(img[:, :12], t["image_s2"]):
        raise SystemExit("sanity check failed: Sentinel-2 pixels differ from torchgeo's")
    s1_err = max(float((img[:, 12] - t["image_s1"][:, 1]).abs().max()),
                 float((img[:, 13] - t["image_s1"][:, 0]).abs().max()))
    if s1_err >= 1.0:
        raise SystemExit(f"sanity check failed: Sentinel-1 differs by {s1_err:.2f} dB")
    if not torch.equal(g["label"], t["label"]) or not torch.equal(g["mask"], t["mask"][:, 0]):
        raise SystemExit("sanity check failed: labels or masks differ from torchgeo's")
    return (f"{len(tg_idx)} random chips: S2 [B,12,120,120] identical, labels and masks "
            f"identical, S1 max |diff| {s1_err:.2f} dB (torchgeo's int32 cast)")


def check_getitems(ds: ChipDataset, dl: DataLoader) -> int:
    """Number of ``store.read`` calls the DataLoader makes for one batch (1: __getitems__)."""
    calls = 0
    read = ds.store.read

    def counting(*args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        nonlocal calls
        calls += 1
        return read(*args, **kwargs)

    ds.store.read = counting  # type: ignore[method-assign]
    try:
        next(iter(dl))
    finally:
        del ds.store.read
    return calls


def median_ms(fn: Callable[[np.ndarray], Any], n: int, batch: int, reps: int, seed: int) -> float:
    """Median wall ms of ``fn(random indices)`` over ``reps`` calls."""
    rng = np.random.default_rng(seed)
    times = []
    for _ in range(reps):
        idx = rng.choice(n, size=batch, replace=False)
        t = time.perf_counter()
        fn(idx)
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def breakdown(ds: ChipDataset, batch: int, reps: int, seed: int) -> list[tuple[str, float]]:
    """ms per batch of each cumulative step of geofm's read path."""
    store = ds.store
    n = len(ds)
    steps: list[tuple[str, Callable[[np.ndarray], Any]]] = [
        ("ShardReader('image').read (pread + Blosc decode)",
         lambda i: store._reader("image").read(ds.indices[i])),
        ("ChipStore.read (image + label + mask)", lambda i: store.read(ds.indices[i])),
        ("ChipDataset.__getitems__ (+ per-sample tensors)", ds.__getitems__),
        ("__getitems__ + collate_samples", lambda i: collate_samples(ds.__getitems__(i))),
    ]
    return [(name, median_ms(fn, n, batch, reps, seed)) for name, fn in steps]


def profile_epoch(dl: DataLoader, top: int) -> str:
    """cProfile of one geofm epoch, the ``top`` functions by own time."""
    prof = cProfile.Profile()
    prof.enable()
    for _ in dl:
        pass
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main() -> None:
    """Parse the arguments, run the benchmark in a work directory, clean up."""
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n".join(__doc__.splitlines()[1:]))
    parser.add_argument("--n", type=int, default=1536, help="patches to generate (default 1536)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--torchgeo-batches", type=int, default=4,
                        help="torchgeo batches per round (default 4)")
    parser.add_argument("--geofm-batches", type=int, default=0,
                        help="geofm batches per round (default 0: one epoch)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where to write the tree and store (default: a temporary directory, "
                             "removed at the end); an existing generated tree there is reused")
    parser.add_argument("--link", action="store_true",
                        help="hard-link the GeoTIFFs instead of copying them")
    parser.add_argument("--cpu", type=int, default=-1,
                        help="pin the process to this CPU (default -1: no pinning)")
    parser.add_argument("--profile", action="store_true",
                        help="always print a cProfile of a geofm epoch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    pinned = one_core(args.cpu)
    tmp = args.workdir is None
    work = Path(tempfile.mkdtemp(prefix="bench_store_")) if tmp else args.workdir
    work.mkdir(parents=True, exist_ok=True)
    try:
        run(args, work, pinned)
    finally:
        if tmp:
            shutil.rmtree(work, ignore_errors=True)


def run(args: argparse.Namespace, work: Path, pinned: str) -> None:
    """The benchmark proper (see the module doc)."""
    src, store_path = work / "reben", work / "reben.zarr"
    t = time.perf_counter()
    make_reben_tree(src, args.n, link=args.link)
    files, size = tree_bytes(src)
    print(f"tree: {args.n:,} patches, {files:,} files, {size / 2**20:.0f} MiB "
          f"({'hard links' if args.link else 'copies'} of the 6 real reBEN patches) "
          f"at {src} ({time.perf_counter() - t:.1f} s, not counted)")
    print(f"one core: torch/BLAS/Blosc 1 thread, {pinned}")

    if store_path.exists():
        shutil.rmtree(store_path)
    warm_page_cache(src)
    t = time.perf_counter()
    build_reben(src, store_path, scheduler="synchronous", progress=False)
    t_build = time.perf_counter() - t
    build_rate = args.n / t_build
    s_files, s_size = tree_bytes(store_path)
    print(f"build (synchronous, 1 core): {t_build:.1f} s, {build_rate:.1f} patches/s; store "
          f"{s_files} files, {s_size / 2**20:.0f} MiB")

    files, size = warm_page_cache(src, store_path)
    print(f"page cache warmed: {files:,} files, {size / 2**20:.0f} MiB read once")

    tg = BigEarthNetV2(root=str(src), split="train", bands="all")
    ds = ChipDataset(open_store(store_path), split="train")
    assert len(tg) == len(ds) == args.n
    print("sanity:", check_equivalent(tg, ds, args.batch_size, args.seed))
    tg_dl, g_dl = loaders(tg, ds, args.batch_size, args.seed)
    calls = check_getitems(ds, g_dl)
    if calls != 1:
        raise SystemExit(f"DataLoader made {calls} store reads for one batch, not 1 "
                         "(__getitems__ unused)")
    print("sanity: DataLoader fetches a geofm batch with one __getitems__ → store.read call")

    g_count = args.geofm_batches or max(1, args.n // args.batch_size)
    next(iter(tg_dl))  # warm-up: imports, GDAL drivers, first allocations
    next(iter(g_dl))
    runs: dict[str, list[tuple[int, float, float]]] = {"torchgeo": [], "geofm": []}
    for r in range(args.rounds):
        order = ("torchgeo", "geofm") if r % 2 == 0 else ("geofm", "torchgeo")
        for name in order:
            if name == "torchgeo":
                runs[name].append(timed_batches(tg_dl, args.torchgeo_batches, "label"))
            else:
                runs[name].append(timed_batches(g_dl, g_count, "label"))
        line = ", ".join(f"{k} {n / w:,.1f} samples/s ({n} in {w:.2f} s)"
                         for k in ("torchgeo", "geofm") for n, w, _ in runs[k][-1:])
        print(f"round {r + 1}/{args.rounds}: {line}")

    rate = {k: statistics.median(n / w for n, w, _ in v) for k, v in runs.items()}
    cpu_rate = {k: statistics.median(n / c for n, _, c in v) for k, v in runs.items()}
    ratio = rate["geofm"] / rate["torchgeo"]

    util = {k: sum(c for _, _, c in v) / sum(w for _, w, _ in v) for k, v in runs.items()}
    print(f"\n{'reader':<10} {'samples/s (wall)':>17} {'samples/CPU-s':>14} {'ms/batch':>9} "
          f"{'CPU/wall':>9}")
    for k in ("torchgeo", "geofm"):
        print(f"{k:<10} {rate[k]:>17,.1f} {cpu_rate[k]:>14,.1f} "
              f"{1000 * args.batch_size / rate[k]:>9.1f} {util[k]:>9.2f}")
    print(f"geofm / torchgeo: {ratio:.1f}× wall, "
          f"{cpu_rate['geofm'] / cpu_rate['torchgeo']:.1f}× CPU (goal ≥ {GOAL:g}×)")

    print(f"\ngeofm batch of {args.batch_size}, cumulative steps (median ms over 10 batches):")
    steps = breakdown(ds, args.batch_size, 10, args.seed + 1)
    prev = 0.0
    for name, ms in steps:
        print(f"  {name:<52} {ms:>7.1f} ms  (+{ms - prev:.1f})")
        prev = ms
    print(f"  {'full DataLoader batch (from the rounds)':<52} "
          f"{1000 * args.batch_size / rate['geofm']:>7.1f} ms")

    if ratio < GOAL or args.profile:
        print("\ncProfile of one geofm epoch (top 15 by own time):")
        print(profile_epoch(g_dl, 15))

    print(f"RESULT store_vs_torchgeo={ratio:.2f}")
    print(f"RESULT geofm_samples_per_s={rate['geofm']:.1f}")
    print(f"RESULT torchgeo_samples_per_s={rate['torchgeo']:.1f}")
    print(f"RESULT reben_build_patches_per_s={build_rate:.2f}")


if __name__ == "__main__":
    main()
