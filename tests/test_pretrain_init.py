"""Continued pretraining: a published timm ViT converted to geofm's ViT (same features at every
tile size), ``geofm pretrain --init NAME --weights FILE`` on the real 13-band Sentinel-2 L1C
scene (the release's contract and provenance kept), ``--init pretrain.safetensors`` starting
from the checkpoint's weights, and one-line refusals. Weights are random, saved in each
release's file format; nothing is downloaded (GEOFM_OFFLINE)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from geofm.card import Architecture
from geofm.checkpoint import load_checkpoint, read_card
from geofm.cli import main
from geofm.loading import encoder_state, load_encoder
from geofm.models.registry import create_model
from geofm.models.vit import ViT
from geofm.objectives import create_objective
from geofm.published import PUBLISHED
from geofm.published.resolve import card_for
from geofm.published.selectivemae import convert_mae
from geofm.published.token_encoder import as_token_encoder
from geofm.training.config import PRETRAIN_DEFAULTS, apply_overrides, merge
from geofm.training.pretrain import run_pretrain
from tests.conftest import one_line_error
from tests.published_files import l1c_store, write_release
from tests.published_seeds_refs import (
    channelvit_release,
    s2_chip,
    selectivemae_release,
    standardise,
    true_colour_8bit,
)

SSL4EO = "ssl4eo_vits16_mae"
S2_L1C = PUBLISHED[SSL4EO].bands
SMALL_MAE = "objective.kwargs={decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEOFM_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def ssl4eo_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release(SSL4EO, tmp_path_factory.mktemp("releases"))


@pytest.fixture(scope="module")
def converted(ssl4eo_file: Path) -> tuple[torch.nn.Module, ViT]:
    """The release (eval mode) and its conversion; copy before training either."""
    release, card = load_encoder(SSL4EO, ssl4eo_file)
    vit, _ = as_token_encoder(release, card, SSL4EO)
    assert isinstance(vit, ViT)
    return release, vit


@pytest.fixture(scope="module")
def l1c_128(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real L1C scene as four labelled 128 px chips (multiples of the 16 px patch)."""
    return l1c_store(tmp_path_factory.mktemp("stores") / "l1c128.zarr", size=128)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


# --- the conversion ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ssl4eo_vit_converts_to_a_geofm_vit_with_the_same_features(
        converted: tuple[torch.nn.Module, ViT]) -> None:
    release, vit = copy.deepcopy(converted)
    arch = Architecture(vit.model_name, vit.model_config)
    assert arch.name == "vit_small" and not vit.training
    assert arch.config["bands"] == list(S2_L1C) and arch.config["patch_size"] == 16
    assert arch.config["class_token"] and arch.config["pos_embed"] == "learned"
    assert arch.config["img_size"] == [224, 224] and arch.config["pos_antialias"]
    rebuilt = create_model(arch.name, **arch.config)  # the card rebuilds it
    assert rebuilt.state_dict().keys() == vit.state_dict().keys()
    # DN ÷ 10,000 as the release's contract says; 224 px (the table as trained) and 128 px
    # and 256 px (the table resampled: timm's antialiased bicubic on both sides)
    for size in (224, 128, 256):
        x = s2_chip(S2_L1C, size, batch=1 if size == 256 else 2) / 10000.0  # [B, 13, s, s]
        with torch.no_grad():
            assert _max_diff(vit.forward_features(x, S2_L1C),
                             release.forward_features(x, S2_L1C)) <= 1e-5
            assert _max_diff(vit.forward_patch_features(x, S2_L1C),
                             release.forward_patch_features(x, S2_L1C)) <= 1e-5
    # plain bicubic (geofm's own ViTs) would not match timm away from 224 px
    x = s2_chip(S2_L1C, 128) / 10000.0
    vit.pos_antialias = False
    with torch.no_grad():
        assert _max_diff(vit.forward_features(x, S2_L1C),
                         release.forward_features(x, S2_L1C)) > 1e-3


def test_selectivemae_vit_converts_to_a_geofm_vit_base(tmp_path: Path) -> None:
    spec = PUBLISHED["selectivemae_vitb"]
    release = create_model(spec.architecture, depth=2)
    release.load_state_dict(convert_mae(selectivemae_release(depth=2, decoder_depth=1)))
    release.eval()
    vit, arch = as_token_encoder(release, card_for(spec), spec.name)
    assert arch.name == "vit_base" and arch.config["depth"] == 2
    assert tuple(arch.config["bands"]) == spec.bands  # RGB.R, RGB.G, RGB.B
    for size in (224, 160):
        rgb = true_colour_8bit(s2_chip(("B04", "B03", "B02"), size))
        x = standardise(rgb, spec.mean, spec.std)  # [2, 3, s, s]
        with torch.no_grad():
            assert _max_diff(vit.forward_features(x, spec.bands),
                             release.forward_features(x, spec.bands)) <= 1e-5
            assert _max_diff(vit.forward_patch_features(x, spec.bands),
                             release.forward_patch_features(x, spec.bands)) <= 1e-5


@pytest.mark.parametrize("objective", [
    ("mae", {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}),
    ("simmim", {}),
    ("selective_mae", {"hcs": True, "decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}),
    ("selective_mae", {"decoder_memory": "raw", "decoder_dim": 384, "decoder_depth": 1,
                       "decoder_heads": 2}),
], ids=["mae", "simmim", "selective_mae_hcs", "selective_mae_raw"])
def test_every_objective_trains_the_converted_class_token_vit(
        converted: tuple[torch.nn.Module, ViT], objective: tuple[str, dict]) -> None:
    vit = copy.deepcopy(converted[1])
    name, kwargs = objective
    task = create_objective(name, vit.train(), **kwargs).train()
    x = s2_chip(S2_L1C, 64) / 10000.0  # [2, 13, 64, 64]: the table resampled to 4 × 4
    out = task(x, S2_L1C)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    # the class token and its position row are trained (they reach the blocks)
    assert vit.cls_token is not None and vit.cls_token.grad is not None
    assert vit.cls_pos_embed is not None and vit.cls_pos_embed.grad is not None
    assert vit.pos_embed_table is not None and vit.pos_embed_table.grad is not None
    assert float(vit.cls_token.grad.abs().sum()) > 0


# --- continuing a release -----------------------------------------------------------------


@pytest.mark.slow
def test_pretrain_continues_ssl4eo_then_finetunes_and_embeds(
        ssl4eo_file: Path, l1c_128: Path, tmp_path: Path) -> None:
    run = tmp_path / "cont"
    assert main(["pretrain", "--init", SSL4EO, "--weights", str(ssl4eo_file), "--data",
                 str(l1c_128), "--objective", "mae", "--max-steps", "2", "--batch-size", "2",
                 "--output", str(run), "--quiet", "--set", SMALL_MAE,
                 "--set", "data.split=null", "--set", "previews=0",
                 "--set", "trainer.accelerator=cpu"]) == 0
    ckpt = run / "pretrain.safetensors"
    card = read_card(ckpt)
    assert card.kind == "pretrain" and card.architecture.name == "vit_small"
    # the release's units and statistics, not the store's
    c = card.contract
    assert c.input_units == "dn" and c.bands == S2_L1C
    assert set(c.mean) == {0.0} and set(c.std) == {10000.0}
    assert c.processing_levels["S2"] == "L1C"
    assert card.provenance.release["name"] == SSL4EO
    assert card.provenance.encoder_source == {"checkpoint": SSL4EO, "kind": "published",
                                              "weights": str(ssl4eo_file), "data": {}}
    assert card.provenance.objective["name"] == "mae"
    assert card.provenance.training["steps"] == 2
    # trained: no longer the release's weights
    release, rcard = load_encoder(SSL4EO, ssl4eo_file)
    start, _ = as_token_encoder(release, rcard)
    enc, _ = load_encoder(ckpt)
    assert isinstance(enc, ViT)
    moved = max(_max_diff(enc.state_dict()[k], v) for k, v in start.state_dict().items())
    assert moved > 1e-6
    x = s2_chip(S2_L1C, 128) / 10000.0
    with torch.no_grad():
        assert torch.isfinite(enc(x, S2_L1C)).all()
    # finetune on it (the release's contract, so no store statistics) and embed the scene
    ft = tmp_path / "ft"
    assert main(["finetune", "--init", str(ckpt), "--data", str(l1c_128), "--max-steps", "1",
                 "--batch-size", "2", "--output", str(ft), "--quiet",
                 "--set", "data.train_split=train", "--set", "data.val_split=validation",
                 "--set", "trainer.val_every_n_steps=1"]) == 0
    ft_card = read_card(ft / "finetune.safetensors")
    assert ft_card.contract.input_units == "dn" and ft_card.architecture.name == "vit_small"
    emb = tmp_path / "emb.tif"
    from tests.conftest import S2_SCENE

    assert main(["predict", str(ckpt), str(S2_SCENE), "-o", str(emb), "--embed",
                 "--tile", "128", "--quiet"]) == 0
    assert emb.is_file()


@pytest.mark.slow
def test_pretrain_continues_a_channelvit_release_from_its_weights(
        reben_store: Path, tmp_path: Path) -> None:
    name = "channelvit_so2sat_random"
    weights = tmp_path / PUBLISHED[name].weights_file
    torch.save(channelvit_release(), weights)  # the official layout, a bare state dict
    cfg = apply_overrides(merge(PRETRAIN_DEFAULTS, {}), [
        f"init={name}", f"weights={weights}", f"data.store={reben_store}",
        f"output={tmp_path / 'o'}", "data.split=null", "data.batch_size=1",
        "objective.kwargs={hcs: true, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}",
        "trainer.max_steps=1", "optim.warmup_steps=1000000000", "trainer.accelerator=cpu",
        "previews=0"])
    ckpt = Path(run_pretrain(cfg, progress=False)["checkpoint"])
    card = read_card(ckpt)
    assert card.architecture.name == "channelvit_release_small"
    # reBEN's ten S2 bands of the release's, fed in reflectance with So2Sat's statistics
    assert card.contract.input_units == "reflectance" and card.contract.flexible
    assert card.contract.mean[0] == PUBLISHED[name].mean[0]
    assert card.provenance.release["name"] == name
    release, _ = load_encoder(name, weights)
    after, _ = load_encoder(ckpt)
    state = after.state_dict()
    assert max(_max_diff(state[k], v) for k, v in release.state_dict().items()) <= 1e-6


# --- continuing a geofm checkpoint ------------------------------------------------------------


def test_pretrain_continues_a_geofm_checkpoint_from_its_weights(
        tiny_pretrained: Callable[..., Path], reben_store: Path, tmp_path: Path) -> None:
    init = tiny_pretrained("vit_test", 1)
    weights, init_card = load_checkpoint(init)
    # model.* names another model: the checkpoint's architecture wins; a warm-up of 10⁹
    # steps keeps the first step's rate ~10⁻¹², so the result is the starting point
    cfg = apply_overrides(merge(PRETRAIN_DEFAULTS, {}), [
        f"init={init}", f"data.store={reben_store}", f"output={tmp_path / 'o'}",
        "model.name=channelvit_test", "objective.name=mae", SMALL_MAE, "data.split=null",
        "trainer.max_steps=1", "optim.warmup_steps=1000000000", "trainer.accelerator=cpu",
        "previews=0"])
    card = read_card(run_pretrain(cfg, progress=False)["checkpoint"])
    assert card.provenance.training["steps"] == 1
    assert card.architecture == init_card.architecture
    assert card.provenance.encoder_source["checkpoint"] == str(init)
    assert card.provenance.encoder_source["kind"] == "pretrain"
    assert card.contract.input_units == "native"  # store statistics, as any geofm run
    after = encoder_state(load_checkpoint(Path(tmp_path / "o" / "pretrain.safetensors"))[0])
    before = encoder_state(weights)
    assert after.keys() == before.keys()
    assert max(_max_diff(after[k], v) for k, v in before.items()) <= 1e-6


# --- refusals ---------------------------------------------------------------------------------


def test_other_families_and_missing_files_are_refused_in_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "o")
    err = one_line_error(["pretrain", "--init", "dofa_base", "--weights",
                          str(tmp_path / "none.pth"), "--output", out], capsys,
                         "pretrain cannot continue dofa_base", "own tokenizer",
                         "geofm finetune --init dofa_base")
    assert SSL4EO in err and "selectivemae_vitb" in err
    one_line_error(["pretrain", "--init", SSL4EO, "--weights", str(tmp_path / "none.pth"),
                    "--output", out], capsys, "not found", PUBLISHED[SSL4EO].weights_url)
    one_line_error(["pretrain", "--init", SSL4EO, "--output", out], capsys,
                   PUBLISHED[SSL4EO].weights_file, "--weights")
    assert not (tmp_path / "o" / "checkpoints").exists()


@pytest.mark.slow
def test_store_mismatches_are_refused_before_training(
        ssl4eo_file: Path, reben_store: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    init = ["pretrain", "--init", SSL4EO, "--weights", str(ssl4eo_file), "--output",
            str(tmp_path / "o")]
    # reBEN is L2A without B10; 120 px L1C chips do not split into 16 px patches
    one_line_error([*init, "--data", str(reben_store)], capsys, "S2.B10", "data lacks")
    l1c_120 = l1c_store(tmp_path / "l1c120.zarr", size=120)
    one_line_error([*init, "--data", str(l1c_120)], capsys, "120×120", "multiple of 16")
    assert "model.kwargs" not in capsys.readouterr().err  # the patch is the release's
    one_line_error([*init, "--data", str(l1c_120), "--set", "data.normalization=satvision"],
                   capsys, "release's units and statistics")
    assert not (tmp_path / "o" / "checkpoints").exists()
