"""A prediction as a QGIS user gets it: QGIS itself loads the raster, its style and statistics.

Runs Debian's headless ``qgis_process.bin`` (the ``qgis_process`` wrapper script fails on
Debian) and PyQGIS under the system ``/usr/bin/python3`` (``python3-qgis`` is not in the venv),
both with ``QT_QPA_PLATFORM=offscreen`` and a private ``HOME`` / ``XDG_RUNTIME_DIR``. The input
is the real Sentinel-2 L1C scene, with a block marked nodata; the model is a ChannelViT
segmentation checkpoint finetuned briefly on the reBEN sample.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from geofm.checkpoint import read_card
from geofm.predict import predict_raster

from .conftest import QGIS_MARKER, S2_SCENE, SYSTEM_PYTHON, clean_env, has_pyqgis, qgis_json

QGIS_PROCESS = Path("/usr/bin/qgis_process.bin")
NODATA_BLOCK = (slice(0, 40), slice(0, 64))
"""Rows and columns of the input set to its nodata value (0)."""


pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not QGIS_PROCESS.exists() and not has_pyqgis(),
    reason="QGIS is not installed (no /usr/bin/qgis_process.bin and no qgis module for "
           "/usr/bin/python3): apt-get install -y --no-install-recommends qgis")]

STYLE_SCRIPT = """
import json, os, sys
from qgis.core import QgsApplication, QgsRasterLayer

app = QgsApplication([], False)
app.initQgis()
path, qml, marker = sys.argv[1:4]

def classes(renderer):
    if renderer.type() != "paletted":
        return None
    return [[int(c.value), c.label, c.color.name(), c.color.alpha()]
            for c in renderer.classes()]

layer = QgsRasterLayer(path, "prediction")  # loads <base name>.qml as its default style
provider = layer.dataProvider()
out = {
    "valid": layer.isValid(),
    "crs": layer.crs().authid(),
    "size": [layer.width(), layer.height()],
    "renderer": layer.renderer().type(),
    "classes": classes(layer.renderer()),
    "default_style_loaded": layer.loadDefaultStyle()[1],
    "color_table": [[int(i.value), i.label, i.color.name(), i.color.alpha()]
                    for i in provider.colorTable(1)],
    "nodata": [provider.sourceHasNoDataValue(1), provider.sourceNoDataValue(1)],
    "has_overviews": provider.hasPyramids(),
}
message, ok = layer.loadNamedStyle(qml)
out["named_style"] = {"ok": ok, "message": message, "renderer": layer.renderer().type(),
                      "classes": classes(layer.renderer())}
print(marker + json.dumps(out), flush=True)
os._exit(0)  # skip QGIS teardown: nothing to save, and exitQgis can crash in scripts
"""


@pytest.fixture(scope="module")
def qgis_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("qgis")
    (root / "home").mkdir()
    (root / "xdg").mkdir(mode=0o700)
    return clean_env(HOME=str(root / "home"), XDG_RUNTIME_DIR=str(root / "xdg"))


@pytest.fixture(scope="module")
def prediction(finetuned: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, Any]:
    """``geofm predict`` on the real scene, with a nodata block in the input."""
    ckpt = finetuned["cvit_seg"]
    root = tmp_path_factory.mktemp("prediction")
    scene = root / "scene.tif"
    with rasterio.open(S2_SCENE) as src:
        profile = {**src.profile, "nodata": 0}
        data = src.read()
        descriptions = src.descriptions
    data[(slice(None), *NODATA_BLOCK)] = 0
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = descriptions
    info = predict_raster(ckpt, scene, root / "landcover.tif", progress=False)
    return {**info, "checkpoint": ckpt, "card": read_card(ckpt)}


@pytest.mark.skipif(not QGIS_PROCESS.exists(), reason="no /usr/bin/qgis_process.bin")
def test_qgis_raster_statistics_match_numpy(prediction: dict[str, Any],
                                            qgis_env: dict[str, str], tmp_path: Path) -> None:
    tif, html = Path(prediction["output"]), tmp_path / "stats.html"
    cmd = [str(QGIS_PROCESS), "--json", "run", "native:rasterlayerstatistics",
           f"--INPUT={tif}", "--BAND=1", f"--OUTPUT_HTML_FILE={html}"]
    done = subprocess.run(cmd, env=qgis_env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = json.loads(done.stdout[done.stdout.index("{"):])["results"]
    assert html.exists()

    with rasterio.open(tif) as ds:
        classes = ds.read(1)
        nodata = ds.nodata
    assert nodata == 255
    assert (classes[NODATA_BLOCK] == nodata).all()  # the input's nodata stays nodata
    valid = classes[classes != nodata].astype(np.float64)
    assert 0 < valid.size < classes.size
    assert results["MIN"] == valid.min() and results["MAX"] == valid.max()
    assert results["RANGE"] == valid.max() - valid.min()
    assert results["SUM"] == pytest.approx(valid.sum(), rel=1e-12)
    assert results["MEAN"] == pytest.approx(valid.mean(), rel=1e-9)
    assert results["STD_DEV"] == pytest.approx(valid.std(ddof=1), rel=1e-6)
    assert results["MAX"] < len(prediction["card"].classes)


@pytest.mark.skipif(not has_pyqgis(), reason="no qgis Python module for /usr/bin/python3")
def test_qgis_loads_style_colour_table_and_class_names(prediction: dict[str, Any],
                                                       qgis_env: dict[str, str],
                                                       tmp_path: Path) -> None:
    tif, qml = Path(prediction["output"]), Path(prediction["qml"])
    assert qml == tif.with_suffix(".qml") and qml.exists()
    script = tmp_path / "style.py"
    script.write_text(STYLE_SCRIPT)
    cmd = [str(SYSTEM_PYTHON), str(script), str(tif), str(qml), QGIS_MARKER]
    done = subprocess.run(cmd, env=qgis_env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    got = qgis_json(done.stdout)

    card = prediction["card"]
    names, colors = list(card.classes), [c.lower() for c in card.class_colors]
    expected = [[i, name, color, 255] for i, (name, color) in enumerate(zip(names, colors))]
    assert got["valid"] and got["size"] == [256, 256]
    with rasterio.open(S2_SCENE) as src:
        assert got["crs"] == f"EPSG:{src.crs.to_epsg()}"
    # The .qml sidecar is QGIS's default style: a paletted legend with exactly the model's
    # classes (a style made from the colour table alone would list all 256 entries).
    assert got["default_style_loaded"] is True
    assert got["renderer"] == "paletted" and got["classes"] == expected
    assert got["named_style"] == {"ok": True, "message": "", "renderer": "paletted",
                                  "classes": expected}
    # The GeoTIFF's own colour table and GDAL category names, as QGIS's GDAL provider reads
    # them (for users who drop the .qml).
    assert got["color_table"][:len(names)] == expected
    assert got["nodata"] == [True, 255.0]
    assert got["has_overviews"] is True
