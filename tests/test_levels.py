"""Processing level and resolution: the same checks for the CLI and the API."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray
from affine import Affine

from geofm import load
from geofm.card import ModelCard
from geofm.checkpoint import load_checkpoint, save_checkpoint
from geofm.cli import main
from geofm.errors import GeofmError, GeofmWarning
from geofm.levels import detect_levels, merged_levels, store_levels

from .conftest import RGBN, crop, make_checkpoint, write_like
from .conftest import S2_SCENE as SCENE


def _with_levels(path: Path, levels: dict[str, str]) -> Path:
    weights, card = load_checkpoint(path)
    contract = dataclasses.replace(card.contract, processing_levels=levels)
    return save_checkpoint(path, weights, card.with_(contract=contract))


@pytest.fixture(scope="module")
def l2a_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = make_checkpoint(tmp_path_factory.mktemp("lv") / "l2a.safetensors", bands=RGBN)
    return _with_levels(path, {"S2": "L2A"})


@pytest.fixture(scope="module")
def l1c_tile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 64-px crop of the L1C scene, its level in the metadata as the scene has it."""
    path = crop(tmp_path_factory.mktemp("lv") / "tile.tif", 64)
    with rasterio.open(SCENE) as src, rasterio.open(path, "r+") as dst:
        dst.update_tags(LEVEL=src.tags()["LEVEL"])
    return path


def test_levels_from_metadata_stores_and_headers() -> None:
    assert detect_levels(["L1C (TOA reflectance x10000, DN)"]) == {"S2": "L1C"}
    assert detect_levels(["Level-2A"]) == {"S2": "L2A"}
    assert detect_levels(["S2A_MSIL1C_20200101.SAFE"]) == {"S2": "L1C"}
    assert detect_levels(["B02.tif", "Sentinel-2 MSI"]) == {}
    assert detect_levels(["L1C", "L2A"]) == {}  # contradictory: unknown
    assert store_levels({"provenance": {"builder": "reben"}}) == {"S2": "L2A", "S1": "GRD"}
    assert store_levels({"processing_levels": {"MODIS": "L1B"}}) == {"MODIS": "L1B"}
    assert store_levels({"provenance": {"builder": "opticalrs"}}) == {}
    assert merged_levels([{"S2": "L2A"}, {"S2": "L1C", "MODIS": "L1B"}]) == {"MODIS": "L1B"}
    # Checkpoints written before levels were recorded: known by their reBEN store.
    old = {"format": "geofm-checkpoint", "format_version": 1, "kind": "pretrain",
           "model": {"name": "vit_test"}, "bands": ["S2.B02"]}
    levels = [ModelCard.from_header({**old, "data": data}).contract.processing_levels
              for data in ({"store": "outputs/reben_mini.zarr"}, {"stores": [{"store": "a"}]})]
    assert levels[0]["S2"] == "L2A" and levels[1] == {}


def test_built_reben_store_and_its_checkpoint_record_the_level(
        reben_store: Path, tiny_pretrained: Callable[..., Path]) -> None:
    from geofm.checkpoint import read_card
    from geofm.io.store import open_store

    assert open_store(reben_store).attrs["processing_levels"] == {"S2": "L2A", "S1": "GRD"}
    ckpt = tiny_pretrained("vit_test", 1)
    assert read_card(ckpt).contract.processing_levels == {"S2": "L2A", "S1": "GRD"}


def test_api_warns_on_l1c_input_for_an_l2a_model_and_strict_refuses(
        l2a_model: Path, l1c_tile: Path) -> None:
    model = load(l2a_model)
    da = rioxarray.open_rasterio(l1c_tile)
    for x in (l1c_tile, da):
        with pytest.warns(GeofmWarning, match=r"trained on Sentinel-2 L2A .* input is L1C"):
            model.predict(x)
        with pytest.raises(GeofmError, match=r"L2A .* input is L1C .* drop --strict"):
            model.predict(x, strict=True)
    with pytest.warns(GeofmWarning, match="L2A"):
        model.embed(da)


def test_the_reverse_l2a_input_for_an_l1c_model(tmp_path: Path, l1c_tile: Path) -> None:
    model = load(_with_levels(make_checkpoint(tmp_path / "l1c.safetensors", bands=RGBN),
                              {"S2": "L1C"}))
    with rasterio.open(l1c_tile) as src:
        data = src.read()
    l2a = write_like(l1c_tile, tmp_path / "S2B_MSIL2A_tile.tif", data)
    with pytest.warns(GeofmWarning, match=r"trained on Sentinel-2 L1C .* input is L2A"):
        model.predict(l2a)


def test_matching_or_unknown_levels_are_silent(tmp_path: Path, l1c_tile: Path) -> None:
    unknown = load(make_checkpoint(tmp_path / "plain.safetensors", bands=RGBN))
    same = load(_with_levels(make_checkpoint(tmp_path / "same.safetensors", bands=RGBN),
                             {"S2": "L1C"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        unknown.predict(l1c_tile)
        same.predict(l1c_tile)


def test_api_dataarray_at_another_resolution_warns_like_the_cli(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = make_checkpoint(tmp_path / "m.safetensors", bands=RGBN)  # trained at 10 m
    with rasterio.open(SCENE) as src:
        data = src.read(out_shape=(13, 64, 64))
        transform = src.transform @ Affine.scale(2)
    coarse = write_like(SCENE, tmp_path / "s2_20m.tif", data, transform=transform)
    model = load(path)
    with pytest.warns(GeofmWarning, match="20 m but the model was trained at 10 m"):
        model.predict(rioxarray.open_rasterio(coarse))
    with pytest.raises(GeofmError, match="20 m"):
        model.predict(rioxarray.open_rasterio(coarse), strict=True)
    # The CLI gives the same message as one clean line.
    assert main(["predict", str(path), str(coarse), "-o", str(tmp_path / "o.tif"),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [f"geofm: warning: {coarse}: the input's pixels are 20 m but the model "
                     "was trained at 10 m; warp it first (--resample-to-model-gsd, "
                     "resample_to_model_gsd=True, or DataArray.rio.reproject(resolution=10))"]
    assert "UserWarning" not in err and "warnings.warn" not in err


def test_cli_level_warning_is_one_line_and_strict_exits_non_zero(
        l2a_model: Path, l1c_tile: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "map.tif"
    assert main(["predict", str(l2a_model), str(l1c_tile), "-o", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("geofm: warning: ")
    assert "L2A" in err[0] and "L1C" in err[0]
    strict = tmp_path / "strict.tif"
    assert main(["predict", str(l2a_model), str(l1c_tile), "-o", str(strict), "--quiet",
                 "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("geofm: error: ") and "--strict" in err[-1]
    assert not strict.exists()
    assert np.isfinite(rasterio.open(out).read(1)).all()
