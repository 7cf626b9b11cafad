"""The threaded read → infer → blend → write pipeline."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import Any, cast

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geofm.predict.band_plan import BandPlan
from geofm.predict.model import Predictor
from geofm.predict.settings import GDAL_CACHE_BYTES, QUEUE_BATCHES, READ_THREADS
from geofm.predict.sinks import Sink
from geofm.predict.sources import Source
from geofm.predict.tiling import Batch, Blender, TileGrid, hann_window


@dataclass
class RunStats:
    """What a pipeline run did.

    Attributes:
        tiles: Tile evaluations in the grid.
        predicted: Tiles run through the model (the others were all nodata).
        model_seconds: Time inside the model (including host/device copies).
        seconds: Wall time of the pipeline.
        accumulator_bytes: Size of the largest blending accumulator.
    """

    tiles: int = 0
    predicted: int = 0
    model_seconds: float = 0.0
    seconds: float = 0.0
    accumulator_bytes: int = 0


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


_END = object()
ABANDON_SECONDS = 1.0
"""How long an interrupted run waits for a model call in progress before leaving it behind."""


def read_batches(source: Source, plan: BandPlan, grid: TileGrid, batch_size: int, *,
                 threads: int | None = None) -> Generator[Batch, None, None]:
    """Normalised tiles in panel and raster order, batched; all-nodata tiles are skipped.

    Pixels that are nodata or NaN in any used band, and padding beyond the raster edge, are
    set to 0 (the band mean after normalisation) and marked invalid. Sources that can be read
    from several threads (``source.concurrent_reads``) are read and normalised by a pool of
    ``threads`` (default :func:`read_threads`), at most one tile per thread (plus one) ahead of
    the batch being assembled; batches come out in the same order either way.
    """
    windows = [(p, r, y, grid.cols[j]) for p, panel in enumerate(grid.panels)
               for r, y in enumerate(grid.rows) for j in panel.cols]
    workers = 1
    if getattr(source, "concurrent_reads", False):
        workers = read_threads() if threads is None else max(1, threads)
        source.reserve(workers)  # type: ignore[attr-defined]
    load = partial(_load_tile, source, plan, grid)
    tiles = map(load, windows) if workers == 1 else _ordered_map(load, windows, workers)
    images: list[np.ndarray] = []
    valids: list[np.ndarray] = []
    where: list[tuple[int, int, int, int]] = []
    for place, tile in zip(windows, tiles):
        if tile is None:
            continue
        images.append(tile[0])
        valids.append(tile[1])
        where.append(place)
        if len(images) == batch_size:
            batch = Batch(np.stack(images), np.stack(valids), where)
            images, valids, where = [], [], []  # let the tiles go while the batch waits
            yield batch
    if images:
        yield Batch(np.stack(images), np.stack(valids), where)


def read_threads() -> int:
    """Reader threads: one per CPU this process may use, at most :data:`READ_THREADS`."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity on this platform
        cpus = os.cpu_count() or 1
    return max(1, min(READ_THREADS, cpus))


def _load_tile(source: Source, plan: BandPlan, grid: TileGrid,
               place: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray] | None:
    """One tile ``[C, th, tw]`` normalised and its valid output cells ``[oh, ow]``, or
    ``None`` if it is all nodata. The source's memory is written only if its reads return new
    arrays (``source.owned_reads``)."""
    _, _, y, x = place
    th, tw = grid.tile
    h, w = min(th, grid.height - y), min(tw, grid.width - x)
    window = Window(x, y, w, h)
    raw = source.read(plan.sources, window)  # [C, h, w]
    bad = source.invalid(raw, plan.sources, window)  # [h, w]
    if bad.all():
        return None
    full = h == th and w == tw
    if full and getattr(source, "owned_reads", False):
        tile = inner = raw  # a new array: normalised in place
    else:
        tile = (np.empty if full else np.zeros)((len(plan.sources), th, tw), np.float32)
        inner = tile[:, :h, :w]  # [C, h, w]
    np.subtract(raw, plan.mean[:, None, None], out=inner)
    np.divide(inner, plan.std[:, None, None], out=inner)
    np.copyto(inner, np.float32(0), where=bad)
    if full and grid.factor == (1, 1):
        return tile, ~bad
    ok = np.zeros((th, tw), bool)
    ok[:h, :w] = ~bad
    (oh, ow), (fy, fx) = grid.out_tile, grid.factor
    return tile, cast(np.ndarray, ok.reshape(oh, fy, ow, fx).any(axis=(1, 3)))


def _ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)`` on a pool of ``workers`` threads, in order, at most ``workers + 1``
    results ahead of the consumer; pending work is cancelled when the consumer stops."""
    pool = ThreadPoolExecutor(workers, thread_name_prefix="geofm-read")
    pending: deque[Future[Any]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True)


def run_pipeline(predictor: Predictor | Sequence[Predictor], source: Source, plan: BandPlan,
                 grid: TileGrid, mode: str, sink: Sink, *, channels: int, batch_size: int = 8,
                 progress: bool = False) -> RunStats:
    """Read, infer, blend and write with three overlapping stages.

    With several predictors (one replica per device), each runs in its own thread on the next
    batch it can take, and results are handed to the writer in tile order, so the output is
    the same as with one device.

    Args:
        predictor: The model (already on its device), or one replica per device.
        source: The input.
        plan: Band matching and normalisation.
        grid: The tile grid.
        mode: ``"pixel"``, ``"scene"`` or ``"embed"`` (see :meth:`Predictor.outputs`).
        sink: Receives finished output.
        channels: Output channels ``K`` of the model in this mode.
        batch_size: Tiles per model call.
        progress: Show a progress bar.

    Returns:
        Counts and timings.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    stats = RunStats(tiles=grid.num_tiles)
    predictors = [predictor] if isinstance(predictor, Predictor) else list(predictor)
    blend_device = predictors[0].device
    weight = torch.from_numpy(np.ones(grid.out_tile, np.float32) if mode == "scene"
                              else hann_window(*grid.out_tile)).to(blend_device)
    stop = threading.Event()
    errors: list[BaseException] = []
    to_model: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
    to_writer: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
    bar = tqdm(total=grid.num_tiles, unit="tile", desc="predict", disable=not progress,
               leave=False)

    # Each thread sets its event when it ends; the calling thread waits on the events, not
    # with Thread.join: a signal interrupting join() can mark a running thread as stopped
    # (Python before 3.13), and its files could then be closed under it.
    ended: dict[str, threading.Event] = {}

    def guarded(fn: Callable[[], None], name: str) -> Callable[[], None]:
        event = ended.setdefault(name, threading.Event())

        def run() -> None:
            try:
                fn()
            except BaseException as e:
                errors.append(e)
                stop.set()
            finally:
                event.set()
        return run

    def wait(names: Sequence[str], seconds: float | None = None) -> None:
        deadline = None if seconds is None else time.monotonic() + seconds
        for name in names:
            while not ended[name].wait(0.1):
                if deadline is not None and time.monotonic() > deadline:
                    return

    lock = threading.Lock()
    finished = threading.Condition(lock)
    done: dict[int, Any] = {}

    if getattr(source, "concurrent_reads", False):
        source.reserve(read_threads())  # type: ignore[attr-defined]  # here: cheaper to open

    def reader() -> None:
        # closing(): a stopped run cancels the pool's pending reads before the reader ends.
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), \
                closing(read_batches(source, plan, grid, batch_size)) as batches:
            for seq, batch in enumerate(batches):
                if not _put(to_model, (seq, batch), stop):
                    return
        _put(to_model, _END, stop)

    def infer(pred: Predictor, batch: Any) -> Any:
        t0 = time.perf_counter()
        images = torch.from_numpy(batch.images).to(pred.device)  # [B, C, th, tw]
        # Outputs stay on the device: the writer blends them there.
        batch.outputs = pred.outputs(images, plan.bands, mode)  # [B, K, oh, ow]
        if batch.outputs.device.type == "cuda":  # the time above is the launch only
            torch.cuda.current_stream(batch.outputs.device).synchronize()
        batch.images = np.empty(0, np.float32)  # the writer needs outputs only
        with lock:
            stats.model_seconds += time.perf_counter() - t0
            stats.predicted += len(batch.where)
        return batch

    def device_worker(pred: Predictor) -> Callable[[], None]:
        def run() -> None:
            while True:
                item = _get(to_model, stop)
                if item is None:
                    return
                if item is _END:
                    _put(to_model, _END, stop)  # the other devices stop too
                    return
                seq, batch = item
                out = infer(pred, batch)
                if len(predictors) == 1:  # in order already: straight to the writer
                    if not _put(to_writer, out, stop):
                        return
                    continue
                with finished:
                    done[seq] = out
                    finished.notify_all()
        return run

    def writer() -> None:
        with torch.inference_mode():  # model outputs are inference tensors, weighted in place
            blend()

    def blend() -> None:
        blender: Blender | None = None
        while True:
            item = _get(to_writer, stop)
            if item is None:
                return
            if item is _END:
                break
            outputs = item.outputs.to(blend_device)  # [B, K, oh, ow]
            valids = torch.from_numpy(item.valid).to(blend_device)  # [B, oh, ow]
            for (p, r, y, x), out, valid in zip(item.where, outputs, valids):
                if blender is None or blender.panel is not grid.panels[p]:
                    for row, col, values, ok in blender.finish() if blender else ():
                        sink.write(row, col, values, ok)
                    blender = None  # free one panel's accumulator before making the next
                    blender = Blender(grid, grid.panels[p], channels, weight, blend_device)
                    stats.accumulator_bytes = max(stats.accumulator_bytes, blender.nbytes)
                for row, col, values, ok in blender.add(r, y, x, out, valid):
                    sink.write(row, col, values, ok)
            bar.update(len(item.where))
            del item, outputs, valids, out, valid  # not held while waiting for the next batch
        for row, col, values, ok in blender.finish() if blender else ():
            sink.write(row, col, values, ok)

    # The model runs in worker threads (one per device), so the calling thread only waits and
    # hands batches on in order: Ctrl-C and SIGTERM reach it within a fraction of a second even
    # while a model call is running.
    names = [f"geofm-{p.device}-{i}" for i, p in enumerate(predictors)]
    threads = [threading.Thread(target=guarded(reader, "geofm-read"), name="geofm-read",
                                daemon=True),
               threading.Thread(target=guarded(writer, "geofm-write"), name="geofm-write",
                                daemon=True)]
    workers = [threading.Thread(target=guarded(device_worker(p), name), name=name, daemon=True)
               for p, name in zip(predictors, names)]
    for t in (*threads, *workers):
        t.start()
    try:
        next_seq = 0
        if len(workers) == 1:
            wait(names)
        while len(workers) > 1 and not stop.is_set():
            with finished:
                while (next_seq not in done and not stop.is_set()
                       and any(w.is_alive() for w in workers)):
                    finished.wait(0.1)
                batch = done.pop(next_seq, None)
            if batch is None:
                break  # every device finished and nothing is left in order
            if not _put(to_writer, batch, stop):
                break
            next_seq += 1
        _put(to_writer, _END, stop)
        wait(["geofm-read", "geofm-write", *names])
    except BaseException:
        stop.set()
        # Reader and writer stop within one read or write; a model call cannot be
        # interrupted, so its thread is left to finish on its own (it touches no file).
        wait(["geofm-read", "geofm-write"])
        wait(names, ABANDON_SECONDS)
        bar.close()
        raise
    bar.close()
    if errors:
        raise errors[0]
    stats.seconds = time.perf_counter() - start
    return stats


