"""GPU paths: flash attention in bf16, HOG scoring, bf16-mixed pretraining (one and two stores,
with the kNN probe), DDP on a GPU, CUDA prediction.

Skipped where no CUDA device is present (CI); run on a GPU machine with
``python -m pytest -q tests/test_gpu.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
import yaml
from affine import Affine
from torch.nn.attention import SDPBackend, sdpa_kernel

from geofm.bands import BAND_SETS
from geofm.models import create_model

from .synthetic import make_store

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

S1S2 = list(BAND_SETS["s1s2"])


@pytest.mark.parametrize("name", ["vit_small", "channelvit_small"])
def test_encoder_attention_runs_on_flash_kernels_in_bf16(name: str) -> None:
    torch.manual_seed(0)
    encoder = create_model(name, bands=S1S2[:6], patch_size=16).cuda().eval()
    images = torch.randn(2, 6, 128, 128, device="cuda")
    with torch.no_grad():
        reference = encoder.forward_features(images, S1S2[:6]).float()  # fp32, any kernel
        # Only the flash backend allowed: SDPA raises if a call cannot use it.
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), torch.autocast("cuda", torch.bfloat16):
            flash = encoder.forward_features(images, S1S2[:6]).float()
    rel = (flash - reference).norm() / reference.norm()
    assert rel < 3e-2, rel


@pytest.mark.parametrize("strongest_band", [False, True])
def test_hog_scores_match_on_cpu_and_gpu(strongest_band: bool) -> None:
    from geofm.objectives.hog import hog_histograms

    gen = torch.Generator().manual_seed(0)
    images = torch.randn(3, 5, 64, 64, generator=gen)
    valid = torch.rand(3, 5, 64, 64, generator=gen) > 0.1
    cpu = hog_histograms(images, 16, 9, valid, strongest_band=strongest_band)
    gpu = hog_histograms(images.cuda(), 16, 9, valid.cuda(), strongest_band=strongest_band)
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=1e-4)


def _pretrain_on_gpu(tmp_path: Path, name: str, strategy: str, *sets: str) -> dict:
    from geofm.training.config import PRETRAIN_DEFAULTS, apply_overrides, merge
    from geofm.training.pretrain import run_pretrain

    store = make_store(tmp_path / "store.zarr", S1S2, n=16, size=64)
    cfg = apply_overrides(merge(PRETRAIN_DEFAULTS, {}), [
        f"data.store={store}", f"output={tmp_path / name}", "data.split=null",
        "data.batch_size=8", "trainer.max_steps=6", "trainer.log_every_n_steps=1",
        "trainer.accelerator=gpu", f"trainer.strategy={strategy}", "previews=1", *sets])
    return run_pretrain(cfg, progress=False)


@pytest.mark.parametrize("strategy", ["auto", "ddp", "compiled"])
def test_pretraining_on_gpu_defaults_to_bf16_mixed(tmp_path: Path, strategy: str) -> None:
    from geofm.loading import load_encoder

    if strategy == "compiled":  # the default strategy with compiled transformer blocks
        result = _pretrain_on_gpu(tmp_path, strategy, "auto", "trainer.compile=true")
    else:
        result = _pretrain_on_gpu(tmp_path, strategy, strategy)
    cfg = yaml.safe_load((tmp_path / strategy / "config.yaml").read_text())
    assert cfg["trainer"]["precision"] == "bf16-mixed"
    metrics = (tmp_path / strategy / "metrics.csv").read_text()
    assert "train/images_per_s" in metrics
    encoder, card = load_encoder(result["checkpoint"])
    assert list(card.bands) == S1S2
    assert all(torch.isfinite(p).all() for p in encoder.parameters())


def test_two_store_pretraining_with_a_probe_on_gpu(tmp_path: Path, reben_store: Path) -> None:
    """Two sensors in bf16-mixed with the kNN probe under autocast; the probe is close to the
    fp32 offline evaluation of the saved checkpoint."""
    import pandas as pd

    from geofm.evaluation.finetuned import knn_evaluate

    modis = make_store(tmp_path / "modis.zarr", list(BAND_SETS["modis14"]), n=8, size=64)
    result = _pretrain_on_gpu(tmp_path, "two", "auto", f"data.store=[{reben_store}, {modis}]",
                              "model.name=channelvit_test", "model.kwargs={}",
                              f"probe.store={reben_store}", "probe.every_n_steps=3", "probe.k=3",
                              "probe.split=test")
    rows = pd.read_csv(tmp_path / "two" / "probe.csv")
    assert rows["step"].tolist() == [0, 3, 6]
    metrics = pd.read_csv(tmp_path / "two" / "metrics.csv")
    assert metrics["train/loss_store0"].notna().any() and metrics["train/loss_store1"].notna().any()
    offline = knn_evaluate(result["checkpoint"], reben_store, split="test", k=3)["metrics"]
    assert abs(rows["map_micro"].iloc[-1] - float(offline["map_micro"])) < 0.05


def test_prediction_on_cuda_matches_cpu_and_mixes_devices(tmp_path: Path) -> None:
    from geofm.bands import bands_info
    from geofm.card import ModelCard
    from geofm.checkpoint import save_checkpoint
    from geofm.models.finetuner import Finetuner
    from geofm.predict import predict_raster

    bands = ["S2.B02", "S2.B03", "S2.B04", "S2.B08"]
    torch.manual_seed(0)
    encoder = create_model("channelvit_test", bands=bands)
    model = Finetuner(encoder, "segmentation", 5, head="segmentation")
    header = {"kind": "finetune", "task": "segmentation",
              "head": {"kind": "segmentation", "num_outputs": 5, "freeze": "full",
                       "unfreeze_last": 0},
              "model": {"name": "channelvit_test", "config": encoder.model_config},
              "bands": bands, "band_info": bands_info(bands),
              "normalization": {"mean": [1000.0] * 4, "std": [600.0] * 4},
              "classes": [f"c{i}" for i in range(5)], "class_colors": [],
              "tile_size": [64, 64], "patch_size": 8, "gsd_m": 10.0}
    ckpt = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(),
                           ModelCard.from_header(header))
    rng = np.random.default_rng(0)
    raster = tmp_path / "in.tif"
    profile = {"driver": "GTiff", "width": 300, "height": 260, "count": 4, "dtype": "uint16",
               "crs": "EPSG:32633", "transform": Affine(10, 0, 500000, 0, -10, 5000000)}
    with rasterio.open(raster, "w", **profile) as ds:
        ds.write(rng.integers(0, 3000, (4, 260, 300), dtype=np.uint16))
        ds.descriptions = ("B02", "B03", "B04", "B08")
    maps = {}
    for name, device in [("cpu", "cpu"), ("cuda", "cuda:0"), ("mixed", ["cuda:0", "cpu"])]:
        out = tmp_path / f"{name}.tif"
        predict_raster(ckpt, raster, out, probabilities=True, device=device, progress=False)
        with rasterio.open(out.with_name(f"{name}_probabilities.tif")) as ds:
            maps[name] = ds.read().astype(np.float32)
    # fp32 on both (prediction does not autocast); kernels differ, so tolerate rounding.
    assert np.abs(maps["cuda"] - maps["cpu"]).max() <= 2
    assert np.abs(maps["mixed"] - maps["cpu"]).max() <= 2
