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


def reconstruction_preview(
    images: np.ndarray,
    visible: np.ndarray,
    pred: np.ndarray,
    target: np.ndarray,
    bands: Sequence[str],
    out_png: str | Path,
    title: str = "",
) -> Path:
    """Rows of input / visible tokens / reconstruction, as colour composites.

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

    idx = composite_bands(bands)
    n = images.shape[0]
    fig, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for r in range(n):
        x = images[r, idx]
        lo = np.percentile(x.reshape(3, -1), 2, axis=1)
        hi = np.percentile(x.reshape(3, -1), 98, axis=1)
        vis = visible[r, idx]
        shown = stretch(x, lo, hi)
        shown_vis = np.where(vis.transpose(1, 2, 0), shown, 0.5)
        recon = np.where(target[r, idx], pred[r, idx], x)
        panels = (shown, shown_vis, stretch(recon, lo, hi))
        for c, (panel, name) in enumerate(zip(panels, ("input", "visible tokens",
                                                        "reconstruction"))):
            axes[r, c].imshow(panel, interpolation="nearest")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(name)
    fig.suptitle(f"{title}\ncomposite: {', '.join(bands[i] for i in idx)}")
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=80)
    plt.close(fig)
    return out
