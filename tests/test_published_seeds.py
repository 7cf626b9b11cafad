"""The seeds' releases (SelectiveMAE, ChannelViT, RemoteCLIP) through geofm's published path.

Each release is written with random weights in its own file format (key names, wrapper, dtype),
read by :func:`geofm.published.release_file.read_release`, converted by the card's ``convert``
(every key consumed) into the card's architecture, and run on a real Sentinel-2 L1C chip against
the reference forward of :mod:`tests.published_seeds_refs` (≤ 1e-4).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from geofm.errors import BandError, GeofmError
from geofm.models.registry import create_model
from geofm.published import (
    PUBLISHED,
    PublishedEncoder,
    PublishedSpec,
    channelvit_release,
    remoteclip,
    selectivemae,
)
from geofm.published.release_file import read_release

from .published_seeds_refs import (
    TINY_CLIP_CFG,
    official_channelvit_forward,
    remoteclip_release,
    s2_chip,
    selectivemae_release,
    standardise,
    timm_mae_reference,
    true_colour_8bit,
)
from .published_seeds_refs import (
    channelvit_release as cvit_release_state,
)

TOL = 1e-4
RGB_S2 = ("B04", "B03", "B02")
S2_NAMES = ("S2.B04", "S2.B03", "S2.B02")


def load_release(spec: PublishedSpec, path: Path, **overrides: object) -> torch.nn.Module:
    """What ``--init NAME --weights PATH`` does: build the card's model, convert, load strict."""
    model = create_model(spec.architecture, **{**spec.config, **overrides})
    state = spec.convert(read_release(path))
    own = model.state_dict()
    assert set(state) == set(own), (set(own) ^ set(state))
    model.load_state_dict(state, strict=True)
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a - b).abs().max())


# --- the catalogue ----------------------------------------------------------------------------

def test_seed_cards_are_registered_with_registry_bands() -> None:
    from geofm.bands import get_band

    for name in ("selectivemae_vitb", "channelvit_so2sat_random", "channelvit_so2sat_hard",
                 "remoteclip_vitb32", "remoteclip_vitl14"):
        spec = PUBLISHED[name]
        assert all(get_band(b).name == b for b in spec.bands)
        assert spec.weights_url.startswith("https://") and spec.licence
    assert PUBLISHED["selectivemae_vitb"].mean[0] == pytest.approx(255 * 0.485)
    assert PUBLISHED["channelvit_so2sat_hard"].input_units == "reflectance"
    assert PUBLISHED["channelvit_so2sat_hard"].flexible


# --- SelectiveMAE -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mae_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    release = selectivemae_release(depth=2, decoder_depth=1)
    path = tmp_path_factory.mktemp("mae") / "selectivemae_vitb_opticalrs13m.pth"
    torch.save({"model": release}, path)  # MAE's {"model": state_dict} wrapper
    return path, release


@pytest.mark.slow
def test_selectivemae_matches_timm_on_a_sentinel2_chip(mae_file) -> None:
    path, release = mae_file
    spec = PUBLISHED["selectivemae_vitb"]
    model = load_release(spec, path, depth=2)
    assert isinstance(model, PublishedEncoder) and len(model.blocks) == 2
    x = standardise(true_colour_8bit(s2_chip(RGB_S2, 224)), spec.mean, spec.std)  # [2, 3, 224²]
    reference = timm_mae_reference(release, depth=2)
    with torch.no_grad():
        ref_tokens = reference.forward_features(x)  # [2, 1 + 196, 768]
        pooled = model.forward_features(x, S2_NAMES)  # Sentinel-2's red, green, blue
        patches = model.forward_patch_features(x, S2_NAMES)
    assert max_diff(pooled, ref_tokens[:, 0]) <= TOL
    assert max_diff(patches, ref_tokens[:, 1:]) <= TOL
    assert patches.shape == (2, 196, 768)
    # bands are put in the card's order by name or colour
    with torch.no_grad():
        flipped = model.forward_features(x.flip(1), tuple(reversed(spec.bands)))
        assert max_diff(flipped, pooled) <= TOL
        flipped = model.forward_features(x.flip(1), tuple(reversed(S2_NAMES)))
        assert max_diff(flipped, pooled) <= TOL
    with pytest.raises(BandError, match="needs the blue band"):
        model.forward_features(x, ("S2.B04", "S2.B03", "S2.B08"))


def test_selectivemae_other_tile_sizes_use_timm_resampling(mae_file) -> None:
    path, _ = mae_file
    spec = PUBLISHED["selectivemae_vitb"]
    model = load_release(spec, path, depth=2)
    x = standardise(true_colour_8bit(s2_chip(RGB_S2, 128, batch=1)), spec.mean, spec.std)
    with torch.no_grad():
        assert model.forward_patch_features(x, spec.bands).shape == (1, 64, 768)
    with pytest.raises(GeofmError, match="multiple of the patch size 16"):
        model.forward_features(x[..., :120, :120], spec.bands)


def test_selectivemae_unknown_key_and_pickle_are_refused_in_one_line(mae_file, tmp_path) -> None:
    _, release = mae_file
    spec = PUBLISHED["selectivemae_vitb"]
    bad = tmp_path / "extra.pth"
    torch.save({"model": {**release, "head.weight": torch.zeros(10, 768)}}, bad)
    with pytest.raises(GeofmError, match=r"1 key\(s\) this model does not use \(head.weight\)"
                       ) as err:
        spec.convert(read_release(bad))
    assert "\n" not in str(err.value)
    # A training checkpoint with its argparse namespace (MAE's misc.save_model) is pickle
    evil = tmp_path / "checkpoint-799.pth"
    import argparse

    torch.save({"model": release, "args": argparse.Namespace(model="mae_vit_base_patch16")},
               evil)
    with pytest.raises(GeofmError) as err:
        read_release(evil)
    line = str(err.value)
    assert "nothing in it was run" in line and "\n" not in line
    assert "weights_only=False" not in line


def test_a_pickle_payload_is_refused_without_running(tmp_path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "so2sat_channelvit_small_p8_with_hcs_random_split_supervised.pth"
    path.write_bytes(pickle.dumps({"cls_token": Payload()}, protocol=2))
    with pytest.raises(GeofmError) as err:
        read_release(path)
    assert not marker.exists()
    assert "\n" not in str(err.value) and "nothing in it was run" in str(err.value)


# --- ChannelViT -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cvit_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    release = cvit_release_state(depth=2)
    path = tmp_path_factory.mktemp("cvit") / \
        "so2sat_channelvit_small_p8_with_hcs_random_split_supervised.pth"
    torch.save(release, path)  # a bare state dict, as hubconf.py loads it
    return path, release


def cvit_input(spec: PublishedSpec, bands: tuple[str, ...], size: int) -> torch.Tensor:
    """The chip as So2Sat reflectance, standardised with the card's statistics."""
    rows = [spec.bands.index(b) for b in bands]
    mean = tuple(spec.mean[r] for r in rows)
    std = tuple(spec.std[r] for r in rows)
    return standardise(s2_chip(bands, size) / 10_000.0, mean, std)


@pytest.mark.parametrize("size", [32, 64])
def test_channelvit_release_matches_the_official_forward(cvit_file, size: int) -> None:
    path, release = cvit_file
    spec = PUBLISHED["channelvit_so2sat_random"]
    model = load_release(spec, path, depth=2)
    x = cvit_input(spec, spec.bands, size)  # [2, 10, size, size]
    rows = list(channelvit_release.SO2SAT_S2_ROWS)
    with torch.no_grad():
        ref = official_channelvit_forward(release, x, rows, num_heads=6)  # [2, 1 + 10·N, D]
        pooled = model.forward_features(x, spec.bands)
        patches = model.forward_patch_features(x, spec.bands)
    n = (size // 8) ** 2
    assert max_diff(pooled, ref[:, 0]) <= TOL
    assert max_diff(patches, ref[:, 1:].reshape(2, 10, n, -1).mean(1)) <= TOL


def test_channelvit_release_takes_a_band_subset_in_any_order(cvit_file) -> None:
    path, release = cvit_file
    spec = PUBLISHED["channelvit_so2sat_hard"]
    model = load_release(spec, path, depth=2)
    bands = ("S2.B08", "S2.B04", "S2.B03", "S2.B02")
    x = cvit_input(spec, bands, 32)
    rows = [channelvit_release.SO2SAT_S2_ROWS[spec.bands.index(b)] for b in bands]
    with torch.no_grad():
        ref = official_channelvit_forward(release, x, rows, num_heads=6)
        assert max_diff(model.forward_features(x, bands), ref[:, 0]) <= TOL
    with pytest.raises(BandError, match=r"learned embeddings for bands .* only; got S1\.VV"):
        model.forward_features(torch.zeros(1, 1, 32, 32), ["S1.VV"])


def test_channelvit_release_refuses_an_unknown_key_in_one_line(cvit_file) -> None:
    _, release = cvit_file
    with pytest.raises(GeofmError, match=r"does not use \(head.weight\)") as err:
        channelvit_release.convert_channelvit({**release, "head.weight": torch.zeros(17, 384)})
    assert "\n" not in str(err.value)


def test_channelvit_single_band_at_the_native_grid_follows_the_official_shortcut() -> None:
    release = cvit_release_state(depth=1, dim=32, img=32)
    model = create_model("channelvit_release_small", depth=1, embed_dim=32, num_heads=2,
                         img_size=32).eval()
    model.load_state_dict(channelvit_release.convert_channelvit(release), strict=True)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ref = official_channelvit_forward(release, x, [10], num_heads=2)
        assert max_diff(model.forward_features(x, ["S2.B04"]), ref[:, 0]) <= TOL


def test_channelvit_non_hcs_release_layout_loads(tmp_path) -> None:
    release = cvit_release_state(depth=1, in_chans=3, dim=32, hcs=False)
    model = create_model("channelvit_release_small", depth=1, embed_dim=32, num_heads=2,
                         bands=["S2.B04", "S2.B03", "S2.B02"], channel_rows=None,
                         num_channel_rows=None).eval()
    path = tmp_path / "imagenet_channelvit_small_p16_DINO.safetensors"
    save_file(release, str(path))
    model.load_state_dict(channelvit_release.convert_channelvit(read_release(path)), strict=True)
    x = standardise(true_colour_8bit(s2_chip(RGB_S2, 32)), (0.0,) * 3, (255.0,) * 3)
    with torch.no_grad():
        ref = official_channelvit_forward(release, x, [0, 1, 2], num_heads=2)
        assert max_diff(model.forward_features(x, ["S2.B04", "S2.B03", "S2.B02"]),
                        ref[:, 0]) <= TOL


def test_channelvit_release_options_round_trip_and_default_is_unchanged() -> None:
    model = create_model("channelvit_release_small", depth=1, embed_dim=32, num_heads=2)
    twin = create_model(model.model_name, **model.model_config)
    assert twin.model_config == model.model_config
    assert model.model_config["channel_rows"] == list(range(8, 18))
    assert model.channel_embed.shape == (18, 32) and model.band_embed is None
    default = create_model("channelvit_test")
    assert "channel_embed" not in default.model_config and "pos_interp" not in default.model_config
    assert default.channel_embed is None and default.band_embed is not None
    with pytest.raises(GeofmError, match="channel_rows"):
        create_model("channelvit_test", channel_embed="learned", channel_rows=[0, 0] * 7)


# --- RemoteCLIP -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_file(tmp_path_factory: pytest.TempPathFactory):
    clip, state = remoteclip_release(TINY_CLIP_CFG)
    path = tmp_path_factory.mktemp("clip") / "RemoteCLIP-ViT-B-32.pt"
    torch.save(state, path)
    return path, clip


def test_remoteclip_image_tower_matches_open_clip(clip_file) -> None:
    path, clip = clip_file
    spec = PUBLISHED["remoteclip_vitb32"]
    model = load_release(spec, path, model_cfg=TINY_CLIP_CFG)
    x = standardise(true_colour_8bit(s2_chip(RGB_S2, 224)), spec.mean, spec.std)
    with torch.no_grad():
        ours = model.forward_features(x, S2_NAMES)
        theirs = clip.encode_image(standardise(true_colour_8bit(s2_chip(RGB_S2, 224)) / 255.0,
                                               remoteclip.CLIP_MEAN, remoteclip.CLIP_STD))
        assert max_diff(ours, theirs) <= TOL
        assert model.forward_patch_features(x, spec.bands).shape == (2, 49, 32)
    assert len(model.blocks) == 2


def test_remoteclip_full_model_still_loads_as_before(clip_file) -> None:
    from geofm.models.openclip import RGB_BANDS, load_open_clip

    path, clip = clip_file
    model, card = load_open_clip(path)
    assert card.bands == tuple(RGB_BANDS) and card.provenance.release["stretch"] == 3000.0
    dn = s2_chip(RGB_S2, 224)
    x = standardise(dn, card.contract.mean, card.contract.std)
    with torch.no_grad():
        ours = model.encode_image(x, RGB_BANDS)
        theirs = clip.encode_image(standardise(true_colour_8bit(dn) / 255.0,
                                               remoteclip.CLIP_MEAN, remoteclip.CLIP_STD),
                                   normalize=True)
    assert max_diff(ours, theirs) <= TOL


def test_remoteclip_text_keys_are_dropped_and_others_refused(clip_file) -> None:
    path, _ = clip_file
    state = read_release(path)
    converted = remoteclip.convert_open_clip_visual(state)
    assert all(k.startswith("visual.") for k in converted)
    assert len(converted) == sum(k.startswith("visual.") for k in state)
    with pytest.raises(GeofmError, match=r"does not use \(adapter.weight\)"):
        remoteclip.convert_open_clip_visual({**state, "adapter.weight": torch.zeros(2)})


def test_selectivemae_factory_rebuilds_from_model_config() -> None:
    model = create_model("selectivemae_vit_base", depth=1, embed_dim=64, num_heads=2)
    twin = create_model(model.model_name, **model.model_config)
    assert twin.model_config == model.model_config
    converted = selectivemae.convert_mae({"cls_token": torch.zeros(1, 1, 64),
                                          "decoder_pred.bias": torch.zeros(3)})
    assert list(converted) == ["vit.cls_token"]


@pytest.mark.slow
def test_channelvit_release_layout_exports_to_onnx() -> None:
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import contextlib
    import io
    import warnings

    model = create_model("channelvit_release_small", depth=1, embed_dim=32, num_heads=2).eval()
    bands = ["S2.B04", "S2.B03", "S2.B02", "S2.B08"]

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, image: torch.Tensor) -> torch.Tensor:
            return self.model.forward_features(image, bands)

    x = s2_chip(("B04", "B03", "B02", "B08"), 32) / 10_000.0  # [2, 4, 32, 32]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(Pooled(), (x,), dynamo=True, opset_version=18,
                                    input_names=["image"], output_names=["features"])
    session = ort.InferenceSession(program.model_proto.SerializeToString())
    out = torch.from_numpy(session.run(None, {"image": x.numpy()})[0])
    with torch.no_grad():
        assert max_diff(out, Pooled()(x)) <= TOL
