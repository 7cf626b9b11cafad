"""The analyst's API: geofm.load, Model.predict / embed on paths and (dask) DataArrays."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rioxarray
import torch
import xarray as xr
from affine import Affine

import geofm
import geofm.errors
from geofm.api import Model, load
from geofm.bands import bands_info
from geofm.card import ModelCard
from geofm.checkpoint import save_checkpoint
from geofm.errors import BandError, GeofmError
from geofm.models import create_model

from .conftest import REPO, RGBN, S2_SCENE, crop, echo_predictor, make_checkpoint, write_like


@pytest.fixture(scope="module")
def rgbn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("api") / "rgbn.safetensors", bands=RGBN)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return crop(tmp_path_factory.mktemp("api") / "small.tif", 128)


def test_model_describes_itself(rgbn: Path) -> None:
    model = load(rgbn)
    assert model.task == "segmentation"
    assert model.bands == RGBN
    assert model.classes == [f"class {i}" for i in range(5)]
    assert model.tile_size == (64, 64) and model.gsd_m == 10.0
    assert repr(model) == "Model(channelvit_test, segmentation, 4 bands, 5 classes)"


def test_predict_on_path_numpy_and_dask_dataarrays_agree(small: Path, tmp_path: Path) -> None:
    model = Model(echo_predictor("segmentation", 4))
    from_path = model.predict(small)
    eager = rioxarray.open_rasterio(small)
    lazy = rioxarray.open_rasterio(small, chunks={"x": 48, "y": 80})
    assert lazy.chunks is not None
    for result in (from_path, model.predict(eager), model.predict(lazy)):
        assert result.dims == ("y", "x") and result.dtype == np.uint8
        assert result.rio.crs == eager.rio.crs
        assert result.rio.transform() == eager.rio.transform()
        assert np.array_equal(result.x.values, eager.x.values)
        assert result.rio.nodata == 255
        assert result.attrs["classes"] == model.classes
        np.testing.assert_array_equal(result.values, from_path.values)
    out = tmp_path / "classes.tif"
    from_path.rio.to_raster(out)
    with rasterio.open(out) as ds, rasterio.open(small) as src:
        assert (ds.crs, ds.transform, ds.shape) == (src.crs, src.transform, src.shape)
        np.testing.assert_array_equal(ds.read(1), from_path.values)
    # The same numbers as the GeoTIFF writer.
    model.predict_raster(small, tmp_path / "cog.tif", progress=False)
    with rasterio.open(tmp_path / "cog.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), from_path.values)


def test_probabilities_and_nodata(small: Path) -> None:
    da = rioxarray.open_rasterio(small, masked=True)  # float with NaN for nodata
    da[:, :20, :30] = np.nan
    model = Model(echo_predictor("segmentation", 4))
    probs = model.predict(da, probabilities=True)
    assert probs.dims == ("band", "y", "x") and list(probs.band.values) == model.classes
    assert probs.dtype == np.float32 and probs.rio.crs == da.rio.crs
    assert np.isnan(probs.values[:, :20, :30]).all()
    assert np.allclose(probs.values[:, 20:, 30:].sum(axis=0), 1.0, atol=1e-5)
    classes = model.predict(da)
    assert (classes.values[:20, :30] == 255).all() and (classes.values[20:, 30:] < 4).all()


def test_embed_gives_patch_grid(rgbn: Path, small: Path) -> None:
    da = rioxarray.open_rasterio(small, chunks={"x": 64, "y": 64})
    emb = load(rgbn).embed(da, tile=64, overlap=16)
    assert emb.dims == ("band", "y", "x") and emb.shape == (32, 16, 16)
    assert emb.rio.transform() == da.rio.transform() @ Affine.scale(8)
    assert emb.rio.crs == da.rio.crs and np.isfinite(emb.values).all()


def test_bands_by_name_from_attrs_coords_or_argument(small: Path) -> None:
    model = Model(echo_predictor())
    da = rioxarray.open_rasterio(small)
    reference = model.predict(da).values
    nameless = da.copy()
    nameless.attrs.pop("long_name")
    with pytest.raises(BandError, match="no names"):
        model.predict(nameless)
    named = model.predict(nameless, bands="s2")
    np.testing.assert_array_equal(named.values, reference)
    # A Dataset with one variable per band (band_as_variable) works by variable name.
    four = da.isel(band=[7, 3, 2, 1]).assign_coords(band=["B08", "B04", "B03", "B02"])
    ds = four.to_dataset("band")
    np.testing.assert_array_equal(model.predict(ds).values, reference)


def test_pretrained_encoder_embeds_but_does_not_predict(small: Path, tmp_path: Path) -> None:
    encoder = create_model("channelvit_test", bands=RGBN)
    header = {"kind": "pretrain", "model": {"name": "channelvit_test",
                                            "config": encoder.model_config},
              "bands": RGBN, "band_info": bands_info(RGBN),
              "normalization": {"mean": [1000.0] * 4, "std": [500.0] * 4}}
    path = save_checkpoint(tmp_path / "pre.safetensors",
                           {f"encoder.{k}": v for k, v in encoder.state_dict().items()},
                           ModelCard.from_header(header))
    model = load(path)
    assert model.task is None and repr(model) == "Model(channelvit_test, encoder, 4 bands)"
    with pytest.raises(GeofmError, match="embed"):
        model.predict(small)
    emb = model.embed(small, tile=128, overlap=0)
    assert emb.shape == (32, 16, 16)


def test_bad_inputs(tmp_path: Path) -> None:
    model = Model(echo_predictor())
    with pytest.raises(GeofmError, match="not found"):
        model.predict(tmp_path / "missing.tif")
    with pytest.raises(GeofmError, match="cannot predict on a ndarray"):
        model.predict(np.zeros((4, 8, 8)))  # type: ignore[arg-type]
    with pytest.raises(GeofmError, match="checkpoint not found"):
        load(tmp_path / "missing.safetensors")
    empty = xr.DataArray(np.full((4, 64, 64), np.nan, np.float32), dims=("band", "y", "x"),
                         coords={"band": ["B02", "B03", "B04", "B08"]})
    with pytest.raises(GeofmError, match="every input pixel is nodata"), \
            pytest.warns(UserWarning, match="no CRS"):
        model.predict(empty)


def test_docstring_examples_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import doctest

    import geofm.api

    monkeypatch.chdir(REPO)
    result = doctest.testmod(geofm.api, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 6 and result.failed == 0


@pytest.mark.slow
def test_walkthrough_runs(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/analyst_walkthrough.md, every Python cell in order (on a crop of the scene)."""
    ckpt = make_checkpoint(tmp_path / "finetune.safetensors", bands=RGBN, classes=3)
    aligned = make_aligned(tmp_path / "align.safetensors", bands=RGBN)
    text = (REPO / "docs" / "analyst_walkthrough.md").read_text()
    cells = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(cells) >= 5
    code = "\n".join(cells)
    for path, replacement in (("runs/finetune/finetune.safetensors", ckpt),
                              ("runs/align/align.safetensors", aligned),
                              ("datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif", small)):
        assert f'"{path}"' in code
        code = code.replace(f'"{path}"', repr(str(replacement)))
    assert geofm.load is load  # the walkthrough calls the package-level API
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "analyst_walkthrough.md", "exec"), {"__name__": "walkthrough"})
    assert {"landcover.tif", "landcover.qml", "landcover.gpkg", "confidence.tif",
            "arable.tif", "arable.qml"} <= set(os.listdir(tmp_path))


def make_aligned(path: Path, bands: list[str]) -> Path:
    """An untrained image–text checkpoint (ChannelViT test size + the bundled text tower)."""
    from geofm.card import BandContract
    from geofm.models.align import AlignModel, aligned_card, save_aligned
    from geofm.models.text import TextTower

    torch.manual_seed(0)
    encoder = create_model("channelvit_test", bands=bands)
    model = AlignModel(encoder, TextTower.from_source(), embed_dim=16)
    contract = BandContract(tuple(bands), (1200.0,) * len(bands), (600.0,) * len(bands),
                            flexible=True, info=tuple(bands_info(bands)))
    return save_aligned(path, model, aligned_card(
        model, contract, patch_size=encoder.patch_size, tile_size=(64, 64), gsd_m=10.0,
        templates=["a satellite image of {}."]))


# --- one pipeline: the API and the command line give the same answers ------------------------


def _three_ways(ckpt: Path, raster: Path, tmp_path: Path, *args: str, **kwargs: object
                ) -> list[tuple[str, object]]:
    """Predict ``raster`` from a path, from a DataArray, and with ``geofm predict``: each
    way's result or the error it raised."""
    from geofm.cli import main

    model = load(ckpt)
    results: list[tuple[str, object]] = []
    for name, x in (("path", raster), ("dataarray", rioxarray.open_rasterio(raster))):
        try:
            results.append((name, model.predict(x, **kwargs)))  # type: ignore[arg-type]
        except GeofmError as e:
            results.append((name, e))
    out = tmp_path / f"cli_{len(list(tmp_path.iterdir()))}.tif"
    code = main(["predict", str(ckpt), str(raster), "-o", str(out), "--quiet",
                 *args])
    results.append(("cli", out if code == 0 else code))
    return results


def test_all_nodata_gets_the_same_hint_on_every_path(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_checkpoint(tmp_path / "m.safetensors", bands=RGBN)
    with rasterio.open(S2_SCENE) as src:
        zeros = np.zeros((src.count, 64, 64), np.uint16)
    empty = write_like(S2_SCENE, tmp_path / "empty.tif", zeros, nodata=0)
    for name, result in _three_ways(ckpt, empty, tmp_path):
        if name == "cli":
            assert result == 2
            err = capsys.readouterr().err.strip().splitlines()[-1]
            assert err.endswith("every input pixel is nodata — check the nodata value and the "
                                "bands"), err
        else:
            assert isinstance(result, GeofmError), name
            assert str(result).endswith("every input pixel is nodata — check the nodata value "
                                        "and the bands"), (name, result)


def test_resolution_check_warns_or_refuses_on_every_path(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_checkpoint(tmp_path / "m.safetensors", bands=RGBN)  # trained at 10 m
    with rasterio.open(S2_SCENE) as src:
        data = src.read(window=((0, 64), (0, 64)))
        coarse = src.transform * Affine.scale(2)  # 20 m pixels
    raster = write_like(S2_SCENE, tmp_path / "coarse.tif", data, transform=coarse)
    with pytest.warns(geofm.errors.GeofmWarning, match="pixels are 20 m") as caught:
        results = _three_ways(ckpt, raster, tmp_path)
    ours = [w for w in caught if issubclass(w.category, geofm.errors.GeofmWarning)]
    assert {w.filename for w in ours} == {__file__}  # the user's line, not geofm's
    assert [type(r) for _, r in results[:2]] == [xr.DataArray] * 2
    assert isinstance(results[2][1], Path) and results[2][1].exists()
    assert "geofm: warning:" in capsys.readouterr().err  # the CLI's own warning line
    for name, result in _three_ways(ckpt, raster, tmp_path, "--strict", strict=True):
        if name == "cli":
            assert result == 2
            assert "pixels are 20 m" in capsys.readouterr().err
        else:
            assert isinstance(result, GeofmError) and "pixels are 20 m" in str(result), name


def test_batch_size_is_checked_on_every_path(small: Path, tmp_path: Path) -> None:
    model = Model(echo_predictor())
    with pytest.raises(GeofmError, match="batch_size must be at least 1"):
        model.predict(small, batch_size=0)
    with pytest.raises(GeofmError, match="batch_size must be at least 1"):
        model.predict_raster(small, tmp_path / "x.tif", batch_size=0, progress=False)


def test_api_predictions_equal_the_cli_on_the_real_scene(tmp_path: Path) -> None:
    """``geofm predict`` on the Sentinel-2 scene and ``Model.predict`` / ``Model.embed`` on
    its path and on a dask DataArray of it give the same classes and embeddings."""
    from geofm.cli import main

    ckpt = make_checkpoint(tmp_path / "m.safetensors", bands=RGBN)
    model = load(ckpt)
    lazy = rioxarray.open_rasterio(S2_SCENE, chunks={"x": 96, "y": 160})
    out, emb = tmp_path / "classes.tif", tmp_path / "embed.tif"
    assert main(["predict", str(ckpt), str(S2_SCENE), "-o", str(out), "--quiet"]) == 0
    assert main(["predict", str(ckpt), str(S2_SCENE), "-o", str(emb), "--embed",
                 "--quiet"]) == 0
    with rasterio.open(out) as ds:
        cli_classes = ds.read(1)
    with rasterio.open(emb) as ds:
        cli_embedding, cli_transform = ds.read(), ds.transform
    assert len(np.unique(cli_classes)) > 1  # a map, not a constant
    for x in (S2_SCENE, lazy):
        np.testing.assert_array_equal(model.predict(x).values, cli_classes)
        embedding = model.embed(x)
        assert embedding.rio.transform() == cli_transform
        np.testing.assert_array_equal(embedding.values, cli_embedding)
