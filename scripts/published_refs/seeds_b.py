"""Reference checks for SatVision-TOA and Prithvi-EO-2.0, discovered by ``check_published.py``.

Each entry of :data:`CHECKS` is ``(name, check)``; ``check()`` writes random weights in the
release's file format, loads them through geofm (reader, converter, strict load), runs one batch
through geofm and through the reference forward, and returns ``(max_abs_diff, geofm_seconds,
reference_seconds)`` (best of five runs, alternating, after a warm-up).

References: SatVision-TOA — pytorch-caney's SwinV2 as written out in
``tests/published_reference_seeds_b.py`` (pytorch-caney is not installable); Prithvi-EO-2.0 —
TerraTorch's ``prithvi_mae.PrithviViT`` when TerraTorch is importable (its module file is loaded
on its own, without TerraTorch's package imports), else the same test reference.

Sizes: reduced by default so the check runs on a laptop CPU in seconds (the same code paths and
key layouts as the releases); ``GEOFM_PUBLISHED_FULL=1`` uses the released sizes (SwinV2-Giant,
ViT-L/16) — several GB of memory.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import rasterio
import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from geofm.published.catalogue_seeds_b import (  # noqa: E402
    PRITHVI_EO2_300M,
    SATVISION_TOA_GIANT,
)
from geofm.published.prithvi import PRITHVI_SIZES, load_prithvi  # noqa: E402
from geofm.published.satvision import SATVISION_SIZES, load_satvision  # noqa: E402
from tests.published_reference_seeds_b import (  # noqa: E402
    caney_scale,
    modis_toa_chip,
    save_prithvi_release,
    save_satvision_release,
)

S2_SCENE = ROOT / "datasets" / "sentinel2_l1c" / "s2_l1c_13band_10m_256px.tif"
FULL = os.environ.get("GEOFM_PUBLISHED_FULL") == "1"
BATCH = 2
SATVISION_CHECK = SATVISION_SIZES["giant"] if FULL else {
    "embed_dim": 128, "depths": (2, 2, 6, 2), "num_heads": (4, 8, 16, 32), "extra_norm_period": 6}
PRITHVI_CHECK = PRITHVI_SIZES["300m"] if FULL else {
    "embed_dim": 384, "depth": 6, "num_heads": 6, "patch_size": 16}


def _timed(geofm: Callable[[], torch.Tensor], reference: Callable[[], torch.Tensor],
           repeats: int = 5) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """Outputs and best-of-``repeats`` seconds of both forwards, run alternately after a warm-up
    so load on the machine falls on both alike."""
    times = {"geofm": float("inf"), "reference": float("inf")}
    with torch.no_grad():
        outs = {"geofm": geofm(), "reference": reference()}
        for _ in range(repeats):
            for key, fn in (("geofm", geofm), ("reference", reference)):
                t0 = time.perf_counter()
                outs[key] = fn()
                times[key] = min(times[key], time.perf_counter() - t0)
    return outs["geofm"], outs["reference"], times["geofm"], times["reference"]


def check_satvision() -> tuple[float, float, float]:
    """SatVision-TOA on a batch of MODIS-TOA-like chips in the release's format."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mp_rank_00_model_states.pt"
        ref = save_satvision_release(path, seed=0, **SATVISION_CHECK).eval()
        model = load_satvision(path, "satvision_toa_giant", **SATVISION_CHECK).eval()
    chips = [modis_toa_chip(seed=s) for s in range(BATCH)]
    ref_in = torch.stack([caney_scale(c) for c in chips])  # [B, 14, 128, 128]
    units = SATVISION_TOA_GIANT.extra["band_units"]
    x = torch.from_numpy(np.stack(chips).transpose(0, 3, 1, 2).copy())  # [B, 14, 128, 128]
    scale = torch.tensor([0.01 if u == "reflectance" else 1.0 for u in units])[:, None, None]
    mean = torch.tensor(SATVISION_TOA_GIANT.mean)[:, None, None]
    std = torch.tensor(SATVISION_TOA_GIANT.std)[:, None, None]
    x = (x * scale - mean) / std
    got, want, t_geofm, t_ref = _timed(lambda: model(x, SATVISION_TOA_GIANT.bands),
                                       lambda: ref.forward_features(ref_in))
    return float((got - want).abs().max()), t_geofm, t_ref


def _terratorch_prithvi_mae() -> ModuleType | None:
    """TerraTorch's ``prithvi_mae`` module, loaded from its file, or ``None``."""
    spec = importlib.util.find_spec("terratorch")
    if spec is None or not spec.submodule_search_locations:
        return None
    file = Path(next(iter(spec.submodule_search_locations))) / "models" / "backbones" / \
        "prithvi_mae.py"
    if not file.is_file():
        return None
    mod_spec = importlib.util.spec_from_file_location("_terratorch_prithvi_mae", file)
    assert mod_spec is not None and mod_spec.loader is not None
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except ImportError:
        return None
    return module


def _s2_batch(size: int = 224) -> torch.Tensor:
    with rasterio.open(S2_SCENE) as src:
        names = list(src.descriptions)
        data = src.read().astype(np.float32)  # [13, 256, 256]
    idx = [names.index(b.split(".")[1]) for b in PRITHVI_EO2_300M.bands]
    crops = [data[idx, o:o + size, o:o + size] for o in range(0, 256 - size + 1, 16)][:BATCH]
    x = torch.from_numpy(np.stack(crops))  # [B, 6, size, size]
    mean = torch.tensor(PRITHVI_EO2_300M.mean)[:, None, None]
    std = torch.tensor(PRITHVI_EO2_300M.std)[:, None, None]
    return (x - mean) / std


def check_prithvi() -> tuple[float, float, float]:
    """Prithvi-EO-2.0 on a batch of real Sentinel-2 chips (six HLS-equivalent bands)."""
    cfg: dict[str, Any] = dict(PRITHVI_CHECK)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "Prithvi_EO_V2_300M.pt"
        ref_own = save_prithvi_release(path, seed=0, **cfg).eval()
        model = load_prithvi(path, "prithvi_eo2_300m", **cfg).eval()
        official = _terratorch_prithvi_mae()
        print(f"prithvi reference: {'TerraTorch prithvi_mae' if official else 'tests'}",
              file=sys.stderr)
        if official is not None:
            p = cfg["patch_size"]
            ref = official.PrithviViT(img_size=224, patch_size=(1, p, p), num_frames=1,
                                      in_chans=6, embed_dim=cfg["embed_dim"],
                                      depth=cfg["depth"], num_heads=cfg["num_heads"]).eval()
            # TerraTorch's checkpoint_filter_fn_vit: strip "encoder.", keep the model's own
            # fixed pos_embed, drop the decoder.
            raw = torch.load(path, map_location="cpu", weights_only=True)
            state = {k.removeprefix("encoder."): v for k, v in raw.items()
                     if not k.startswith("decoder.")}
            state["pos_embed"] = ref.pos_embed
            ref.load_state_dict(state, strict=True)

            def reference() -> torch.Tensor:
                return ref.forward_features(x)[-1][:, 1:].mean(1)
        else:
            def reference() -> torch.Tensor:
                return ref_own.forward_features(x)[:, 1:].mean(1)
    x = _s2_batch()
    got, want, t_geofm, t_ref = _timed(lambda: model(x, PRITHVI_EO2_300M.bands), reference)
    return float((got - want).abs().max()), t_geofm, t_ref


CHECKS: list[tuple[str, Callable[[], tuple[float, float, float]]]] = [
    ("satvision_toa_giant", check_satvision),
    ("prithvi_eo2_300m", check_prithvi),
]


if __name__ == "__main__":
    torch.manual_seed(0)
    for name, check in CHECKS:
        diff, t_geofm, t_ref = check()
        print(f"{name}: geofm {t_geofm:.3f} s, reference {t_ref:.3f} s")
        print(f"RESULT max_abs_diff_{name}={diff:.3g}")
        print(f"RESULT speed_ratio_{name}={t_ref / t_geofm:.3f}")
