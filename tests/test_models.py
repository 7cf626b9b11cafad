"""Encoders, the model registry, band embeddings and Hierarchical Channel Sampling."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geofm.bands import BAND_SETS, get_band
from geofm.errors import BandError, GeofmError
from geofm.models import (
    ChannelViT,
    ViT,
    create_model,
    hierarchical_channel_sampling,
    list_models,
    sample_band_subset,
)
from geofm.models.band_embedding import NUM_FEATURES, band_features

S1S2 = list(BAND_SETS["s1s2"])
S2_10 = [f"S2.{b}" for b in ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")]
L8_OLI = [f"L8.B{i}" for i in range(2, 8)]


def images(b: int = 2, c: int = 14, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, size, size, generator=torch.Generator().manual_seed(seed))


# --- registry --------------------------------------------------------------------------------


def test_registry_lists_every_size() -> None:
    names = list_models()
    for family in ("vit", "channelvit"):
        for size in ("test", "tiny", "small", "base", "large"):
            assert f"{family}_{size}" in names
    assert list_models("channelvit") == [n for n in names if "channelvit" in n]


def test_unknown_model_is_one_clear_error() -> None:
    with pytest.raises(GeofmError, match=r"unknown model 'vit_huge'.*channelvit_tiny.*vit_tiny"):
        create_model("vit_huge")


def test_created_model_records_how_to_rebuild_it() -> None:
    model = create_model("channelvit_test", bands=["S2.B04", "S2_B03"], depth=1)
    assert isinstance(model, ChannelViT)
    assert model.model_name == "channelvit_test"
    assert model.model_config["bands"] == ["S2.B04", "S2.B03"]
    assert model.model_config["depth"] == 1
    twin = create_model(model.model_name, **model.model_config)
    assert twin.state_dict().keys() == model.state_dict().keys()


def test_tiny_sizes_match_the_configured_widths() -> None:
    vit = create_model("vit_tiny")
    assert (vit.embed_dim, len(vit.blocks), vit.blocks[0].attn.num_heads) == (192, 12, 3)
    assert vit.patch_size == 8


# --- shared encoder behaviour ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["vit_test", "channelvit_test"])
def test_attention_goes_through_sdpa(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    sdpa = F.scaled_dot_product_attention

    def counting(*args: object, **kwargs: object) -> torch.Tensor:
        calls.append(1)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    model = create_model(name)
    model(images(), S1S2)
    assert len(calls) == len(model.blocks) == 2


@pytest.mark.parametrize("name", ["vit_test", "channelvit_test"])
def test_feature_shapes_for_120_and_128_pixel_chips(name: str) -> None:
    model = create_model(name).eval()
    for size, patches in ((120, 225), (128, 256)):
        x = images(size=size)
        assert model(x, S1S2).shape == (2, 32)
        assert model.forward_patch_features(x, S1S2).shape == (2, patches, 32)


@pytest.mark.parametrize("name", ["vit_test", "channelvit_test"])
def test_image_size_must_be_a_multiple_of_the_patch(name: str) -> None:
    with pytest.raises(GeofmError, match="multiple of the patch size 8"):
        create_model(name)(images(size=30), S1S2)


@pytest.mark.parametrize("name", ["vit_test", "channelvit_test"])
def test_forward_tokens_encodes_only_the_kept_tokens(name: str) -> None:
    model = create_model(name).eval()
    tokens = model.tokenize(images(), S1S2)  # [B, T, D]
    keep = torch.tensor([[3, 0, 7], [5, 6, 1]])
    out = model.forward_tokens(tokens, keep)
    manual = model.forward_tokens(torch.stack([tokens[0, keep[0]], tokens[1, keep[1]]]))
    assert out.shape == (2, 3, 32)
    torch.testing.assert_close(out, manual)


@pytest.mark.parametrize("name", ["vit_test", "channelvit_test"])
def test_patchify_round_trips(name: str) -> None:
    model = create_model(name)
    x = images(size=24)
    patches = model.patchify(x)
    assert patches.shape[-1] == model.pixels_per_token(14)
    torch.testing.assert_close(model.unpatchify(patches, 14, (3, 3)), x)


# --- plain ViT -------------------------------------------------------------------------------


def test_vit_reorders_bands_by_name() -> None:
    model = create_model("vit_test").eval()
    x = images()
    perm = torch.randperm(14, generator=torch.Generator().manual_seed(1))
    shuffled = [S1S2[i] for i in perm]
    torch.testing.assert_close(model(x[:, perm], shuffled), model(x, S1S2))


def test_vit_rejects_missing_or_foreign_bands() -> None:
    model = create_model("vit_test")
    assert isinstance(model, ViT)
    with pytest.raises(BandError, match=r"missing \['S1\.VH'\]"):
        model(images(c=13), S1S2[:13])
    with pytest.raises(BandError, match=r"unexpected \['L8\.B4'\]"):
        model(images(), [*S1S2[:13], "L8.B4"])


# --- ChannelViT ------------------------------------------------------------------------------


def test_channelvit_pooled_output_is_invariant_to_band_order() -> None:
    model = create_model("channelvit_test").eval()
    x = images()
    perm = torch.randperm(14, generator=torch.Generator().manual_seed(2))
    base = model(x, S1S2)
    torch.testing.assert_close(model(x[:, perm], [S1S2[i] for i in perm]), base,
                               rtol=1e-4, atol=1e-5)
    # Permuting pixels without their names changes the output: band identity is used.
    assert not torch.allclose(model(x[:, perm], S1S2), base, atol=1e-3)


def test_channelvit_patch_features_average_band_tokens() -> None:
    model = create_model("channelvit_test").eval()
    x = images(c=3)
    bands = ["S2.B04", "S2.B03", "S2.B02"]
    tokens = model.forward_tokens(model.tokenize(x, bands))  # [B, 3·16, D]
    expected = tokens.reshape(2, 3, 16, 32).mean(dim=1)
    torch.testing.assert_close(model.forward_patch_features(x, bands), expected)


def test_s2_model_runs_on_landsat8_by_wavelength() -> None:
    model = create_model("channelvit_test", bands=S2_10).eval()
    x = images(c=len(L8_OLI), size=64)
    out = model(x, L8_OLI)
    assert out.shape == (2, 32)
    assert torch.isfinite(out).all()
    assert torch.isfinite(model.forward_patch_features(x, L8_OLI)).all()
    # Landsat bands have no learned offset: they are embedded from physics alone.
    _, index = model.band_embed._lookup(L8_OLI)
    assert (index == len(S2_10)).all()
    _, index = model.band_embed._lookup(S2_10)
    assert index.tolist() == list(range(len(S2_10)))


@pytest.mark.parametrize("seed", range(5))
def test_landsat8_bands_embed_next_to_their_sentinel2_counterparts(seed: int) -> None:
    torch.manual_seed(seed)
    model = create_model("channelvit_test", bands=S2_10)
    with torch.no_grad():
        s2 = F.normalize(model.band_embed(S2_10), dim=-1)  # [10, D]
        l8 = F.normalize(model.band_embed(L8_OLI), dim=-1)  # [6, D]
    similarity = l8 @ s2.T
    nearest = [S2_10[i] for i in similarity.argmax(dim=1)]
    # Blue, green, red, NIR (narrow), SWIR 1, SWIR 2, by centre wavelength.
    assert nearest == ["S2.B02", "S2.B03", "S2.B04", "S2.B8A", "S2.B11", "S2.B12"]
    assert (similarity.amax(dim=1) > 0.85).all()


def test_per_band_offsets_are_optional() -> None:
    model = create_model("channelvit_test", bands=S2_10, band_offsets=False)
    _, index = model.band_embed._lookup(S2_10)
    assert (index == 0).all() and model.band_embed.offsets.num_embeddings == 1
    rebuilt = create_model("channelvit_test", **model.model_config)
    assert rebuilt.model_config["band_offsets"] is False
    rebuilt.load_state_dict(model.state_dict())
    with_offsets = create_model("channelvit_test", bands=S2_10)
    assert with_offsets.band_embed.offsets.num_embeddings == len(S2_10) + 1


def test_band_features_separate_neighbouring_bands_and_kinds() -> None:
    feats = {n: torch.tensor(band_features(get_band(n))) for n in
             ("S2.B05", "S2.B06", "S1.VV", "S1.VH", "L8.B10")}
    assert all(f.shape == (NUM_FEATURES,) for f in feats.values())
    assert (feats["S2.B05"] - feats["S2.B06"]).abs().max() > 0.5
    assert not torch.equal(feats["S1.VV"], feats["S1.VH"])  # polarisation
    assert feats["L8.B10"][-6] == 1.0  # thermal one-hot


def test_channelvit_rejects_unknown_or_repeated_bands() -> None:
    model = create_model("channelvit_test")
    with pytest.raises(BandError, match="unknown band"):
        model(images(c=2), ["S2.B04", "S9.X"])
    with pytest.raises(BandError, match="given twice"):
        model(images(c=2), ["S2.B04", "S2_B04"])


# --- Hierarchical Channel Sampling ------------------------------------------------------------


def test_hcs_draws_every_band_count_uniformly() -> None:
    num_bands, draws = 14, 14_000
    gen = torch.Generator().manual_seed(0)
    counts = torch.zeros(num_bands + 1)
    band_hits = torch.zeros(num_bands)
    for _ in range(draws):
        keep = sample_band_subset(num_bands, gen)
        assert keep.unique().numel() == keep.numel()  # distinct
        assert torch.equal(keep, keep.sort().values)
        assert int(keep.min()) >= 0 and int(keep.max()) < num_bands
        counts[keep.numel()] += 1
        band_hits[keep] += 1
    assert counts[0] == 0
    expected = draws / num_bands
    chi2 = float(((counts[1:] - expected) ** 2 / expected).sum())
    assert chi2 < 34.53  # chi-square, 13 degrees of freedom, p = 0.001
    # Each band is kept with probability (C + 1) / (2C) when k is uniform.
    torch.testing.assert_close(band_hits / draws, torch.full((num_bands,), 15 / 28),
                               atol=0.02, rtol=0)


def test_hcs_drops_bands_for_channelvit_and_zero_fills_for_vit() -> None:
    x = images()
    gen = torch.Generator().manual_seed(3)
    dropped, bands, keep = hierarchical_channel_sampling(x, S1S2, drop=True, generator=gen)
    assert dropped.shape[1] == len(bands) == keep.numel()
    assert bands == [S1S2[i] for i in keep]
    torch.testing.assert_close(dropped, x[:, keep])
    assert create_model("channelvit_test")(dropped, bands).shape == (2, 32)

    gen = torch.Generator().manual_seed(3)
    filled, bands, keep = hierarchical_channel_sampling(x, S1S2, drop=False, generator=gen)
    assert bands == S1S2 and filled.shape == x.shape
    others = [i for i in range(14) if i not in keep.tolist()]
    assert (filled[:, others] == 0).all()
    torch.testing.assert_close(filled[:, keep], x[:, keep] * 14 / keep.numel())
