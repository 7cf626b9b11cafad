"""Histograms of oriented gradients per band and patch, and a richness score from them.

SelectiveMAE (arXiv 2406.11933) ranks tokens by HOG: patches with strong edges in many
directions carry more semantics than flat water or bare fields. The released code is RGB-only;
here gradients are taken band by band, so the histograms serve any number of bands and both
token layouts (one token per patch for ViT, per (band, patch) for ChannelViT).

Gradients are centred differences ``[-1, 0, 1]`` (Dalal and Triggs found them better for HOG
than Sobel or other smoothed derivatives), so the whole batch costs a few elementwise passes
(which ``torch.compile`` fuses into one) and one ``scatter_add`` over the pixels, with no loop
over tokens or bands.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def hog_histograms(
    images: Tensor,
    patch_size: int,
    num_bins: int = 9,
    valid: Tensor | None = None,
    strongest_band: bool = False,
) -> Tensor:
    """Gradient-magnitude-weighted orientation histograms per band and patch.

    Args:
        images: ``[B, C, H, W]``, finite, ``H`` and ``W`` multiples of ``patch_size``.
        patch_size: Patch side ``p``.
        num_bins: Unsigned orientation bins over ``[0, π)``.
        valid: Optional ``[B, C, H, W]`` bool; a gradient whose differences touch an invalid
            pixel is ignored, so nodata borders do not look like edges.
        strongest_band: One histogram per patch for all bands together: each pixel votes once,
            with the gradient of the band where it is strongest (Dalal and Triggs's rule for
            colour images). The vote touches ``C`` times fewer histogram cells than summing the
            per-band histograms, which on a GPU is most of the cost.

    Returns:
        ``[B, C, N, num_bins]`` with ``N = (H / p) · (W / p)`` patches in row-major order, or
        ``[B, 1, N, num_bins]`` with ``strongest_band``.
    """
    b, c, h, w = images.shape
    gh, gw = h // patch_size, w // patch_size
    with torch.autocast(device_type=images.device.type, enabled=False):
        x = images.detach().float()  # [B, C, H, W]
        # Invalid pixels become NaN, so every gradient that touches one is NaN and votes zero;
        # on a GPU this is one fused pass, where eroding the mask would be several. On the
        # CPU, all-valid batches skip it.
        if valid is not None and (images.is_cuda or not bool(valid.all())):
            x = x.masked_fill(~valid.bool(), math.nan)
        # Centred differences; across the image border they are zero (the outermost columns
        # get no horizontal gradient, the outermost rows no vertical one), as reflect padding
        # would give them.
        gx = F.pad(x[..., 2:] - x[..., :-2], (1, 1))  # [B, C, H, W]
        gy = F.pad(x[..., 2:, :] - x[..., :-2, :], (0, 0, 1, 1))
        magnitude = torch.hypot(gx, gy).nan_to_num_(0.0)
        if strongest_band and c > 1:
            magnitude, band = magnitude.max(dim=1, keepdim=True)  # [B, 1, H, W]
            gx, gy = gx.gather(1, band), gy.gather(1, band)
        rows_out = magnitude.shape[0] * magnitude.shape[1]  # B·C, or B with strongest_band
        angle = torch.atan2(gy, gx).nan_to_num_(0.0).remainder_(math.pi)  # in [0, π)
        slot = angle.mul_(num_bins / math.pi).long().clamp_(max=num_bins - 1)
        rows = torch.arange(h, device=x.device) // patch_size
        cols = torch.arange(w, device=x.device) // patch_size
        patch_of_pixel = (rows[:, None] * gw + cols[None, :]) * num_bins  # [H, W]
        slot += patch_of_pixel  # patch index · bins + orientation bin
        hist = magnitude.new_zeros(rows_out, gh * gw * num_bins)
        hist.scatter_add_(1, slot.reshape(rows_out, h * w), magnitude.reshape(rows_out, h * w))
    return hist.reshape(b, rows_out // b, gh * gw, num_bins)


def hog_richness(hist: Tensor, eps: float = 1e-2) -> Tensor:
    """Semantic-richness score of each histogram, standardised within each image.

    The score is ``log(edge strength) + orientation entropy``: the log of the total gradient
    magnitude (plus ``eps`` times the image's mean, so flat and nodata patches stay finite)
    plus the entropy of the orientation distribution (textures with many directions beat a
    single straight edge). Scores are then standardised across each image's tokens, so the
    softmax temperature does not depend on the data's units.

    Args:
        hist: ``[B, T, K]`` histograms, one row per token.
        eps: Relative floor on the magnitude.

    Returns:
        ``[B, T]`` zero-mean, unit-variance scores.
    """
    strength = hist.sum(dim=-1)  # [B, T]
    floor = eps * strength.mean(dim=1, keepdim=True) + 1e-12
    prob = hist / (strength.unsqueeze(-1) + 1e-12)  # [B, T, K]
    entropy = -(prob * torch.log(prob + 1e-12)).sum(dim=-1)  # [B, T]
    score = torch.log(strength + floor) + entropy
    mean = score.mean(dim=1, keepdim=True)
    std = score.std(dim=1, keepdim=True) if score.shape[1] > 1 else torch.ones_like(mean)
    return (score - mean) / (std + 1e-6)
