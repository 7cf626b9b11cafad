"""Running a builder's region tasks on Dask, with a progress bar.

Every builder splits its work into shard-aligned regions; each task reads its sources and writes
whole shards, so tasks never touch the same file and can run on any number of workers.
``scheduler`` picks the engine:

- ``None`` (default): a local ``distributed`` cluster with one single-threaded worker process per
  core (``workers`` to change), so GDAL and numpy never fight over the GIL;
- ``"tcp://host:8786"``: an existing Dask scheduler of a real cluster;
- ``"synchronous"``: everything in this process (debugging, tests).

A :class:`~geofm.errors.GeofmError` raised by a task (a corrupt source file, a full disk) is
returned by the worker as a value and raised again here, with its class and its one line: a user
error is not a task failure, so the workers log nothing and print no traceback, and every
scheduler gives the same line as ``"synchronous"``. The build then stops with tasks still
running; the local cluster's warnings about cancelling and killing them say nothing the user
needs, so they are silenced until the cluster is closed, as are those of closing a local cluster
at all (on a busy machine a worker may take more than the 4 s distributed waits for it to exit).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from geofm.errors import GeofmError
from geofm.io.space import disk_full_error, is_disk_full

_HUSHED: dict[str, int] = {}  # logger name → level before a user error stopped the build


def _hush_logs() -> None:
    """Nothing from ``distributed`` (this process or a worker): not the warnings about
    tasks cancelled and workers killed while a stopped build's cluster closes."""
    names = [n for n, lg in logging.root.manager.loggerDict.items()
             if n.startswith("distributed.") and isinstance(lg, logging.Logger) and lg.level]
    for name in ("distributed", *names):  # the parent and the children with their own level
        log = logging.getLogger(name)
        _HUSHED.setdefault(name, log.level)
        log.setLevel(logging.CRITICAL)


def _restore_logs() -> None:
    """Undo :func:`_hush_logs` in this process."""
    for name, level in _HUSHED.items():
        logging.getLogger(name).setLevel(level)
    _HUSHED.clear()


def start_local_cluster(workers: int | None) -> Any:
    """A local cluster of ``workers`` single-threaded processes (default: one per core).

    No dashboard, and the scheduler's HTTP endpoint on a free port: distributed's default port
    8787 is often held by another cluster (a notebook's), which would print a warning.
    """
    from dask.distributed import LocalCluster

    return LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                        processes=True, dashboard_address=None,
                        scheduler_kwargs={"dashboard_address": "127.0.0.1:0"})


def close_quietly(cluster: Any) -> None:
    """Close a local cluster without distributed's warnings, then restore its log levels."""
    _hush_logs()
    try:
        cluster.close()
    finally:
        _restore_logs()


@dataclass(frozen=True)
class _Failed:
    """A task's user error, carried back to the client as a result."""

    error: GeofmError


@dataclass(frozen=True)
class _Guarded:
    """``task(region)``, returning a user error (or a full disk) instead of raising it."""

    task: Callable[[int], Any]
    output: str | None

    def __call__(self, region: int) -> Any:
        try:
            return self.task(region)
        except GeofmError as e:
            # distributed installs tblib's reducers for exception classes it has seen, which
            # would send the cause and traceback along; the caller needs the line alone.
            e.__cause__ = e.__context__ = None
            return _Failed(e.with_traceback(None))
        except Exception as e:
            if is_disk_full(e):
                return _Failed(disk_full_error(self.output or os.getcwd()))
            raise


def check_engine(scheduler: str | None, workers: int | None) -> None:
    """Refuse a worker count below 1 or a malformed scheduler address before anything is read
    or written.

    Raises:
        GeofmError: ``workers`` is zero or negative, or ``scheduler`` is no Dask address.
    """
    if workers is not None and workers < 1:
        raise GeofmError(f"--workers must be at least 1 (got {workers})",
                         hint="give a number of worker processes, or leave it out for one per core")
    if scheduler is None or scheduler == "synchronous":
        return
    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        _, location = parse_address(scheduler)
        parse_host_port(location)
    except (ValueError, TypeError) as e:
        raise GeofmError(f"--scheduler {scheduler!r} is not a Dask scheduler address ({e})",
                         hint="give tcp://host:port, 'synchronous', or leave it out for a "
                              "local cluster") from None


def run_regions(
    task: Callable[[int], Any],
    regions: Sequence[int],
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    desc: str = "building",
    progress: bool = True,
    output: str | os.PathLike[str] | None = None,
) -> None:
    """Run ``task(region)`` for every region; re-raise the first task error.

    Args:
        task: A picklable callable writing one region.
        regions: Region numbers still to do.
        scheduler: ``None``, ``"synchronous"`` or a scheduler address (see module doc).
        workers: Worker processes of the local cluster (default: CPU count).
        desc: Progress-bar label.
        progress: Show a progress bar.
        output: The path the tasks write to, named when its disk fills up.

    Raises:
        GeofmError: The first user error of a task, with its own class and line.
    """
    check_engine(scheduler, workers)
    if not regions:
        return
    task = _Guarded(task, None if output is None else str(output))
    bar = tqdm(total=len(regions), desc=desc, unit="region", disable=not progress)
    try:
        if scheduler == "synchronous":
            for r in regions:
                _raise_failed(task(r))
                bar.update()
            return
        from dask.distributed import Client, as_completed

        if scheduler is None:
            cluster = start_local_cluster(workers)
            try:
                with Client(cluster) as client:
                    _submit(client, task, regions, bar, as_completed)
            finally:
                close_quietly(cluster)
        else:
            try:
                client = Client(scheduler)
            except (OSError, TimeoutError) as e:
                raise GeofmError(f"cannot reach the Dask scheduler at {scheduler} "
                                 f"({str(e).splitlines()[0] if str(e) else type(e).__name__})",
                                 hint="start it, or leave --scheduler out for a local "
                                      "cluster") from None
            try:
                with client:
                    _submit(client, task, regions, bar, as_completed)
            finally:
                _restore_logs()
    finally:
        bar.close()


def _submit(client: Any, task: Callable[[int], Any], regions: Sequence[int], bar: tqdm,
            as_completed: Callable[..., Any]) -> None:
    futures = client.map(task, list(regions), pure=False)
    try:
        for fut in as_completed(futures):
            result = fut.result()  # raises a task's other exceptions here
            if isinstance(result, _Failed):
                _hush_logs()
                client.run(_hush_logs, on_error="ignore")  # the workers' own loggers
                raise result.error
            bar.update()
    finally:
        client.cancel(futures)


def _raise_failed(result: Any) -> None:
    if isinstance(result, _Failed):
        raise result.error
