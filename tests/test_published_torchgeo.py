"""torchgeo's published encoders through geofm: release files load with every key consumed,
and geofm's features on a real Sentinel-2 chip equal torchgeo's own model loaded the torchgeo
way (the reference modules in ``scripts/published_refs/``)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from geofm.errors import GeofmError
from geofm.models.registry import create_model
from geofm.published import PUBLISHED, load_release

REFS = Path(__file__).resolve().parents[1] / "scripts" / "published_refs"
TOL = 1e-4


def _ref(family: str) -> ModuleType:
    path = REFS / f"{family}.py"
    spec = importlib.util.spec_from_file_location(f"published_refs_{family}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ssl4eo_vits16_mae", "ssl4eo_vits16_dino",
                                  "ssl4eo_vits16_moco"])
def test_ssl4eo_matches_torchgeo(name: str) -> None:
    diff, _, _ = _ref("ssl4eo").check(name, batch=2, repeats=0)
    assert diff <= TOL


@pytest.mark.slow
def test_dofa_base_matches_torchgeo() -> None:
    diff, _, _ = _ref("dofa").check("dofa_base", 2, repeats=0)
    assert diff <= TOL


@pytest.mark.slow
def test_dofa_base_on_a_band_subset_matches_torchgeo() -> None:
    # Channel-flexible: four bands in another order get their own wavelengths.
    diff, _, _ = _ref("dofa").check("dofa_base", 1, ("S2.B08", "S2.B04", "S2.B03", "S2.B02"),
                                 repeats=0)
    assert diff <= TOL


@pytest.mark.slow
def test_dofa_large_matches_torchgeo() -> None:
    diff, _, _ = _ref("dofa").check("dofa_large", 1, repeats=0)
    assert diff <= TOL


@pytest.mark.slow
def test_panopticon_matches_torchgeo() -> None:
    diff, _, _ = _ref("panopticon").check(batch=1, repeats=0)
    assert diff <= TOL


@pytest.mark.slow
def test_panopticon_ids_and_a_band_subset_match_torchgeo() -> None:
    # Optical bands travel as their wavelength in nm, S1 VV/VH as Panopticon's SAR ids.
    ref = _ref("panopticon")
    spec = PUBLISHED["panopticon_base"]
    assert ref.channel_ids(["S2.B04", "S1.VV", "S1.VH"]) == [
        pytest.approx(664.6), -1.0, -2.0]
    diff, _, _ = ref.check(batch=1, repeats=0, bands=("S2.B04", "S2.B03", "S2.B02"))
    assert diff <= TOL and spec.flexible


@pytest.mark.slow
def test_copernicusfm_matches_torchgeo() -> None:
    diff, _, _ = _ref("copernicusfm").check(batch=2, size=64, repeats=0)
    assert diff <= TOL


@pytest.mark.slow
def test_croma_optical_matches_torchgeo() -> None:
    diff, _, _ = _ref("croma").check(batch=2, repeats=0)
    assert diff <= TOL


@pytest.mark.slow
def test_scalemae_matches_torchgeo_at_a_reduced_tile() -> None:
    diff, _, _ = _ref("scalemae").check(batch=1, size=64, repeats=0)
    assert diff <= TOL


@pytest.mark.slow
def test_croma_release_drops_only_the_sar_and_joint_encoders(tmp_path: Path) -> None:
    state = _ref("croma").release_state()
    state["s2_decoder"] = {"weight": torch.zeros(2)}
    path = tmp_path / PUBLISHED["croma_base"].weights_file
    torch.save(state, path)
    with pytest.raises(GeofmError, match=r"s2_decoder\.weight"):
        load_release(PUBLISHED["croma_base"], path)


def _save(state: dict[str, torch.Tensor], tmp_path: Path, name: str) -> Path:
    path = tmp_path / PUBLISHED[name].weights_file
    torch.save(state, path)
    return path


@pytest.mark.slow
def test_the_features_change_with_the_weights(tmp_path: Path) -> None:
    # A guard on the comparison itself: other weights give other features.
    ssl4eo = _ref("ssl4eo")
    x = torch.randn(1, 13, 32, 32)
    bands = PUBLISHED["ssl4eo_vits16_mae"].bands
    a = load_release(PUBLISHED["ssl4eo_vits16_mae"],
                     _save(ssl4eo.release_state(), tmp_path, "ssl4eo_vits16_mae"))
    state = ssl4eo.release_state()
    state["blocks.11.mlp.fc2.bias"] += 1.0
    b = load_release(PUBLISHED["ssl4eo_vits16_mae"],
                     _save(state, tmp_path, "ssl4eo_vits16_mae"))
    with torch.no_grad():
        assert (a(x, bands) - b(x, bands)).abs().max() > 1e-3


@pytest.mark.slow
def test_an_unknown_key_is_refused_in_one_line(tmp_path: Path) -> None:
    state = _ref("ssl4eo").release_state()
    state["decoder_embed.weight"] = torch.zeros(2, 2)
    path = _save(state, tmp_path, "ssl4eo_vits16_dino")
    with pytest.raises(GeofmError, match=r"decoder_embed\.weight") as err:
        load_release(PUBLISHED["ssl4eo_vits16_dino"], path)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_a_missing_key_is_refused_in_one_line(tmp_path: Path) -> None:
    state = _ref("dofa").release_state("dofa_base")
    del state["blocks.3.attn.qkv.weight"]
    path = _save(state, tmp_path, "dofa_base")
    with pytest.raises(GeofmError, match=r"blocks\.3\.attn\.qkv\.weight") as err:
        load_release(PUBLISHED["dofa_base"], path)
    assert "\n" not in str(err.value)


def test_a_pickle_payload_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "dofa_base_patch16_224-a0275954.pth"
    torch.save({"state_dict": {"cls_token": torch.zeros(1)}, "args": argparse.Namespace(lr=1)},
               path)
    with pytest.raises(GeofmError, match="pickled code or objects") as err:
        load_release(PUBLISHED["dofa_base"], path)
    line = str(err.value)
    assert "\n" not in line and "weights_only=False" not in line


def test_a_missing_file_names_it_its_url_and_where_to_put_it(tmp_path: Path) -> None:
    spec = PUBLISHED["dofa_base"]
    where = tmp_path / "weights" / spec.weights_file
    with pytest.raises(GeofmError) as err:
        load_release(spec, where)
    line = str(err.value)
    assert spec.weights_file in line and spec.weights_url in line and str(where) in line
    assert "\n" not in line


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ssl4eo_vits16_mae", "dofa_base", "panopticon_base",
                                  "copernicusfm_base", "croma_base"])
def test_create_model_rebuilds_from_the_json_config(name: str) -> None:
    spec = PUBLISHED[name]
    model = create_model(spec.architecture, **spec.config)
    config = json.loads(json.dumps(model.model_config))
    again = create_model(spec.architecture, **config)
    assert again.state_dict().keys() == model.state_dict().keys()
    size = spec.config.get("img_size", 0) if name == "panopticon_base" else 4 * spec.patch_size
    x = torch.zeros(1, len(spec.bands), size, size)
    n = (size // spec.patch_size) ** 2
    assert model.forward_patch_features(x, spec.bands).shape == (1, n, model.embed_dim)
    assert len(list(model.blocks)) in (12, 24)


def test_every_spec_names_its_torchgeo_enum_url_and_band_contract() -> None:
    import torchgeo.models as tgm

    for spec in PUBLISHED.values():
        if not spec.torchgeo_weights:
            continue
        cls, member = spec.torchgeo_weights.split(".")
        weights = getattr(getattr(tgm, cls), member)
        assert weights.url == spec.weights_url, spec.name
        assert spec.weights_url.endswith(spec.weights_file), spec.name
        if "bands" in weights.meta:  # torchgeo's names: "B1", "B8a", ...
            ours = [b.split(".")[1].replace("B0", "B").upper() for b in spec.bands]
            assert ours == [b.upper() for b in weights.meta["bands"]], spec.name


def test_ssl4eo_card_divides_by_10000_as_torchgeo_transforms_do() -> None:
    from torchgeo.models import ViTSmall16_Weights

    x = torch.rand(1, 13, 224, 224) * 5000
    want = ViTSmall16_Weights.SENTINEL2_ALL_MAE.transforms[-1](x.clone())
    spec = PUBLISHED["ssl4eo_vits16_mae"]
    got = (x - torch.tensor(spec.mean).view(1, -1, 1, 1)) / torch.tensor(spec.std).view(
        1, -1, 1, 1)
    assert torch.allclose(got, want)


def test_dofa_refuses_a_band_without_a_wavelength() -> None:
    model = create_model("dofa_vit_base_patch16")
    with pytest.raises(GeofmError, match=r"S1\.VV"):
        model(torch.zeros(1, 2, 32, 32), ["S2.B04", "S1.VV"])


@pytest.mark.slow
def test_importing_geofm_and_the_catalogue_does_not_import_torchgeo() -> None:
    code = ("import sys, geofm, geofm.published as p; assert p.PUBLISHED; "
            "print('torchgeo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    assert out.stdout.strip() == "False"
