"""Panopticon ViT-B/14 against torchgeo's ``panopticon_vitb14`` with
``Panopticon_Weights.VIT_BASE14``, on 13 real L1C bands with the registry's wavelengths."""

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

from geofm.published.panopticon import RELEASE_IMG_SIZE, channel_ids


def release_state() -> dict[str, torch.Tensor]:
    """The teacher's state dict as released: timm keys, a 37 × 37 position table and the
    masked-image-modelling ``mask_token``."""
    from torchgeo.models import Panopticon

    state = Panopticon(img_size=RELEASE_IMG_SIZE).model.state_dict()
    state["mask_token"] = torch.zeros(1, 768)
    return jitter(state)


def check(name: str = "panopticon_base", batch: int = 2, repeats: int = 3,
          bands: tuple[str, ...] | None = None) -> tuple[float, float, float]:
    """Pooled and patch features of geofm vs torchgeo on ``batch`` real 224 px L1C chips."""
    from torchgeo.models import panopticon_vitb14

    spec = PUBLISHED[name]
    weights = torchgeo_weights(spec)
    use = bands or spec.bands
    x = spec_input(spec, read_chips(224, batch), use)  # [B, C, 224, 224]
    ids = torch.tensor(channel_ids(use)).unsqueeze(0).repeat(batch, 1)  # [B, C]

    def reference(_: Path) -> tuple[Side, Side]:
        model = panopticon_vitb14(weights, img_size=224).eval()
        inputs = {"imgs": x, "chn_ids": ids}
        return (lambda: model(inputs),
                lambda: model.model.forward_features(inputs)[:, 1:])

    def ours(enc: PublishedEncoder) -> tuple[Side, Side]:
        return (lambda: enc.forward_features(x, use),
                lambda: enc.forward_patch_features(x, use))

    return compare(name, release_state(), reference, ours, repeats)


CHECKS = [("panopticon_base", partial(check, "panopticon_base"))]
