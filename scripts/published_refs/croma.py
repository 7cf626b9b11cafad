"""CROMA-B's optical branch against torchgeo's ``croma_base`` (optical modality) with
``CROMABase_Weights.CROMA_VIT``, on 12 real L1C bands (no B10) at 120 px."""

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


def release_state() -> dict[str, dict[str, torch.Tensor]]:
    """The release's layout: one state dict per sub-network (SAR, optical, joint)."""
    from torchgeo.models import croma_base

    model = croma_base()
    return {part: jitter(getattr(model, part).state_dict(), seed=i) for i, part in
            enumerate(("s1_encoder", "s1_GAP_FFN", "s2_encoder", "s2_GAP_FFN",
                       "joint_encoder"))}


def check(name: str = "croma_base", batch: int = 4, repeats: int = 3
          ) -> tuple[float, float, float]:
    """Pooled (GAP) and patch features of geofm vs torchgeo on ``batch`` 120 px chips."""
    from torchgeo.models import croma_base

    spec = PUBLISHED[name]
    weights = torchgeo_weights(spec)
    x = spec_input(spec, read_chips(120, batch))  # [B, 12, 120, 120]

    def reference(_: Path) -> tuple[Side, Side]:
        model = croma_base(weights, modalities=["optical"], image_size=120).eval()
        return (lambda: model(x_optical=x)["optical_GAP"],
                lambda: model(x_optical=x)["optical_encodings"])

    def ours(enc: PublishedEncoder) -> tuple[Side, Side]:
        return (lambda: enc.forward_features(x, spec.bands),
                lambda: enc.forward_patch_features(x, spec.bands))

    return compare(name, release_state(), reference, ours, repeats)


CHECKS = [("croma_base", partial(check, "croma_base"))]
