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


def released_hog_features(
    images: Tensor, patch_size: int, num_bins: int = 9, per_band: bool = False
) -> Tensor:
    """Per-token HOG vectors exactly as SelectiveMAE's released ``HOGLayerC`` computes them.

    The released layer (``models_selectivemae.py``, ``nbins=9, pool=8, norm_out=True``):
    reflect-pad by one pixel; Sobel gradients per band; magnitude weighted by a 16 × 16 Gaussian
    window (σ = 8, summing to one) tiled over the image; orientation
    ``atan2(gx, gy) / π · bins``, floored, modulo ``bins``; magnitudes summed into 8 × 8-pixel
    cells; each cell's histogram L2-normalised; a token's vector is the concatenation of its
    cells' histograms over all bands (``C · bins · (p / 8)²`` values). With ``per_band`` (a
    band-token encoder) each (band, patch) token gets its own band's cells only.

    Args:
        images: ``[B, C, H, W]``, finite; ``H`` and ``W`` multiples of ``patch_size`` (the
            Gaussian tiling is cropped where they are not multiples of 16).
        patch_size: Token side ``p``, a multiple of 8.
        num_bins: Orientation bins.
        per_band: One vector per (band, patch) token, band-major, instead of per patch.

    Returns:
        ``[B, N, C · bins · (p/8)²]``, or ``[B, C · N, bins · (p/8)²]`` with ``per_band``.
    """
    cell, window = 8, 16
    b, c, h, w = images.shape
    if patch_size % cell or h % patch_size or w % patch_size:
        raise ValueError(
            f"released HOG scoring needs a patch size that is a multiple of 8 and chips whose "
            f"sides are multiples of it, got patch {patch_size} and {h}×{w} chips"
        )
    with torch.autocast(device_type=images.device.type, enabled=False):
        x = F.pad(images.detach().float(), (1, 1, 1, 1), mode="reflect")
        sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
                             device=x.device)
        kx = sobel.view(1, 1, 3, 3).repeat(c, 1, 1, 1)
        ky = kx.transpose(2, 3)
        gx = F.conv2d(x, kx, groups=c)  # [B, C, H, W]
        gy = F.conv2d(x, ky, groups=c)
        magnitude = torch.stack([gx, gy], dim=-1).norm(dim=-1)
        phase = torch.atan2(gx, gy) / math.pi * num_bins
        n = torch.arange(window, dtype=torch.float32, device=x.device)
        g1 = torch.exp(-0.5 * ((n - n.mean()) / (window // 2)) ** 2)
        gkern = g1[:, None] * g1[None, :]
        gkern = gkern / gkern.sum()
        # The release tiles the window over 224-px images (a multiple of 16); other sizes take
        # the tiling cropped to the image.
        tiles = gkern.repeat(-(-h // window), -(-w // window))[:h, :w]
        magnitude = magnitude * tiles
        hist = magnitude.new_zeros(b, c, num_bins, h, w)
        hist.scatter_add_(2, (phase.floor().long() % num_bins).unsqueeze(2),
                          magnitude.unsqueeze(2))
        hist = hist.reshape(b, c, num_bins, h // cell, cell, w // cell, cell).sum(dim=(4, 6))
        hist = F.normalize(hist, p=2, dim=2)  # [B, C, K, H/8, W/8]
        u = patch_size // cell
        gh, gw = h // patch_size, w // patch_size
        hist = hist.reshape(b, c, num_bins, gh, u, gw, u)
        if per_band:
            hist = hist.permute(0, 1, 3, 5, 2, 4, 6)  # [B, C, gh, gw, K, u, u]
            return hist.reshape(b, c * gh * gw, num_bins * u * u)
        hist = hist.permute(0, 3, 5, 1, 2, 4, 6)  # [B, gh, gw, C, K, u, u]
        return hist.reshape(b, gh * gw, c * num_bins * u * u)


def released_hog_scores(features: Tensor) -> Tensor:
    """SelectiveMAE's released token logits: each token's HOG vector standardised, then averaged.

    A standardised vector has mean zero by construction, so every logit is zero up to float
    rounding (about 1e-8) and ``softmax`` of them is uniform: the released code in effect draws
    visible tokens and reconstruction targets at random. Non-finite values become 0 as in the
    release (``nan_to_num``).

    Args:
        features: ``[B, T, F]`` from :func:`released_hog_features`.

    Returns:
        ``[B, T]`` logits.
    """
    mean = features.mean(dim=-1, keepdim=True)
    var = features.var(dim=-1, keepdim=True)
    return torch.nan_to_num(((features - mean) / (var + 1e-6) ** 0.5).mean(dim=-1))
