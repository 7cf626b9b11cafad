"""Where finished rows go: files on disk or arrays in memory."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np

from geofm.io.cog import (
    TempRaster,
    class_dtype,
)


class Sink(Protocol):
    """Where finished output goes."""

    def write(self, row: int, col: int, values: np.ndarray, valid: np.ndarray) -> None:
        """Blended ``values [K, n, m]`` and ``valid [n, m]`` at output ``(row, col)``."""
        ...


def classes_of(values: np.ndarray, valid: np.ndarray, dtype: str, nodata: int) -> np.ndarray:
    """Argmax class ``[n, m]`` of scores ``[K, n, m]``, ``nodata`` where invalid."""
    out = values.argmax(axis=0).astype(dtype)
    out[~valid] = nodata
    return out


def quantize(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Scores in ``[0, 1]`` as uint8 ``0–255`` (scale 1/255), 0 where invalid."""
    out = np.rint(np.clip(scores, 0.0, 1.0) * 255.0).astype(np.uint8)
    out[:, ~valid] = 0
    return out


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

    def write(self, row: int, col: int, values: np.ndarray, valid: np.ndarray) -> None:
        if self.check is not None:
            self.check(self._bytes(values))
        if self.product == "classes":
            dtype = self.main.ds.dtypes[0]
            self.main.write(row, col, classes_of(values, valid, dtype, self.class_nodata)[None])
            if self.probabilities is not None:
                self.probabilities.write(row, col, quantize(values, valid), valid)
        elif self.product == "scores":
            self.main.write(row, col, quantize(values, valid), valid)
        else:
            out = values.astype(np.float32, copy=True)
            out[:, ~valid] = np.nan
            self.main.write(row, col, out)


    def _bytes(self, values: np.ndarray) -> int:
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

    def write(self, row: int, col: int, values: np.ndarray, valid: np.ndarray) -> None:
        n, m = values.shape[1:]
        if self.classes:
            self.array[row:row + n, col:col + m] = classes_of(values, valid, self.dtype,
                                                              self.class_nodata)
        else:
            out = values.copy()
            out[:, ~valid] = np.nan
            self.array[:, row:row + n, col:col + m] = out


