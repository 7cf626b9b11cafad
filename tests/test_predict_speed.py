"""The fast prediction path gives the maps of a straightforward implementation, bit for bit.

The reference below is the plainest way to write the pipeline: read every tile window in grid
order with rasterio, normalise it in numpy, run the model one tile at a time, accumulate the
Hann-weighted outputs over the whole raster in numpy, divide, take the argmax. The pipeline
reads on a thread pool, blends in rolling per-panel accumulators in torch and takes the argmax
with a running maximum; its class maps and 8-bit probabilities must equal the reference's
exactly (tolerance 0), and float outputs to the last bit.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import torch
from rasterio.windows import Window
from torch import Tensor, nn

from geofm.card import ModelCard
from geofm.predict import Predictor, TileGrid, build_grid, plan_bands, predict_raster
from geofm.predict.pipeline import read_batches
from geofm.predict.sinks import first_argmax
from geofm.predict.sources import open_source
from geofm.predict.tiling import hann_window

from .conftest import RGBN, echo_predictor, write_like
from .conftest import S2_SCENE as SCENE

CLASSES = 7


class PerPixel(nn.Module):
    """Elementwise logits (no reduction across pixels or tiles): class ``k`` scores band
    ``k mod 4``, scaled, plus a ramp across the tile that favours low classes on the left and
    high classes on the right, so overlapping tiles disagree and blending decides."""

    def forward(self, images: Tensor, bands: list[str]) -> Tensor:
        index = torch.arange(CLASSES) % images.shape[1]
        scale = torch.linspace(0.5, 2.0, CLASSES).view(1, -1, 1, 1)
        ramp = torch.linspace(-1.0, 1.0, images.shape[3])  # [W]
        tilt = torch.linspace(-1.0, 1.0, CLASSES).view(1, -1, 1, 1)  # [1, K, 1, 1]
        return images[:, index] * scale + tilt * ramp  # [B, K, H, W]


def per_pixel_predictor(tile: int = 64) -> Predictor:
    header = {"kind": "finetune", "task": "segmentation", "bands": RGBN,
              "head": {"kind": "segmentation", "num_outputs": CLASSES},
              "normalization": {"mean": [1000.0, 900.0, 800.0, 2000.0],
                                "std": [500.0, 400.0, 300.0, 1000.0]},
              "classes": [f"class {i}" for i in range(CLASSES)], "tile_size": [tile, tile],
              "patch_size": 8, "gsd_m": 10.0, "model": {"name": "per_pixel"}}
    return Predictor(PerPixel(), ModelCard.from_header(header), "per_pixel.safetensors")


def reference(predictor: Predictor, path: Path, overlap: int, channels: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Blended values ``[K, H, W]`` and validity ``[H, W]`` the plain way (one pass over the
    whole raster, float32 numpy, tiles one by one in raster order)."""
    with open_source([path]) as source:
        plan = plan_bands(predictor, source.labels, source=source.name)
        grid = build_grid(predictor, "pixel", source.height, source.width, None, overlap)
        ds = source.ds
        nodata = [ds.nodatavals[i] for i in plan.sources]
        th, tw = grid.tile
        acc = np.zeros((channels, ds.height, ds.width), np.float32)
        wsum = np.zeros((ds.height, ds.width), np.float32)
        valid = np.zeros((ds.height, ds.width), bool)
        weight = hann_window(th, tw)
        for y in grid.rows:
            for x in grid.cols:
                h, w = min(th, ds.height - y), min(tw, ds.width - x)
                raw = ds.read([i + 1 for i in plan.sources], window=Window(x, y, w, h),
                              out_dtype="float32")
                bad = np.isnan(raw).any(axis=0)
                for k, nd in enumerate(nodata):
                    if nd is not None:
                        bad |= raw[k] == np.float32(nd)
                if bad.all():
                    continue
                tile = np.zeros((len(plan.sources), th, tw), np.float32)
                tile[:, :h, :w] = np.where(bad, np.float32(0),
                                           (raw - plan.mean[:, None, None])
                                           / plan.std[:, None, None])
                out = predictor.outputs(torch.from_numpy(tile[None]), plan.bands,
                                        "pixel")[0].numpy()
                acc[:, y:y + h, x:x + w] += out[:, :h, :w] * weight[:h, :w]
                wsum[y:y + h, x:x + w] += weight[:h, :w]
                valid[y:y + h, x:x + w] |= ~bad
    values = acc / np.maximum(wsum, np.float32(1e-12))
    return values, valid & (wsum > 0)


@pytest.fixture(scope="module")
def holes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real scene's B02, B03, B04, B08 at 256 × 200 px, with a nodata hole and NaNs."""
    with rasterio.open(SCENE) as src:
        data = src.read([2, 3, 4, 8]).astype(np.float32)[:, :, :200]
    data[:, 10:60, 20:90] = 0
    data[2, 200:230, 100:140] = np.nan
    path = write_like(SCENE, tmp_path_factory.mktemp("speed") / "holes.tif", data, nodata=0)
    with rasterio.open(path, "r+") as ds:
        ds.descriptions = ("B02", "B03", "B04", "B08")
    return path


@pytest.mark.parametrize("panel_pixels", [None, 64])
def test_class_maps_and_probabilities_equal_the_plain_blend(
        holes: Path, tmp_path: Path, panel_pixels: int | None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    if panel_pixels:  # vertical panels with rolling accumulators, tiles on edges run twice
        monkeypatch.setattr("geofm.predict.tiling.PANEL_PIXELS", panel_pixels)
    predictor = per_pixel_predictor()
    out = tmp_path / "classes.tif"
    predict_raster(predictor, holes, out, overlap=24, batch_size=3, probabilities=True,
                   progress=False)
    values, valid = reference(predictor, holes, 24, CLASSES)
    want = np.where(valid, values.argmax(axis=0), 255).astype(np.uint8)
    with rasterio.open(out) as ds:
        got = ds.read(1)
    assert (~valid).sum() > 2000 and len(np.unique(want[valid])) >= 3  # the test has teeth
    np.testing.assert_array_equal(got, want)
    quantized = np.rint(np.clip(values, 0.0, 1.0) * 255.0).astype(np.uint8)
    quantized[:, ~valid] = 0
    with rasterio.open(tmp_path / "classes_probabilities.tif") as ds:
        np.testing.assert_array_equal(ds.read(), quantized)
        np.testing.assert_array_equal(ds.dataset_mask() == 255, valid)


def test_float_outputs_equal_the_plain_blend_to_the_last_bit(holes: Path,
                                                              tmp_path: Path) -> None:
    predictor = echo_predictor(ramp=True)  # regression; its output depends on the column
    out = tmp_path / "values.tif"
    predict_raster(predictor, holes, out, overlap=20, batch_size=2, progress=False)
    values, valid = reference(predictor, holes, 20, 1)
    with rasterio.open(out) as ds:
        got = ds.read(1)
    np.testing.assert_array_equal(np.isnan(got), ~valid)
    np.testing.assert_array_equal(got[valid], values[0][valid])


def test_parallel_reads_give_the_same_batches_in_order(tmp_path: Path) -> None:
    predictor = per_pixel_predictor(tile=48)
    with rasterio.open(SCENE) as src:
        bands = [src.read(i)[None] for i in (2, 3, 4, 8)]
    files = []  # a stack of single-band files: the source reopens a VRT in each thread
    for name, data in zip(("B02", "B03", "B04", "B08"), bands):
        files.append(write_like(SCENE, tmp_path / f"{name}.tif", data))
    with open_source(files) as source:
        assert source.concurrent_reads
        plan = plan_bands(predictor, source.labels, source=source.name)
        grid = build_grid(predictor, "pixel", source.height, source.width, None, 8)
        one = list(read_batches(source, plan, grid, 5, threads=1))
        four = list(read_batches(source, plan, grid, 5, threads=4))
    assert len(one) == len(four) == -(-grid.num_tiles // 5)
    for a, b in zip(one, four):
        assert a.where == b.where
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.valid, b.valid)


def test_first_argmax_is_numpys_argmax() -> None:
    rng = np.random.default_rng(3)
    for channels in (1, 2, 19, 300):  # 300: uint16 indices
        values = rng.integers(0, 4, (channels, 40, 50)).astype(np.float32)  # many ties
        values.reshape(-1)[rng.integers(0, values.size, 30)] = np.nan
        np.testing.assert_array_equal(first_argmax(values), values.argmax(axis=0))


def test_reader_handles_are_closed_with_the_source(holes: Path) -> None:
    predictor = per_pixel_predictor()
    opened: list[Any] = []
    with open_source([holes]) as source:
        reopen = source._reopen
        assert reopen is not None

        def recording(stack: ExitStack) -> Any:
            opened.append(reopen(stack))
            return opened[-1]

        source._reopen = recording
        plan = plan_bands(predictor, source.labels, source=source.name)
        grid = TileGrid.build(source.height, source.width, (64, 64), 16, (1, 1))
        assert sum(len(b.where) for b in read_batches(source, plan, grid, 4, threads=3)) > 0
        assert len(opened) == 3 and not any(ds.closed for ds in opened)  # one per thread
    assert all(ds.closed for ds in opened)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_blending_on_the_gpu_gives_the_cpu_maps(holes: Path, tmp_path: Path) -> None:
    maps = []
    for device in ("cpu", "cuda"):
        out = tmp_path / f"{device}.tif"
        predict_raster(per_pixel_predictor(), holes, out, overlap=24, device=device,
                       probabilities=True, progress=False)
        with rasterio.open(out) as ds, \
                rasterio.open(tmp_path / f"{device}_probabilities.tif") as probs:
            maps.append((ds.read(), probs.read()))
    np.testing.assert_array_equal(maps[0][0], maps[1][0])
    np.testing.assert_array_equal(maps[0][1], maps[1][1])
