"""Hierarchical Channel Sampling (HCS), from ChannelViT (arXiv 2309.16108).

Once per batch: draw a band count ``k`` uniformly from ``1 .. C``, then ``k`` distinct bands
uniformly. Unlike independent channel dropout, every band count is equally likely, so the model
learns to work from one band as well as from all of them.

A band-token encoder (ChannelViT) simply receives the sampled bands (:func:`drop_bands`). A
plain ViT needs all its input channels, so the other bands are zero-filled and the kept ones
scaled by ``C / k`` (:func:`zero_fill_bands`) — the one place geofm fills bands with zeros;
the caller must also exclude the filled bands from any reconstruction target.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def sample_band_subset(num_bands: int, generator: torch.Generator | None = None) -> Tensor:
    """Draw ``k ~ U{1..C}``, then ``k`` distinct band indices.

    Args:
        num_bands: ``C``.
        generator: Optional random generator (on the CPU).

    Returns:
        Sorted long tensor ``[k]`` of distinct indices in ``0 .. C - 1``.
    """
    k = int(torch.randint(1, num_bands + 1, (1,), generator=generator))
    return torch.randperm(num_bands, generator=generator)[:k].sort().values


def drop_bands(images: Tensor, bands: Sequence[str], keep: Tensor) -> tuple[Tensor, list[str]]:
    """Keep only the bands at ``keep``: ``[B, C, H, W] -> [B, k, H, W]`` and their names."""
    idx = keep.tolist()
    return images[:, keep.to(images.device)], [bands[i] for i in idx]


def zero_fill_bands(images: Tensor, keep: Tensor) -> Tensor:
    """Zero the bands not in ``keep`` and scale the kept ones by ``C / k``; ``[B, C, H, W]``."""
    num_bands = images.shape[1]
    scale = torch.zeros(num_bands, dtype=images.dtype, device=images.device)
    scale[keep.to(images.device)] = num_bands / keep.numel()
    return images * scale.view(1, -1, 1, 1)


def hierarchical_channel_sampling(
    images: Tensor,
    bands: Sequence[str],
    *,
    drop: bool,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, list[str], Tensor]:
    """Apply HCS to one batch.

    Args:
        images: ``[B, C, H, W]``.
        bands: Band names, length ``C``.
        drop: ``True`` for band-token encoders (drop the other bands), ``False`` for a plain
            ViT (zero-fill and rescale); use ``encoder.band_tokens``.
        generator: Optional random generator (on the CPU).

    Returns:
        ``(images, bands, keep)``: the encoder input, its band names, and the sorted indices of
        the sampled bands in the original order.
    """
    keep = sample_band_subset(images.shape[1], generator)
    if drop:
        images, kept = drop_bands(images, bands, keep)
        return images, kept, keep
    return zero_fill_bands(images, keep), list(bands), keep
