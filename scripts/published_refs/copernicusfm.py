"""Copernicus-FM ViT-B/16 against torchgeo's ``copernicusfm_base`` with
``CopernicusFM_Base_Weights.CopernicusFM_ViT`` in spectral mode (unknown metadata), on 13 real
L1C bands with the registry's wavelengths and bandwidths."""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _torchgeo_ref import (
    PUBLISHED,
    PublishedEncoder,
    Side,
    compare,
    jitter,
    read_chips,
    spec_input,
    torchgeo_weights,
)

from geofm.published.common import bandwidths_um, wavelengths_um


def release_state() -> dict[str, torch.Tensor]:
    """The release's state dict: both patch-embedding hypernetworks, no ``fc_norm``."""
    from torchgeo.models import copernicusfm_base

    state = copernicusfm_base().state_dict()
    return jitter({k: v for k, v in state.items() if not k.startswith(("fc_norm.", "head."))})


def check(name: str = "copernicusfm_base", batch: int = 2, size: int = 224,
          repeats: int = 3) -> tuple[float, float, float]:
    """Pooled features of geofm vs torchgeo on ``batch`` real L1C chips of ``size`` px."""
    from torchgeo.models import copernicusfm_base

    spec = PUBLISHED[name]
    weights = torchgeo_weights(spec)
    x = spec_input(spec, read_chips(size, batch))  # [B, 13, s, s]
    meta = torch.full((batch, 4), float("nan"))
    waves = [w * 1000 for w in wavelengths_um(spec.bands)]
    widths = [w * 1000 for w in bandwidths_um(spec.bands)]

    def reference(_: Path) -> tuple[Side, None]:
        model = copernicusfm_base(weights).eval()
        return (lambda: model(x, meta, wavelengths=waves, bandwidths=widths,
                              input_mode="spectral", kernel_size=16)), None

    def ours(enc: PublishedEncoder) -> tuple[Side, None]:
        return (lambda: enc.forward_features(x, spec.bands)), None

    return compare(name, release_state(), reference, ours, repeats)


CHECKS = [("copernicusfm_base", partial(check, "copernicusfm_base"))]
