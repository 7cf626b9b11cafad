"""ONNX exports that QGIS Deepness loads: onnxruntime 1.17 (what its installer pins) reads them,
and ``--bands`` fixes the raster band order Deepness feeds by position."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
from rasterio.windows import Window

from geofm.cli import main
from geofm.errors import GeofmError
from geofm.export import export_onnx, read_metadata
from geofm.predict import predict_raster

from .conftest import REPO, S2_SCENE

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

ORT117 = Path(os.environ.get("GEOFM_ORT117", REPO / ".venv" / "ort117"))
"""onnxruntime 1.17 with numpy < 2, installed apart by ``make install``."""

S2_ORDER = ["S2.B01", "S2.B02", "S2.B03", "S2.B04", "S2.B05", "S2.B06", "S2.B07", "S2.B08",
            "S2.B8A", "S2.B09", "S2.B10", "S2.B11", "S2.B12"]


@pytest.fixture(scope="module")
def exported(finetuned: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    """ChannelViT segmentation with the checkpoint's 14 bands, and for 13-band L1C rasters."""
    out = tmp_path_factory.mktemp("onnx_deepness")
    return {
        "default": export_onnx(finetuned["cvit_seg"], out / "default.onnx"),
        "s2": export_onnx(finetuned["cvit_seg"], out / "s2.onnx", bands="s2"),
    }


def _scene_crop(dst: Path, order: list[int] | None = None) -> Path:
    """The top-left 120 × 120 pixels of the L1C scene, bands in ``order`` (0-based)."""
    with rasterio.open(S2_SCENE) as src:
        order = order or list(range(src.count))
        data = src.read([i + 1 for i in order], window=Window(0, 0, 120, 120))
        profile = src.profile
        names = [src.descriptions[i] for i in order]
        transform = src.window_transform(Window(0, 0, 120, 120))
    profile.update(width=120, height=120, transform=transform, tiled=False)
    profile.pop("blockxsize", None)
    profile.pop("blockysize", None)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        out.descriptions = names
    return dst


def _run(path: Path, raw: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"image": raw})[0]


_ORT117_CHILD = """
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import onnxruntime as ort

report = {"onnxruntime": ort.__version__, "numpy": np.__version__, "models": {}}
for model, data in zip(sys.argv[2::2], sys.argv[3::2]):
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    meta = dict(session.get_modelmeta().custom_metadata_map)
    np.save(data + ".out.npy", session.run(None, {"image": np.load(data)})[0])
    report["models"][model] = {k: json.loads(v) for k, v in meta.items()}
print(json.dumps(report))
"""


def test_onnxruntime_1_17_loads_and_runs_the_export(exported: dict[str, Path],
                                                     tmp_path: Path) -> None:
    if not (ORT117 / "onnxruntime").is_dir():
        pytest.skip(f"onnxruntime 1.17 is not installed in {ORT117} (make install puts it "
                    "there; or set GEOFM_ORT117)")
    args, raws = [], {}
    rng = np.random.default_rng(0)
    for name, path in exported.items():
        proto = onnx.load(str(path))
        assert proto.ir_version <= 9, f"{name}: IR {proto.ir_version} (onnxruntime 1.17: ≤ 9)"
        assert [(o.domain, o.version) for o in proto.opset_import] == [("", 17)]
        channels = len(read_metadata(path)["geofm_bands"])
        raws[name] = (rng.uniform(0, 3000, (2, channels, 120, 120))).astype(np.float32)
        np.save(tmp_path / f"{name}.npy", raws[name])
        args += [str(path), str(tmp_path / f"{name}.npy")]
    # Isolated from this environment's packages that would shadow the old ones (-I), with
    # the folder holding onnxruntime 1.17 and numpy 1.x first on the path.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    done = subprocess.run([sys.executable, "-I", "-c", _ORT117_CHILD, str(ORT117), *args],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["onnxruntime"].startswith("1.17."), report
    for name, path in exported.items():
        meta = report["models"][str(path)]
        assert meta["model_type"] == "Segmentor" and meta["tile_size"] == 120
        assert len(meta["standardization_mean"]) == len(meta["geofm_bands"])
        old = np.load(tmp_path / f"{name}.npy.out.npy")
        np.testing.assert_allclose(old, _run(path, raws[name]), atol=1e-5)


def test_export_bands_follow_the_raster_by_position(finetuned: dict[str, Path],
                                                    exported: dict[str, Path],
                                                    tmp_path: Path) -> None:
    meta = read_metadata(exported["s2"])
    assert meta["geofm_bands"] == S2_ORDER  # the L1C raster's 13 bands, B10 among them
    assert "S2.B10" not in meta["geofm_bands_used"]  # the model was not trained on it
    assert meta["geofm_bands_missing"] == ["S1.VV", "S1.VH"]
    assert len(meta["standardization_std"]) == 13
    crop = _scene_crop(tmp_path / "crop.tif")
    with rasterio.open(crop) as ds:
        raw = ds.read().astype(np.float32)[None]  # [1, 13, 120, 120] as Deepness feeds it
    scores = _run(exported["s2"], raw)  # [1, 19, 120, 120]
    # The same as geofm predict on that raster (one tile: no blending).
    r = predict_raster(finetuned["cvit_seg"], crop, tmp_path / "map.tif", tile=120,
                       progress=False)
    with rasterio.open(r["output"]) as ds:
        classes = ds.read(1)
    assert (scores[0].argmax(0) == classes).mean() > 0.999
    # A raster with its bands in another order: export with its order, same scores.
    order = list(range(13))[::-1]
    backwards = _scene_crop(tmp_path / "backwards.tif", order)
    path = export_onnx(finetuned["cvit_seg"], tmp_path / "backwards.onnx",
                       bands=",".join(S2_ORDER[i].removeprefix("S2.") for i in order))
    with rasterio.open(backwards) as ds:
        raw_backwards = ds.read().astype(np.float32)[None]
    np.testing.assert_allclose(_run(path, raw_backwards), scores, atol=1e-5)


def test_export_bands_refusals_and_the_printed_order(finetuned: dict[str, Path],
                                                     tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # A plain ViT trained on S1 + S2 cannot run on Sentinel-2 rasters alone.
    with pytest.raises(GeofmError, match=r"S1\.VV"):
        export_onnx(finetuned["vit_seg"], tmp_path / "vit.onnx", bands="s2", tile_size=64)
    assert main(["export", str(finetuned["vit_seg"]), "--onnx", str(tmp_path / "v.onnx"),
                 "--bands", "B02,B03,nonsense"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and err.startswith("geofm: error: ") and len(
        err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # The command prints the raster band order Deepness needs.
    assert main(["export", str(finetuned["cvit_seg"]), "--onnx",
                 str(tmp_path / "s2.onnx"), "--bands", "s2"]) == 0
    out = capsys.readouterr().out
    assert "raster bands, in this order: 1 S2.B01, 2 S2.B02," in out
    assert "11 S2.B10 (unused), 12 S2.B11, 13 S2.B12" in out
    assert "model bands the rasters lack: S1.VV, S1.VH" in out
