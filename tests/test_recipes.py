"""The papers' own recipes: each restored behaviour, pinned against the release's arithmetic."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from geofm.bands import BAND_SETS
from geofm.checkpoint import read_card
from geofm.errors import BandError, GeofmError
from geofm.models import create_model
from geofm.models.finetuner import Finetuner
from geofm.models.heads import AttentiveProbe, create_head
from geofm.objectives import create_objective
from geofm.objectives.hog import released_hog_features, released_hog_scores
from geofm.objectives.selective_mae import (
    SelectiveMAE,
    progressive_selection,
    released_psts_schedule,
)
from geofm.training.config import PRETRAIN_DEFAULTS, apply_overrides, load_yaml, merge
from geofm.training.pretrain import run_pretrain
from geofm.training.schedule import scaled_lr

from .synthetic import make_store

REPO = Path(__file__).resolve().parents[1]
RGB = list(BAND_SETS["rgb"])
SMALL = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _sample_rgb(reben_store: Path, n: int = 4) -> torch.Tensor:
    """``n`` real reBEN chips' red, green and blue bands, z-scored per band."""
    from geofm.training.datamodule import ChipDataModule

    dm = ChipDataModule(reben_store, bands=["S2.B04", "S2.B03", "S2.B02"], batch_size=n,
                        train_split=None, seed=0)
    return next(iter(dm.train_dataloader()))["image"]  # [n, 3, 120, 120]


# --- released HOG scoring -------------------------------------------------------------------


def _released_reference(img: np.ndarray, patch: int, bins: int = 9) -> np.ndarray:
    """The release's HOGLayerC arithmetic, written out pixel by pixel for one image
    ``[C, H, W]``: the per-token vectors before standardisation."""
    c, h, w = img.shape
    pad = np.pad(img, ((0, 0), (1, 1), (1, 1)), mode="reflect")
    kx = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64)
    ky = kx.T
    n = np.arange(16) - 7.5
    g = np.exp(-0.5 * (n / 8) ** 2)
    gk = np.outer(g, g)
    gk /= gk.sum()
    cells = np.zeros((c, bins, h // 8, w // 8))
    for ch in range(c):
        for y in range(h):
            for x in range(w):
                win = pad[ch, y:y + 3, x:x + 3]
                gx, gy = (win * kx).sum(), (win * ky).sum()
                mag = math.hypot(gx, gy) * gk[y % 16, x % 16]
                b = math.floor(math.atan2(gx, gy) / math.pi * bins) % bins
                cells[ch, b, y // 8, x // 8] += mag
    norms = np.sqrt((cells ** 2).sum(axis=1, keepdims=True))
    cells = cells / np.maximum(norms, 1e-12)
    u = patch // 8
    out = []
    for r in range(h // patch):
        for q in range(w // patch):
            block = cells[:, :, r * u:(r + 1) * u, q * u:(q + 1) * u]  # [C, K, u, u]
            out.append(block.reshape(-1))
    return np.stack(out)


def test_released_hog_matches_the_release_arithmetic_pixel_by_pixel() -> None:
    gen = torch.Generator().manual_seed(0)
    img = torch.randn(1, 3, 32, 32, generator=gen)
    feats = released_hog_features(img, patch_size=16)  # [1, 4, 3·9·4]
    ref = _released_reference(img[0].double().numpy(), patch=16)
    assert feats.shape == (1, 4, 108)
    np.testing.assert_allclose(feats[0].numpy(), ref, rtol=1e-4, atol=1e-5)


def test_released_scoring_is_uniform_on_a_flat_image() -> None:
    objective = SelectiveMAE(create_model("vit_test", bands=RGB), scoring="released", **SMALL)
    scores = objective.token_scores(torch.full((2, 3, 32, 32), 0.7), torch.ones(2, 3, 32, 32,
                                                                                  dtype=bool))
    assert scores.abs().max() < 1e-6 and torch.equal(scores, scores[:, :1].expand(2, 16))
    probs = scores.softmax(dim=1)
    assert torch.equal(probs, torch.full_like(probs, 1 / 16))


def test_released_scoring_is_near_uniform_on_the_real_sample(reben_store: Path) -> None:
    images = _sample_rgb(reben_store)
    valid = torch.ones_like(images, dtype=torch.bool)
    released = SelectiveMAE(create_model("vit_test", bands=RGB), scoring="released", **SMALL)
    geofm = SelectiveMAE(create_model("vit_test", bands=RGB), **SMALL)
    p_rel = released.token_scores(images, valid).softmax(dim=1)  # [4, 225]
    p_geo = geofm.token_scores(images, valid).softmax(dim=1)
    ratio_rel = (p_rel.amax(1) / p_rel.amin(1)).max().item()
    ratio_geo = (p_geo.amax(1) / p_geo.amin(1)).min().item()
    assert ratio_rel < 1 + 1e-5  # scores ~1e-7: every token equally likely
    assert ratio_geo > 10  # geofm's richness scoring prefers textured tokens
    # The standardised vectors really do carry structure; the average throws it away.
    feats = released_hog_features(images, 8)
    assert feats.std(dim=1).mean() > 0.05
    assert released_hog_scores(feats).abs().max() < 1e-5


def test_released_scoring_serves_band_tokens() -> None:
    enc = create_model("channelvit_test", bands=RGB)
    objective = SelectiveMAE(enc, scoring="released", **SMALL)
    images = torch.randn(2, 3, 32, 32)
    scores = objective.token_scores(images, torch.ones_like(images, dtype=torch.bool))
    assert scores.shape == (2, 3 * 16) and scores.abs().max() < 1e-5
    with pytest.raises(ValueError, match="multiple of 8"):
        released_hog_features(torch.randn(1, 3, 24, 24), patch_size=12)


# --- PSTS schedule and token counts ------------------------------------------------------------


def test_released_schedule_hands_over_at_the_released_epochs() -> None:
    s = released_psts_schedule
    assert s(0) == s(279) == s(280) == (1.0, 0.0, 0.0)
    assert s(281) == pytest.approx((0.95, 0.05, 0.0))
    assert s(299) == pytest.approx((0.05, 0.95, 0.0))
    assert s(300) == s(450) == s(580) == (0.0, 1.0, 0.0)
    assert s(581) == pytest.approx((0.0, 0.95, 0.05))
    assert s(600) == s(799) == (0.0, 0.0, 1.0)
    # Through the objective: progress is turned into the epoch of an 800-epoch run.
    objective = SelectiveMAE(create_model("vit_test", bands=RGB), psts_epochs=800, **SMALL)
    assert objective.psts_breakpoints == (280, 300, 580, 600)
    assert objective.psts_shares(280 / 800) == (1.0, 0.0, 0.0)
    assert objective.psts_shares(281 / 800) == pytest.approx((0.95, 0.05, 0.0))
    assert objective.psts_shares(300 / 800) == (0.0, 1.0, 0.0)
    assert objective.psts_shares(600 / 800) == (0.0, 0.0, 1.0)
    # geofm's default: the paper's fractions, continuous.
    default = SelectiveMAE(create_model("vit_test", bands=RGB), **SMALL)
    assert default.psts_shares(210 / 1200) == pytest.approx((0.5, 0.5, 0.0))
    frac = SelectiveMAE(create_model("vit_test", bands=RGB),
                        psts_breakpoints=[0.35, 0.375, 0.725, 0.75], **SMALL)
    assert frac.psts_shares(0.3625) == pytest.approx((0.5, 0.5, 0.0))
    with pytest.raises(ValueError, match="fractions of training"):
        SelectiveMAE(create_model("vit_test", bands=RGB), psts_breakpoints=[280, 300, 580, 600])


def test_released_counts_truncate_like_the_release() -> None:
    enc = create_model("vit_test", bands=RGB)
    released = SelectiveMAE(enc, counts="floor", **SMALL)
    nearest = SelectiveMAE(enc, **SMALL)
    # ViT-B/16 at 224 px: 196 tokens; the release encodes int(29.4) = 29, seeds int(29 / 2) = 14
    # (15 PSTS tokens, rounds of 7 then 8) and reconstructs int(49.0) = 49.
    assert released.token_counts(196) == (14, 29, 49)
    assert nearest.token_counts(196) == (15, 29, 49)
    feats = torch.randn(1, 196, 8)
    seeds = torch.arange(14).unsqueeze(0)
    # At epoch 281 the release takes int(0.95 · 7) = 6 nearest and 1 farthest in round one.
    shares = released_psts_schedule(281)
    sim = torch.nn.functional.normalize(feats, dim=-1)
    best = (sim @ sim[:, :14].transpose(1, 2)).amax(-1)
    best[:, :14] = -math.inf
    picked = progressive_selection(feats, seeds, 15, 0.0, steps=2, shares=shares,
                                   floor_counts=True)
    assert picked.shape == (1, 15)
    first = set(picked[0, :7].tolist())
    top6 = set(best[0].topk(6).indices.tolist())
    assert top6 <= first


# --- learning-rate rule --------------------------------------------------------------------------


def test_selectivemae_lr_rule_matches_the_release() -> None:
    # main_pretrain.py: lr = (kept_mask_ratio / mask_ratio) · blr · eff_batch / 256.
    assert scaled_lr(1.5e-4, "selective_mae", 2048, 0.25, 0.15) == pytest.approx(
        0.25 / 0.85 * 1.5e-4 * 2048 / 256)
    assert scaled_lr(1.5e-4, "batch", 2048) == pytest.approx(1.2e-3)
    assert scaled_lr(1.5e-4, "none", 2048) == 1.5e-4
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_lr(1e-3, "sqrt", 64)


# --- decoder memory ------------------------------------------------------------------------------


def test_raw_decoder_reads_the_encoder_output_with_its_class_token() -> None:
    torch.manual_seed(0)
    enc = create_model("vit_test", bands=RGB, patch_size=8, class_token=True)
    raw = SelectiveMAE(enc, decoder_memory="raw", **SMALL)
    assert isinstance(raw.decoder_embed, torch.nn.Identity)
    block = raw.decoder_blocks[0]
    assert block.kv.in_features == enc.embed_dim == 32 and block.kv.out_features == 2 * 32
    assert isinstance(block.norm_kv, torch.nn.Identity)
    tokens = enc.tokenize(torch.randn(2, 3, 32, 32), RGB)  # [2, 16, 32]
    idx = torch.arange(3).expand(2, 3)
    assert raw.forward_encoder(tokens, idx).shape == (2, 1 + 3, 32)  # class token in front
    out = raw(torch.randn(2, 3, 32, 32), RGB)
    assert out.token_pred.shape == (2, 4, 3 * 64)
    out.loss.backward()
    assert enc.cls_token.grad is not None and enc.cls_token.grad.abs().sum() > 0
    projected = SelectiveMAE(create_model("vit_test", bands=RGB, patch_size=8), **SMALL)
    assert isinstance(projected.decoder_embed, torch.nn.Linear)
    assert projected.decoder_blocks[0].kv.in_features == 32
    assert isinstance(projected.decoder_blocks[0].norm_kv, torch.nn.LayerNorm)
    with pytest.raises(GeofmError, match="decoder_memory"):
        create_objective("selective_mae", enc, decoder_memory="linear")


# --- ChannelViT layout options -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["channelvit_test", "vit_test"])
def test_learned_position_table_and_class_token(name: str) -> None:
    bands = RGB
    enc = create_model(name, bands=bands, class_token=True, pos_embed="learned", img_size=32)
    assert enc.pos_embed_table.shape == (16, 32) and enc.cls_token.shape == (1, 1, 32)
    images = torch.randn(2, 3, 32, 32)
    tokens = enc.tokenize(images, bands)
    full = enc.forward_tokens(tokens, with_class=True)
    assert full.shape[1] == tokens.shape[1] + 1
    assert torch.allclose(enc.forward_features(images, bands), full[:, 0])
    assert enc.forward_patch_features(images, bands).shape == (2, 16, 32)
    # Other chip sizes interpolate the table, as the paper's code does.
    assert enc.pos_embed(( 6, 6), tokens).shape == (36, 32)
    assert enc.forward_features(torch.randn(1, 3, 48, 48), bands).shape == (1, 32)
    # The checkpoint's model config rebuilds the same layout.
    again = create_model(name, **enc.model_config)
    assert again.model_config == enc.model_config
    again.load_state_dict(enc.state_dict())
    with pytest.raises(GeofmError, match="img_size"):
        create_model(name, bands=bands, pos_embed="learned")


# --- HCS in finetuning ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["channelvit_test", "vit_test"])
def test_finetuning_samples_channels_only_while_training(name: str) -> None:
    bands = list(BAND_SETS["s1s2"])
    torch.manual_seed(0)
    model = Finetuner(create_model(name, bands=bands), "multilabel", 3, hcs=True)
    seen: list[tuple[int, float]] = []
    original = model.encoder.tokenize

    def record(images: torch.Tensor, names: list[str], *args: object) -> torch.Tensor:
        zero = (images.abs().sum(dim=(0, 2, 3)) == 0).sum().item()
        seen.append((len(names), zero))
        return original(images, names, *args)

    model.encoder.tokenize = record  # type: ignore[method-assign]
    images = torch.randn(2, len(bands), 16, 16)
    model.train()
    for _ in range(12):
        model(images, bands)
    if name.startswith("channelvit"):
        assert len({n for n, _ in seen}) > 3  # band counts vary
        assert all(z == 0 for _, z in seen)
    else:
        assert all(n == len(bands) for n, _ in seen)  # a ViT keeps its inputs ...
        assert len({z for _, z in seen}) > 3  # ... with the dropped bands zero-filled
    seen.clear()
    model.eval()
    model(images, bands)
    assert seen == [(len(bands), 0)]
    assert model.config["hcs"] is True


# --- SatVision-TOA normalisation -----------------------------------------------------------------


def test_satvision_normalisation_uses_its_fixed_constants() -> None:
    from geofm.data.satvision import satvision_stats
    from geofm.data.transforms import Normalize

    bands = list(BAND_SETS["modis14"])
    mean, std = satvision_stats(bands)
    # Order 1, 2, 3, 6, 7, 21, 26, 27 ... 33; reflectance passes through unchanged.
    assert mean[[0, 1, 2, 3, 4, 6]].tolist() == [0.0] * 6
    assert std[[0, 1, 2, 3, 4, 6]].tolist() == [1.0] * 6
    assert mean[5] == pytest.approx(223.1222) and std[5] == pytest.approx(352.7182 - 223.1222)
    assert mean[11] == pytest.approx(202.1759) and std[11] == pytest.approx(324.0677 - 202.1759)
    image = torch.zeros(14, 1, 2)
    image[0] = 0.42  # band 1 reflectance
    image[11] = torch.tensor([[202.1759, 324.0677]])  # band 31 at its min and max
    out = Normalize(bands, mean, std)({"image": image, "bands": bands})["image"]
    assert out[0].flatten().tolist() == pytest.approx([0.42, 0.42])
    assert out[11].flatten().tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    with pytest.raises(BandError, match=r"S2\.B04"):
        satvision_stats(["S2.B04"])


# --- probe default -------------------------------------------------------------------------------


def test_attentive_probe_defaults_to_32_queries() -> None:
    assert AttentiveProbe(64, 5).num_queries == 32
    assert create_head("attentive", 192, 5).num_queries == 32


# --- SimMIM mask squares ---------------------------------------------------------------------


def test_simmim_masks_whole_squares_of_patches() -> None:
    bands = list(BAND_SETS["modis14"])
    enc = create_model("vit_test", bands=bands, patch_size=4)
    out = create_objective("simmim", enc, mask_patch_size=8)(torch.randn(2, 14, 32, 32), bands)
    masked = (~out.visible_mask[:, 0]).float()  # [2, 32, 32]
    squares = masked.reshape(2, 4, 8, 4, 8).mean(dim=(2, 4))
    assert set(squares.unique().tolist()) == {0.0, 1.0}  # each 8-px square all in or all out
    assert squares.sum(dim=(1, 2)).tolist() == [10.0, 10.0]  # round(0.6 · 16)
    with pytest.raises(GeofmError, match="mask_patch_size"):
        create_objective("simmim", enc, mask_patch_size=6)


# --- recipes -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,bands", [("selectivemae_paper", "rgb"),
                                        ("satvision_toa", "modis14"),
                                        ("channelvit_paper", None)])
def test_paper_recipe_twins_run(name: str, bands: str | None, reben_store: Path,
                                tmp_path: Path) -> None:
    full = load_yaml(REPO / "configs" / "pretrain" / f"{name}.yaml")
    tiny = load_yaml(REPO / "configs" / "pretrain" / f"{name}.tiny.yaml")
    assert set(tiny) <= set(full) | {"previews"}
    for key in ("scoring", "psts_epochs", "psts_breakpoints", "counts", "decoder_memory",
                "mask_patch_size", "hcs"):
        assert tiny["objective"]["kwargs"].get(key) == full["objective"]["kwargs"].get(key)
    assert tiny["data"].get("normalization") == full["data"].get("normalization")
    store = reben_store if bands is None else make_store(tmp_path / "s.zarr",
                                                         list(BAND_SETS[bands]), size=32)
    cfg = apply_overrides(merge(merge(PRETRAIN_DEFAULTS, full), tiny),
                          [f"data.store={store}", f"output={tmp_path / 'out'}"])
    result = run_pretrain(cfg, progress=False)
    assert result["steps"] == 3
    card = read_card(result["checkpoint"])
    if name == "selectivemae_paper":
        assert card.provenance.training["lr"] == pytest.approx(1.5e-4 * 2 / 256 * 0.25 / 0.85)
        assert card.architecture.config["class_token"] is True
    if name == "satvision_toa":
        assert card.contract.mean[11] == pytest.approx(202.1759)
    if name == "channelvit_paper":
        assert card.architecture.config["pos_embed"] == "learned"
