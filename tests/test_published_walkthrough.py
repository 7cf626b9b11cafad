"""docs/analyst_walkthrough.md section 7, "Map with DOFA on a Landsat-8 scene", run on a
synthetic Collection-2 Level-2 file (no Landsat scene ships with geofm): the real Sentinel-2
sample's reflectance written as Collection-2 DN, uint16, bands described as USGS names them."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

import geofm
from geofm.errors import GeofmError
from tests.conftest import S2_SCENE
from tests.published_files import write_release

REPO = Path(__file__).resolve().parents[1]
PRODUCT = "LC08_L2SP_014032_20240611_20240614_02_T1"
# Landsat 8 OLI SR bands and the Sentinel-2 band nearest in wavelength
L8_FROM_S2 = (("SR_B1", "B01"), ("SR_B2", "B02"), ("SR_B3", "B03"), ("SR_B4", "B04"),
              ("SR_B5", "B8A"), ("SR_B6", "B11"), ("SR_B7", "B12"))


def collection2_scene(path: Path, physical: bool = False) -> Path:
    """The S2 sample as a Landsat-8 Collection-2 L2 SR stack (30 m grid, uint16 DN, nodata 0);
    ``physical``: the same as float reflectance 0–1."""
    with rasterio.open(S2_SCENE) as src:
        names = list(src.descriptions)
        refl = src.read([names.index(s2) + 1 for _, s2 in L8_FROM_S2]) / 10000.0  # [7, H, W]
        crs, transform = src.crs, src.transform
    dn = np.clip(np.round((refl + 0.2) / 2.75e-5), 1, 65535).astype(np.uint16)
    data = refl.astype(np.float32) if physical else dn
    profile = {"driver": "GTiff", "width": data.shape[2], "height": data.shape[1],
               "count": 7, "dtype": str(data.dtype), "crs": crs, "nodata": 0,
               "transform": transform * Affine.scale(3.0)}  # Landsat's 30 m pixels
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        dst.descriptions = tuple(usgs for usgs, _ in L8_FROM_S2)
        dst.update_tags(LANDSAT_PRODUCT_ID=PRODUCT, SPACECRAFT_ID="LANDSAT_8",
                        PROCESSING_LEVEL="L2SP")
    return path


def section_cells() -> str:
    text = (REPO / "docs" / "analyst_walkthrough.md").read_text()
    section = text[text.index("## 7. Map with DOFA on a Landsat-8 scene"):]
    cells = re.findall(r"```py\n(.*?)```", section, flags=re.S)
    assert cells
    return "\n".join(cells)


@pytest.mark.slow
def test_dofa_on_a_collection2_landsat8_scene(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GEOFM_OFFLINE", "1")
    weights = write_release("dofa_base", tmp_path)
    scene = collection2_scene(tmp_path / f"{PRODUCT}_SR.tif")
    code = section_cells()
    for name, value in ((weights.name, weights), (scene.name, scene)):
        assert f'"{name}"' in code
        code = code.replace(f'"{name}"', repr(str(value)))
    from scipy.cluster.vq import kmeans2

    monkeypatch.chdir(tmp_path)
    space = {"geofm": geofm, "kmeans2": kmeans2, "__name__": "walkthrough"}
    with pytest.warns(geofm.errors.GeofmWarning, match="30 m but the model was trained at 10"):
        exec(compile(code, "analyst_walkthrough.md#7", "exec"), space)
    with rasterio.open(tmp_path / "dofa_zones.tif") as zones:
        assert zones.crs is not None and zones.res == (480.0, 480.0)  # 16 px of 30 m
        assert len(np.unique(zones.read(1))) > 1
    # the same scene as reflectance 0–1 is refused, or converted when declared
    physical = collection2_scene(tmp_path / "physical.tif", physical=True)
    dofa = space["dofa"]
    with pytest.raises(GeofmError, match="look like physical reflectance"):
        dofa.embed(str(physical), tile=224)
    declared = geofm.load("dofa_base", weights=weights, data_units="physical")
    np.testing.assert_allclose(declared.embed(str(physical), tile=224).values,
                               space["emb"].values, atol=2e-3)
