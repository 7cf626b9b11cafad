"""Streaming GeoTIFF prediction on the real Sentinel-2 scene, checked as GDAL and QGIS read it."""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import json
import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from affine import Affine

from geofm.errors import BandError, GeofmError
from geofm.io.cog import BLOCK_BYTES, BLOCK_SIZE, TempRaster, overview_count
from geofm.predict import predict_raster
from geofm.predict.pipeline import read_threads
from geofm.predict.tiling import hann_window, tile_offsets

from .conftest import RGBN, crop, echo_predictor, make_checkpoint, write_like
from .conftest import S2_SCENE as SCENE

# --- helpers --------------------------------------------------------------------------------


def _libgdal() -> ctypes.CDLL | None:
    found = glob.glob(str(Path(rasterio.__file__).parent.parent / "rasterio.libs" / "libgdal*"))
    name = found[0] if found else ctypes.util.find_library("gdal")
    if not name:
        return None
    lib = ctypes.CDLL(name)
    lib.GDALAllRegister()
    lib.GDALOpenEx.restype = ctypes.c_void_p
    lib.GDALOpenEx.argtypes = [ctypes.c_char_p, ctypes.c_uint, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALInfoOptionsNew.restype = ctypes.c_void_p
    lib.GDALInfoOptionsNew.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_void_p]
    lib.GDALInfo.restype = ctypes.c_void_p
    lib.GDALInfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALInfoOptionsFree.argtypes = [ctypes.c_void_p]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    lib.VSIFree.argtypes = [ctypes.c_void_p]
    return lib


def gdalinfo(path: Path) -> dict[str, Any]:
    """``gdalinfo -json``: the command when installed, else the same call in rasterio's GDAL."""
    if shutil.which("gdalinfo"):
        out = subprocess.run(["gdalinfo", "-json", str(path)], check=True, capture_output=True,
                             text=True)
        return json.loads(out.stdout)
    lib = _libgdal()
    if lib is None:
        pytest.skip("no gdalinfo and no GDAL library found")
    handle = lib.GDALOpenEx(str(path).encode(), 0x02, None, None, None)  # GDAL_OF_RASTER
    assert handle, f"GDAL cannot open {path}"
    argv = (ctypes.c_char_p * 2)(b"-json", None)
    options = lib.GDALInfoOptionsNew(argv, None)
    text = lib.GDALInfo(handle, options)
    try:
        return json.loads(ctypes.string_at(text).decode())
    finally:
        lib.VSIFree(text)
        lib.GDALInfoOptionsFree(options)
        lib.GDALClose(handle)


def assert_same_grid(out: Path, src: Path = SCENE) -> None:
    with rasterio.open(out) as a, rasterio.open(src) as b:
        assert a.crs == b.crs
        assert a.transform == b.transform
        assert (a.height, a.width) == (b.height, b.width)


def assert_cog(path: Path, levels: int) -> dict[str, Any]:
    info = gdalinfo(path)
    assert info["metadata"]["IMAGE_STRUCTURE"]["LAYOUT"] == "COG"
    assert info["metadata"]["IMAGE_STRUCTURE"]["COMPRESSION"] == "DEFLATE"
    side = -(-max(info["size"]) // 16) * 16  # blocks no larger than the raster
    for band in info["bands"]:
        assert band["block"] == [min(256, side)] * 2
        assert len(band.get("overviews", [])) == levels
    return info


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(finetuned: dict[str, Path]) -> dict[str, Path]:
    """Briefly trained checkpoints from the real sample (shared with the ONNX and CLI tests):
    a ChannelViT pretrained on S1 + S2 and its segmentation finetune."""
    from geofm.checkpoint import read_card

    pretrained = Path(read_card(finetuned["cvit_seg"]).provenance.encoder_source["checkpoint"])
    return {"pretrain": pretrained, "segmentation": finetuned["cvit_seg"]}


@pytest.fixture(scope="session")
def rgbn_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A channel-flexible segmentation checkpoint on B02, B03, B04, B08."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "rgbn.safetensors", bands=RGBN)


# --- the real pipeline on the real scene ----------------------------------------------------


def test_segmentation_cog_as_gdal_and_qgis_read_it(trained: dict[str, Path],
                                                   tmp_path: Path) -> None:
    out = tmp_path / "landcover.tif"
    result = predict_raster(trained["segmentation"], SCENE, out, probabilities=True,
                            vector=tmp_path / "landcover.gpkg", progress=False)
    assert sorted(os.listdir(tmp_path)) == ["landcover.gpkg", "landcover.qml", "landcover.tif",
                                            "landcover.tif.aux.xml",
                                            "landcover_probabilities.tif"]
    # A channel-flexible S1+S2 model on an S2-only scene uses the S2 bands and says so.
    assert result["bands_missing"] == ["S1.VV", "S1.VH"]
    assert result["bands_ignored"] == ["B10"]
    assert result["bands"]["S2.B8A"] == "band 9 (B8A)"
    assert_same_grid(out)
    info = assert_cog(out, levels=2)
    band = info["bands"][0]
    from geofm.builders.reben_classes import CLASS_COLORS, CLASS_NAMES

    assert band["type"] == "Byte" and band["noDataValue"] == 255
    assert band["colorInterpretation"] == "Palette"
    assert band["categories"] == list(CLASS_NAMES)
    rat = info["rat"]
    assert [row["f"][1] for row in rat["row"]] == list(CLASS_NAMES)
    with rasterio.open(out) as ds:
        colors = ds.colormap(1)
        assert ["#{:02x}{:02x}{:02x}".format(*colors[i][:3]) for i in range(19)] \
            == list(CLASS_COLORS)
        tags = ds.tags()
        assert tags["GEOFM_MODEL"] == "channelvit_test" and tags["GEOFM_TASK"] == "segmentation"
        assert tags["GEOFM_VERSION"] and json.loads(tags["GEOFM_BANDS"]) == result["bands"]
        classes = ds.read(1)
        overview = ds.read(1, out_shape=(64, 64))
    assert classes.max() < 19
    assert set(np.unique(overview)) <= set(np.unique(classes))  # mode, not average
    qml = (tmp_path / "landcover.qml").read_text()
    assert qml.count("<paletteEntry") == 19 and 'type="paletted"' in qml
    assert 'label="Marine waters"' in qml and 'color="#e6f2ff"' in qml

    probs = tmp_path / "landcover_probabilities.tif"
    assert_same_grid(probs)
    pinfo = assert_cog(probs, levels=2)
    assert [b["description"] for b in pinfo["bands"]] == list(CLASS_NAMES)
    with rasterio.open(probs) as ds:
        assert ds.dtypes[0] == "uint8" and ds.count == 19
        assert ds.scales == (1 / 255,) * 19 and ds.offsets == (0.0,) * 19
        p = ds.read().astype(np.float64) / 255
    assert np.allclose(p.sum(axis=0), 1.0, atol=19 / 255)
    # The class is the most probable one, up to the 1/255 rounding of the stored scores.
    chosen = np.take_along_axis(p, classes[None].astype(np.int64), axis=0)[0]
    assert (chosen >= p.max(axis=0) - 1.01 / 255).all()

    gdf = gpd.read_file(tmp_path / "landcover.gpkg")
    assert gdf.crs.to_epsg() == 32618
    assert set(gdf["class_name"]) == {CLASS_NAMES[i] for i in np.unique(classes)}
    assert np.isclose(gdf["area"].sum(), 256 * 256 * 100.0)


def test_embeddings_of_a_pretrained_encoder(trained: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(GeofmError, match="embed"):
        predict_raster(trained["pretrain"], SCENE, tmp_path / "x.tif", progress=False)
    assert not (tmp_path / "x.tif").exists()
    src = crop(tmp_path / "crop.tif", 128)
    out = tmp_path / "emb.tif"
    predict_raster(trained["pretrain"], src, out, embed=True, tile=64, overlap=0,
                   progress=False)
    with rasterio.open(out) as ds, rasterio.open(src) as s:
        assert (ds.count, ds.height, ds.width) == (32, 16, 16)  # D = 32, 128 / patch 8
        assert ds.dtypes[0] == "float32"
        assert ds.transform == s.transform @ Affine.scale(8)
        assert np.isfinite(ds.read()).all()


def test_multilabel_scores_on_a_tile_grid(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ml.safetensors", "multilabel", bands=RGBN, tile=96)
    out = tmp_path / "scores.tif"
    predict_raster(ckpt, SCENE, out, progress=False)
    with rasterio.open(out) as ds, rasterio.open(SCENE) as src:
        assert ds.count == 5 and ds.dtypes[0] == "uint8"
        assert (ds.height, ds.width) == (3, 3)  # one score per 96 px tile
        assert ds.transform == src.transform @ Affine.scale(96)
        assert ds.crs == src.crs
        assert ds.scales == (1 / 255,) * 5
        assert ds.descriptions == tuple(f"class {i}" for i in range(5))
        assert ds.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert (ds.dataset_mask() == 255).all()


# --- blending, nodata, memory ---------------------------------------------------------------


def test_tiling_and_blending_reproduce_the_input_exactly(tmp_path: Path) -> None:
    out = tmp_path / "echo.tif"
    predict_raster(echo_predictor(), SCENE, out, overlap=24, progress=False)
    assert_same_grid(out)
    with rasterio.open(out) as ds, rasterio.open(SCENE) as src:
        got = ds.read(1)
        want = (src.read(2).astype(np.float32) - 1000.0) / 500.0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_constant_model_gives_a_seamless_output(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "const.safetensors", "regression", classes=1,
                           bands=RGBN, constant=0.375)
    out = tmp_path / "const.tif"
    result = predict_raster(ckpt, crop(tmp_path / "crop.tif", 128), out, tile=64, overlap=24,
                            progress=False)
    assert result["tiles"] == 9
    with rasterio.open(out) as ds:
        values = ds.read(1)
    np.testing.assert_allclose(values, 0.375, atol=1e-6)
    assert tile_offsets(128, 64, 40) == [0, 40, 64]
    w = hann_window(4, 6)
    assert w.shape == (4, 6) and (w > 0).all() and np.allclose(w, w[::-1, ::-1])


def test_nodata_and_nan_propagate(tmp_path: Path) -> None:
    with rasterio.open(SCENE) as src:
        data = src.read().astype(np.float32)
    data[:, 10:60, 20:90] = 0  # nodata in every band
    data[3, 200:230, 100:140] = np.nan  # NaN in one band the model uses (B04)
    data[0, 100:120, 0:50] = np.nan  # NaN in a band the model does not use (B01)
    src = write_like(SCENE, tmp_path / "holes.tif", data, nodata=0)
    out = tmp_path / "holes_pred.tif"
    predict_raster(echo_predictor("segmentation", 4), src, out, probabilities=True,
                   progress=False)
    invalid = np.zeros((256, 256), bool)
    invalid[10:60, 20:90] = True
    invalid[200:230, 100:140] = True
    with rasterio.open(out) as ds:
        classes = ds.read(1)
        assert ds.nodata == 255
    assert ((classes == 255) == invalid).all()
    with rasterio.open(tmp_path / "holes_pred_probabilities.tif") as ds:
        assert ((ds.dataset_mask() == 0) == invalid).all()
        assert (ds.read()[:, invalid] == 0).all()


def test_wide_rasters_blend_in_panels_like_one_pass(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    with rasterio.open(SCENE) as src:
        rgbn = src.read([2, 3, 4, 8])
    wide = write_like(SCENE, tmp_path / "wide.tif", np.tile(rgbn, (1, 1, 5))[:, :, :1200])
    with rasterio.open(wide, "r+") as ds:
        ds.descriptions = ("B02", "B03", "B04", "B08")
    one = predict_raster(echo_predictor(ramp=True), wide, tmp_path / "one.tif", overlap=20,
                         progress=False)
    monkeypatch.setattr("geofm.predict.tiling.PANEL_PIXELS", 512)
    panels = predict_raster(echo_predictor(ramp=True), wide, tmp_path / "panels.tif",
                            overlap=20, progress=False)
    assert panels["tiles"] > one["tiles"]  # tiles on panel edges run twice
    assert panels["accumulator_bytes"] < one["accumulator_bytes"] / 2
    with rasterio.open(tmp_path / "one.tif") as a, rasterio.open(tmp_path / "panels.tif") as b:
        np.testing.assert_allclose(b.read(1), a.read(1), rtol=1e-6, atol=1e-6)


def _traced_peak(src: Path, out: Path) -> tuple[int, dict[str, Any]]:
    tracemalloc.start()
    try:
        result = predict_raster(echo_predictor(tile=128), src, out, overlap=32, batch_size=2,
                                progress=False)
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_tile_and_width(tmp_path: Path) -> None:
    with rasterio.open(SCENE) as src:
        rgbn = src.read([2, 3, 4, 8])
    peaks = []
    for rows in (4, 16):  # 1024 and 4096 rows, 512 columns
        src = write_like(SCENE, tmp_path / f"big{rows}.tif", np.tile(rgbn, (1, rows, 2)))
        with rasterio.open(src, "r+") as ds:
            ds.descriptions = ("B02", "B03", "B04", "B08")
        peak, result = _traced_peak(src, tmp_path / f"big{rows}_pred.tif")
        peaks.append(peak)
    assert result["predicted"] == result["tiles"] == 43 * 5
    # One band of 128 output rows (values, weights, validity), whatever the raster's height.
    assert result["accumulator_bytes"] == 128 * 512 * (4 + 4 + 1)
    # Beyond it: a few batches in flight (queues, the one being read, the one in the model),
    # each 2 tiles × 4 bands × 128² float32 = 0.5 MiB, and a tile per reader thread (plus
    # one); far less than the 8 MiB output.
    bound = (result["accumulator_bytes"] + 8 * 2 * 4 * 128 * 128 * 4
             + (read_threads() + 1) * 4 * 128 * 128 * 4)
    assert peaks[1] < bound < 4096 * 512 * 4, f"peaks {peaks}, bound {bound}"
    assert peaks[1] < 2 * peaks[0], f"peaks {peaks} grow with the raster's height"


# --- band matching --------------------------------------------------------------------------


def test_band_matching_by_names_common_names_and_wavelength(rgbn_ckpt: Path,
                                                            tmp_path: Path) -> None:
    small = crop(tmp_path / "small.tif", 64, [2, 3, 4, 8])
    with rasterio.open(small) as ds:
        rgbn = ds.read()
    named = write_like(small, tmp_path / "common.tif", rgbn)
    with rasterio.open(named, "r+") as ds:
        ds.descriptions = ("blue", "green", "red", "nir")
    result = predict_raster(rgbn_ckpt, named, tmp_path / "a.tif", progress=False)
    assert result["bands"] == {"S2.B02": "band 1 (blue)", "S2.B03": "band 2 (green)",
                               "S2.B04": "band 3 (red)", "S2.B08": "band 4 (nir)"}

    unnamed = write_like(small, tmp_path / "unnamed.tif", rgbn[[3, 2, 1, 0]])
    with rasterio.open(unnamed, "r+") as ds:
        ds.descriptions = (None,) * 4
    with pytest.raises(BandError, match="no names"):
        predict_raster(rgbn_ckpt, unnamed, tmp_path / "b.tif", progress=False)
    with pytest.raises(BandError, match="names 3 bands but the input has 4"):
        predict_raster(rgbn_ckpt, unnamed, tmp_path / "b.tif", bands="B08,B04,B03",
                       progress=False)
    result = predict_raster(rgbn_ckpt, unnamed, tmp_path / "b.tif", bands="B08,B04,B03,B02",
                            progress=False)
    assert result["bands"]["S2.B02"] == "band 4 (B02)"  # by name, not by position
    with rasterio.open(tmp_path / "a.tif") as a, rasterio.open(tmp_path / "b.tif") as b:
        assert (a.read(1) == b.read(1)).all()

    # A channel-flexible S2 model on Landsat 8 bands, matched by wavelength (the same
    # reflectance as Collection-2 DN, reflectance = DN · 2.75e-5 − 0.2).
    l8_dn = np.round((rgbn / 10000.0 + 0.2) / 2.75e-5).astype(np.uint16)
    landsat = write_like(small, tmp_path / "l8.tif", l8_dn)
    with rasterio.open(landsat, "r+") as ds:
        ds.descriptions = ("L8.B2", "L8.B3", "L8.B4", "L8.B5")
    result = predict_raster(rgbn_ckpt, landsat, tmp_path / "c.tif", progress=False)
    assert list(result["bands"]) == ["L8.B2", "L8.B3", "L8.B4", "L8.B5"]

    # A fixed-band model says what is missing.
    vit = make_checkpoint(tmp_path / "vit.safetensors", model="vit_test",
                          bands=[*RGBN, "S1.VV", "S1.VH"])
    with pytest.raises(BandError, match=r"needs bands S1\.VV, S1\.VH"):
        predict_raster(vit, SCENE, tmp_path / "d.tif", progress=False)
    assert not (tmp_path / "d.tif").exists()


def test_stacked_single_band_files_on_different_grids(tmp_path: Path) -> None:
    with rasterio.open(SCENE) as src:
        profile = src.profile
        for index, name in ((2, "B02"), (3, "B03"), (4, "B04")):
            profile.update(count=1)
            with rasterio.open(tmp_path / f"{name}.tif", "w", **profile) as out:
                out.write(src.read(index), 1)
        coarse = src.read(8, out_shape=(128, 128))  # B08 at 20 m
        profile.update(width=128, height=128, transform=src.transform @ Affine.scale(2),
                       blockxsize=128, blockysize=128)
        with rasterio.open(tmp_path / "B08.tif", "w", **profile) as out:
            out.write(coarse, 1)
    files = [tmp_path / f"{b}.tif" for b in ("B08", "B02", "B03", "B04")]
    out = tmp_path / "stack_pred.tif"
    result = predict_raster(echo_predictor(), files, out, progress=False)
    assert result["bands"]["S2.B02"] == "band 2 (B02)"
    assert_same_grid(out)  # the finest grid among the files
    with rasterio.open(out) as ds, rasterio.open(SCENE) as src:
        want = (src.read(2).astype(np.float32) - 1000.0) / 500.0
        np.testing.assert_allclose(ds.read(1), want, rtol=1e-5, atol=1e-5)


# --- grids and resolutions ------------------------------------------------------------------


def test_resample_to_model_gsd_returns_the_input_grid(tmp_path: Path) -> None:
    with rasterio.open(SCENE) as src:
        data = src.read(out_shape=(13, 128, 128))
        transform = src.transform @ Affine.scale(2)
    coarse = write_like(SCENE, tmp_path / "s2_20m.tif", data, transform=transform)
    model = echo_predictor("segmentation", 4)
    with pytest.warns(UserWarning, match="20 m but the model was trained at 10 m"):
        predict_raster(model, coarse, tmp_path / "native.tif", progress=False)
    out = tmp_path / "resampled.tif"
    predict_raster(model, coarse, out, resample_to_model_gsd=True, probabilities=True,
                   progress=False)
    assert_same_grid(out, coarse)
    assert_same_grid(tmp_path / "resampled_probabilities.tif", coarse)
    info = assert_cog(out, levels=1)
    assert info["bands"][0]["colorInterpretation"] == "Palette"
    with rasterio.open(out) as ds, rasterio.open(tmp_path / "native.tif") as native:
        agree = (ds.read(1) == native.read(1)).mean()
    assert agree > 0.9


def test_many_classes_use_uint16(tmp_path: Path) -> None:
    out = tmp_path / "many.tif"
    predict_raster(echo_predictor("segmentation", 300, tile=128), SCENE, out, progress=False)
    with rasterio.open(out) as ds:
        assert ds.dtypes[0] == "uint16" and ds.nodata == 65535
        assert set(np.unique(ds.read(1))) <= {0, 299}
        assert ds.colormap(1)[299][3] == 255
    assert len(gdalinfo(out)["bands"][0]["categories"]) == 300


def test_input_without_crs_is_predicted_with_a_warning(tmp_path: Path) -> None:
    with rasterio.open(SCENE) as src:
        data = src.read()
        names = src.descriptions
    plain = tmp_path / "plain.tif"
    with rasterio.open(plain, "w", driver="GTiff", width=256, height=256, count=13,
                       dtype="uint16") as ds:
        ds.write(data)
        ds.descriptions = names
    out = tmp_path / "plain_pred.tif"
    with pytest.warns(UserWarning, match="no CRS"):
        predict_raster(echo_predictor("segmentation", 4), plain, out, progress=False)
    with rasterio.open(out) as ds:
        assert ds.crs is None and (ds.height, ds.width) == (256, 256)


def test_overview_levels() -> None:
    assert [overview_count(s, s) for s in (3, 127, 128, 256, 2048, 8192)] == [0, 0, 1, 2, 5, 7]


def test_a_temporary_block_of_every_band_fits_the_block_cache(tmp_path: Path) -> None:
    """A 768-band embedding grid gets blocks small enough to stay in GDAL's cache (with 256²
    blocks, each window written into a part-filled block recompressed 201 MB); a one-band
    class raster keeps full-size blocks."""
    wide = TempRaster(tmp_path / "embed.tif", height=200, width=200, count=768,
                      dtype="float32", crs=None, transform=Affine.identity())
    narrow = TempRaster(tmp_path / "classes.tif", height=2000, width=2000, count=1,
                        dtype="uint8", crs=None, transform=Affine.identity())
    wide.close()
    narrow.close()
    with rasterio.open(tmp_path / "embed.tif") as ds:
        by, bx = ds.block_shapes[0]
        assert by * bx * ds.count * 4 <= BLOCK_BYTES and by >= 16
    with rasterio.open(tmp_path / "classes.tif") as ds:
        assert ds.block_shapes[0] == (BLOCK_SIZE, BLOCK_SIZE)


# --- bad input and atomicity ----------------------------------------------------------------


def test_existing_output_is_refused_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    predict_raster(echo_predictor("segmentation", 4), SCENE, out, progress=False)
    before = out.stat().st_mtime_ns
    with pytest.raises(GeofmError, match="already exists"):
        predict_raster(echo_predictor("segmentation", 4), SCENE, out, progress=False)
    assert out.stat().st_mtime_ns == before
    # Overwriting a class map with a regression drops the class map's sidecars.
    predict_raster(echo_predictor("regression", 2), SCENE, out, overwrite=True, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]
    with rasterio.open(out) as ds:
        assert ds.count == 2 and ds.dtypes[0] == "float32"


def test_failure_mid_way_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out.tif"
    with pytest.raises(RuntimeError, match="simulated failure"):
        predict_raster(echo_predictor("segmentation", 4, fail_after=2), SCENE, out,
                       batch_size=2, probabilities=True, vector=tmp_path / "out.gpkg",
                       progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", ["corrupt", "truncated", "all_nodata", "no_dir", "readonly"])
def test_bad_input_is_one_clear_error(case: str, rgbn_ckpt: Path, tmp_path: Path) -> None:
    src, out = SCENE, tmp_path / "out.tif"
    if case == "corrupt":
        src = tmp_path / "corrupt.tif"
        src.write_bytes(b"II*\x00not a tiff at all")
    elif case == "truncated":
        with rasterio.open(SCENE) as ds:
            src = write_like(SCENE, tmp_path / "full.tif", ds.read())
        data = src.read_bytes()
        src.write_bytes(data[: len(data) // 2])
    elif case == "all_nodata":
        src = write_like(SCENE, tmp_path / "empty.tif", np.zeros((13, 256, 256), np.uint16),
                         nodata=0)
    elif case == "no_dir":
        out = tmp_path / "missing" / "out.tif"
    else:
        (tmp_path / "ro").mkdir()
        out = tmp_path / "ro" / "out.tif"
        os.chmod(out.parent, 0o555)
        if os.access(out.parent, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
    expected = {"corrupt": "cannot read the raster", "truncated": "cannot read the raster",
                "all_nodata": "every input pixel is nodata", "no_dir": "does not exist",
                "readonly": "not writable"}[case]
    with pytest.raises(GeofmError, match=expected) as err:
        predict_raster(rgbn_ckpt, src, out, progress=False)
    assert "\n" not in str(err.value)
    assert not out.exists()
    if out.parent.exists():
        assert not list(out.parent.glob(".*"))
