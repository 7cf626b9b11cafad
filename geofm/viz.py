"""Pictures: colour composites and reconstruction previews."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

_RGB_CANDIDATES = (
    ("S2.B04", "S2.B03", "S2.B02"),
    ("L8.B4", "L8.B3", "L8.B2"),
    ("MODIS.B01", "MODIS.B04", "MODIS.B03"),
    ("S1.VV", "S1.VH", "S1.VV"),
)


def composite_bands(bands: Sequence[str]) -> list[int]:
    """Indices of three bands for a colour composite (true colour when present)."""
    for cand in _RGB_CANDIDATES:
        if all(b in bands for b in cand):
            return [list(bands).index(b) for b in cand]
    return [0, 0, 0] if len(bands) < 3 else [0, 1, 2]


def stretch(img: np.ndarray, lo: np.ndarray | None = None, hi: np.ndarray | None = None,
            mask: np.ndarray | None = None) -> np.ndarray:
    """2–98 % percentile stretch of ``img [3, H, W]`` to ``[H, W, 3]`` in 0..1."""
    ref = img if mask is None else np.where(mask, img, np.nan)
    if lo is None or hi is None:
        lo = np.nanpercentile(ref.reshape(3, -1), 2, axis=1)
        hi = np.nanpercentile(ref.reshape(3, -1), 98, axis=1)
    out = (img - lo[:, None, None]) / np.maximum(hi - lo, 1e-6)[:, None, None]
    return np.clip(np.nan_to_num(out), 0, 1).transpose(1, 2, 0)


GREY = 0.5
"""Stretched value shown where a panel has nothing to show (other tokens' pixels)."""


def preview_panels(images: np.ndarray, visible: np.ndarray, pred: np.ndarray,
                   target: np.ndarray, bands: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """The pictures of one reconstruction preview, per image, as ``[H, W, 3]`` in 0..1.

    Each panel shows only its own tokens, channel by channel (a band-token model masks each
    band's tokens apart), and grey elsewhere: ``input`` (every pixel), ``encoder input`` (the
    visible tokens), ``target`` (the input on the reconstructed tokens) and
    ``reconstruction`` (the model's output on the reconstructed tokens; never input pixels).
    ``reconstructed``, ``seen`` and ``neither`` are ``[H, W]`` bool maps of the composite's
    pixels: any of its bands reconstructed, any seen, none of either.

    Args:
        images: ``[B, C, H, W]`` encoder input.
        visible: ``[B, C, H, W]`` bool, pixels the encoder saw.
        pred: ``[B, C, H, W]`` reconstruction where ``target`` is True.
        target: ``[B, C, H, W]`` bool, reconstructed pixels.
        bands: Names of the ``C`` bands.
    """
    idx = composite_bands(bands)
    rows = []
    for r in range(images.shape[0]):
        x = images[r, idx]  # [3, H, W]
        lo = np.percentile(x.reshape(3, -1), 2, axis=1)
        hi = np.percentile(x.reshape(3, -1), 98, axis=1)
        vis = visible[r, idx].astype(bool)  # [3, H, W]
        tgt = target[r, idx].astype(bool)  # [3, H, W]
        shown = stretch(x, lo, hi)  # [H, W, 3]
        recon = stretch(pred[r, idx], lo, hi)  # [H, W, 3]
        rows.append({
            "input": shown,
            "encoder input": np.where(vis.transpose(1, 2, 0), shown, GREY),
            "target": np.where(tgt.transpose(1, 2, 0), shown, GREY),
            "reconstruction": np.where(tgt.transpose(1, 2, 0), recon, GREY),
            "reconstructed": np.asarray(tgt.any(0)),
            "seen": np.asarray(vis.any(0)),
            "neither": np.asarray(~(tgt.any(0) | vis.any(0))),
        })
    return rows


def reconstruction_preview(
    images: np.ndarray,
    visible: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    bands: Sequence[str],
    out_png: str | Path,
    title: str = "",
) -> Path:
    """Rows of input / encoder input / target / reconstruction, as colour composites.

    The reconstruction panel shows the model's output on the reconstructed tokens only (see
    :func:`preview_panels`); reconstructed tokens are outlined on the input, and tokens that
    were neither seen nor reconstructed (SelectiveMAE reconstructs a subset of the masked
    ones) are hatched.

    Args:
        images: ``[B, C, H, W]`` encoder input.
        visible: ``[B, C, H, W]`` bool, pixels the encoder saw.
        pred: ``[B, C, H, W]`` reconstruction where ``target`` is True.
        target: ``[B, C, H, W]`` bool, reconstructed pixels.
        bands: Names of the ``C`` bands.
        out_png: Output PNG.
        title: Figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    idx = composite_bands(bands)
    rows = preview_panels(images, visible, pred, target, bands)
    names = ("input", "encoder input", "target", "reconstruction")
    n = len(rows)
    fig, axes = plt.subplots(n, len(names), figsize=(3 * len(names), 3 * n + 0.6),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, name in enumerate(names):
            ax = axes[r, c]
            ax.imshow(row[name], interpolation="nearest")
            if c and row["neither"].any():
                ax.contourf(row["neither"].astype(float), levels=[0.5, 1.5], colors="none",
                            hatches=["////"])
            if c == 0 and row["reconstructed"].any():
                ax.contour(row["reconstructed"].astype(float), levels=[0.5], colors="#ff7f0e",
                           linewidths=0.8)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(name)
    fig.legend(handles=[
        Patch(facecolor="none", edgecolor="#ff7f0e", label="reconstructed tokens (outlined on "
              "the input)"),
        Patch(facecolor="none", edgecolor="black", hatch="////",
              label="neither seen nor reconstructed")],
        loc="lower center", ncol=2, fontsize="small", frameon=False)
    fig.suptitle(f"{title}\ncomposite: {', '.join(bands[i] for i in idx)}; grey: not this "
                 "panel's tokens")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = Path(out_png)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
