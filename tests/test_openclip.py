"""open_clip / RemoteCLIP state dicts: key mapping, RGB contract, equality with open_clip."""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from geofm.card import ModelCard
from geofm.errors import BandError, GeofmError
from geofm.loading import load_aligned
from geofm.models.openclip import RGB_BANDS, OpenCLIPAlign, load_open_clip
from geofm.models.text import TextTower

VIT_CFG = {"embed_dim": 16,
           "vision_cfg": {"layers": 2, "width": 64, "patch_size": 8, "image_size": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                        "layers": 2}}
RN_CFG = {"embed_dim": 16, "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 64},
          "text_cfg": VIT_CFG["text_cfg"]}
MEAN = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
TEXTS = ["a satellite image of forest", "fields next to a river"]


def tiny_clip(cfg: dict) -> open_clip.model.CLIP:
    torch.manual_seed(0)
    model = open_clip.model.CLIP(**cfg).eval()
    with torch.no_grad():  # random, non-trivial logit scale
        model.logit_scale.fill_(3.0)
    return model


@pytest.fixture(scope="module")
def vit() -> open_clip.model.CLIP:
    return tiny_clip(VIT_CFG)


def reflectance(size: int, batch: int = 2) -> torch.Tensor:
    """Sentinel-2-like DN, some above the stretch to exercise the clip."""
    torch.manual_seed(1)
    return torch.rand(batch, 3, size, size) * 6000.0  # [B, 3, H, W]


def card_normalise(dn: torch.Tensor, card: ModelCard) -> torch.Tensor:
    """What geofm's data pipeline does with a model card's band contract."""
    mean, std = card.contract.normalization(list(card.bands))
    return (dn - torch.from_numpy(mean).view(1, 3, 1, 1)) / torch.from_numpy(std).view(1, 3, 1, 1)


def clip_input(dn: torch.Tensor) -> torch.Tensor:
    """The reference preprocessing: true-colour stretch, clip, CLIP standardisation."""
    return ((dn / 3000.0).clamp(0, 1) - MEAN) / STD


def assert_matches_open_clip(model: OpenCLIPAlign, card: ModelCard, clip, size: int) -> None:
    dn = reflectance(size)
    with torch.no_grad():
        ours = model.encode_image(card_normalise(dn, card), RGB_BANDS)
        theirs = clip.encode_image(clip_input(dn), normalize=True)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
        tokens = open_clip.tokenizer.SimpleTokenizer()(TEXTS)
        torch.testing.assert_close(model.encode_text(TEXTS),
                                   clip.encode_text(tokens, normalize=True), atol=1e-5, rtol=1e-4)
    assert model.scale().item() == pytest.approx(clip.logit_scale.exp().item(), rel=1e-5)


@pytest.mark.parametrize("layout", ["plain", "ddp_wrapped", "safetensors"])
def test_state_dict_files_match_open_clip(vit, tmp_path: Path, layout: str) -> None:
    state = vit.state_dict()
    if layout == "plain":
        path = tmp_path / "RemoteCLIP-tiny.pt"
        torch.save(state, path)
    elif layout == "ddp_wrapped":
        path = tmp_path / "RemoteCLIP-tiny.pt"
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    else:
        path = tmp_path / "tiny.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model, card = load_open_clip(path)
    assert isinstance(model, OpenCLIPAlign) and not model.training and model.text.locked
    assert card.kind == "open_clip" and card.bands == tuple(RGB_BANDS)
    assert card.contract.mean == pytest.approx([3000 * m for m in
                                                             open_clip.OPENAI_DATASET_MEAN])
    assert card.patch_size == 8 and card.tile_size == (32, 32) and card.text is not None
    assert card.text.source["kind"] == "open_clip" and card.text.embed_dim == 16
    assert_matches_open_clip(model, card, vit, 32)


def test_named_arch_and_open_clip_folder(vit, tmp_path: Path) -> None:
    cfg_file = tmp_path / "geofm-tiny-vit.json"
    cfg_file.write_text(json.dumps(VIT_CFG))
    open_clip.add_model_config(cfg_file)
    path = tmp_path / "tiny.pt"
    torch.save(vit.state_dict(), path)
    model, card = load_open_clip(path, arch="geofm-tiny-vit")
    assert card.text is not None and card.text.source["arch"] == "geofm-tiny-vit"
    assert_matches_open_clip(model, card, vit, 32)

    folder = tmp_path / "hf_style"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": VIT_CFG}))
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))
    model, card = load_open_clip(folder)
    assert_matches_open_clip(model, card, vit, 32)
    text = TextTower.from_source(folder)  # an open_clip folder replaces the text tower
    assert text.source == {"name": str(folder.resolve()), "kind": "open_clip", "dim": 16}
    with torch.no_grad():
        tokens = open_clip.tokenizer.SimpleTokenizer()(TEXTS)
        torch.testing.assert_close(text(TEXTS), vit.encode_text(tokens))


def test_bands_in_any_order_and_wrong_bands(vit, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(vit.state_dict(), path)
    model, card = load_open_clip(path)
    x = card_normalise(reflectance(32), card)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x.flip(1), ["S2.B02", "S2.B03", "S2.B04"]),
                                   model.encode_image(x, RGB_BANDS))
    with pytest.raises(BandError, match="takes bands"):
        model.encode_image(x, ["S2.B08", "S2.B03", "S2.B02"])


def test_patch_features_follow_maskclip(vit, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(vit.state_dict(), path)
    model, card = load_open_clip(path)
    dn = reflectance(32)
    with torch.no_grad():
        patches = model.encode_patches(card_normalise(dn, card), RGB_BANDS)
        assert patches.shape == (2, 16, 4, 4)
        # Reference: open_clip's own blocks; the last one with a diagonal attention mask.
        v = vit.visual
        out = v.forward_intermediates(clip_input(dn), indices=[0], intermediates_only=True,
                                      output_fmt="NLC", output_extra_tokens=True)
        x = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], 1)
        mask = torch.full((17, 17), float("-inf")).fill_diagonal_(0.0)
        x = v.transformer.resblocks[-1](x, attn_mask=mask)
        ref = F.normalize(v.ln_post(x[:, 1:]) @ v.proj, dim=-1)  # [B, N, E]
        torch.testing.assert_close(patches.flatten(2).transpose(1, 2), ref, atol=1e-5,
                                   rtol=1e-4)
        bigger = model.encode_patches(card_normalise(reflectance(48), card), RGB_BANDS)
    assert bigger.shape == (2, 16, 6, 6) and torch.isfinite(bigger).all()
    with pytest.raises(GeofmError, match="not a multiple of the patch size 8"):
        model.encode_patches(torch.zeros(1, 3, 30, 30), RGB_BANDS)


def test_resnet_towers(tmp_path: Path) -> None:
    rn = tiny_clip(RN_CFG)
    path = tmp_path / "RemoteCLIP-RN-tiny.pt"
    torch.save(rn.state_dict(), path)
    model, card = load_aligned(path)  # dispatches to load_open_clip
    assert card.patch_size == 32 and card.tile_size == (64, 64)
    assert_matches_open_clip(model, card, rn, 64)
    with torch.no_grad():
        patches = model.encode_patches(card_normalise(reflectance(64), card), RGB_BANDS)
    assert patches.shape == (2, 16, 2, 2)
    torch.testing.assert_close(patches.norm(dim=1), torch.ones(2, 2, 2))


def test_bad_files_are_one_clear_error(vit, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(vit.state_dict(), path)
    with pytest.raises(GeofmError, match="weights do not fit open_clip ViT-S-32"):
        load_open_clip(path, arch="ViT-S-32")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(GeofmError, match="cannot read weights"):
        load_open_clip(junk)
    other = tmp_path / "other.pt"
    torch.save({"encoder.weight": torch.zeros(2)}, other)
    with pytest.raises(GeofmError, match="not an open_clip CLIP state dict"):
        load_open_clip(other)
    with pytest.raises(GeofmError, match="not found"):
        load_open_clip(tmp_path / "missing.pt")


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_published_weights_load_wherever_an_align_checkpoint_goes(vit, tmp_path: Path,
                                                                  suffix: str) -> None:
    import numpy as np
    import rasterio
    from affine import Affine

    import geofm
    from geofm.cli import main

    path = tmp_path / f"remoteclip{suffix}"
    if suffix == ".pt":
        torch.save(vit.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))
    model = geofm.load(path)
    tokens = open_clip.tokenizer.SimpleTokenizer()(TEXTS)
    with torch.no_grad():
        expected = vit.encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(model.encode_text(TEXTS), expected, atol=1e-5)
    scene = tmp_path / "rgb.tif"
    with rasterio.open(scene, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint16",
                       crs="EPSG:32633", transform=Affine(10, 0, 500000, 0, -10, 5000000)) as ds:
        ds.write(np.random.default_rng(0).integers(0, 3000, (3, 64, 64), dtype=np.uint16))
        ds.descriptions = ("B04", "B03", "B02")
    out = tmp_path / "harbour.tif"
    assert main(["query", str(path), str(scene), "a harbour", "-o", str(out), "--quiet"]) == 0
    with rasterio.open(out) as ds:
        assert (ds.width, ds.height) == (8, 8) and ds.transform.a == 80.0
