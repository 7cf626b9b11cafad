"""DOFA-B and DOFA-L against torchgeo's ``dofa_*_patch16_224`` with ``DOFA*16_Weights.DOFA_MAE``,
on 13 real L1C bands with the registry's wavelengths."""

from __future__ import annotations

import sys
from collections.abc import Callable
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

from geofm.published.common import wavelengths_um


def builder(name: str) -> Callable[..., torch.nn.Module]:
    import torchgeo.models as tgm

    return tgm.dofa_base_patch16_224 if name == "dofa_base" else tgm.dofa_large_patch16_224


def release_state(name: str) -> dict[str, torch.Tensor]:
    """DOFA's state dict as the release holds it: no ``fc_norm``, no ``head``."""
    state = builder(name)().state_dict()
    return jitter({k: v for k, v in state.items() if not k.startswith(("fc_norm.", "head."))})


def check(name: str, batch: int, bands: tuple[str, ...] | None = None, repeats: int = 3
          ) -> tuple[float, float, float]:
    """Pooled features of geofm vs torchgeo on ``batch`` real L1C chips (``bands``: a
    subset; forwards timed ``repeats`` times)."""
    spec = PUBLISHED[name]
    weights = torchgeo_weights(spec)
    use = bands or spec.bands
    x = spec_input(spec, read_chips(224, batch), use)  # [B, C, 224, 224]
    waves = wavelengths_um(use)

    def reference(_: Path) -> tuple[Side, None]:
        model = builder(name)(weights).eval()
        return lambda: model.forward_features(weights.transforms(x), waves), None

    def ours(enc: PublishedEncoder) -> tuple[Side, None]:
        return lambda: enc.forward_features(x, use), None

    return compare(name, release_state(name), reference, ours, repeats)


CHECKS = [
    ("dofa_base", partial(check, "dofa_base", 4)),
    ("dofa_large", partial(check, "dofa_large", 1, repeats=1)),
]
