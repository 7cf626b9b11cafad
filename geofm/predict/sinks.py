"""Where finished rows go: files on disk or arrays in memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from geofm.io.cog import (
    TempRaster,
    class_dtype,
)


class Sink(Protocol):
    """Where finished output goes."""

    def write(self, row: int, col: int, values: Tensor, valid: Tensor) -> None:
        """Blended ``values [K, n, m]`` and ``valid [n, m]`` (on the blending device) at output
        ``(row, col)``; ``values`` may be reused after the call returns."""
        ...


def classes_of(values: Tensor, valid: Tensor, dtype: str, nodata: int) -> np.ndarray:
    """Argmax class ``[n, m]`` of scores ``[K, n, m]``, ``nodata`` where invalid.

    The first maximum wins (a NaN counts as the maximum), as with ``numpy.argmax``. On a GPU
    the argmax runs there and only the class map is copied to the host.
    """
    if values.device.type == "cpu":
        out = first_argmax(values.numpy()).astype(dtype, copy=False)
        out[~valid.numpy()] = nodata
        return out
    index = values.argmax(dim=0).masked_fill_(~valid, nodata)  # [n, m] int64
    small = torch.uint8 if dtype == "uint8" else torch.int32
    return index.to(small).cpu().numpy().astype(dtype, copy=False)


def first_argmax(values: np.ndarray) -> np.ndarray:
    """``numpy.argmax(values, axis=0)`` of ``[K, n, m]`` as uint8 (uint16 past 256 channels).

    A running maximum over the channels, each a contiguous plane: two to three times faster
    than ``argmax`` over the first axis, which walks the channels with a stride.
    """
    best = values[0].copy()  # [n, m]
    index = np.zeros(best.shape, np.uint8 if len(values) <= 256 else np.uint16)
    better = np.empty(best.shape, bool)
    for k in range(1, len(values)):
        np.greater(values[k], best, out=better)
        np.maximum(best, values[k], out=best)  # NaN propagates: such pixels are fixed below
        np.putmask(index, better, k)
    nan = np.isnan(best)
    if nan.any():
        index[nan] = np.isnan(values[:, nan]).argmax(axis=0)
    return index


def quantize(scores: Tensor, valid: Tensor) -> np.ndarray:
    """Scores in ``[0, 1]`` as uint8 ``0–255`` (scale 1/255, half to even), 0 where invalid."""
    out = scores.clamp(0.0, 1.0).mul_(255.0).round_().to(torch.uint8)  # [K, n, m]
    return out.masked_fill_(~valid, 0).cpu().numpy()


def float_values(values: Tensor, valid: Tensor) -> np.ndarray:
    """``values [K, n, m]`` as float32 on the host, NaN where invalid."""
    nan = torch.tensor(float("nan"), dtype=torch.float32, device=values.device)
    return torch.where(valid, values.float(), nan).cpu().numpy()


class FileSink:
    """Writes finished output to temporary GeoTIFFs (main product and probabilities).

    Args:
        product: ``"classes"``, ``"scores"`` or ``"values"`` for the main file.
        main: Writer of the main file.
        probabilities: Writer of the per-class probability file (class products only).
        class_nodata: Nodata value of the class raster.
        check: Called with the bytes about to be written (at most) before each write; raises
            to stop the run (a full disk).
    """

    def __init__(self, product: str, main: TempRaster, probabilities: TempRaster | None,
                 class_nodata: int = 255, check: Callable[[int], None] | None = None) -> None:
        self.product = product
        self.main = main
        self.probabilities = probabilities
        self.class_nodata = class_nodata
        self.check = check

    def write(self, row: int, col: int, values: Tensor, valid: Tensor) -> None:
        if self.check is not None:
            self.check(self._bytes(values))
        if self.product == "classes":
            dtype = self.main.ds.dtypes[0]
            self.main.write(row, col, classes_of(values, valid, dtype, self.class_nodata)[None])
            if self.probabilities is not None:
                self.probabilities.write(row, col, quantize(values, valid), _host(valid))
        elif self.product == "scores":
            self.main.write(row, col, quantize(values, valid), _host(valid))
        else:
            self.main.write(row, col, float_values(values, valid))


    def _bytes(self, values: Tensor) -> int:
        """Uncompressed bytes the files receive for ``values [K, n, m]``."""
        k, n, m = values.shape
        per_pixel = {"classes": 1 if self.main.ds.dtypes[0] == "uint8" else 2,
                     "scores": k}.get(self.product, 4 * k)
        return n * m * (per_pixel + (k if self.probabilities is not None else 0))


class ArraySink:
    """Keeps the whole output in memory (the API): float values with NaN where invalid, or
    class indices with ``class_nodata``.

    Args:
        channels: Output channels ``K``.
        shape: Output ``(rows, cols)``.
        classes: Store argmax classes instead of the ``K`` values.
        class_nodata: Nodata value of the classes.
    """

    def __init__(self, channels: int, shape: tuple[int, int], classes: bool,
                 class_nodata: int = 255) -> None:
        self.classes = classes
        self.class_nodata = class_nodata
        self.dtype = class_dtype(channels)[0]
        self.array = (np.full(shape, class_nodata, self.dtype) if classes
                      else np.full((channels, *shape), np.nan, np.float32))

    def write(self, row: int, col: int, values: Tensor, valid: Tensor) -> None:
        n, m = values.shape[1:]
        if self.classes:
            self.array[row:row + n, col:col + m] = classes_of(values, valid, self.dtype,
                                                              self.class_nodata)
        else:
            self.array[:, row:row + n, col:col + m] = float_values(values, valid)


def _host(valid: Tensor) -> np.ndarray:
    return valid.cpu().numpy()


