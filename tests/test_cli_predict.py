"""`geofm predict` from the command line: a real scene in, a complete COG out, or one line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geofm.cli import main

from .conftest import S2_SCENE, crop, one_line_error


@pytest.mark.slow
def test_predict_real_scene(finetuned: dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "map.tif"
    assert main(["predict", str(finetuned["cvit_seg"]), str(S2_SCENE), "-o", str(out),
                 "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "S2.B04←B04" in text and "S1.VV" in text  # S1 bands reported missing, B10 unused
    with rasterio.open(S2_SCENE) as src, rasterio.open(out) as dst:
        assert (dst.crs, dst.transform, dst.shape) == (src.crs, src.transform, src.shape)
        assert dst.colormap(1)[0][:3] == (230, 0, 77)  # reBEN class 0, CLC colour #e6004d
    assert out.with_suffix(".qml").exists()


def test_predict_bad_input(finetuned: dict[str, Path], tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    def fails(argv: list[str], needle: str) -> None:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("geofm: error: ") and needle in err, err

    out = tmp_path / "o.tif"
    model = str(finetuned["vit_seg"])
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(S2_SCENE.read_bytes()[:5000])
    fails(["predict", model, str(corrupt), "-o", str(out), "--quiet"], "corrupt.tif")
    assert not out.exists()
    # A plain ViT trained on S1 + S2 cannot run on a Sentinel-2-only scene.
    fails(["predict", model, str(S2_SCENE), "-o", str(out), "--quiet"], "S1.VV")
    assert not out.exists()
    out.write_text("existing")
    fails(["predict", str(finetuned["cvit_seg"]), str(S2_SCENE), "-o", str(out), "--quiet"],
          "exists")


def test_several_devices_give_the_same_map(finetuned: dict[str, Path], tmp_path: Path) -> None:
    import numpy as np

    from geofm.predict import predict_raster

    one, two = tmp_path / "one.tif", tmp_path / "two.tif"
    predict_raster(finetuned["cvit_seg"], S2_SCENE, one, tile=64, batch_size=2,
                   probabilities=True, progress=False)
    r = predict_raster(finetuned["cvit_seg"], S2_SCENE, two, tile=64, batch_size=2,
                       probabilities=True, device="cpu,cpu", progress=False)
    assert r["tiles"] > 4  # several batches were shared between the two replicas
    for a, b in ((one, two), (tmp_path / "one_probabilities.tif",
                              tmp_path / "two_probabilities.tif")):
        with rasterio.open(a) as da, rasterio.open(b) as db:
            np.testing.assert_array_equal(da.read(), db.read())


def test_more_gpus_than_available_is_one_line(finetuned: dict[str, Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    n = torch.cuda.device_count() + 1
    assert main(["predict", str(finetuned["cvit_seg"]), str(S2_SCENE), "-o",
                 str(tmp_path / "x.tif"), "--devices", str(n), "--quiet"]) == 2
    assert f"{n} GPUs requested" in capsys.readouterr().err


def test_embed_with_init_equals_the_positional_model(
        tiny_pretrained: Callable[..., Path], tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    encoder = str(tiny_pretrained("channelvit_test", 1))
    scene = crop(tmp_path / "scene.tif", 64)
    first = crop(tmp_path / "first.tif", 64, list(range(1, 7)))
    rest = crop(tmp_path / "rest.tif", 64, list(range(7, 14)))
    options = ["--embed", "--tile", "64", "--overlap", "0", "--quiet"]
    assert main(["predict", encoder, str(scene), "-o", str(tmp_path / "model.tif"),
                 *options]) == 0
    # with --init every positional is an input: the two files stack into the scene's bands
    assert main(["predict", "--init", encoder, str(first), str(rest), "-o",
                 str(tmp_path / "init.tif"), *options]) == 0
    with rasterio.open(tmp_path / "model.tif") as a, rasterio.open(tmp_path / "init.tif") as b:
        assert a.count == 32 and (a.transform, a.crs) == (b.transform, b.crs)
        assert np.array_equal(a.read(), b.read())
    one_line_error(["predict", "--init", encoder, str(scene), "-o", str(tmp_path / "x.tif")],
                   capsys, "predict (without --embed) needs a model with a task head",
                   "add --embed")
    assert not (tmp_path / "x.tif").exists()
