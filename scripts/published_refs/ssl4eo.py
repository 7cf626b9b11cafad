"""SSL4EO-S12 ViT-S/16 (MAE, DINO, MoCo) against torchgeo's ``vit_small_patch16_224`` with
``ViTSmall16_Weights.SENTINEL2_ALL_*``, fed through the enum's own transforms."""

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

BATCH = 4


def release_state() -> dict[str, torch.Tensor]:
    """A timm-layout ViT-S/16 state dict on 13 bands, as the SSL4EO-S12 files hold it."""
    from torchgeo.models import vit_small_patch16_224

    return jitter(vit_small_patch16_224(None, in_chans=13, num_classes=0).state_dict())


def check(name: str, batch: int = BATCH, repeats: int = 3) -> tuple[float, float, float]:
    """Pooled and patch features of geofm vs torchgeo on ``batch`` real L1C chips (pooled
    forwards timed ``repeats`` times)."""
    from torchgeo.models import vit_small_patch16_224

    spec = PUBLISHED[name]
    weights = torchgeo_weights(spec)
    dn = read_chips(256, batch)  # [B, 13, 256, 256]
    ref_in = weights.transforms(dn.clone())  # torchgeo: resize 256, crop 224, ÷ 10,000
    ours_in = spec_input(spec, dn[..., 16:240, 16:240])  # [B, 13, 224, 224]

    def reference(_: Path) -> tuple[Side, Side]:
        model = vit_small_patch16_224(weights).eval()
        return (lambda: model.forward_head(model.forward_features(ref_in), pre_logits=True),
                lambda: model.forward_features(ref_in)[:, 1:])

    def ours(enc: PublishedEncoder) -> tuple[Side, Side]:
        return (lambda: enc.forward_features(ours_in, spec.bands),
                lambda: enc.forward_patch_features(ours_in, spec.bands))

    return compare(name, release_state(), reference, ours, repeats)


CHECKS = [(n, partial(check, n)) for n in
          ("ssl4eo_vits16_mae", "ssl4eo_vits16_dino", "ssl4eo_vits16_moco")]
