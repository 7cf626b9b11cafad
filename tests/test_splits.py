"""Tests for geofm.curation.splits: reBEN tile rule, spatial blocks, regions, polygons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyproj
import pytest

from geofm.curation.splits import (
    _ease2_parallel_scale,
    block_split,
    mgrs_tile_origin,
    polygon_split,
    reben_tile_split,
    region_split,
)
from geofm.errors import GeofmError

REPO = Path(__file__).resolve().parents[1]
REBEN_ROOTS = [REPO / "datasets" / "reben_mini", REPO.parent / "shared" / "data" / "reben_mini"]

# The reBEN split of the six real patches (shared/data README, "Split rule" table).
REBEN_EXPECTED = {
    "87_48": "train",
    "04_55": "train",
    "36_85": "train",
    "56_35": "test",
    "69_24": "validation",
    "57_38": "test",
}
EARTH_RADIUS_KM = 6371.0088


def _haversine_km(lon1, lat1, lon2, lat2) -> np.ndarray:
    """Great-circle distances [N, M] between two sets of points in degrees."""
    p1, p2 = np.radians(lat1)[:, None], np.radians(lat2)[None, :]
    dlam = np.radians(lon2)[None, :] - np.radians(lon1)[:, None]
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dlam / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


@pytest.fixture(scope="module")
def reben_patches() -> pd.DataFrame:
    """The six real reBEN patches: tile, CRS, 10 m bounds (from B02's transform), split."""
    rasterio = pytest.importorskip("rasterio")
    root = next((r for r in REBEN_ROOTS if (r / "metadata.parquet").exists()), None)
    if root is None:
        pytest.skip("reben_mini sample not found")
    meta = pd.read_parquet(root / "metadata.parquet")
    rows = []
    for patch_id, split in zip(meta["patch_id"], meta["split"]):
        tile_dir = patch_id.rsplit("_", 2)[0]
        path = root / "BigEarthNet-S2" / tile_dir / patch_id / f"{patch_id}_B02.tif"
        with rasterio.open(path) as src:
            bounds, crs = src.bounds, src.crs.to_string()
        col, row = (int(v) for v in patch_id.rsplit("_", 2)[1:])
        rows.append(
            {
                "name": f"{col:02d}_{row:02d}",
                "tile": tile_dir.rsplit("_", 1)[1][1:],  # "T29UPU" -> "29UPU"
                "crs": crs,
                "left": bounds.left,
                "top": bounds.top,
                "x": (bounds.left + bounds.right) / 2,
                "y": (bounds.bottom + bounds.top) / 2,
                "col": col,
                "row": row,
                "split": split,
            }
        )
    return pd.DataFrame(rows)


# --- reBEN tile rule --------------------------------------------------------------------------


def test_reben_rule_reproduces_the_six_real_patches(reben_patches: pd.DataFrame) -> None:
    got = reben_tile_split(
        reben_patches["tile"], reben_patches["x"], reben_patches["y"], reben_patches["crs"]
    )
    assert dict(zip(reben_patches["name"], got)) == REBEN_EXPECTED
    assert list(got) == list(reben_patches["split"])  # the official metadata agrees


def test_patch_corners_sit_on_the_mgrs_tile_grid(reben_patches: pd.DataFrame) -> None:
    for p in reben_patches.itertuples():
        ulx, uly = mgrs_tile_origin(p.tile, p.y)
        assert 0 <= (ulx + p.col * 1200) - p.left <= 40
        assert 0 <= p.top - (uly - p.row * 1200) <= 40


def test_mgrs_origins_of_known_tiles() -> None:
    # Munich in 32UPU (even zone: rows start at F), Sydney in 56HLH (southern hemisphere).
    to_utm32 = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32632", always_xy=True)
    x, y = to_utm32.transform(11.575, 48.137)
    assert mgrs_tile_origin("32UPU", y) == (600_000.0, 5_400_000.0)
    assert reben_tile_split(["32UPU"], [x], [y], "EPSG:32632")[0] in {"train", "validation"}
    to_utm56s = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32756", always_xy=True)
    x, y = to_utm56s.transform(151.209, -33.868)
    assert mgrs_tile_origin("T56HLH", y) == (300_000.0, 6_300_000.0)
    assert reben_tile_split(["56HLH"], [x], [y], "EPSG:32756")[0] != ""


def test_reben_rule_areas_and_ring_edges() -> None:
    ulx, uly = mgrs_tile_origin("29UPU", 5_850_000.0)
    side = 109_800.0
    g = (np.arange(600) + 0.5) * side / 600  # [600] a fine grid over the tile
    x = (ulx + g[None, :] + 0 * g[:, None]).ravel()
    y = (uly - g[:, None] + 0 * g[None, :]).ravel()
    got = reben_tile_split(np.full(x.size, "29UPU", dtype=object), x, y, "EPSG:32629")
    shares = {s: np.mean(got == s) for s in ("train", "validation", "test")}
    assert shares == pytest.approx({"train": 0.5, "validation": 0.25, "test": 0.25}, abs=0.005)
    edge = np.array([16_079.0, 16_080.0, 27_449.0, 27_450.0])  # metres from the west edge
    got = reben_tile_split(["29UPU"] * 4, ulx + edge, np.full(4, uly - side / 2), "EPSG:32629")
    assert list(got) == ["train", "validation", "validation", "test"]


@pytest.mark.parametrize(
    ("tile", "crs", "message"),
    [
        ("29UPU", "EPSG:32630", "zone 29N"),
        ("29UPU", "EPSG:32729", "zone 29N"),
        ("29UPU", "EPSG:4326", "not a WGS 84 / UTM CRS"),
        ("UPU29", "EPSG:32629", "unknown Sentinel-2 tile id"),
        ("29UAU", "EPSG:32629", "column letter A"),
        ("29IPU", "EPSG:32629", "unknown Sentinel-2 tile id"),
        ("61UPU", "EPSG:32629", "unknown Sentinel-2 tile id"),
    ],
)
def test_reben_rule_rejects_inconsistent_tiles(tile: str, crs: str, message: str) -> None:
    with pytest.raises(GeofmError, match=message):
        reben_tile_split([tile], [650_000.0], [5_850_000.0], crs)


def test_reben_rule_rejects_bad_chips() -> None:
    with pytest.raises(GeofmError, match="outside their Sentinel-2 tile"):
        reben_tile_split(["29UPU"], [750_000.0], [5_850_000.0], "EPSG:32629")
    with pytest.raises(GeofmError, match="no tile id"):
        reben_tile_split(["29UPU", None], [650_000.0] * 2, [5_850_000.0] * 2, "EPSG:32629")
    with pytest.raises(GeofmError, match="more than one CRS"):
        reben_tile_split(["29UPU"] * 2, [650e3] * 2, [5850e3] * 2, ["EPSG:32629", "EPSG:32630"])
    with pytest.raises(GeofmError, match="empty"):
        reben_tile_split([], [], [], "EPSG:32629")
    with pytest.raises(GeofmError, match="non-finite"):
        reben_tile_split(["29UPU"], [np.nan], [5_850_000.0], "EPSG:32629")


# --- spatial blocks ---------------------------------------------------------------------------


def _europe(n: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(-10, 30, n), rng.uniform(38, 62, n)


def _shares(labels: np.ndarray) -> np.ndarray:
    kept = labels[labels != ""]
    return np.array([np.mean(kept == s) for s in ("train", "validation", "test")])


def test_ease2_scale_matches_proj() -> None:
    lat = np.array([-70.0, -30.0, 0.0, 30.0, 52.0, 75.0])
    factors = pyproj.Proj("EPSG:6933").get_factors(np.zeros(6), lat)
    np.testing.assert_allclose(_ease2_parallel_scale(lat), factors.parallel_scale, rtol=1e-9)


def test_block_split_hits_the_ratios() -> None:
    lon, lat = _europe(200_000)
    labels = block_split(lon, lat, block_km=50, buffer_km=0, ratios=(0.6, 0.25, 0.15))
    assert set(labels) == {"train", "validation", "test"}
    np.testing.assert_allclose(_shares(labels), [0.6, 0.25, 0.15], atol=0.002)
    buffered = block_split(lon, lat, block_km=50, buffer_km=3, ratios=(0.6, 0.25, 0.15))
    assert 0.05 < np.mean(buffered == "") < 0.5
    np.testing.assert_allclose(_shares(buffered), [0.6, 0.25, 0.15], atol=0.006)


def test_block_split_is_deterministic_and_order_free() -> None:
    lon, lat = _europe(30_000)
    a = block_split(lon, lat, 50, 2, seed=3)
    assert np.array_equal(a, block_split(lon, lat, 50, 2, seed=3))
    assert not np.array_equal(a, block_split(lon, lat, 50, 2, seed=4))
    perm = np.random.default_rng(0).permutation(lon.size)
    assert np.array_equal(a[perm], block_split(lon[perm], lat[perm], 50, 2, seed=3))


@pytest.mark.slow
def test_block_buffer_is_exact_on_a_dense_grid() -> None:
    # Chips every ~200 m over about 25 km x 28 km near 50° N; 5 km blocks, 0.8 km buffer.
    lon, lat = np.meshgrid(np.arange(8.0, 8.35, 0.0028), np.arange(49.8, 50.05, 0.0018))
    lon, lat = lon.ravel(), lat.ravel()  # [N]
    buffer_km = 0.8
    labels = block_split(lon, lat, 5, buffer_km, ratios=(0.5, 0.25, 0.25), seed=7)
    x, y = pyproj.Transformer.from_crs(4326, 6933, always_xy=True).transform(lon, lat)
    block = np.floor(x / 5_000).astype(int) * 100_000 + np.floor(y / 5_000).astype(int)
    blocks, inverse = np.unique(block, return_inverse=True)
    block_label = np.full(blocks.size, "", dtype=object)
    for b in range(blocks.size):
        kept = set(labels[(inverse == b) & (labels != "")])
        assert len(kept) <= 1, "a block holds chips of two splits"
        block_label[b] = kept.pop() if kept else ""
    chip_block_label = block_label[inverse]  # [N] the split of each chip's block
    assert set(block_label) >= {"train", "validation", "test"}

    # Brute force from a sample of chips to all chips.
    sample = np.random.default_rng(0).choice(lon.size, 1000, replace=False)
    d = _haversine_km(lon[sample], lat[sample], lon, lat)  # [1000, N]
    other = chip_block_label[None, :] != chip_block_label[sample][:, None]
    other &= chip_block_label[None, :] != ""
    nearest_other = np.where(other, d, np.inf).min(axis=1)  # km to another split's block chips
    kept = labels[sample] != ""
    assert 30 < (~kept).sum() < 700
    # Kept chips are at least the buffer from every chip of another split's blocks ...
    assert nearest_other[kept].min() >= buffer_km * 0.995
    # ... dropped chips are within the buffer (plus the grid spacing) of one, away from the
    # edges of the data, where a neighbouring block may hold chips only on its far side ...
    inner = (np.abs(lon[sample] - 8.175) < 0.09) & (np.abs(lat[sample] - 49.925) < 0.07)
    assert (inner & ~kept).sum() > 20
    assert nearest_other[inner & ~kept].max() <= buffer_km + 0.2
    # ... and kept chips of different splits are at least twice the buffer apart.
    both = labels != ""
    differ = labels[sample][:, None] != labels[None, :]
    differ &= kept[:, None] & both[None, :]
    assert d[differ].min() >= 2 * buffer_km * 0.995


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"block_km": 0, "buffer_km": 1}, "block_km"),
        ({"block_km": 10, "buffer_km": -1}, "buffer_km"),
        ({"block_km": 10, "buffer_km": 9}, "past the neighbouring"),
        ({"block_km": 10, "buffer_km": 1, "ratios": (0.7, 0.2, 0.2)}, "summing to 1"),
        ({"block_km": 10, "buffer_km": 1, "ratios": (0.7, 0.3)}, "three non-negative"),
        ({"block_km": 10, "buffer_km": 1, "ratios": (1.2, -0.1, -0.1)}, "non-negative"),
    ],
)
def test_block_split_rejects_bad_parameters(kwargs: dict, message: str) -> None:
    lon, lat = _europe(100)
    with pytest.raises(GeofmError, match=message):
        block_split(lon, lat, **kwargs)


def test_block_split_rejects_bad_coordinates() -> None:
    with pytest.raises(GeofmError, match="empty"):
        block_split([], [], 10, 1)
    with pytest.raises(GeofmError, match="lat must lie"):
        block_split([0.0], [95.0], 10, 1)
    with pytest.raises(GeofmError, match="chips"):
        block_split([0.0, 1.0], [5.0], 10, 1)


# --- regions --------------------------------------------------------------------------------


def test_region_split_keeps_regions_whole_and_approximates_ratios() -> None:
    rng = np.random.default_rng(5)
    sizes = rng.integers(50, 2_000, 150)
    values = np.repeat([f"region{i:03d}" for i in range(sizes.size)], sizes).astype(object)
    values[::97] = None  # chips without a region are excluded
    labels = region_split(values, (0.7, 0.15, 0.15), seed=1)
    assert np.all(labels[::97] == "")
    frame = pd.DataFrame({"region": values, "split": labels}).dropna()
    assert (frame.groupby("region")["split"].nunique() == 1).all()
    np.testing.assert_allclose(_shares(labels), [0.7, 0.15, 0.15], atol=0.002)
    assert np.array_equal(labels, region_split(values, (0.7, 0.15, 0.15), seed=1))
    assert not np.array_equal(labels, region_split(values, (0.7, 0.15, 0.15), seed=2))
    perm = rng.permutation(values.size)
    assert np.array_equal(labels[perm], region_split(values[perm], (0.7, 0.15, 0.15), seed=1))


def test_region_split_with_countries() -> None:
    countries = ["Austria"] * 40 + ["Ireland"] * 30 + ["Portugal"] * 20 + ["Finland"] * 10
    labels = region_split(pd.Series(countries), (0.5, 0.3, 0.2), seed=0)
    by_country = pd.Series(labels).groupby(pd.Series(countries)).unique()
    assert all(len(v) == 1 for v in by_country)
    assert set(labels) == {"train", "validation", "test"}


def test_region_split_rejects_bad_input() -> None:
    with pytest.raises(GeofmError, match="at least 3 regions"):
        region_split(["a", "a", "b"], (0.7, 0.15, 0.15))
    with pytest.raises(GeofmError, match="summing to 1"):
        region_split(["a", "b", "c"], (0.5, 0.5, 0.5))
    with pytest.raises(GeofmError, match="empty"):
        region_split([], (0.7, 0.15, 0.15))


# --- polygons -------------------------------------------------------------------------------


@pytest.fixture
def split_polygons(tmp_path: Path) -> Path:
    gpd = pytest.importorskip("geopandas")
    from shapely.geometry import box

    frame = gpd.GeoDataFrame(
        {
            "split": ["train", "validation", "test", "train", "", "test", "train"],
            "name": list("abcdefg"),
        },
        geometry=[
            box(0, 0, 2, 2),
            box(2, 0, 4, 2),
            box(0, 2, 2, 4),
            box(3, 3, 5, 5),
            box(8, 8, 9, 9),
            box(6, 6, 7, 7),
            box(6.5, 6.5, 7.5, 7.5),  # overlaps "f", which is test
        ],
        crs="EPSG:4326",
    ).to_crs("EPSG:3857")  # stored in another CRS: the split must reproject
    path = tmp_path / "splits.gpkg"
    frame.to_file(path, driver="GPKG")
    return path


def test_polygon_split_joins_centroids_to_polygons(split_polygons: Path) -> None:
    lon = np.array([1.0, 3.0, 1.0, 4.0, 6.0, 8.5, 6.7, 6.2])
    lat = np.array([1.0, 1.0, 3.0, 4.0, 0.0, 8.5, 6.7, 6.2])
    got = polygon_split(lon, lat, split_polygons)
    # Outside every polygon, in a polygon with no split, and in two polygons of different
    # splits are all excluded.
    expected = ["train", "validation", "test", "train", "", "", "", "test"]
    assert list(got) == expected


def test_polygon_split_rejects_bad_files(split_polygons: Path, tmp_path: Path) -> None:
    with pytest.raises(GeofmError, match="no column 'fold'"):
        polygon_split([1.0], [1.0], split_polygons, column="fold")
    with pytest.raises(GeofmError, match="unknown split names"):
        polygon_split([1.0], [1.0], split_polygons, column="name")
    with pytest.raises(GeofmError, match="not found"):
        polygon_split([1.0], [1.0], tmp_path / "missing.gpkg")
    bad = tmp_path / "bad.gpkg"
    bad.write_text("not a geopackage")
    with pytest.raises(GeofmError, match="cannot read"):
        polygon_split([1.0], [1.0], bad)
