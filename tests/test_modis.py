"""MODIS L1B builder on generated spec-conformant granules: calibration, flags, footprints,
splits, resuming and bad input."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import zarr
from pyhdf.SD import SD
from shapely.geometry import Point

import geofm
from geofm.builders.modis import BandCal, build_modis, calibrate, chip_origins, footprint_polygon
from geofm.builders.modis_constants import EMISSIVE_COEFFICIENTS
from geofm.curation.splits import block_split
from geofm.data import ChipDataset
from geofm.errors import BuildError
from geofm.io.store import validate_store

from .modis_fixture import FILL, L1A_MISSING, SATURATED, geolocation, write_mod021km, write_mod03

C1, C2 = 1.191042e8, 1.4387752e4  # W µm⁴ m⁻² sr⁻¹, µm K
BANDS = list(geofm.BAND_SETS["modis14"])
LINES, FRAMES = 260, 270  # 2 × 2 chips of 128 px per granule
# Planted scaled integers: (band, line, frame) → value.
FLAGS = {("1", 10, 20): FILL, ("6", 12, 30): SATURATED, ("31", 11, 21): SATURATED,
         ("21", 40, 50): L1A_MISSING, ("26", 50, 60): 65510, ("32", 60, 70): 5}
GRANULES = (  # platform, start, DAYNIGHTFLAG, centre lat, lon, solar zenith
    ("Terra", "2024-01-01T12:00:00", "Day", 45.0, 10.0, 35.0),
    ("Aqua", "2024-01-02T03:05:00", "Both", -20.0, 120.0, 84.0),
    ("Terra", "2024-01-03T22:40:00", "Night", 60.0, -30.0, 120.0),
)
BLOCKS = {"block_km": 100.0, "seed": 3}


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("modis_src")
    for k, (platform, start, dn, lat0, lon0, sza0) in enumerate(GRANULES):
        write_mod021km(d, lines=LINES, frames=FRAMES, seed=k, start=start, platform=platform,
                       day_night=dn, lat0=lat0, lon0=lon0, sza0=sza0,
                       flags=FLAGS if k == 0 else None)
    return d


@pytest.fixture(scope="module")
def store_path(src: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("modis_out") / "modis.zarr"
    return build_modis(src, out, scheduler="synchronous", shard_chips=4, progress=False, **BLOCKS)


def _granule(src: Path, k: int) -> Path:
    return sorted(src.glob("M?D021KM*.hdf"), key=lambda p: p.name.split(".")[1])[k]


def _sds(path: Path, name: str) -> tuple[np.ndarray, dict]:
    sd = SD(str(path))
    try:
        sds = sd.select(name)
        return np.asarray(sds.get()), sds.attributes()
    finally:
        sd.end()


def _chip_pixel(store: geofm.ChipStore, chip_id: str, band: str, y: int, x: int
                ) -> tuple[float, bool, int, int]:
    """Stored value and validity of one pixel, and its swath line and frame."""
    row = store.chips.set_index("chip_id").loc[chip_id]
    batch = store.read([int(row["index"])])
    b = BANDS.index(band)
    return (float(batch["image"][0, b, y, x]), bool(batch["valid"][0, b, y, x]),
            int(row["line"]) + y, int(row["frame"]) + x)


def test_store_opens_and_serves_14_band_samples(store_path: Path) -> None:
    store = geofm.open_store(store_path)
    assert len(store) == 12 and store.bands == BANDS and store.chip_size == (128, 128)
    assert "valid" in store.arrays and validate_store(store_path) == []
    sample = ChipDataset(store)[0]
    assert sample["image"].shape == (14, 128, 128) and sample["bands"] == BANDS
    assert sample["valid"].shape == (14, 128, 128) and sample["valid"].dtype == torch.bool
    chips = store.chips
    assert chips["chip_id"].iloc[0] == "MOD021KM.A2024001.1200.061_r0000_c0000"
    assert set(chips["source"]) == {"MOD021KM", "MYD021KM"} and (chips["crs"] == "EPSG:4326").all()
    assert all(len(t) == 6 and np.isnan(t).all() for t in chips["transform"])
    assert chips["tile"].isna().all()
    assert list(chips["time"].drop_duplicates()) == [
        pd.Timestamp(g[1], tz="UTC") for g in GRANULES]


def test_chip_grid_is_centred_and_drops_edge_remainders() -> None:
    assert chip_origins(LINES, FRAMES, 128) == [(0, 0, 2, 7), (0, 1, 2, 135), (1, 0, 130, 7),
                                                (1, 1, 130, 135)]
    assert chip_origins(2030, 1354, 128)[0] == (0, 0, 55, 37)
    assert len(chip_origins(2030, 1354, 128)) == 150 and chip_origins(100, 1354, 128) == []


def test_reflectance_equals_hand_computation(store_path: Path, src: Path) -> None:
    store = geofm.open_store(store_path)
    path = _granule(src, 0)
    for band, sds, index, (y, x) in (("MODIS.B01", "EV_250_Aggr1km_RefSB", 0, (30, 40)),
                                     ("MODIS.B07", "EV_500_Aggr1km_RefSB", 4, (127, 0)),
                                     ("MODIS.B26", "EV_1KM_RefSB", 14, (5, 99))):
        value, ok, line, frame = _chip_pixel(store, "MOD021KM.A2024001.1200.061_r0000_c0001",
                                             band, y, x)
        si, attrs = _sds(path, sds)
        n = int(si[index, line, frame])
        expected = attrs["reflectance_scales"][index] * (n - attrs["reflectance_offsets"][index])
        assert ok and value == pytest.approx(expected, rel=1e-6)
    # EV_1KM_RefSB's offsets are not zero, so band 26 checks the offset is subtracted.
    assert attrs["reflectance_offsets"][14] == pytest.approx(316.9722)


def _brightness_temperature(radiance: float, wavenumber: float, slope: float,
                            intercept: float) -> float:
    lam = 1e4 / wavenumber  # µm
    t_eff = C2 / (lam * math.log(1 + C1 / (lam**5 * radiance)))
    return (t_eff - intercept) / slope


def test_brightness_temperature_equals_hand_computation(store_path: Path, src: Path) -> None:
    store = geofm.open_store(store_path)
    # Terra band 31 and Aqua band 21, with modis_bright's (Gumley 2002) coefficients typed in.
    cases = (
        (0, "MOD021KM.A2024001.1200.061_r0001_c0000", "MODIS.B31", 10, 908.0884, 0.9995607,
         0.1302885),
        (1, "MYD021KM.A2024002.0305.061_r0000_c0001", "MODIS.B21", 1, 2511.760, 0.9998626,
         0.09426663),
    )
    for k, chip_id, band, index, wavenumber, slope, intercept in cases:
        value, ok, line, frame = _chip_pixel(store, chip_id, band, 64, 17)
        si, attrs = _sds(_granule(src, k), "EV_1KM_Emissive")
        radiance = attrs["radiance_scales"][index] * (int(si[index, line, frame])
                                                      - attrs["radiance_offsets"][index])
        expected = _brightness_temperature(radiance, wavenumber, slope, intercept)
        assert ok and value == pytest.approx(expected, abs=2e-4)
        assert 200 < value < 320


def test_inverse_planck_recovers_a_black_body_temperature() -> None:
    # Forward Planck at 287.5 K through band 31's effective wavelength and correction, then
    # scaled integers with band 31's usual scale and offset: the builder must return 287.5 K
    # (one scaled integer is 0.006 K here).
    wavenumber, slope, intercept = 908.0884, 0.9995607, 0.1302885
    assert EMISSIVE_COEFFICIENTS["Terra"]["31"] == (wavenumber, slope, intercept)
    lam = 1e4 / wavenumber
    t_eff = slope * 287.5 + intercept
    radiance = C1 / (lam**5 * math.expm1(C2 / (lam * t_eff)))
    assert radiance == pytest.approx(7.90, abs=0.01)  # W m⁻² sr⁻¹ µm⁻¹
    cal = BandCal("31", "EV_1KM_Emissive", 10, 8.4e-4, 1577.34, 0, 32767, 65535,
                  (wavenumber, slope, intercept))
    si = np.array([round(radiance / 8.4e-4 + 1577.34)], np.uint16)
    value, valid = calibrate(si, cal)
    assert valid[0] and value[0] == pytest.approx(287.5, abs=0.01)


def test_flags_become_invalid_and_nan(store_path: Path) -> None:
    store = geofm.open_store(store_path)
    chip_id = "MOD021KM.A2024001.1200.061_r0000_c0000"  # lines 2-129, frames 7-134
    for (band, line, frame), si in FLAGS.items():
        value, ok, *_ = _chip_pixel(store, chip_id, f"MODIS.B{int(band):02d}", line - 2,
                                    frame - 7)
        assert not ok and math.isnan(value), (band, si)
        neighbour, ok_next, *_ = _chip_pixel(store, chip_id, f"MODIS.B{int(band):02d}",
                                             line - 2, frame - 6)
        assert ok_next and math.isfinite(neighbour)
    chips = store.chips.set_index("chip_id")
    assert chips.loc[chip_id, "valid_fraction"] == pytest.approx(1 - len(FLAGS) / (14 * 128**2))
    # Night granule: the reflective SDS hold fill, the emissive bands stay valid.
    night = chips[chips["granule"] == "MOD021KM.A2024003.2240.061"]
    batch = store.read(night["index"].to_numpy())
    reflective = [BANDS.index(f"MODIS.B{n:02d}") for n in (1, 2, 3, 6, 7, 26)]
    emissive = [b for b in range(14) if b not in reflective]
    assert not batch["valid"][:, reflective].any()
    assert np.isnan(batch["image"][:, reflective]).all()
    assert batch["valid"][:, emissive].all()
    assert np.allclose(night["valid_fraction"], 8 / 14)
    # Statistics cover valid pixels only.
    stats = store.stats
    assert np.isfinite(stats.mean).all() and stats.count[BANDS.index("MODIS.B01")] == 8 * 128**2 - 1


def test_day_night_from_solar_zenith(store_path: Path) -> None:
    chips = geofm.open_store(store_path).chips.set_index("chip_id")["day_night"]
    assert (chips[chips.index.str.contains("A2024001")] == "day").all()
    assert (chips[chips.index.str.contains("A2024003")] == "night").all()
    aqua = chips[chips.index.str.contains("A2024002")]
    # Solar zenith 84° at the swath centre, rising 0.02° per frame: the west chips are all
    # below 85°, the east chips straddle it.
    assert list(aqua) == ["day", "mixed", "day", "mixed"]


def test_footprints_contain_centroid_and_lie_in_the_granule(store_path: Path,
                                                            src: Path) -> None:
    chips = geofm.open_store(store_path).chips
    assert chips.crs.to_epsg() == 4326
    for k, (_, _, _, lat0, lon0, _) in enumerate(GRANULES):
        lat, _ = _sds(_granule(src, k), "Latitude")
        lon, _ = _sds(_granule(src, k), "Longitude")
        part = chips[chips["granule"] == chips["granule"].unique()[k]]
        for row in part.itertuples():
            assert row.geometry.is_valid and row.geometry.contains(
                Point(row.centroid_lon, row.centroid_lat))
            x0, y0, x1, y1 = row.geometry.bounds
            assert lon.min() - 1e-4 <= x0 and x1 <= lon.max() + 1e-4
            assert lat.min() - 1e-4 <= y0 and y1 <= lat.max() + 1e-4
            # The fixture's geolocation is affine, so interpolation is exact at the centre.
            want_lat, want_lon = geolocation(np.array(row.line + 63.5),
                                             np.array(row.frame + 63.5), LINES, FRAMES,
                                             lat0, lon0)
            assert row.centroid_lat == pytest.approx(float(want_lat), abs=1e-4)
            assert row.centroid_lon == pytest.approx(float(want_lon), abs=1e-4)
            assert (row.native_x, row.native_y) == (row.centroid_lon, row.centroid_lat)


def test_footprint_across_the_antimeridian_is_split() -> None:
    lon = np.array([179.0, 179.6, -179.8, -179.2, -179.2, -179.8, 179.6, 179.0])
    lat = np.array([10.0, 10.0, 10.0, 10.0, 9.0, 9.0, 9.0, 9.0])
    geom = footprint_polygon(lon, lat)
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    x0, _, x1, _ = geom.bounds
    assert x0 == pytest.approx(-180) and x1 == pytest.approx(180)
    assert geom.area == pytest.approx(1.8)


def test_mod03_geolocation_matches_5km_interpolation(store_path: Path, src: Path,
                                                     tmp_path: Path) -> None:
    geo = tmp_path / "geo"
    geo.mkdir()
    write_mod03(geo, lines=LINES, frames=FRAMES, start=GRANULES[0][1], lat0=45.0, lon0=10.0)
    out = build_modis([_granule(src, 0)], tmp_path / "mod03.zarr", geolocation=geo,
                      scheduler="synchronous", progress=False, **BLOCKS)
    full = geofm.open_store(out).chips.set_index("chip_id")
    five = geofm.open_store(store_path).chips.set_index("chip_id").loc[full.index]
    assert np.allclose(full["centroid_lat"], five["centroid_lat"], atol=1e-4)
    assert np.allclose(full["centroid_lon"], five["centroid_lon"], atol=1e-4)
    assert (full["day_night"] == "day").all()
    assert geofm.open_store(out).attrs["provenance"]["geolocation"] == "MOD03/MYD03"


def test_block_split_recorded_and_deterministic(store_path: Path) -> None:
    store = geofm.open_store(store_path)
    chips = store.chips
    split = store.attrs["split"]
    assert split["method"] == "blocks" and split["params"]["block_km"] == 100.0
    assert sum(split["counts"].values()) == len(store)
    again = block_split(chips["centroid_lon"], chips["centroid_lat"], block_km=100.0,
                        buffer_km=0.0, seed=3)
    assert list(chips["split"]) == list(again)
    assert {"train", "validation", "test"} <= set(chips["split"])


def test_time_split_by_cutoffs_and_by_whole_days(src: Path, tmp_path: Path) -> None:
    out = build_modis(src, tmp_path / "t.zarr", split="time",
                      time_cutoffs=("2024-01-02", "2024-01-03"), scheduler="synchronous",
                      progress=False)
    store = geofm.open_store(out)
    by_day = store.chips.groupby(store.chips["time"].dt.day)["split"].unique()
    assert [list(v) for v in by_day] == [["train"], ["validation"], ["test"]]
    assert store.attrs["split"]["params"]["test_from"] == "2024-01-03"
    out2 = build_modis(src, tmp_path / "t2.zarr", split="time", ratios=(0.34, 0.33, 0.33),
                       scheduler="synchronous", progress=False)
    assert list(geofm.open_store(out2).chips["split"]) == list(store.chips["split"])


KILL_SCRIPT = """
import os, signal, sys
import zarr
import geofm.builders.modis as m
done = []
original = m.write_region
def write_then_die(*a, **k):
    if len(done) == 1:  # second region: pixels written, marker not yet -> kill -9
        root = zarr.open_group(str(a[0]), mode="r+")
        root["image"][4:8] = 12345.0
        os.kill(os.getpid(), signal.SIGKILL)
    original(*a, **k)
    done.append(1)
m.write_region = write_then_die
m.build_modis(sys.argv[1], sys.argv[2], scheduler="synchronous", shard_chips=4, progress=False,
              block_km=100.0, seed=3)
"""


def test_resume_after_kill_gives_identical_store(store_path: Path, src: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "killed.zarr"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(src), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(geofm.GeofmError, match="unfinished build"):
        geofm.open_store(out)
    assert sorted(os.listdir(out / "_build")).count("region-000000.json") == 1
    build_modis(src, out, scheduler="synchronous", shard_chips=4, progress=False, **BLOCKS)
    for name in ("image", "valid"):
        a = zarr.open_array(str(store_path / name), mode="r")[:]
        b = zarr.open_array(str(out / name), mode="r")[:]
        np.testing.assert_array_equal(a, b)
    ref, got = geofm.open_store(store_path), geofm.open_store(out)
    pd.testing.assert_frame_equal(pd.DataFrame(ref.chips.drop(columns="geometry")),
                                  pd.DataFrame(got.chips.drop(columns="geometry")))
    assert list(ref.chips.geometry.to_wkb()) == list(got.chips.geometry.to_wkb())
    assert ref.attrs["stats"] == got.attrs["stats"] and ref.attrs["split"] == got.attrs["split"]


def _small(d: Path, **kw: Any) -> Path:
    d.mkdir(exist_ok=True)
    return write_mod021km(d, lines=130, frames=140, **kw)


def _bad_cases(tmp: Path) -> dict[str, tuple[Path, Path | None, Path, str]]:
    """name → (source, geolocation, file the error must name, message pattern)."""
    cases: dict[str, tuple[Path, Path | None, Path, str]] = {}
    d = tmp / "text"
    d.mkdir()
    f = d / "MOD021KM.A2024001.1200.061.2024001120000.hdf"
    f.write_text("this is not HDF4\n")
    cases["not_hdf4"] = (d, None, f, "not a readable HDF4 file")
    good = _small(tmp / "trunc")
    good.write_bytes(good.read_bytes()[:4000])
    cases["truncated"] = (good.parent, None, good, "HDF4|SDS")
    f = _small(tmp / "nosds", omit=("EV_1KM_Emissive",))
    cases["missing_sds"] = (f.parent, None, f, "SDS EV_1KM_Emissive is missing")
    f = _small(tmp / "no21", attrs={"EV_1KM_Emissive": {
        "band_names": "20,22,23,24,25,27,28,29,30,31,32,33,34,35,36,37"}})
    cases["band_names_without_21"] = (f.parent, None, f, "lack band.*21")
    f = _small(tmp / "scales", attrs={"EV_500_Aggr1km_RefSB": {
        "reflectance_scales": np.ones(4, np.float32)}})
    cases["scales_wrong_length"] = (f.parent, None, f, "reflectance_scales has 4 values")
    f = _small(tmp / "norange", attrs={"EV_250_Aggr1km_RefSB": {"valid_range": None}})
    cases["missing_valid_range"] = (f.parent, None, f, "valid_range")
    f = _small(tmp / "nolat", omit=("Latitude",))
    cases["missing_latitude"] = (f.parent, None, f, "SDS Latitude is missing")
    (tmp / "empty").mkdir()
    cases["empty_dir"] = (tmp / "empty", None, tmp / "empty", "holds no MOD021KM")
    f = _small(tmp / "g1")
    geo = tmp / "geo1"
    geo.mkdir()
    g = write_mod03(geo, lines=130, frames=150)
    cases["mod03_wrong_shape"] = (f.parent, geo, g, "granule MOD021KM.A2024001.1200.061 is 130")
    f = _small(tmp / "g2")
    geo = tmp / "geo2"
    geo.mkdir()
    write_mod03(geo, lines=130, frames=140, start="2024-01-01T12:05:00")
    cases["mod03_missing"] = (f.parent, geo, f, "no MOD03 geolocation file")
    f = _small(tmp / "g3")
    geo = tmp / "geo3"
    geo.mkdir()
    g = write_mod03(geo, lines=130, frames=140, start="2024-01-01T12:00:30")
    g = g.rename(geo / "MOD03.A2024001.1200.061.2024001120000.hdf")
    cases["mod03_other_time"] = (f.parent, geo, g, "geolocation starts")
    return cases


def test_bad_input_raises_one_line_naming_the_file(tmp_path: Path) -> None:
    cases = _bad_cases(tmp_path)
    for name, (source, geo, culprit, pattern) in cases.items():
        out = tmp_path / f"{name}.zarr"
        with pytest.raises(BuildError, match=pattern) as info:
            build_modis(source, out, geolocation=geo, scheduler="synchronous", progress=False,
                        chip=64)
        message = str(info.value)
        assert str(culprit) in message and "\n" not in message, (name, message)
        if out.exists():
            with pytest.raises(geofm.GeofmError):
                geofm.open_store(out)


def test_cli_builds_and_reports_bad_input(src: Path, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.cli import main

    out = tmp_path / "cli.zarr"
    assert main(["build", "modis", str(src), str(out), "--scheduler", "synchronous",
                 "--quiet"]) == 0
    assert geofm.open_store(out).bands == list(geofm.BAND_SETS["modis14"])
    broken = tmp_path / "broken"
    broken.mkdir()
    bad = broken / "MOD021KM.A2024001.1200.061.2024002000000.hdf"
    bad.write_bytes(b"garbage")
    assert main(["build", "modis", str(broken), str(tmp_path / "b.zarr"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("geofm: error: ") and bad.name in err
    assert not (tmp_path / "b.zarr").exists()
