"""OpticalRS builder on images cut from the real scenes: exclusion, slicing, dedup, leakage, resume.

The collection is written into a temporary folder at test time (datasets/opticalrs_sample/CARD.md
describes it): quadrants of the real Sentinel-2 L1C scene as 13-band uint16 GeoTIFFs, true-colour
reBEN patches as PNG, with planted exact duplicates (PNG re-saved as GeoTIFF), near duplicates
(rescaled, JPEG re-compressed), an eval source whose images reappear altered in the pretrain
sources, and blank, mostly-transparent, tiny, corrupt and grey images.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rasterio
import yaml
import zarr
from affine import Affine
from PIL import Image
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from shapely.geometry import Point

import geofm
from geofm.builders import opticalrs, opticalrs_pixels
from geofm.builders.opticalrs import build_opticalrs, chip_offsets, grid_shape
from geofm.errors import BuildError, StoreError
from geofm.io.schema import REQUIRED_COLUMNS
from geofm.io.store import validate_store

from .conftest import REBEN_MINI, REPO, S2_SCENE

CHIP = 64
SAMPLE_MANIFEST = REPO / "datasets" / "opticalrs_sample" / "manifest.yaml"


def _stretch(raw: np.ndarray) -> np.ndarray:
    """``[3, H, W]`` reflectance → ``[H, W, 3]`` uint8, 2nd–98th percentile of all three bands."""
    lo, hi = np.percentile(raw.astype(np.float64), [2, 98])
    x = (raw.astype(np.float32) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).transpose(1, 2, 0).copy()


def _reben_rgb() -> list[np.ndarray]:
    """The six real reBEN patches as true-colour ``[120, 120, 3]`` uint8, by patch id."""
    out = []
    for red in sorted(REBEN_MINI.glob("BigEarthNet-S2/*/*/*_B04.tif")):
        bands = []
        for b in ("B04", "B03", "B02"):
            with rasterio.open(str(red).replace("_B04.tif", f"_{b}.tif")) as ds:
                bands.append(ds.read(1))
        out.append(_stretch(np.stack(bands)))
    return out


def _png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def _jpeg(path: Path, pixels: np.ndarray, quality: int, size: int | None = None) -> None:
    im = Image.fromarray(pixels)
    if size:
        im = im.resize((size, size), Image.Resampling.BILINEAR)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=quality)


def _tif(path: Path, bands: np.ndarray) -> None:
    """A GeoTIFF without georeferencing of ``[C, H, W]`` pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2],
                           height=bands.shape[1], count=len(bands), dtype=bands.dtype) as ds:
            ds.write(bands)


def _tif8(path: Path, pixels: np.ndarray) -> None:
    _tif(path, pixels.transpose(2, 0, 1))


def _s2_quadrant(path: Path, row: int, col: int, nodata_block: bool = False) -> None:
    """A 128 × 128 px quadrant of the real 13-band scene as a georeferenced GeoTIFF."""
    with rasterio.open(S2_SCENE) as src:
        win = Window(col * 128, row * 128, 128, 128)
        data = src.read(window=win)
        profile = src.profile | {"width": 128, "height": 128,
                                 "transform": src.transform @ Affine.translation(col * 128,
                                                                                 row * 128)}
        descriptions = src.descriptions
    if nodata_block:
        data[:, :CHIP, :CHIP] = 0
        profile["nodata"] = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        for i, d in enumerate(descriptions, 1):
            ds.set_band_description(i, d)


def make_collection(root: Path) -> Path:
    """Write the test collection and its manifest under ``root``; return the manifest."""
    with rasterio.open(S2_SCENE) as src:
        scene = _stretch(src.read([4, 3, 2]))  # one stretch for the whole scene
    q11 = scene[128:, 128:]
    r = _reben_rgb()
    for (row, col) in ((0, 0), (0, 1), (1, 0), (1, 1)):
        _s2_quadrant(root / "scene" / f"Q{row}{col}.tif", row, col,
                     nodata_block=(row, col) == (1, 0))
    a = root / "aerial"
    for k in range(4):
        _png(a / f"R{k + 1}.png", r[k])
    _tif8(a / "copies" / "R1.tif", r[0])
    _jpeg(a / "R2_small.jpg", r[1], 80, size=90)
    _jpeg(a / "R3_q60.jpg", r[2], 60)
    _jpeg(a / "R6_bright.jpg", np.clip(r[5].astype(int) + 8, 0, 255).astype(np.uint8), 85)
    _jpeg(a / "Q11_small.jpg", q11, 85, size=96)
    _png(a / "blank.png", np.broadcast_to(np.uint8([90, 110, 70]), (100, 100, 3)).copy())
    alpha = np.zeros((120, 120), np.uint8)
    alpha[:60, :48] = 255
    _png(a / "hole.png", np.dstack([r[3][:, ::-1], alpha]))
    _png(a / "tiny.png", r[0][:20, :20])
    buf = io.BytesIO()
    Image.fromarray(r[4]).save(buf, "PNG")
    (a / "broken.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) * 6 // 10])
    (a / "notes.jpg").write_text("not an image")
    _png(a / "gray.png", r[0][:, :, 1])
    _png(a / "small.png", scene[10:50, 140:196])
    _tif8(root / "extra" / "R4.tif", r[3])
    _png(root / "extra" / "R2_big.png",
         np.asarray(Image.fromarray(r[1]).resize((180, 180), Image.Resampling.BILINEAR)))
    b = root / "bench"
    _png(b / "Q11.png", q11)
    _png(b / "R6.png", r[5])
    _png(b / "R5.png", r[4])
    manifest = {"sources": [
        {"name": "scene", "path": ["scene/*.tif"], "role": "pretrain", "gsd_m": 10,
         "licence": "Copernicus Sentinel data terms"},
        {"name": "aerial", "path": "aerial", "role": "pretrain", "licence": "CDLA-Permissive-1.0"},
        {"name": "extra", "path": ["extra/R4.tif", "extra/R2_big.png"], "role": "pretrain",
         "licence": "CDLA-Permissive-1.0"},
        {"name": "bench", "path": "bench", "role": "eval", "licence": "CDLA-Permissive-1.0"},
    ]}
    path = root / "manifest.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


EXPECTED_SOURCES = {
    "scene": {"images": 4, "kept": 3, "eval": 0, "dropped": {"eval_duplicate": 1},
              "chips": 11, "chips_dropped": {"mostly_nodata": 1}},
    "aerial": {"images": 16, "kept": 4, "eval": 0,
               "dropped": {"unreadable": 2, "no_rgb": 1, "too_small": 1, "mostly_nodata": 1,
                           "near_constant": 1, "eval_duplicate": 2, "exact_duplicate": 1,
                           "near_duplicate": 3},
               "chips": 13, "chips_dropped": {}},
    "extra": {"images": 2, "kept": 1, "eval": 0, "dropped": {"exact_duplicate": 1}, "chips": 9,
              "chips_dropped": {}},
    "bench": {"images": 3, "kept": 0, "eval": 3, "dropped": {}, "chips": 0, "chips_dropped": {}},
}
EXPECTED_CLUSTERS = {
    ("aerial/R1.png", frozenset({("aerial/R1.png", "kept"),
                                 ("aerial/copies/R1.tif", "exact_duplicate")})),
    ("extra/R2_big.png", frozenset({("aerial/R2.png", "near_duplicate"),
                                    ("aerial/R2_small.jpg", "near_duplicate"),
                                    ("extra/R2_big.png", "kept")})),
    ("aerial/R3.png", frozenset({("aerial/R3.png", "kept"),
                                 ("aerial/R3_q60.jpg", "near_duplicate")})),
    ("aerial/R4.png", frozenset({("aerial/R4.png", "kept"),
                                 ("extra/R4.tif", "exact_duplicate")})),
    (None, frozenset({("scene/Q11.tif", "eval_duplicate"),
                      ("aerial/Q11_small.jpg", "eval_duplicate"), ("bench/Q11.png", "eval")})),
    (None, frozenset({("aerial/R6_bright.jpg", "eval_duplicate"), ("bench/R6.png", "eval")})),
}
KEPT_IMAGES = {"scene/Q00.tif", "scene/Q01.tif", "scene/Q10.tif", "aerial/R1.png",
               "aerial/R3.png", "aerial/R4.png", "aerial/small.png", "extra/R2_big.png"}


def _build(manifest: Path, out: Path, **kw: object) -> Path:
    args = {"chip": CHIP, "scheduler": "synchronous", "batch_images": 5, "shard_chips": 8,
            "progress": False} | kw
    return build_opticalrs(manifest, out, **args)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_collection(tmp_path_factory.mktemp("collection"))


@pytest.fixture(scope="module")
def built(collection: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(collection, tmp_path_factory.mktemp("stores") / "opticalrs.zarr")


def _report(store: Path) -> dict:
    return json.loads((store / "report.json").read_text())


def test_counts_per_source_and_reason(built: Path) -> None:
    report = _report(built)
    got = {name: {k: r[k] for k in ("images", "kept", "eval", "dropped", "chips", "chips_dropped")}
           for name, r in report["sources"].items()}
    assert got == EXPECTED_SOURCES
    assert report["totals"]["chips"] == 33 and len(geofm.open_store(built)) == 33
    assert report["unreadable"][0]["image"] == "aerial/broken.png"
    md = (built / "report.md").read_text()
    cells = ["aerial", "pretrain", "CDLA-Permissive-1.0", 16, 4, 0, 2, 1, 1, 1, 1, 2, 1, 3, 13, 0]
    assert "| " + " | ".join(map(str, cells)) + " |" in md


def test_duplicate_clusters(built: Path) -> None:
    clusters = _report(built)["clusters"]
    got = {(c["kept"], frozenset((m["image"], m["outcome"]) for m in c["members"]))
           for c in clusters}
    assert got == EXPECTED_CLUSTERS
    for c in clusters:  # re-encoding and rescaling move few bits
        assert all(m["distance"] <= 4 for m in c["members"])
    images = pd.read_parquet(built / "images.parquet")
    assert (images["cluster"] >= 0).sum() == sum(len(c["members"]) for c in clusters)


def test_eval_images_and_their_duplicates_never_enter_the_store(built: Path) -> None:
    chips = geofm.open_store(built).chips
    stored = set(chips["chip_id"].str.rsplit("/", n=2).str[0])
    assert stored == KEPT_IMAGES
    assert not any("Q11" in p or "R6" in p or "bench" in p for p in chips["image_path"])
    assert (chips["split"] == "train").all()
    assert geofm.open_store(built).attrs["split"]["method"] == "opticalrs-pretrain"


def test_pixels_are_the_stretched_scene(built: Path) -> None:
    store = geofm.open_store(built)
    chips = store.chips
    k = np.flatnonzero(chips["chip_id"] == "scene/Q01.tif/64/0")[0]
    with rasterio.open(S2_SCENE) as src:
        expected = _stretch(src.read([4, 3, 2], window=Window(128, 0, 128, 128)))
    got = store.read([k])["image"][0]
    np.testing.assert_array_equal(got, expected[64:, :64].transpose(2, 0, 1))
    assert store.bands == list(geofm.BAND_SETS["rgb"]) and store.attrs["dtype"] == "uint8"
    small = chips[chips["image_path"].str.endswith("small.png")]
    assert list(small["chip_id"]) == ["aerial/small.png/0/0"]  # 40×56 → 64×90, one chip
    assert small["image_scale"].iloc[0] == pytest.approx(1.6)


def test_chip_table_footprints(built: Path) -> None:
    assert validate_store(built, deep=True) == []
    chips = geofm.open_store(built).chips
    assert set(REQUIRED_COLUMNS) | {"licence", "image_path"} <= set(chips.columns)
    geo = chips[chips["source"] == "scene"]
    assert len(geo) == 11 and (geo["crs"] == "EPSG:32618").all()
    for row in geo.itertuples():
        assert row.geometry.contains(Point(row.centroid_lon, row.centroid_lat))
        assert -75.8 < row.centroid_lon < -75.5 and 37.5 < row.centroid_lat < 37.8
        assert row.transform[0] == 10.0 and row.gsd_m == 10.0
    plain = chips[chips["source"] != "scene"]
    assert plain.geometry.isna().all() and plain["crs"].isna().all()
    assert chips["time"].isna().all() and chips["tile"].isna().all()


def _same_store(a: Path, b: Path) -> None:
    ra, rb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    np.testing.assert_array_equal(ra["image"][:], rb["image"][:])
    ta, tb = geofm.open_store(a).chips, geofm.open_store(b).chips
    pd.testing.assert_frame_equal(pd.DataFrame(ta.drop(columns="geometry")),
                                  pd.DataFrame(tb.drop(columns="geometry")))
    assert list(ta.geometry.to_wkb()) == list(tb.geometry.to_wkb())
    assert geofm.open_store(a).attrs["stats"] == geofm.open_store(b).attrs["stats"]
    ra, rb = _report(a), _report(b)
    for r in (ra, rb):
        r["params"].pop("batch_images")  # how the scan was batched does not matter
    assert ra == rb


def test_deterministic(collection: Path, built: Path, tmp_path: Path) -> None:
    again = _build(collection, tmp_path / "again.zarr", batch_images=64)
    _same_store(built, again)
    assert not (tmp_path / "again.zarr.scan").exists()


KILL_SCRIPT = """
import os, signal, sys
import geofm.builders.opticalrs as o
done = []
original = o.write_region
def write_then_die(*a, **k):
    if len(done) == 2:   # third region: pixels written, marker not yet -> kill -9
        import zarr
        zarr.open_group(str(a[0]), mode="r+")["image"][16:24] = 77
        os.kill(os.getpid(), signal.SIGKILL)
    original(*a, **k)
    done.append(1)
o.write_region = write_then_die
o.build_opticalrs(sys.argv[1], sys.argv[2], chip=64, scheduler="synchronous", batch_images=5,
                  shard_chips=8, progress=False)
"""


def test_resume_after_crashes_gives_identical_store(collection: Path, built: Path,
                                                    tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "crashed.zarr"
    original = opticalrs.scan_image
    seen: list[str] = []

    def scan_then_fail(path: str, *a: object) -> dict:
        seen.append(path)
        if len(seen) == 12:
            raise RuntimeError("worker lost")
        return original(path, *a)  # type: ignore[arg-type]

    monkeypatch.setattr(opticalrs, "scan_image", scan_then_fail)
    with pytest.raises(RuntimeError, match="worker lost"):
        _build(collection, out)
    assert not out.exists() and len(list((tmp_path / "crashed.zarr.scan").glob("batch-*"))) == 2
    monkeypatch.setattr(opticalrs, "scan_image", original)

    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(collection), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(StoreError, match="unfinished build"):
        geofm.open_store(out)
    _build(collection, out)
    _same_store(built, out)
    assert not (tmp_path / "crashed.zarr.scan").exists()


def _manifest(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "m.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return path


def _src(**kw: object) -> dict:
    return {"name": "a", "path": "imgs", "role": "pretrain", "licence": "CC0"} | kw


@pytest.mark.parametrize(("doc", "message", "named"), [
    (None, "manifest not found", "missing.yaml"),
    ("", "lists no sources", "m.yaml"),
    ({"sources": []}, "lists no sources", "m.yaml"),
    ("sources: [a: b", "not valid YAML", "m.yaml"),
    ({"sources": [_src(path="nowhere")]}, "source 'a': path not found", "nowhere"),
    ({"sources": [_src(path=["imgs/*.jp2"])]}, "pattern matches no image file", "*.jp2"),
    ({"sources": [_src(path="empty")]}, "holds no image files", "empty"),
    ({"sources": [_src(role="test")]}, "role must be one of", "m.yaml"),
    ({"sources": [_src(), _src()]}, "source names used twice", "m.yaml"),
    ({"sources": [_src(role="eval")]}, "has no 'pretrain' source", "m.yaml"),
    ({"sources": [_src(licence=None)]}, "has no 'licence'", "m.yaml"),
    ({"sources": [_src(colour="rgb")]}, "unknown keys", "m.yaml"),
    ({"sources": [_src(stretch=[10, 5])]}, "'stretch' must be", "m.yaml"),
])
def test_bad_manifest_is_one_line_naming_the_file(tmp_path: Path, doc: object, message: str,
                                                  named: str) -> None:
    _png(tmp_path / "imgs" / "a.png", np.zeros((8, 8, 3), np.uint8))
    (tmp_path / "empty").mkdir()
    path = tmp_path / "missing.yaml" if doc is None else _manifest(tmp_path, doc)
    out = tmp_path / "out.zarr"
    with pytest.raises(BuildError, match=message) as e:
        _build(path, out)
    assert "\n" not in str(e.value) and named in str(e.value)
    assert not out.exists() and not (tmp_path / "out.zarr.scan").exists()


def test_nothing_left_fails_and_leaves_nothing(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "blank.png", np.full((80, 80, 3), 7, np.uint8))
    path = _manifest(tmp_path, {"sources": [_src()]})
    with pytest.raises(BuildError, match="no chip left"):
        _build(path, tmp_path / "out.zarr")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["imgs", "m.yaml"]


def test_output_that_holds_something_else_is_refused(collection: Path, built: Path) -> None:
    with pytest.raises(StoreError, match="output already exists"):
        _build(collection, built)


def test_rgb_from_band_descriptions() -> None:
    pick = opticalrs_pixels._by_description
    s2 = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
          "B12"]
    assert pick(s2, None) == (4, 3, 2)
    assert pick(["B4", "B3", "B2"], None) == (1, 2, 3)  # Landsat 8 and 9 agree
    assert pick(["Blue", "Green", "Red", "NIR"], None) == (3, 2, 1)
    assert pick(["", "", ""], None) is None
    with pytest.raises(opticalrs._Excluded, match="several sensors"):
        pick(["B01", "B02", "B03", "B04"], None)  # Sentinel-2 or MODIS
    assert pick(["B01", "B02", "B03", "B04"], "MODIS") == (1, 4, 3)


def test_slicing_rule() -> None:
    assert chip_offsets(224, 224) == [0]
    assert chip_offsets(336, 224) == [0]  # 112 px left: half a chip, left out
    assert chip_offsets(337, 224) == [0, 113]  # more than half: one chip on the edge
    assert chip_offsets(600, 224, overlap=24) == [0, 200, 376]
    assert chip_offsets(100, 224) == []
    assert grid_shape(40, 56, 64) == (64, 90) and grid_shape(300, 100, 224) == (672, 224)
    assert grid_shape(500, 400, 224) == (500, 400)


def test_sample_manifest_builds_the_real_scene(tmp_path: Path) -> None:
    out = _build(SAMPLE_MANIFEST, tmp_path / "sample.zarr", shard_chips=256)
    store = geofm.open_store(out)
    assert len(store) == 16 and store.chips["crs"].eq("EPSG:32618").all()
    assert _report(out)["sources"]["s2_l1c_scene"]["kept"] == 1


@pytest.mark.slow
def test_dask_local_cluster_build_equals_synchronous(collection: Path, built: Path,
                                                      tmp_path: Path) -> None:
    out = _build(collection, tmp_path / "dask.zarr", scheduler=None, workers=1)
    _same_store(built, out)


def test_large_images_are_read_in_strips(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with rasterio.open(S2_SCENE) as src:
        scene = _stretch(src.read([4, 3, 2]))
    top = np.concatenate([scene, scene[:, ::-1], scene[::-1]], axis=1)
    bottom = np.concatenate([scene[::-1, ::-1], scene.transpose(1, 0, 2), scene], axis=1)
    mosaic = np.concatenate([top, bottom], axis=0)
    assert mosaic.shape == (512, 768, 3)  # over the 512 px preview: decimated, then strips
    _png(tmp_path / "big" / "mosaic.png", mosaic)
    raw = []
    for red in sorted(REBEN_MINI.glob("BigEarthNet-S2/*/*/*_B04.tif")):
        bands = []
        for b in ("B02", "B03", "B04"):  # blue, green, red: the manifest names the bands
            with rasterio.open(str(red).replace("_B04.tif", f"_{b}.tif")) as ds:
                bands.append(ds.read(1))
        raw.append(np.stack(bands))
    patches = np.concatenate([np.concatenate(raw[:3], axis=2), np.concatenate(raw[3:], axis=2)],
                             axis=1)
    sixteen = np.kron(patches, np.ones((1, 2, 2), np.uint16))  # [3, 480, 720]
    _tif(tmp_path / "s16.tif", sixteen)
    path = _manifest(tmp_path, {"sources": [
        _src(name="big", path="big"),
        _src(name="sixteen", path=["s16.tif"], bands=[3, 2, 1], stretch=[0, 3000])]})
    out = _build(path, tmp_path / "big.zarr", chip=224)
    store = geofm.open_store(out)
    images = pd.read_parquet(out / "images.parquet").set_index("relpath")
    header = b"512x768x3:"
    assert images.loc["mosaic.png", "sha1"] == hashlib.sha1(header + mosaic.tobytes()).hexdigest()
    chips = store.chips
    assert list(chips["chip_id"]) == [f"big/mosaic.png/{y}/{x}" for y in (0, 224)
                                      for x in (0, 224, 448)] + \
        [f"sixteen/s16.tif/{y}/{x}" for y in (0, 224) for x in (0, 224, 448)]
    pixels = store.read(np.arange(12))["image"]
    rgb16 = sixteen[::-1].astype(np.float32) * np.float32(255 / 3000)
    expected16 = np.clip(np.rint(rgb16), 0, 255).astype(np.uint8)
    for k, row in enumerate(chips.itertuples()):
        y, x = row.image_row, row.image_col
        want = mosaic[y:y + 224, x:x + 224].transpose(2, 0, 1) if k < 6 else \
            expected16[:, y:y + 224, x:x + 224]
        np.testing.assert_array_equal(pixels[k], want)
    params = opticalrs.Params(chip=224)
    streamed = opticalrs.scan_image(tmp_path / "big" / "mosaic.png",
                                    opticalrs.Source("big", "pretrain", "CC0"), params)
    as_eval = opticalrs.scan_image(tmp_path / "big" / "mosaic.png",
                                   opticalrs.Source("big", "eval", "CC0"), params)
    monkeypatch.setattr(opticalrs, "PREVIEW_PX", 4096)
    in_memory = opticalrs.scan_image(tmp_path / "big" / "mosaic.png",
                                     opticalrs.Source("big", "pretrain", "CC0"), params)
    assert streamed["sha1"] == in_memory["sha1"] == as_eval["sha1"] == images.loc["mosaic.png",
                                                                                    "sha1"]
    assert as_eval["status"] == "eval" and as_eval["chip_y"] == []
    for key in ("chip_y", "chip_x", "chip_status"):
        assert streamed[key] == in_memory[key]
    assert bin(streamed["phash"] ^ in_memory["phash"]).count("1") <= 4


def test_bands_named_in_the_manifest(collection: Path) -> None:
    q00 = collection.parent / "scene" / "Q00.tif"
    with opticalrs._open(q00) as ds:
        assert opticalrs_pixels._rgb_bands(ds, opticalrs.Source("s", "pretrain", "x")) == (4, 3, 2)
        named = opticalrs.Source("s", "pretrain", "x", bands=("b04", "B03", 2))
        assert opticalrs_pixels._rgb_bands(ds, named) == (4, 3, 2)
        for wrong in (("B04", "B03", "B99"), (4, 3, 14)):
            with pytest.raises(opticalrs._Excluded):
                opticalrs_pixels._rgb_bands(ds, opticalrs.Source("s", "pretrain", "x", bands=wrong))


def test_cli_builds_the_sample_manifest(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.cli import main

    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "sample.zarr"
    manifest = repo / "datasets" / "opticalrs_sample" / "manifest.yaml"
    assert main(["build", "opticalrs", str(manifest), str(out), "--chip", "64",
                 "--scheduler", "synchronous", "--quiet"]) == 0
    import geofm

    store = geofm.open_store(out)
    assert store.bands == ["RGB.R", "RGB.G", "RGB.B"] and len(store) == 16
    assert main(["build", "opticalrs", str(tmp_path / "missing.yaml"), str(tmp_path / "x.zarr"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("geofm: error: ") and "missing.yaml" in err
