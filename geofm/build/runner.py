"""Running a builder's region tasks on Dask, with a progress bar.

Every builder splits its work into shard-aligned regions; each task reads its sources and writes
whole shards, so tasks never touch the same file and can run on any number of workers.
``scheduler`` picks the engine:

- ``None`` (default): a local ``distributed`` cluster with one single-threaded worker process per
  core (``workers`` to change), so GDAL and numpy never fight over the GIL;
- ``"tcp://host:8786"``: an existing Dask scheduler of a real cluster;
- ``"synchronous"``: everything in this process (debugging, tests).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm


def run_regions(
    task: Callable[[int], Any],
    regions: Sequence[int],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    desc: str = "building",
    progress: bool = True,
) -> None:
    """Run ``task(region)`` for every region; re-raise the first task error.

    Args:
        task: A picklable callable writing one region.
        regions: Region numbers still to do.
        scheduler: ``None``, ``"synchronous"`` or a scheduler address (see module doc).
        workers: Worker processes of the local cluster (default: CPU count).
        desc: Progress-bar label.
        progress: Show a progress bar.
    """
    if not regions:
        return
    bar = tqdm(total=len(regions), desc=desc, unit="region", disable=not progress)
    try:
        if scheduler == "synchronous":
            for r in regions:
                task(r)
                bar.update()
            return
        from dask.distributed import Client, LocalCluster, as_completed

        if scheduler is None:
            n = workers or os.cpu_count() or 1
            with LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster, Client(cluster) as client:
                _submit(client, task, regions, bar, as_completed)
        else:
            with Client(scheduler) as client:
                _submit(client, task, regions, bar, as_completed)
    finally:
        bar.close()


def _submit(client: Any, task: Callable[[int], Any], regions: Sequence[int], bar: tqdm,
            as_completed: Callable[..., Any]) -> None:
    futures = client.map(task, list(regions), pure=False)
    try:
        for fut in as_completed(futures):
            fut.result()  # raises the task's exception here
            bar.update()
    finally:
        client.cancel(futures)
