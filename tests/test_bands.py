"""Tests for the sensor band registry."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from geofm.bands import (
    BAND_SETS,
    BANDS,
    bands_info,
    get_band,
    match_by_wavelength,
    modis_band,
    resolve_bands,
)
from geofm.errors import BandError

# SatVision-TOA's nominal centre wavelengths (µm), as quoted in REFERENCES.md.
SATVISION_UM = {1: 0.659, 2: 0.865, 3: 0.47, 6: 1.64, 7: 2.13, 21: 3.96, 26: 1.375, 27: 6.72,
                28: 7.33, 29: 8.55, 30: 9.73, 31: 11.03, 32: 12.02, 33: 13.34}


def test_counts_per_sensor() -> None:
    counts = Counter(b.sensor for b in BANDS.values())
    assert counts == {"S2": 13, "S1": 2, "MODIS": 40, "L8": 11, "L9": 11, "L7": 8, "RGB": 3}


def test_canonical_names_are_sensor_dot_band() -> None:
    for name, band in BANDS.items():
        assert name == f"{band.sensor}.{band.band}"
        assert band.kind in {"optical", "thermal", "sar"}
        assert band.wavelength_um > 0 and band.bandwidth_um > 0
        # A generic RGB camera's GSD depends on the source; every real sensor has one.
        assert band.gsd_m > 0 or band.sensor == "RGB"


def test_existing_sets_unchanged() -> None:
    assert len(BAND_SETS["s2"]) == 13
    assert len(BAND_SETS["s2l2a"]) == 12 and "S2.B10" not in BAND_SETS["s2l2a"]
    assert BAND_SETS["s2rgb"] == ("S2.B04", "S2.B03", "S2.B02")
    assert BAND_SETS["s1"] == ("S1.VV", "S1.VH")
    assert len(BAND_SETS["s1s2"]) == 14
    assert BAND_SETS["s1s2"][-2:] == ("S1.VV", "S1.VH")


def test_every_set_member_is_registered() -> None:
    for key, names in BAND_SETS.items():
        assert key == key.lower()
        assert len(set(names)) == len(names)
        assert all(n in BANDS for n in names), key


def test_sentinel_values_kept() -> None:
    red = get_band("S2.B04")
    assert red.wavelength_um == pytest.approx(0.6646)
    assert red.scale == 1e-4 and red.common_name == "red" and red.gsd_m == 10
    vv = get_band("S1.VV")
    assert vv.kind == "sar" and vv.unit == "dB" and vv.polarization == "VV"
    assert vv.wavelength_um == pytest.approx(55_465.76, rel=1e-6)


def test_modis_sets() -> None:
    assert BAND_SETS["modis"] == tuple(f"MODIS.B{n:02d}" for n in range(1, 37))
    expected = (1, 2, 3, 6, 7, 21, 26, 27, 28, 29, 30, 31, 32, 33)
    assert BAND_SETS["modis14"] == tuple(f"MODIS.B{n:02d}" for n in expected)


@pytest.mark.parametrize("number", sorted(SATVISION_UM))
def test_modis14_wavelengths_near_satvision(number: int) -> None:
    band = get_band(f"MODIS.B{number:02d}")
    assert band.wavelength_um == pytest.approx(SATVISION_UM[number], abs=0.02)


@pytest.mark.parametrize(
    ("name", "centre", "width", "gsd"),
    [
        ("MODIS.B01", 0.645, 0.050, 250),
        ("MODIS.B02", 0.8585, 0.035, 250),
        ("MODIS.B03", 0.469, 0.020, 500),
        ("MODIS.B07", 2.130, 0.050, 500),
        ("MODIS.B08", 0.4125, 0.015, 1000),
        ("MODIS.B19", 0.940, 0.050, 1000),
        ("MODIS.B20", 3.750, 0.180, 1000),
        ("MODIS.B26", 1.375, 0.030, 1000),
        ("MODIS.B31", 11.030, 0.500, 1000),
        ("MODIS.B36", 14.235, 0.300, 1000),
    ],
)
def test_modis_spec_table(name: str, centre: float, width: float, gsd: float) -> None:
    band = get_band(name)
    assert band.wavelength_um == pytest.approx(centre, abs=1e-9)
    assert band.bandwidth_um == pytest.approx(width, abs=1e-9)
    assert band.gsd_m == gsd


def test_modis_kinds_and_units() -> None:
    reflective = {*range(1, 20), 26}
    for n in range(1, 37):
        band = get_band(f"MODIS.B{n:02d}")
        if n in reflective:
            assert (band.kind, band.unit) == ("optical", "reflectance"), n
        else:
            assert (band.kind, band.unit) == ("thermal", "K"), n
        assert (band.scale, band.offset) == (1.0, 0.0)


def test_modis_gain_pairs() -> None:
    for n in (13, 14):
        centre = get_band(f"MODIS.B{n}")
        for gain in ("lo", "hi"):
            band = get_band(f"MODIS.B{n}{gain}")
            assert band.wavelength_um == centre.wavelength_um
            assert band.bandwidth_um == centre.bandwidth_um
    assert get_band("MODIS.B13").wavelength_um == pytest.approx(0.667)
    assert get_band("B13lo").name == "MODIS.B13lo"


def test_modis_band_from_l1b_names() -> None:
    assert modis_band("1") == "MODIS.B01"
    assert modis_band("36") == "MODIS.B36"
    assert modis_band("13lo") == "MODIS.B13lo"
    assert modis_band("14hi") == "MODIS.B14hi"
    for bad in ("0", "37", "1lo", "hi", ""):
        with pytest.raises(BandError):
            modis_band(bad)


@pytest.mark.parametrize("sensor", ["L8", "L9"])
def test_landsat8_9_table(sensor: str) -> None:
    red = get_band(f"{sensor}.B4")
    assert red.wavelength_um == pytest.approx(0.655) and red.bandwidth_um == pytest.approx(0.03)
    assert red.common_name == "red" and red.gsd_m == 30
    assert (red.unit, red.scale, red.offset) == ("reflectance", 2.75e-05, -0.2)
    assert get_band(f"{sensor}.B8").gsd_m == 15 and get_band(f"{sensor}.B8").common_name == "pan"
    for band_name, common in (("B10", "lwir11"), ("B11", "lwir12")):
        tirs = get_band(f"{sensor}.{band_name}")
        assert (tirs.kind, tirs.unit, tirs.gsd_m, tirs.common_name) == (
            "thermal", "K", 100, common)
        assert (tirs.scale, tirs.offset) == (0.00341802, 149.0)
    assert get_band(f"{sensor}.B10").wavelength_um == pytest.approx(10.895)
    commons = [get_band(f"{sensor}.B{n}").common_name for n in range(1, 12)]
    assert commons == ["coastal", "blue", "green", "red", "nir08", "swir16", "swir22", "pan",
                       "cirrus", "lwir11", "lwir12"]


def test_landsat7_table() -> None:
    thermal = get_band("L7.B6")
    assert (thermal.kind, thermal.unit, thermal.gsd_m) == ("thermal", "K", 60)
    assert thermal.wavelength_um == pytest.approx(11.45)
    assert (thermal.scale, thermal.offset) == (0.00341802, 149.0)
    pan = get_band("L7.B8")
    assert pan.gsd_m == 15 and pan.wavelength_um == pytest.approx(0.71)
    nir = get_band("L7.B4")
    assert nir.wavelength_um == pytest.approx(0.835) and nir.bandwidth_um == pytest.approx(0.13)
    assert (nir.scale, nir.offset) == (2.75e-05, -0.2)


def test_landsat_sets() -> None:
    assert BAND_SETS["l8"] == tuple(f"L8.B{n}" for n in range(1, 8))
    assert BAND_SETS["l8full"] == tuple(f"L8.B{n}" for n in range(1, 12))
    assert BAND_SETS["l8rgb"] == ("L8.B4", "L8.B3", "L8.B2")
    assert BAND_SETS["l9"] == tuple(f"L9.B{n}" for n in range(1, 8))
    assert BAND_SETS["l7"] == ("L7.B1", "L7.B2", "L7.B3", "L7.B4", "L7.B5", "L7.B7")
    assert len(BAND_SETS["l7full"]) == 8
    assert BAND_SETS["l7rgb"] == ("L7.B3", "L7.B2", "L7.B1")
    # "rgb" is the generic camera (OpticalRS-style imagery), not any satellite's true colour.
    assert BAND_SETS["rgb"] == ("RGB.R", "RGB.G", "RGB.B")


def test_get_band_by_alias() -> None:
    assert get_band("s2.b04").name == "S2.B04"
    assert get_band("S2_B04").name == "S2.B04"
    assert get_band("B8A").name == "S2.B8A"
    assert get_band("VV").name == "S1.VV"
    assert get_band("B36").name == "MODIS.B36"


@pytest.mark.parametrize("name", ["B01", "B04", "B1", "B10", "red", "lwir11"])
def test_get_band_ambiguous(name: str) -> None:
    with pytest.raises(BandError, match="ambiguous"):
        get_band(name)


def test_get_band_unknown() -> None:
    with pytest.raises(BandError, match="unknown"):
        get_band("S3.B99")


def test_resolve_count_and_set() -> None:
    s1s2 = BAND_SETS["s1s2"]
    assert resolve_bands(3, s1s2) == ["S2.B01", "S2.B02", "S2.B03"]
    assert resolve_bands("2", s1s2) == ["S2.B01", "S2.B02"]
    assert resolve_bands("s1", s1s2) == ["S1.VV", "S1.VH"]
    assert resolve_bands("S2RGB", s1s2) == ["S2.B04", "S2.B03", "S2.B02"]
    assert resolve_bands("modis14", BAND_SETS["modis"]) == list(BAND_SETS["modis14"])
    for bad in (15, "15"):
        with pytest.raises(BandError, match="available"):
            resolve_bands(bad, s1s2)
    for bad in (0, "0", -2, "-2"):
        with pytest.raises(BandError, match="the band count must be at least 1"):
            resolve_bands(bad, s1s2)


def test_resolve_names() -> None:
    s1s2 = BAND_SETS["s1s2"]
    assert resolve_bands("B04, B03,VV", s1s2) == ["S2.B04", "S2.B03", "S1.VV"]
    assert resolve_bands(["S2.B8A", "vh"], s1s2) == ["S2.B8A", "S1.VH"]
    # "B01" is ambiguous globally but not among the available bands.
    assert resolve_bands(["B01"], BAND_SETS["modis"]) == ["MODIS.B01"]
    assert resolve_bands(["B01"], s1s2) == ["S2.B01"]
    assert resolve_bands("B4,B10", BAND_SETS["l8full"]) == ["L8.B4", "L8.B10"]


def test_resolve_common_names() -> None:
    assert resolve_bands(["red", "green", "blue"], BAND_SETS["s2l2a"]) == [
        "S2.B04", "S2.B03", "S2.B02"]
    assert resolve_bands("red,green,blue", BAND_SETS["l8"]) == ["L8.B4", "L8.B3", "L8.B2"]
    assert resolve_bands(["nir", "nir08"], BAND_SETS["s2l2a"]) == ["S2.B08", "S2.B8A"]
    assert resolve_bands(["red", "lwir11"], BAND_SETS["modis14"]) == ["MODIS.B01", "MODIS.B31"]


def test_resolve_errors() -> None:
    s1s2 = BAND_SETS["s1s2"]
    with pytest.raises(BandError, match="not available"):
        resolve_bands(["S2.B10"], s1s2)
    with pytest.raises(BandError, match="not available"):
        resolve_bands("l8", s1s2)
    # A named set the bands cannot satisfy points at the sets they can.
    with pytest.raises(BandError) as err:
        resolve_bands("s2", s1s2)  # the 13 L1C bands; s1s2 has no B10
    assert "s2l2a" in str(err.value.hint) and "s1s2" in str(err.value.hint)
    with pytest.raises(BandError, match="twice"):
        resolve_bands(["B04", "S2.B04"], s1s2)
    with pytest.raises(BandError, match="no bands"):
        resolve_bands([], s1s2)
    with pytest.raises(BandError, match="unknown"):
        resolve_bands(["B99"], s1s2)
    # Several available bands share the common name: ambiguous, never a silent first pick.
    with pytest.raises(BandError, match="ambiguous"):
        resolve_bands(["rededge"], s1s2)
    with pytest.raises(BandError, match="ambiguous"):
        resolve_bands(["red"], BAND_SETS["s2rgb"] + BAND_SETS["l8rgb"])


def test_match_s2_to_landsat8() -> None:
    mapping = match_by_wavelength(BAND_SETS["s2"], BAND_SETS["l8full"])
    assert list(mapping) == list(BAND_SETS["s2"])
    assert mapping["S2.B04"] == "L8.B4"
    assert mapping["S2.B8A"] == "L8.B5"
    assert mapping["S2.B11"] == "L8.B6"
    assert mapping["S2.B12"] == "L8.B7"
    assert mapping["S2.B02"] == "L8.B2"
    assert mapping["S2.B03"] == "L8.B3"  # nearer than the wide panchromatic B8
    assert mapping["S2.B10"] == "L8.B9"
    # Red-edge and water-vapour bands have no OLI counterpart.
    assert mapping["S2.B05"] is None and mapping["S2.B06"] is None
    assert mapping["S2.B09"] is None


def test_match_respects_kind_and_polarisation() -> None:
    mapping = match_by_wavelength(["S1.VV", "S1.VH"], BAND_SETS["l8full"] + BAND_SETS["s2"])
    assert mapping == {"S1.VV": None, "S1.VH": None}
    assert match_by_wavelength(["S1.VV"], ["S1.VH"]) == {"S1.VV": None}
    assert match_by_wavelength(["VH"], ["S1.VV", "S1.VH"]) == {"S1.VH": "S1.VH"}
    thermal = match_by_wavelength(["MODIS.B31", "MODIS.B32", "MODIS.B20"], BAND_SETS["l8full"])
    assert thermal == {"MODIS.B31": "L8.B10", "MODIS.B32": "L8.B11", "MODIS.B20": None}
    assert match_by_wavelength(["L8.B10"], BAND_SETS["s2"]) == {"L8.B10": None}


def test_match_tolerance_and_identity() -> None:
    assert match_by_wavelength(["S2.B04"], ["S2.B04", "L8.B4"]) == {"S2.B04": "S2.B04"}
    # MODIS B13 (667 nm, 10 nm wide) vs S2 B04 (664.6 nm): inside either passband.
    assert match_by_wavelength(["MODIS.B13"], ["S2.B04"]) == {"MODIS.B13": "S2.B04"}
    # MODIS B08 (412.5 nm) vs S2 B01 (442.7 nm): 30 nm apart, wider than both half-widths.
    assert match_by_wavelength(["MODIS.B08"], ["S2.B01"]) == {"MODIS.B08": None}
    assert match_by_wavelength(["MODIS.B08"], ["S2.B01"], tol_um=0.05) == {
        "MODIS.B08": "S2.B01"}
    # S2 B03 (559.8 nm) lies inside the wide panchromatic passband (500–680 nm), not vice versa.
    assert match_by_wavelength(["S2.B03"], ["L8.B8"]) == {"S2.B03": "L8.B8"}
    with pytest.raises(BandError):
        match_by_wavelength(["red"], BAND_SETS["l8"])


def test_bands_info_is_json() -> None:
    info = bands_info(["S2.B04", "MODIS.B31", "L8.B10", "S1.VV"])
    assert [d["name"] for d in info] == ["S2.B04", "MODIS.B31", "L8.B10", "S1.VV"]
    assert json.loads(json.dumps(info)) == info
    assert info[2]["unit"] == "K" and info[2]["offset"] == 149.0
