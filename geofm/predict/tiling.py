"""The tile grid and the smooth-window blender."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from affine import Affine

from geofm.predict.settings import FINISH_COLUMNS, PANEL_PIXELS


def tile_offsets(size: int, tile: int, stride: int, step: int = 1) -> list[int]:
    """Tile start offsets along one axis covering ``size`` pixels.

    Offsets are ``0, stride, 2·stride, …``; the last tile is moved back to end at the raster
    edge (rounded up to a multiple of ``step``, so patch grids stay aligned), which gives it
    full context instead of padding. A raster smaller than a tile gets one padded tile.

    >>> tile_offsets(256, 120, 90)
    [0, 90, 136]
    >>> tile_offsets(256, 120, 120, step=120)
    [0, 120, 240]
    """
    if size <= tile:
        return [0]
    offsets = list(range(0, size - tile, stride))
    last = -(-(size - tile) // step) * step
    if last > offsets[-1]:
        offsets.append(last)
    return offsets


def hann_window(height: int, width: int) -> np.ndarray:
    """A 2-D Hann blending weight ``[height, width]``, positive everywhere.

    Sampled at pixel centres (``sin²(π (i + ½) / n)``), so edge pixels get a small but
    non-zero weight and a pixel seen by one tile only keeps that tile's value.
    """
    def axis(n: int) -> np.ndarray:
        return (np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2).astype(np.float32)

    return np.outer(axis(height), axis(width))


@dataclass(frozen=True)
class Panel:
    """A vertical band of the output processed on its own.

    Attributes:
        core: Output columns ``[start, stop)`` this panel writes.
        span: Output columns ``[start, stop)`` its tiles cover (the core plus the parts of the
            tiles straddling its edges, which the neighbouring panel also computes).
        cols: Indexes into :attr:`TileGrid.cols` of the tiles touching the core.
    """

    core: tuple[int, int]
    span: tuple[int, int]
    cols: tuple[int, ...]


@dataclass(frozen=True)
class TileGrid:
    """Where tiles sit on the input and how their outputs map onto the output grid.

    Rasters wider than :data:`PANEL_PIXELS` are processed in vertical panels so the blending
    accumulator never spans more than a panel: each panel runs every tile of the global grid
    that touches its columns, so the blend is the same as one pass over the whole raster; the
    tiles straddling a panel edge are computed twice.

    Attributes:
        height: Input rows.
        width: Input columns.
        tile: Tile size ``(rows, cols)`` in input pixels.
        overlap: Pixels shared by neighbouring tiles (the last tile of a row or column may
            share more, as it is moved back to end at the raster edge).
        factor: Input pixels per output pixel ``(rows, cols)``: 1 for pixel tasks, the patch
            size for embeddings, the tile size for scene tasks.
        rows: Tile row offsets (input pixels).
        cols: Tile column offsets (input pixels).
        panels: The vertical panels, left to right.
    """

    height: int
    width: int
    tile: tuple[int, int]
    overlap: int
    factor: tuple[int, int]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    panels: tuple[Panel, ...]

    @classmethod
    def build(cls, height: int, width: int, tile: tuple[int, int], overlap: int,
              factor: tuple[int, int], panel_pixels: int | None = None) -> TileGrid:
        """Grid with ``overlap`` pixels shared by neighbouring tiles.

        Args:
            height: Input rows.
            width: Input columns.
            tile: Tile size ``(rows, cols)``.
            overlap: Pixels shared by neighbouring tiles.
            factor: Input pixels per output pixel ``(rows, cols)``.
            panel_pixels: Widest panel in input pixels (default :data:`PANEL_PIXELS`, at least
                eight tiles); rounded to whole 256-pixel output blocks.
        """
        th, tw = tile
        fx = factor[1]
        rows = tile_offsets(height, th, th - overlap, factor[0])
        cols = tile_offsets(width, tw, tw - overlap, fx)
        out_w, out_tw = -(-width // fx), tw // fx
        block = 256
        core_w = max(panel_pixels or PANEL_PIXELS, 8 * tw) // fx
        core_w = max(block, core_w // block * block)
        panels = []
        for start in range(0, out_w, core_w):
            stop = min(out_w, start + core_w)
            touching = tuple(j for j, x in enumerate(cols)
                             if x // fx < stop and x // fx + out_tw > start)
            span = (cols[touching[0]] // fx, min(out_w, cols[touching[-1]] // fx + out_tw))
            panels.append(Panel((start, stop), span, touching))
        return cls(height, width, tile, overlap, factor, tuple(rows), tuple(cols),
                   tuple(panels))

    @property
    def out_shape(self) -> tuple[int, int]:
        """Output ``(rows, cols)``."""
        return -(-self.height // self.factor[0]), -(-self.width // self.factor[1])

    @property
    def out_tile(self) -> tuple[int, int]:
        """One tile's output size."""
        return self.tile[0] // self.factor[0], self.tile[1] // self.factor[1]

    @property
    def num_tiles(self) -> int:
        """Tile evaluations (tiles on a panel edge count once per panel)."""
        return len(self.rows) * sum(len(p.cols) for p in self.panels)

    def out_transform(self, transform: Affine) -> Affine:
        """The output grid's transform, given the input's."""
        return transform @ Affine.scale(self.factor[1], self.factor[0])


@dataclass
class Batch:
    """Tiles on their way through the pipeline.

    Attributes:
        images: ``[B, C, th, tw]`` normalised float32.
        valid: ``[B, oh, ow]`` output cells with at least one valid input pixel.
        where: ``(panel index, tile row index, row offset, column offset)`` per tile.
        outputs: ``[B, K, oh, ow]`` model outputs on the model's device, filled by the model
            stage.
    """

    images: np.ndarray
    valid: np.ndarray
    where: list[tuple[int, int, int, int]]
    outputs: torch.Tensor | None = None


Rows = tuple[int, int, torch.Tensor, torch.Tensor]
"""Finished output: ``(first row, first column, values [K, n, m], valid [n, m])``, tensors on
the blending device; ``values`` is a view of the accumulator, valid until the next item."""


class Blender:
    """Weighted average of overlapping tile outputs over a band of output rows of one panel.

    Tiles must arrive in raster order (row by row, left to right). Rows above the current tile
    row's top can no longer change, so they are released as soon as a tile of a later tile
    row arrives; the accumulator spans one tile's height of output rows and the panel's
    columns. It lives on ``device`` (the model's), so model outputs are blended where they were
    computed and only finished rows travel; the arithmetic is the same float32 multiply, add
    and divide on every device (bit-identical to the same steps in numpy).

    Args:
        grid: The tile grid.
        panel: The panel blended.
        channels: Output channels ``K``.
        weight: Per-tile weight ``[oh, ow]``.
        device: Where the accumulator lives (default: the CPU).
    """

    def __init__(self, grid: TileGrid, panel: Panel, channels: int,
                 weight: np.ndarray | torch.Tensor, device: torch.device | str = "cpu"
                 ) -> None:
        self.grid = grid
        self.panel = panel
        self.device = torch.device(device)
        self.weight = torch.as_tensor(weight, dtype=torch.float32, device=self.device)
        height, width = grid.out_tile[0], panel.span[1] - panel.span[0]
        f32, dev = torch.float32, self.device
        self.acc = torch.zeros((channels, height, width), dtype=f32, device=dev)  # [K, A, span]
        self.wsum = torch.zeros((height, width), dtype=f32, device=dev)  # [A, span]
        self.valid = torch.zeros((height, width), dtype=torch.bool, device=self.device)
        self.top = 0
        self.current = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulator (fixed by tile size and panel width)."""
        return sum(t.numel() * t.element_size() for t in (self.acc, self.wsum, self.valid))

    def add(self, tile_row: int, row: int, col: int, out: torch.Tensor | np.ndarray,
            valid: torch.Tensor | np.ndarray) -> Iterator[Rows]:
        """Add one tile's output ``[K, oh, ow]`` at input offset ``(row, col)``.

        The tile's values are weighted in place (it is not used afterwards).

        Yields:
            The output this tile's arrival finished (iterate to the end: the tile is added
            after the last item).
        """
        yield from self._advance(tile_row)
        out = torch.as_tensor(out).to(self.device)
        valid = torch.as_tensor(valid).to(self.device)
        fy, fx = self.grid.factor
        out_h = self.grid.out_shape[0]
        r0, c0 = row // fy - self.top, col // fx - self.panel.span[0]
        n = min(out.shape[1], out_h - self.top - r0)
        m = min(out.shape[2], self.acc.shape[2] - c0)
        w = self.weight[:n, :m]
        self.acc[:, r0:r0 + n, c0:c0 + m] += out[:, :n, :m].mul_(w)  # [K, n, m]
        self.wsum[r0:r0 + n, c0:c0 + m] += w
        self.valid[r0:r0 + n, c0:c0 + m] |= valid[:n, :m]

    def finish(self) -> Iterator[Rows]:
        """Release every remaining row."""
        yield from self._advance(len(self.grid.rows))

    def _advance(self, tile_row: int) -> Iterator[Rows]:
        a, b = (c - self.panel.span[0] for c in self.panel.core)
        while self.current < tile_row:
            self.current += 1
            end = (self.grid.rows[self.current] // self.grid.factor[0]
                   if self.current < len(self.grid.rows) else self.grid.out_shape[0])
            n = end - self.top
            if n <= 0:
                continue
            # In column chunks, each divided in place: these rows are released and reset below,
            # so finishing them allocates nothing as large as the accumulator.
            for c in range(a, b, FINISH_COLUMNS):
                d = min(b, c + FINISH_COLUMNS)
                wsum = self.wsum[:n, c:d]
                valid = self.valid[:n, c:d] & (wsum > 0)
                values = self.acc[:, :n, c:d].div_(wsum.clamp_min_(1e-12))  # [K, n, m]
                yield self.top, self.panel.span[0] + c, values, valid
            keep = self.acc.shape[1] - n
            if keep > 0:  # source and target rows may overlap: copy through a clone
                self.acc[:, :keep] = self.acc[:, n:].clone()
                self.wsum[:keep] = self.wsum[n:].clone()
                self.valid[:keep] = self.valid[n:].clone()
            self.acc[:, max(keep, 0):] = 0
            self.wsum[max(keep, 0):] = 0
            self.valid[max(keep, 0):] = False
            self.top = end
