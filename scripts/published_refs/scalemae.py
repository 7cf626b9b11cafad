"""Scale-MAE ViT-L/16 against torchgeo's ``scalemae_large_patch16`` with
``ScaleMAELarge16_Weights.FMOW_RGB``, fed through the enum's own transforms (÷ 255, ImageNet
statistics) on the real chip's B04, B03, B02 as 0–255 values."""

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

from geofm.published.common import S2_L1C


def release_state() -> dict[str, torch.Tensor]:
    """A timm-layout ViT-L/16 state dict on RGB (224 px position table), no classifier."""
    from torchgeo.models import scalemae_large_patch16

    return jitter(scalemae_large_patch16(num_classes=0).state_dict())


def check(name: str = "scalemae_large", batch: int = 1, size: int = 224, repeats: int = 3
          ) -> tuple[float, float, float]:
    """Pooled and patch features of geofm vs torchgeo on ``batch`` chips of ``size`` px
    (torchgeo interpolates the unused position table when ``size`` is not 224)."""
    from torchgeo.models import scalemae_large_patch16

    spec = PUBLISHED[name]
    weights = torchgeo_weights(spec)
    dn = read_chips(size, batch)  # [B, 13, s, s]
    rgb = dn[:, [S2_L1C.index(b) for b in spec.bands]] / 10000.0 * 255.0
    ref_in = weights.transforms(rgb)
    x = spec_input(spec, dn)  # [B, 3, s, s]
    kwargs = {} if size == 224 else {"img_size": size}

    def reference(_: Path) -> tuple[Side, Side]:
        model = scalemae_large_patch16(weights, **kwargs).eval()
        return (lambda: model.forward_head(model.forward_features(ref_in), pre_logits=True),
                lambda: model.forward_features(ref_in)[:, 1:])

    def ours(enc: PublishedEncoder) -> tuple[Side, Side]:
        return (lambda: enc.forward_features(x, spec.bands),
                lambda: enc.forward_patch_features(x, spec.bands))

    return compare(name, release_state(), reference, ours, repeats)


CHECKS = [("scalemae_large", partial(check, "scalemae_large", repeats=1))]
