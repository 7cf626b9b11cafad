"""The threaded read → infer → blend → write pipeline."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from geofm.predict.band_plan import BandPlan
from geofm.predict.model import Predictor
from geofm.predict.settings import GDAL_CACHE_BYTES, QUEUE_BATCHES
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


def read_batches(source: Source, plan: BandPlan, grid: TileGrid, batch_size: int
                 ) -> Iterator[Batch]:
    """Normalised tiles in panel and raster order, batched; all-nodata tiles are skipped.

    Pixels that are nodata or NaN in any used band, and padding beyond the raster edge, are
    set to 0 (the band mean after normalisation) and marked invalid.
    """
    th, tw = grid.tile
    fy, fx = grid.factor
    oh, ow = grid.out_tile
    mean = plan.mean[:, None, None]
    std = plan.std[:, None, None]
    images: list[np.ndarray] = []
    valids: list[np.ndarray] = []
    where: list[tuple[int, int, int, int]] = []
    for p, panel in enumerate(grid.panels):
        for r, y in enumerate(grid.rows):
            for x in (grid.cols[j] for j in panel.cols):
                h, w = min(th, grid.height - y), min(tw, grid.width - x)
                window = Window(x, y, w, h)
                raw = source.read(plan.sources, window)  # [C, h, w]
                bad = source.invalid(raw, plan.sources, window)  # [h, w]
                if bad.all():
                    continue
                tile = np.zeros((len(plan.sources), th, tw), np.float32)  # [C, th, tw]
                tile[:, :h, :w] = np.where(bad, np.float32(0), (raw - mean) / std)
                ok = np.zeros((th, tw), bool)
                ok[:h, :w] = ~bad
                images.append(tile)
                valids.append(ok.reshape(oh, fy, ow, fx).any(axis=(1, 3)))
                where.append((p, r, y, x))
                if len(images) == batch_size:
                    yield Batch(np.stack(images), np.stack(valids), where)
                    images, valids, where = [], [], []
    if images:
        yield Batch(np.stack(images), np.stack(valids), where)


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
    weight = (np.ones(grid.out_tile, np.float32) if mode == "scene"
              else hann_window(*grid.out_tile))
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

    predictors = [predictor] if isinstance(predictor, Predictor) else list(predictor)
    lock = threading.Lock()
    finished = threading.Condition(lock)
    done: dict[int, Any] = {}

    def reader() -> None:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            for seq, batch in enumerate(read_batches(source, plan, grid, batch_size)):
                if not _put(to_model, (seq, batch), stop):
                    return
        _put(to_model, _END, stop)

    def infer(pred: Predictor, batch: Any) -> Any:
        t0 = time.perf_counter()
        images = torch.from_numpy(batch.images).to(pred.device)
        batch.outputs = pred.outputs(images, plan.bands, mode).cpu().numpy()
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
        blender: Blender | None = None
        while True:
            item = _get(to_writer, stop)
            if item is None:
                return
            if item is _END:
                break
            for (p, r, y, x), out, valid in zip(item.where, item.outputs, item.valid):
                if blender is None or blender.panel is not grid.panels[p]:
                    for row, col, values, ok in blender.finish() if blender else ():
                        sink.write(row, col, values, ok)
                    blender = None  # free one panel's accumulator before making the next
                    blender = Blender(grid, grid.panels[p], channels, weight)
                    stats.accumulator_bytes = max(stats.accumulator_bytes, blender.nbytes)
                for row, col, values, ok in blender.add(r, y, x, out, valid):
                    sink.write(row, col, values, ok)
            bar.update(len(item.where))
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


