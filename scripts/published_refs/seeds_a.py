"""Reference checks for the seeds' releases: SelectiveMAE ViT-B, ChannelViT-S/8 So2Sat, RemoteCLIP.

``CHECKS`` lists ``(name, check)``; each ``check()`` writes the release with random weights in
its own file format (full size), loads it the way ``--init NAME --weights PATH`` does (read
without pickle, the card's ``convert``, strict load), runs one batch of a real Sentinel-2 L1C
chip through geofm and through the reference (timm for SelectiveMAE, open_clip for RemoteCLIP,
the official ChannelViT forward re-implemented in ``tests/published_seeds_refs.py``), and
returns ``(max_abs_diff, geofm_seconds, reference_seconds)`` for that batch (best of five, after
one warm-up call).
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from geofm.models.registry import create_model
from geofm.published import PUBLISHED, PublishedSpec
from geofm.published.catalogue_seeds import channelvit_release, remoteclip
from geofm.published.release_file import read_release
from tests.published_seeds_refs import (
    channelvit_release as channelvit_release_state,
)
from tests.published_seeds_refs import (
    official_channelvit_forward,
    remoteclip_release,
    s2_chip,
    selectivemae_release,
    standardise,
    timm_mae_reference,
    true_colour_8bit,
)

BATCH = 2
RGB_S2 = ("B04", "B03", "B02")


def _best(fn: Callable[[], torch.Tensor], repeats: int = 5) -> tuple[torch.Tensor, float]:
    with torch.no_grad():
        out = fn()
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
    return out, best


def _load(spec: PublishedSpec, state: dict[str, torch.Tensor], file: str) -> torch.nn.Module:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / file
        torch.save(state, path)
        model = create_model(spec.architecture, **spec.config)
        model.load_state_dict(spec.convert(read_release(path)), strict=True)
    return model.eval()


def check_selectivemae() -> tuple[float, float, float]:
    spec = PUBLISHED["selectivemae_vitb"]
    release = selectivemae_release(depth=12, decoder_depth=1)
    model = _load(spec, {"model": release}, "selectivemae_vitb.pth")
    reference = timm_mae_reference(release, depth=12)
    x = standardise(true_colour_8bit(s2_chip(RGB_S2, 224, BATCH)), spec.mean, spec.std)
    ours, t_ours = _best(lambda: model.forward_features(x, spec.bands))
    ref, t_ref = _best(lambda: reference.forward_features(x)[:, 0])
    return float((ours - ref).abs().max()), t_ours, t_ref


def check_channelvit() -> tuple[float, float, float]:
    spec = PUBLISHED["channelvit_so2sat_random"]
    release = channelvit_release_state(depth=12)
    model = _load(spec, release, spec.weights_file)
    x = standardise(s2_chip(spec.bands, 64, BATCH) / 10_000.0, spec.mean, spec.std)
    rows = list(channelvit_release.SO2SAT_S2_ROWS)
    ours, t_ours = _best(lambda: model.forward_features(x, spec.bands))
    ref, t_ref = _best(lambda: official_channelvit_forward(release, x, rows, num_heads=6)[:, 0])
    return float((ours - ref).abs().max()), t_ours, t_ref


def check_remoteclip() -> tuple[float, float, float]:
    spec = PUBLISHED["remoteclip_vitb32"]
    clip, state = remoteclip_release()
    model = _load(spec, state, spec.weights_file)
    rgb8 = true_colour_8bit(s2_chip(RGB_S2, 224, BATCH))
    x = standardise(rgb8, spec.mean, spec.std)
    clip_x = standardise(rgb8 / 255.0, remoteclip.CLIP_MEAN, remoteclip.CLIP_STD)
    ours, t_ours = _best(lambda: model.forward_features(x, spec.bands))
    ref, t_ref = _best(lambda: clip.encode_image(clip_x))
    return float((ours - ref).abs().max()), t_ours, t_ref


CHECKS: list[tuple[str, Callable[[], tuple[float, float, float]]]] = [
    ("selectivemae_vitb", check_selectivemae),
    ("channelvit_so2sat", check_channelvit),
    ("remoteclip_vitb32", check_remoteclip),
]


if __name__ == "__main__":
    for name, check in CHECKS:
        diff, ours, ref = check()
        print(f"RESULT max_abs_diff_{name}={diff:.3g}")
        print(f"RESULT speed_ratio_{name}={ref / ours:.3f}")
