"""Per-band normalisation statistics, streamed and merged in float64.

Each build task returns partial sums over its chips; partials merge by addition in a fixed
order, so the result does not depend on how the work was scheduled.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class BandStats:
    """Float64 running sums over valid pixels, one entry per band."""

    count: np.ndarray  # [C] int64
    total: np.ndarray  # [C] float64, Σx
    total_sq: np.ndarray  # [C] float64, Σx²
    minimum: np.ndarray  # [C] float64
    maximum: np.ndarray  # [C] float64

    @classmethod
    def empty(cls, num_bands: int) -> BandStats:
        """Statistics of no pixels."""
        return cls(
            count=np.zeros(num_bands, np.int64),
            total=np.zeros(num_bands, np.float64),
            total_sq=np.zeros(num_bands, np.float64),
            minimum=np.full(num_bands, np.inf),
            maximum=np.full(num_bands, -np.inf),
        )

    @classmethod
    def of(cls, image: np.ndarray, valid: np.ndarray | None = None) -> BandStats:
        """Statistics of ``image`` ``[N, C, H, W]`` over finite pixels where ``valid`` is True.

        One band at a time, so memory stays at one band's float64 copy.
        """
        c = image.shape[1]
        out = cls.empty(c)
        for b in range(c):
            x = image[:, b]  # [N, H, W]
            ok = np.isfinite(x)
            if valid is not None:
                ok &= valid[:, b]
            vals = x[ok]
            out.count[b] = vals.size
            if vals.size:
                v64 = vals.astype(np.float64)
                out.total[b] = v64.sum()
                # numpy's pairwise sum is reproducible; a BLAS dot product is not.
                out.total_sq[b] = (v64 * v64).sum()
                out.minimum[b] = float(vals.min())
                out.maximum[b] = float(vals.max())
        return out

    def merge(self, other: BandStats) -> BandStats:
        """Statistics of the union of both pixel sets."""
        return BandStats(
            count=self.count + other.count,
            total=self.total + other.total,
            total_sq=self.total_sq + other.total_sq,
            minimum=np.minimum(self.minimum, other.minimum),
            maximum=np.maximum(self.maximum, other.maximum),
        )

    @property
    def mean(self) -> np.ndarray:
        """Per-band mean (NaN for a band without valid pixels)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean: np.ndarray = self.total / self.count
        return mean

    @property
    def std(self) -> np.ndarray:
        """Per-band population standard deviation."""
        with np.errstate(invalid="ignore", divide="ignore"):
            var = self.total_sq / self.count - self.mean**2
        std: np.ndarray = np.sqrt(np.maximum(var, 0.0))
        return std

    def to_json(self) -> dict[str, list[float] | list[int]]:
        """JSON-serialisable form (sums kept so stores can be merged later)."""
        return {
            "count": self.count.tolist(),
            "sum": self.total.tolist(),
            "sum_sq": self.total_sq.tolist(),
            "min": self.minimum.tolist(),
            "max": self.maximum.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, list]) -> BandStats:
        """Inverse of :meth:`to_json`."""
        return cls(
            count=np.asarray(d["count"], np.int64),
            total=np.asarray(d["sum"], np.float64),
            total_sq=np.asarray(d["sum_sq"], np.float64),
            minimum=np.asarray(d["min"], np.float64),
            maximum=np.asarray(d["max"], np.float64),
        )


def pooled_stats(sources: Sequence[tuple[BandStats, Sequence[str]]],
                 bands: Sequence[str]) -> BandStats:
    """Statistics of ``bands`` over the pixels of every source that has them.

    Args:
        sources: ``(statistics, band names)`` of each store, in a fixed order.
        bands: Bands to pool, by name.

    Returns:
        One entry per band of ``bands``: a band held by several stores pools their pixels
        exactly (the sums add); a band held by one store keeps that store's statistics.
    """
    out = BandStats.empty(len(bands))
    for stats, names in sources:
        position = {name: i for i, name in enumerate(names)}
        pairs = [(j, position[b]) for j, b in enumerate(bands) if b in position]
        if not pairs:
            continue
        dst, src = (np.array(v) for v in zip(*pairs, strict=True))
        part = BandStats.empty(len(bands))
        for field in ("count", "total", "total_sq", "minimum", "maximum"):
            getattr(part, field)[dst] = getattr(stats, field)[src]
        out = out.merge(part)
    return out
