"""Transforms on sample dicts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class Normalize:
    """Standardise ``image`` per band with statistics chosen by band name.

    Non-finite pixels become 0 after normalisation (the band mean) and are marked False in
    ``valid`` (created if absent), so losses can exclude them.

    Args:
        bands: Band names the statistics refer to.
        mean: Per-band mean, same order as ``bands``.
        std: Per-band standard deviation.
    """

    def __init__(self, bands: Sequence[str], mean: Sequence[float] | np.ndarray,
                 std: Sequence[float] | np.ndarray):
        self.index = {b: i for i, b in enumerate(bands)}
        self.mean = torch.as_tensor(list(mean), dtype=torch.float32)
        self.std = torch.as_tensor(list(std), dtype=torch.float32).clamp_min(1e-6)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        idx = torch.tensor([self.index[b] for b in sample["bands"]])
        x = sample["image"]  # [C, H, W]
        finite = torch.isfinite(x)
        x = (x - self.mean[idx, None, None]) / self.std[idx, None, None]
        sample["image"] = torch.where(finite, x, torch.zeros((), dtype=x.dtype))
        valid = sample.get("valid")
        sample["valid"] = finite if valid is None else valid & finite
        return sample
