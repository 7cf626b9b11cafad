"""SatVision-TOA and Prithvi-EO-2.0: release files load with every key used, features match the
official code's forward, and bad files are refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from safetensors.torch import save_file

from geofm.errors import GeofmError
from geofm.models.registry import create_model
from geofm.published import PUBLISHED
from geofm.published.nasa_cards import PRITHVI_EO2_300M, SATVISION_TOA_GIANT
from geofm.published.prithvi import (
    PrithviEO2,
    convert_prithvi,
    load_prithvi,
    read_prithvi,
)
from geofm.published.satvision import (
    SATVISION_SIZES,
    SatVisionTOA,
    convert_satvision,
    load_satvision,
    read_deepspeed_module,
)
from tests.conftest import S2_SCENE
from tests.published_reference_seeds_b import (
    CaneySwinV2,
    PrithviViTReference,
    caney_scale,
    disallowed_extra,
    modis_toa_chip,
    save_prithvi_release,
    save_satvision_release,
)

TEST_SV = dict(SATVISION_SIZES["test"])
TEST_PRITHVI = {"embed_dim": 64, "depth": 2, "num_heads": 4, "patch_size": 16}


def _geofm_modis_input(chip: np.ndarray) -> torch.Tensor:
    """The chip as geofm holds MODIS (reflectance 0–1, brightness temperature in K), normalised
    with the model card's mean and std: ``[1, 14, H, W]``."""
    spec = SATVISION_TOA_GIANT
    x = torch.from_numpy(chip.transpose(2, 0, 1).copy())  # [14, H, W]
    units = spec.extra["band_units"]
    x = torch.stack([x[i] * 0.01 if units[i] == "reflectance" else x[i] for i in range(14)])
    mean = torch.tensor(spec.mean)[:, None, None]
    std = torch.tensor(spec.std)[:, None, None]
    return ((x - mean) / std)[None]  # [1, 14, H, W]


def _s2_prithvi_input(size: int) -> torch.Tensor:
    """A real Sentinel-2 L1C chip's six Prithvi bands (DN), normalised: ``[1, 6, size, size]``."""
    with rasterio.open(S2_SCENE) as src:
        names = list(src.descriptions)
        data = src.read(window=((0, size), (0, size))).astype(np.float32)  # [13, H, W]
    idx = [names.index(b.split(".")[1]) for b in PRITHVI_EO2_300M.bands]
    x = torch.from_numpy(data[idx])
    mean = torch.tensor(PRITHVI_EO2_300M.mean)[:, None, None]
    std = torch.tensor(PRITHVI_EO2_300M.std)[:, None, None]
    return ((x - mean) / std)[None]


def _meta_release_state(ref: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in ref.state_dict().items()}


# ------------------------------------------------------------------------------ SatVision-TOA


def test_satvision_release_file_loads_and_matches_pytorch_caney(tmp_path: Path) -> None:
    path = tmp_path / "mp_rank_00_model_states.pt"
    ref = save_satvision_release(path, seed=3, **TEST_SV).eval()
    raw = torch.load(path, weights_only=True)
    assert raw["module"]["encoder.patch_embed.proj.weight"].dtype == torch.bfloat16
    state = convert_satvision(read_deepspeed_module(path))
    model = create_model("satvision_toa_test")
    assert set(state) == set(model.state_dict())  # every release tensor used, nothing missing
    assert all(v.dtype == torch.float32 for v in state.values())

    model = load_satvision(path, "satvision_toa_test").eval()
    chip = modis_toa_chip(seed=7)
    with torch.no_grad():
        want = ref.forward_features(caney_scale(chip)[None])  # [1, D]
        want_tokens = ref.tokens(caney_scale(chip)[None])  # [1, 16, D]
        x = _geofm_modis_input(chip)
        got = model.forward_features(x, SATVISION_TOA_GIANT.bands)
        got_tokens = model.forward_patch_features(x, SATVISION_TOA_GIANT.bands)
    assert got.shape == want.shape == (1, model.embed_dim)
    assert got_tokens.shape == want_tokens.shape == (1, 16, model.embed_dim)
    assert float((got - want).abs().max()) <= 1e-4
    assert float((got_tokens - want_tokens).abs().max()) <= 1e-4
    assert float(want.std()) > 0.05  # the features are not trivially constant


def test_satvision_extra_norms_are_the_releases() -> None:
    """``norm3`` after every third (test) / sixth (release) block of a stage, as pytorch-caney."""
    model = create_model("satvision_toa_test")
    norms = sorted(k for k in model.state_dict() if ".norm3.weight" in k)
    assert norms == ["swin.layers.2.blocks.2.norm3.weight", "swin.layers.2.blocks.5.norm3.weight"]
    with torch.no_grad():
        for block in model.blocks:
            if hasattr(block, "norm3"):
                block.norm3.weight.zero_()
        x = _geofm_modis_input(modis_toa_chip(seed=1))
        tokens = model.swin.forward_features(x)
    # Zero norm3 weights zero the stage-3 tokens before the last merging: output = norm(bias).
    assert float(tokens.std(dim=(1, 2)).max()) < 1e-5


def test_satvision_embeddings_are_laid_out_on_its_32_px_feature_grid() -> None:
    """The card's patch is the Swin patch (4 px); ``predict --embed`` lays the features out on
    the encoder's grid, one cell per 32 px, as the tokens leave the last stage."""
    from dataclasses import replace

    from geofm.predict import Predictor
    from geofm.published.resolve import card_for

    model = create_model("satvision_toa_test").eval()
    card = replace(card_for(SATVISION_TOA_GIANT), architecture=replace(
        card_for(SATVISION_TOA_GIANT).architecture, name="satvision_toa_test", config={}))
    assert card.patch_size == 4 and model.patch_size == 32
    predictor = Predictor(model, card)
    x = _geofm_modis_input(modis_toa_chip(seed=2))  # [1, 14, 128, 128]
    with torch.no_grad():
        grid = predictor.outputs(x, list(card.bands), "embed")
        tokens = model.forward_patch_features(x, list(card.bands))  # [1, 16, D]
    assert grid.shape == (1, tokens.shape[2], 4, 4)
    assert torch.equal(grid[0, :, 1, 2], tokens[0, 1 * 4 + 2])


def test_satvision_giant_key_layout_matches_release(tmp_path: Path) -> None:
    """The full-size release's keys and shapes (built on the meta device) map onto the giant."""
    with torch.device("meta"):
        ref = CaneySwinV2()  # the release's config: embed 512, depths 2-2-42-2, window 8
        giant = create_model("satvision_toa_giant")
    release = _meta_release_state(ref, "encoder.")
    release["encoder.mask_token"] = torch.empty(1, 1, 512, device="meta")
    release["decoder.0.weight"] = torch.empty(32 ** 2 * 14, 4096, 1, 1, device="meta")
    release["decoder.0.bias"] = torch.empty(32 ** 2 * 14, device="meta")
    params = sum(p.numel() for p in ref.parameters()) + 512 + 32 ** 2 * 14 * 4097
    assert params == 2_653_783_008  # pytorch-caney's notebook: "number of params: 2653783008"
    state = convert_satvision(release)
    mine = giant.state_dict()
    assert set(state) == set(mine)
    assert all(state[k].shape == mine[k].shape for k in mine)
    assert giant.embed_dim == 4096 and giant.patch_size == 32


def test_satvision_file_with_pickled_object_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mp_rank_00_model_states.pt"
    save_satvision_release(path, seed=0, extra=disallowed_extra(), **TEST_SV)
    with pytest.raises(GeofmError) as err:
        read_deepspeed_module(path)
    text = str(err.value)
    assert "\n" not in text
    assert "argparse.Namespace" in text and "safetensors" in text
    assert "weights_only=False" not in text and "weights_only = False" not in text


@pytest.mark.slow
def test_satvision_safetensors_export_loads(tmp_path: Path) -> None:
    """The export the refusal recommends (the ``module`` dict as safetensors) loads the same."""
    path = tmp_path / "mp_rank_00_model_states.pt"
    ref = save_satvision_release(path, seed=5, **TEST_SV).eval()
    module = torch.load(path, weights_only=True)["module"]
    export = tmp_path / "satvision_toa.safetensors"
    save_file({k: v.contiguous() for k, v in module.items()}, str(export))
    model = load_satvision(export, "satvision_toa_test").eval()
    chip = modis_toa_chip(seed=2)
    with torch.no_grad():
        diff = model(_geofm_modis_input(chip), SATVISION_TOA_GIANT.bands) - ref.forward_features(
            caney_scale(chip)[None])
    assert float(diff.abs().max()) <= 1e-4


def test_satvision_unknown_key_and_wrong_tile_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mp_rank_00_model_states.pt"
    save_satvision_release(path, seed=0, **TEST_SV)
    state = read_deepspeed_module(path)
    state["encoder.head.weight"] = torch.zeros(3, 3)
    with pytest.raises(GeofmError, match="does not use"):
        convert_satvision(state)
    model = create_model("satvision_toa_test")
    with pytest.raises(GeofmError, match="128×128"):
        model(torch.zeros(1, 14, 64, 64), SATVISION_TOA_GIANT.bands)
    with pytest.raises(GeofmError, match=r"MODIS\.B33"):
        model(torch.zeros(1, 13, 128, 128), SATVISION_TOA_GIANT.bands[:13])


# ---------------------------------------------------------------------------- Prithvi-EO-2.0


@pytest.mark.parametrize("size", [224, 96])
def test_prithvi_release_file_loads_and_matches_official_forward(tmp_path: Path,
                                                                 size: int) -> None:
    path = tmp_path / "Prithvi_EO_V2_300M.pt"
    ref = save_prithvi_release(path, seed=11, img_size=224, **TEST_PRITHVI).eval()
    raw = read_prithvi(path)
    assert raw["encoder.pos_embed"].shape[1] == 1 + 4 * 14 * 14  # the 4-frame pretraining table
    assert any(k.startswith("decoder.decoder_blocks.") for k in raw)
    state = convert_prithvi(raw)
    model = create_model("prithvi_eo2_test")
    assert set(state) == set(model.state_dict())

    model = load_prithvi(path, "prithvi_eo2_test").eval()
    x = _s2_prithvi_input(size)
    with torch.no_grad():
        want = ref.forward_features(x)[:, 1:]  # [1, N, D] after the final norm
        got = model.forward_patch_features(x, PRITHVI_EO2_300M.bands)
        pooled = model.forward_features(x, PRITHVI_EO2_300M.bands)
    n = (size // 16) ** 2
    assert got.shape == want.shape == (1, n, 64)
    assert float((got - want).abs().max()) <= 1e-4
    assert float((pooled - want.mean(1)).abs().max()) <= 1e-4
    assert float(want.std()) > 0.05


def test_prithvi_band_order_follows_names(tmp_path: Path) -> None:
    """Bands given in another order are put in the release's order, not fed as they come."""
    path = tmp_path / "Prithvi_EO_V2_300M.pt"
    save_prithvi_release(path, seed=1, **TEST_PRITHVI)
    model = load_prithvi(path, "prithvi_eo2_test").eval()
    x = _s2_prithvi_input(64)
    flip = list(reversed(PRITHVI_EO2_300M.bands))
    with torch.no_grad():
        a = model(x, PRITHVI_EO2_300M.bands)
        b = model(x.flip(1), flip)
    assert torch.allclose(a, b)
    with pytest.raises(GeofmError, match=r"S2\.B12"):
        model(x[:, :5], PRITHVI_EO2_300M.bands[:5])


@pytest.mark.parametrize("name,size", [("prithvi_eo2_300m", "300m"), ("prithvi_eo2_600m", "600m")])
def test_prithvi_full_size_key_layout(name: str, size: str) -> None:
    from geofm.published.prithvi import PRITHVI_SIZES

    cfg = PRITHVI_SIZES[size]
    with torch.device("meta"):
        ref = PrithviViTReference(224, cfg["patch_size"], 4, 6, cfg["embed_dim"], cfg["depth"],
                                  cfg["num_heads"])
        model = create_model(name)
    release = _meta_release_state(ref, "encoder.")
    release["decoder.mask_token"] = torch.empty(1, 1, 512, device="meta")
    state = convert_prithvi(release)
    mine = model.state_dict()
    assert set(state) == set(mine)
    assert all(state[k].shape == mine[k].shape for k in mine)
    assert isinstance(model, PrithviEO2) and model.patch_size == cfg["patch_size"]


def test_prithvi_tl_release_is_refused() -> None:
    """A ``-TL`` release's coordinate encoders are not silently dropped."""
    state = {"encoder.cls_token": torch.zeros(1, 1, 64),
             "encoder.temporal_embed_enc.scale": torch.ones(1)}
    with pytest.raises(GeofmError, match="temporal_embed_enc"):
        convert_prithvi(state)


# ------------------------------------------------------------------------------ model cards


@pytest.mark.slow
@pytest.mark.parametrize("name", ["satvision_toa_giant", "prithvi_eo2_300m", "prithvi_eo2_600m"])
def test_cards_rebuild_their_models(name: str) -> None:
    spec = PUBLISHED[name]
    test_arch = spec.extra["test_architecture"]
    model = create_model(test_arch, **spec.config)
    again = create_model(model.model_name, **model.model_config)
    assert type(again) is type(model)
    assert set(again.state_dict()) == set(model.state_dict())
    assert tuple(model.bands) == spec.bands
    assert spec.weights_url.endswith(spec.weights_file)
    assert isinstance(model, SatVisionTOA | PrithviEO2)


def test_satvision_card_units_are_caneys() -> None:
    """Mean/std in the card reproduce pytorch-caney's scaling from reflectance 0–1 and kelvin."""
    spec = SATVISION_TOA_GIANT
    chip = modis_toa_chip(seed=4)
    want = caney_scale(chip)[None]
    assert float((_geofm_modis_input(chip) - want).abs().max()) <= 1e-6
    assert spec.input_units == "reflectance" and spec.extra["band_units"].count("K") == 8
