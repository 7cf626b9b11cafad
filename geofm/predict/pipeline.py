"""The threaded read → infer → blend → write pipeline."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
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
from geofm.predict.tiling import Batch, Blender, Rows, TileGrid, hann_window


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
    """Read, infer, blend and write with three overlapping stages (see :class:`Pipeline`).

    With several predictors (one replica per device), each runs in its own thread on the next
    batch it can take, and results are handed to the writer in tile order, so the output is
    the same as with one device.

    Args:
        predictor: The model (already on its device), or one replica per device.
        source: The input.
        plan: Band matching and normalisation.
        grid: The tile grid.
        mode: ``"pixel"``, ``"scene"``, ``"embed"`` or ``"query"`` (see
            :meth:`Predictor.outputs`).
        sink: Receives finished output.
        channels: Output channels ``K`` of the model in this mode.
        batch_size: Tiles per model call.
        progress: Show a progress bar.

    Returns:
        Counts and timings.
    """
    predictors = [predictor] if isinstance(predictor, Predictor) else list(predictor)
    return Pipeline(predictors, source, plan, grid, mode, sink, channels=channels,
                    batch_size=batch_size).run(progress)


class _Stage:
    """One stage's thread. Its first exception is recorded and stops the run; it sets
    :attr:`ended` when it returns.

    The calling thread waits on :attr:`ended`, not with ``Thread.join``: a signal interrupting
    ``join()`` can mark a running thread as stopped (Python before 3.13), and its files could
    then be closed under it.
    """

    def __init__(self, name: str, target: Callable[[], None], stop: threading.Event,
                 errors: list[BaseException]) -> None:
        self.ended = threading.Event()

        def run() -> None:
            try:
                target()
            except BaseException as e:
                errors.append(e)
                stop.set()
            finally:
                self.ended.set()

        self.thread = threading.Thread(target=run, name=name, daemon=True)

    @staticmethod
    def wait(stages: Sequence[_Stage], seconds: float | None = None) -> None:
        """Wait until every stage ended, or at most ``seconds``."""
        deadline = None if seconds is None else time.monotonic() + seconds
        for stage in stages:
            while not stage.ended.wait(0.1):
                if deadline is not None and time.monotonic() > deadline:
                    return


class Pipeline:
    """One streaming run: a reader thread, one model thread per device and a writer thread,
    linked by two bounded queues.

    * :meth:`_read` (thread ``geofm-read``) puts numbered batches of normalised tiles on the
      model queue, then an end marker.
    * :meth:`_serve` (thread ``geofm-<device>-<i>``, one per predictor) runs the model on the
      next batch it can take. One device hands its batches straight to the writer queue;
      with several, finished batches wait in :attr:`_done` and the calling thread hands them
      on in their original order (:meth:`_hand_on_in_order`).
    * :meth:`_write` (thread ``geofm-write``) blends the outputs panel by panel and writes the
      rows no later tile can touch to the sink.

    The model runs in worker threads, so the calling thread only waits and hands batches on:
    Ctrl-C and SIGTERM reach it within a fraction of a second even while a model call runs.
    The first error in any stage stops every stage and is raised by :meth:`run`.
    """

    def __init__(self, predictors: Sequence[Predictor], source: Source, plan: BandPlan,
                 grid: TileGrid, mode: str, sink: Sink, *, channels: int,
                 batch_size: int = 8) -> None:
        self.predictors = list(predictors)
        self.source, self.plan, self.grid, self.mode, self.sink = source, plan, grid, mode, sink
        self.channels, self.batch_size = channels, batch_size
        self.stats = RunStats(tiles=grid.num_tiles)
        self.blend_device = self.predictors[0].device
        weight = (np.ones(grid.out_tile, np.float32) if mode == "scene"
                  else hann_window(*grid.out_tile))  # [oh, ow]
        self.weight = torch.from_numpy(weight).to(self.blend_device)
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.to_model: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
        self.to_writer: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
        self._lock = threading.Lock()  # guards stats and _done
        self._finished = threading.Condition(self._lock)
        self._done: dict[int, Batch] = {}  # inferred batches by number (several devices)
        self._blender: Blender | None = None  # the panel being blended
        self._bar: Any = None  # the progress bar, made by run()

    def run(self, progress: bool = False) -> RunStats:
        """Run every stage to the end and return the counts and timings.

        Raises:
            BaseException: The first error of any stage, or the interruption of the calling
                thread (a model call in progress is then left to finish on its own after
                :data:`ABANDON_SECONDS`; it touches no file).
        """
        from tqdm.auto import tqdm

        start = time.perf_counter()
        if getattr(self.source, "concurrent_reads", False):
            self.source.reserve(read_threads())  # type: ignore[attr-defined]  # cheaper here
        self._bar = tqdm(total=self.grid.num_tiles, unit="tile", desc="predict",
                         disable=not progress, leave=False)
        reader = self._stage("geofm-read", self._read)
        writer = self._stage("geofm-write", self._write)
        models = [self._stage(f"geofm-{p.device}-{i}", partial(self._serve, p))
                  for i, p in enumerate(self.predictors)]
        for stage in (reader, writer, *models):
            stage.thread.start()
        try:
            if len(models) > 1:
                self._hand_on_in_order(models)
            else:
                _Stage.wait(models)
            _put(self.to_writer, _END, self.stop)
            _Stage.wait([reader, writer, *models])
        except BaseException:
            self.stop.set()
            # Reader and writer stop within one read or write; a model call cannot be
            # interrupted, so its thread is left to finish on its own.
            _Stage.wait([reader, writer])
            _Stage.wait(models, ABANDON_SECONDS)
            raise
        finally:
            self._bar.close()
        if self.errors:
            raise self.errors[0]
        self.stats.seconds = time.perf_counter() - start
        return self.stats

    def _stage(self, name: str, target: Callable[[], None]) -> _Stage:
        return _Stage(name, target, self.stop, self.errors)

    def _read(self) -> None:
        """Number the batches of normalised tiles and queue them for the models."""
        # closing(): a stopped run cancels the pool's pending reads before the reader ends.
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), \
                closing(read_batches(self.source, self.plan, self.grid,
                                     self.batch_size)) as batches:
            for seq, batch in enumerate(batches):
                if not _put(self.to_model, (seq, batch), self.stop):
                    return
        _put(self.to_model, _END, self.stop)

    def _serve(self, pred: Predictor) -> None:
        """Run ``pred`` on queued batches until the end marker (which it passes on)."""
        while True:
            item = _get(self.to_model, self.stop)
            if item is None:
                return
            if item is _END:
                _put(self.to_model, _END, self.stop)  # the other devices stop too
                return
            seq, batch = item
            self._infer(pred, batch)
            if len(self.predictors) == 1:  # in order already: straight to the writer
                if not _put(self.to_writer, batch, self.stop):
                    return
                continue
            with self._finished:
                self._done[seq] = batch
                self._finished.notify_all()

    def _infer(self, pred: Predictor, batch: Batch) -> None:
        """Replace the batch's images with the model's outputs, left on its device."""
        t0 = time.perf_counter()
        images = torch.from_numpy(batch.images).to(pred.device)  # [B, C, th, tw]
        # Outputs stay on the device: the writer blends them there.
        batch.outputs = pred.outputs(images, self.plan.bands, self.mode)  # [B, K, oh, ow]
        if batch.outputs.device.type == "cuda":  # the time above is the launch only
            torch.cuda.current_stream(batch.outputs.device).synchronize()
        batch.images = np.empty(0, np.float32)  # the writer needs outputs only
        with self._lock:
            self.stats.model_seconds += time.perf_counter() - t0
            self.stats.predicted += len(batch.where)

    def _hand_on_in_order(self, models: Sequence[_Stage]) -> None:
        """Several devices: pass finished batches to the writer in their original order."""
        next_seq = 0
        while not self.stop.is_set():
            with self._finished:
                while (next_seq not in self._done and not self.stop.is_set()
                       and not all(m.ended.is_set() for m in models)):
                    self._finished.wait(0.1)
                batch = self._done.pop(next_seq, None)
            if batch is None:
                return  # every device finished and nothing is left in order
            if not _put(self.to_writer, batch, self.stop):
                return
            next_seq += 1

    def _write(self) -> None:
        """Blend queued batches until the end marker, then flush the last panel."""
        with torch.inference_mode():  # model outputs are inference tensors, weighted in place
            while True:
                item = _get(self.to_writer, self.stop)
                if item is None:
                    return
                if item is _END:
                    break
                self._blend(item)
                self._bar.update(len(item.where))
                del item  # not held while waiting for the next batch
            if self._blender is not None:
                self._emit(self._blender.finish())

    def _blend(self, batch: Batch) -> None:
        """Add a batch's tiles to their panels' blenders and write the rows they finish."""
        assert batch.outputs is not None
        outputs = batch.outputs.to(self.blend_device)  # [B, K, oh, ow]
        valids = torch.from_numpy(batch.valid).to(self.blend_device)  # [B, oh, ow]
        for (p, r, y, x), out, valid in zip(batch.where, outputs, valids):
            if self._blender is None or self._blender.panel is not self.grid.panels[p]:
                self._open_panel(p)
            assert self._blender is not None
            self._emit(self._blender.add(r, y, x, out, valid))

    def _open_panel(self, p: int) -> None:
        """Finish the current panel and start blending panel ``p``."""
        if self._blender is not None:
            self._emit(self._blender.finish())
        self._blender = None  # free one panel's accumulator before making the next
        self._blender = Blender(self.grid, self.grid.panels[p], self.channels, self.weight,
                                self.blend_device)
        self.stats.accumulator_bytes = max(self.stats.accumulator_bytes, self._blender.nbytes)

    def _emit(self, rows: Iterable[Rows]) -> None:
        """Write finished rows to the sink."""
        for row, col, values, ok in rows:
            self.sink.write(row, col, values, ok)
