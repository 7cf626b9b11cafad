"""Text→map queries: ``geofm query``, ``query_raster`` and ``Model.query / encode_text /
encode_image`` with an aligned checkpoint built from a briefly pretrained ChannelViT, on the real
Sentinel-2 scene."""

from __future__ import annotations

import contextlib
import io
import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rioxarray
import torch
from affine import Affine

import geofm
from geofm.api import Model
from geofm.card import ModelCard
from geofm.cli import main
from geofm.errors import GeofmError
from geofm.loading import load_aligned, load_encoder
from geofm.models.align import AlignModel, aligned_card, save_aligned
from geofm.models.text import TextTower
from geofm.predict import predict_raster, query_raster

from .conftest import (
    QGIS_MARKER,
    S2_SCENE,
    SYSTEM_PYTHON,
    clean_env,
    has_pyqgis,
    make_checkpoint,
    qgis_json,
    write_like,
)

TEXTS = ["salt marsh", "open sea"]
PATCH = 8  # channelvit_test
TILE = 64


@pytest.fixture(scope="module")
def checkpoints(tiny_pretrained: Callable[..., Path],
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A pretrained ChannelViT (reBEN's 14 bands) and an untrained alignment of it."""
    root = tmp_path_factory.mktemp("query")
    pretrained = tiny_pretrained("channelvit_test", 2)
    encoder, card = load_encoder(pretrained)
    torch.manual_seed(0)
    align = AlignModel(encoder, TextTower.from_source(), embed_dim=16)
    aligned = save_aligned(root / "align.safetensors", align, aligned_card(
        align, card.contract, patch_size=PATCH, tile_size=(TILE, TILE), gsd_m=10.0,
        templates=["a satellite image of {}."]))
    return {"pretrain": pretrained, "align": aligned}


@pytest.fixture(scope="module")
def model(checkpoints: dict[str, Path]) -> Model:
    return geofm.load(checkpoints["align"])


@pytest.fixture(scope="module")
def cli_run(checkpoints: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, Any]:
    """``geofm query`` on the whole real scene with two texts."""
    out = tmp_path_factory.mktemp("cli") / "similarity.tif"
    with contextlib.redirect_stdout(io.StringIO()) as stdout:
        code = main(["query", str(checkpoints["align"]), str(S2_SCENE), *TEXTS, "-o", str(out),
                     "--quiet"])
    return {"code": code, "output": out, "stdout": stdout.getvalue()}


def _scene_crop(dst: Path, size: int, nodata_block: tuple[slice, slice] | None = None) -> Path:
    """The top-left ``size`` × ``size`` pixels of the scene (13 bands, named), optionally with
    a block of nodata (0)."""
    with rasterio.open(S2_SCENE) as src:
        data = src.read(window=((0, size), (0, size)))
    if nodata_block is None:
        return write_like(S2_SCENE, dst, data)
    data[(slice(None), *nodata_block)] = 0
    return write_like(S2_SCENE, dst, data, nodata=0)


def _direct_similarity(align: AlignModel, card: ModelCard, raster: Path, text: str
                       ) -> np.ndarray:
    """``encode_patches`` · ``encode_text`` of one whole tile, normalised by hand."""
    with rasterio.open(raster) as ds:
        names = [f"S2.{d}" for d in ds.descriptions]
        used = [b for b in card.bands if b in names]
        raw = ds.read([names.index(b) + 1 for b in used]).astype(np.float32)  # [C, H, W]
    idx = [card.bands.index(b) for b in used]
    mean = np.asarray(card.contract.mean, np.float32)[idx, None, None]
    std = np.asarray(card.contract.std, np.float32)[idx, None, None]
    images = torch.from_numpy((raw - mean) / std)[None]  # [1, C, H, W]
    with torch.no_grad():
        patches = align.encode_patches(images, used)  # [1, E, H/p, W/p]
        txt = align.encode_text([text])  # [1, E]
    return torch.einsum("behw,te->bthw", patches, txt)[0, 0].numpy()  # [H/p, W/p]


def test_cli_query_raster_has_the_inputs_crs_and_patch_grid(cli_run: dict[str, Any]) -> None:
    assert cli_run["code"] == 0
    text = cli_run["stdout"]
    assert "S2.B04←B04" in text and "S1.VV" in text  # band matching report
    assert "similarity to 'salt marsh':" in text and "similarity.qml" in text
    out = cli_run["output"]
    with rasterio.open(S2_SCENE) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs
        assert dst.transform == src.transform @ Affine.scale(PATCH)
        assert dst.shape == (src.height // PATCH, src.width // PATCH) == (32, 32)
        assert dst.bounds == src.bounds
        assert dst.count == 2 and dst.dtypes == ("float32", "float32")
        assert dst.descriptions == tuple(TEXTS)
        assert math.isnan(dst.nodata)
        tags = dst.tags()
        values = dst.read()
    assert tags["GEOFM_TASK"] == "similarity" and json.loads(tags["GEOFM_CLASSES"]) == TEXTS
    assert np.isfinite(values).all()
    assert values.min() >= -1.0 and values.max() <= 1.0 and values.std() > 0
    assert not np.allclose(values[0], values[1])
    qml = out.with_suffix(".qml").read_text()
    assert 'type="singlebandpseudocolor"' in qml and 'band="1"' in qml
    assert f'minimumValue="{float(values[0].min())!r}"' in qml
    assert f'maximumValue="{float(values[0].max())!r}"' in qml


def test_patch_grid_of_an_odd_size_with_nodata(model: Model, tmp_path: Path) -> None:
    # 100 px is not a multiple of the patch: the last patch row and column are partly outside.
    scene = _scene_crop(tmp_path / "crop.tif", 100, (slice(0, 20), slice(0, 36)))
    info = query_raster(model.predictor, scene, "salt marsh", tmp_path / "sim.tif",
                        progress=False)
    assert info["task"] == "similarity" and info["shape"] == (13, 13)
    with rasterio.open(scene) as src, rasterio.open(info["output"]) as dst:
        assert dst.crs == src.crs and dst.shape == (13, 13)
        assert dst.transform == src.transform @ Affine.scale(PATCH)
        sim = dst.read(1)
    nodata = np.zeros((13, 13), bool)
    nodata[:2, :4] = True  # patches lying wholly inside the nodata block
    assert np.isnan(sim[nodata]).all() and np.isfinite(sim[~nodata]).all()
    assert info["ranges"] == [(float(np.nanmin(sim)), float(np.nanmax(sim)))]
    two = query_raster(model.predictor, scene, "salt marsh", tmp_path / "two.tif",
                       device="cpu,cpu", batch_size=1, progress=False)  # one replica per device
    with rasterio.open(two["output"]) as dst:
        np.testing.assert_array_equal(dst.read(1), sim)


def test_one_tile_equals_encode_patches_and_encode_text(model: Model, checkpoints: dict[str, Path],
                                                        tmp_path: Path) -> None:
    scene = _scene_crop(tmp_path / "tile.tif", TILE)
    align, card = load_aligned(checkpoints["align"])
    expected = _direct_similarity(align, card, scene, "salt marsh")  # [8, 8]
    info = query_raster(model.predictor, scene, "salt marsh", tmp_path / "sim.tif",
                        progress=False)
    assert info["tiles"] == 1
    with rasterio.open(info["output"]) as ds:
        np.testing.assert_allclose(ds.read(1), expected, atol=1e-5)
    from_array = model.query(rioxarray.open_rasterio(scene), "salt marsh")
    np.testing.assert_allclose(from_array.values, expected, atol=1e-5)


def test_model_query_on_a_dataarray_keeps_crs_and_coordinates(model: Model,
                                                               cli_run: dict[str, Any]) -> None:
    assert repr(model) == "Model(channelvit_test, align, 14 bands)"
    da = rioxarray.open_rasterio(S2_SCENE, chunks={"x": 128})
    sim = model.query(da, "salt marsh")
    assert sim.dims == ("y", "x") and sim.name == "similarity"
    assert sim.attrs["long_name"] == "salt marsh" and sim.attrs["geofm_task"] == "similarity"
    assert sim.rio.crs == da.rio.crs
    assert sim.rio.transform() == da.rio.transform() @ Affine.scale(PATCH)
    res = da.rio.resolution()[0]
    assert sim.x.values[0] == pytest.approx(float(da.x[0]) - res / 2 + PATCH * res / 2)
    assert np.isnan(sim.rio.nodata)
    both = model.query(da, TEXTS)
    assert both.dims == ("band", "y", "x") and list(both.band.values) == TEXTS
    with rasterio.open(cli_run["output"]) as ds:  # the same map as `geofm query` wrote
        np.testing.assert_allclose(both.values, ds.read(), atol=1e-5)
    np.testing.assert_allclose(sim.values, both.values[0], atol=1e-6)


def test_encode_text_and_image(model: Model, checkpoints: dict[str, Path],
                               tmp_path: Path) -> None:
    texts = model.encode_text(TEXTS)
    assert texts.shape == (2, 16) and texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model.encode_text("salt marsh"), texts[0], atol=1e-6)

    scene = _scene_crop(tmp_path / "chip.tif", TILE)
    one = model.encode_image(scene)
    assert one.shape == (16,)
    with rasterio.open(scene) as ds:
        raw = ds.read().astype(np.float32)  # [13, 64, 64]
        names = list(ds.descriptions)
    batch = model.encode_image(np.stack([raw, raw[:, ::-1].copy()]), bands=names)
    assert batch.shape == (2, 16)
    np.testing.assert_allclose(batch[0], one, atol=1e-5)
    np.testing.assert_allclose(model.encode_image(torch.from_numpy(raw), bands=names), one,
                               atol=1e-5)
    np.testing.assert_allclose(model.encode_image(rioxarray.open_rasterio(scene)), one,
                               atol=1e-5)
    align, card = load_aligned(checkpoints["align"])
    used = [b for b in card.bands if b.startswith("S2.") and b != "S2.B10"]
    with torch.no_grad():
        idx = [card.bands.index(b) for b in used]
        x = (raw[[names.index(b[3:]) for b in used]]
             - np.asarray(card.contract.mean, np.float32)[idx, None, None]) \
            / np.asarray(card.contract.std, np.float32)[idx, None, None]
        direct = align.encode_image(torch.from_numpy(x)[None], used)[0].numpy()
    np.testing.assert_allclose(one, direct, atol=1e-5)
    cosine = texts @ one  # [2]
    assert np.all(np.abs(cosine) <= 1.0)


def test_bad_input_is_one_line_on_the_cli(checkpoints: dict[str, Path], tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    def fails(argv: list[str], needle: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("geofm: error: ") and needle in err[0], err

    out = tmp_path / "o.tif"
    align, pretrained = str(checkpoints["align"]), str(checkpoints["pretrain"])
    finetuned = str(make_checkpoint(tmp_path / "finetuned.safetensors"))
    fails(["query", align, str(S2_SCENE), "", "-o", str(out), "--quiet"], "empty")
    fails(["query", align, str(S2_SCENE), "   ", "-o", str(out), "--quiet"], "empty")
    fails(["query", pretrained, str(S2_SCENE), "salt marsh", "-o", str(out), "--quiet"],
          "has no text tower (it is a pretrain checkpoint)")
    fails(["query", finetuned, str(S2_SCENE), "salt marsh", "-o", str(out), "--quiet"],
          "has no text tower (it is a finetune checkpoint)")
    assert not out.exists() and not out.with_suffix(".qml").exists()
    assert list(tmp_path.glob(".o.tif*")) == []  # no temporary files left behind


def test_bad_input_raises_geofm_error_from_the_api(model: Model, checkpoints: dict[str, Path],
                                                   tmp_path: Path) -> None:
    for text in ("", "  \t", [], ["salt marsh", ""]):
        with pytest.raises(GeofmError, match="query text"):
            model.query(S2_SCENE, text)
        with pytest.raises(GeofmError, match="query text"):
            model.encode_text(text)
    encoder = geofm.load(checkpoints["pretrain"])
    for call in (lambda: encoder.query(S2_SCENE, "salt marsh"),
                 lambda: encoder.encode_text("salt marsh"),
                 lambda: encoder.encode_image(S2_SCENE),
                 lambda: query_raster(checkpoints["pretrain"], S2_SCENE, "salt marsh",
                                      tmp_path / "x.tif")):
        with pytest.raises(GeofmError, match="has no text tower"):
            call()
    with pytest.raises(GeofmError, match="separate outputs"):
        predict_raster(model.predictor, S2_SCENE, tmp_path / "y.tif", embed=True,
                       query="salt marsh")
    with pytest.raises(GeofmError, match="geofm query"):  # no task head to predict with
        model.predict(S2_SCENE)
    with pytest.raises(GeofmError, match="have no names"):
        model.encode_image(np.zeros((13, 64, 64), np.float32))
    with pytest.raises(GeofmError, match="nodata"):
        model.encode_image(np.full((13, 64, 64), np.nan, np.float32),
                           bands="s2")
    assert not any(tmp_path.iterdir())


RAMP_SCRIPT = """
import json, os, sys
from qgis.core import QgsApplication, QgsRasterLayer

app = QgsApplication([], False)
app.initQgis()
path, marker = sys.argv[1:3]
layer = QgsRasterLayer(path, "similarity")  # loads <base name>.qml as its default style
renderer = layer.renderer()
shader = renderer.shader().rasterShaderFunction()
out = {
    "valid": layer.isValid(), "crs": layer.crs().authid(),
    "size": [layer.width(), layer.height()], "bands": layer.bandCount(),
    "band_name": layer.bandName(1), "renderer": renderer.type(), "band": renderer.band(),
    "range": [shader.minimumValue(), shader.maximumValue()],
    "stops": len(shader.colorRampItemList()),
}
print(marker + json.dumps(out), flush=True)
os._exit(0)
"""


@pytest.mark.slow
@pytest.mark.skipif(not has_pyqgis(), reason="no qgis Python module for /usr/bin/python3")
def test_qgis_opens_the_heat_map_with_its_colour_ramp(cli_run: dict[str, Any],
                                                       tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    (tmp_path / "xdg").mkdir(mode=0o700)
    script = tmp_path / "ramp.py"
    script.write_text(RAMP_SCRIPT)
    done = subprocess.run([str(SYSTEM_PYTHON), str(script), str(cli_run["output"]), QGIS_MARKER],
                          env=clean_env(HOME=str(tmp_path / "home"),
                                        XDG_RUNTIME_DIR=str(tmp_path / "xdg")),
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    got = qgis_json(done.stdout)
    with rasterio.open(cli_run["output"]) as ds:
        band = ds.read(1)
        epsg = ds.crs.to_epsg()
    assert got["valid"] and got["crs"] == f"EPSG:{epsg}" and got["size"] == [32, 32]
    assert got["bands"] == 2 and "salt marsh" in got["band_name"]
    assert got["renderer"] == "singlebandpseudocolor" and got["band"] == 1
    assert got["range"] == pytest.approx([float(band.min()), float(band.max())])
    assert got["stops"] == 5
