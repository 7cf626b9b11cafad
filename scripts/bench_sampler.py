"""Benchmark: one epoch of batch indices for a multi-store pretraining run, against Lightning's
default distributed sampler.

geofm's step runs draw their batches with :class:`geofm.data.mixed.StoreBatchSampler`; the
baseline is what Lightning injects into a DDP run by default, its ``DistributedSampler``
wrapped in a ``BatchSampler``, over the same number of chips. Both are
built and iterated for one epoch on rank 0 of ``--world`` ranks, at OpticalRS-13M + reBEN scale
by default (13,203,698 + 549,488 chips, batch 64), each in a fresh process so that its peak
memory is its own. The mixed sampler is timed both by chip count and with ``--weights``.

Usage::

    .venv/bin/python scripts/bench_sampler.py                   # about a minute on 2 cores
    .venv/bin/python scripts/bench_sampler.py --sizes 100000,20000 --rounds 1

Ends with ``RESULT sampler_epoch_s=…``, ``RESULT sampler_over_lightning=…`` (epoch time of the
mixed sampler over the single-store baseline's, same chip total) and
``RESULT sampler_peak_mb=…``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import statistics
import time


def _epoch(kind: str, sizes: list[int], batch: int, world: int,
           weights: list[float] | None) -> tuple[float, float, int]:
    """Seconds, peak RSS growth (MB) and batches of one epoch on rank 0 (fresh process)."""
    import torch
    from torch.utils.data import BatchSampler, DistributedSampler

    from geofm.data.mixed import StoreBatchSampler

    torch.set_num_threads(1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if kind == "lightning":
        total = sum(sizes)
        sampler = DistributedSampler(range(total), num_replicas=world, rank=0, shuffle=True,
                                     seed=0)
        sampler.set_epoch(1)
        batches = BatchSampler(sampler, batch, drop_last=False)
    else:
        batches = StoreBatchSampler(sizes, batch, seed=0, rank=0, world_size=world,
                                    weights=weights)
        batches.set_epoch(1)
    count = 0
    for b in batches:
        count += len(b) > 0
    seconds = time.perf_counter() - t0
    peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return seconds, peak, count


def main() -> None:
    """Time each sampler in its own process, over interleaved rounds."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="13203698,549488", help="chips per store")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--world", type=int, default=8, help="ranks (rank 0 is timed)")
    parser.add_argument("--weights", default="1,1", help="the weighted variant's weights")
    parser.add_argument("--rounds", type=int, default=3)
    a = parser.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")]
    weights = [float(x) for x in a.weights.split(",")]
    variants = {"lightning": None, "mixed": None, "mixed_weighted": weights}
    ctx = mp.get_context("spawn")
    results: dict[str, list[tuple[float, float, int]]] = {k: [] for k in variants}
    with ctx.Pool(1, maxtasksperchild=1) as pool:
        for r in range(a.rounds):
            order = list(variants)[r % 3:] + list(variants)[:r % 3]
            for name in order:
                kind = "lightning" if name == "lightning" else "mixed"
                results[name].append(pool.apply(
                    _epoch, (kind, sizes, a.batch_size, a.world, variants[name])))
            print(f"round {r + 1}/{a.rounds} done", flush=True)
    print(f"\n{sum(sizes):,} chips in stores of {', '.join(f'{n:,}' for n in sizes)}; batch "
          f"{a.batch_size}; rank 0 of {a.world}; median of {a.rounds} rounds")
    print(f"{'sampler':<16}{'epoch s':>10}{'peak MB':>10}{'batches':>10}")
    med = {}
    for name, rows in results.items():
        med[name] = (statistics.median(x[0] for x in rows), max(x[1] for x in rows), rows[0][2])
        print(f"{name:<16}{med[name][0]:>10.2f}{med[name][1]:>10.0f}{med[name][2]:>10,}")
    ratio = statistics.median(m[0] / b[0] for m, b in zip(results["mixed"],
                                                          results["lightning"], strict=True))
    print(f"RESULT sampler_epoch_s={med['mixed'][0]:.3f}")
    print(f"RESULT sampler_over_lightning={ratio:.3f}")
    print(f"RESULT sampler_peak_mb={max(med['mixed'][1], med['mixed_weighted'][1]):.0f}")


if __name__ == "__main__":
    main()
