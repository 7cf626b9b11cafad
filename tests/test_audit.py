"""Tests for geofm.curation.audit: leakage audit against brute force, and the split map."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from geofm.curation import audit
from geofm.curation.audit import leakage_audit, split_map_png
from geofm.errors import GeofmError


def _brute_force(lon, lat, split, distance_km):
    """The audit computed with an O(N²) haversine distance matrix."""
    p = np.radians(lat)
    lam = np.radians(lon)
    a = (
        np.sin((p[None, :] - p[:, None]) / 2) ** 2
        + np.cos(p[:, None]) * np.cos(p[None, :]) * np.sin((lam[None, :] - lam[:, None]) / 2) ** 2
    )
    d = 2 * audit.EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0, 1)))  # [N, N] km
    names = [s for s in ("train", "validation", "test") if (split == s).any()]
    pairs = {}
    for s, t in combinations(names, 2):
        block = d[np.ix_(split == s, split == t)]
        pairs[f"{s}/{t}"] = {
            "min_distance_km": block.min(),
            "within": {
                s: int((block <= distance_km).any(1).sum()),
                t: int((block <= distance_km).any(0).sum()),
            },
        }
    return pairs


def _check_against_brute_force(lon, lat, split, distance_km):
    got = leakage_audit(lon, lat, split, distance_km)
    want = _brute_force(lon, lat, split, distance_km)
    assert set(got["pairs"]) == set(want)
    for key, w in want.items():
        g = got["pairs"][key]
        assert g["min_distance_km"] == pytest.approx(w["min_distance_km"], rel=1e-9, abs=1e-9)
        assert g["within"] == w["within"], key
    return got


@pytest.fixture
def random_chips():
    rng = np.random.default_rng(11)
    n = 2000
    lon = rng.uniform(10.0, 12.0, n)
    lat = rng.uniform(45.0, 46.5, n)
    split = rng.choice(
        np.array(["train", "validation", "test", ""], dtype=object), n, p=[0.6, 0.15, 0.15, 0.1]
    )
    return lon, lat, split


def test_audit_equals_brute_force(random_chips) -> None:
    lon, lat, split = random_chips
    for distance_km in (0.5, 3.0, 12.0):
        got = _check_against_brute_force(lon, lat, split, distance_km)
    assert got["counts"] == {
        "train": int((split == "train").sum()),
        "validation": int((split == "validation").sum()),
        "test": int((split == "test").sum()),
        "excluded": int((split == "").sum()),
    }
    assert got["n_chips"] == lon.size and got["distance_km"] == 12.0
    assert any(p["within"]["train"] > 0 for p in got["pairs"].values())


def test_audit_large_pair_path_equals_brute_force(random_chips, monkeypatch) -> None:
    monkeypatch.setattr(audit, "_PAIR_LIMIT", 10)  # force one bounded query per chip
    lon, lat, split = random_chips
    _check_against_brute_force(lon, lat, split, 3.0)


def test_audit_finds_the_closest_pair_beyond_the_distance(monkeypatch) -> None:
    # Three clusters 40-300 km apart: no chip is within 2 km of another split.
    rng = np.random.default_rng(3)
    lon = np.concatenate(
        [rng.uniform(0, 0.5, 700), rng.uniform(1.0, 1.5, 700), rng.uniform(4, 4.5, 600)]
    )
    lat = np.concatenate(
        [rng.uniform(50, 50.5, 700), rng.uniform(50, 50.5, 700), rng.uniform(50, 50.5, 600)]
    )
    split = np.array(["train"] * 700 + ["validation"] * 700 + ["test"] * 600, dtype=object)
    got = _check_against_brute_force(lon, lat, split, 2.0)
    assert all(p["within"] == dict.fromkeys(p["within"], 0) for p in got["pairs"].values())
    assert got["pairs"]["train/test"]["min_distance_km"] > 200
    monkeypatch.setattr(audit, "_REFINE_LIMIT", 3)  # narrow the radius almost to the answer
    _check_against_brute_force(lon, lat, split, 2.0)


def test_audit_handles_duplicates_and_one_split() -> None:
    lon = np.array([5.0, 5.0, 6.0])
    lat = np.array([45.0, 45.0, 45.0])
    got = leakage_audit(lon, lat, ["train", "test", "test"], 0.0)
    assert got["pairs"]["train/test"]["min_distance_km"] == 0.0
    assert got["pairs"]["train/test"]["within"] == {"train": 1, "test": 1}
    only = leakage_audit(lon, lat, ["train", "train", ""], 1.0)
    assert only["pairs"] == {} and only["counts"] == {"train": 2, "excluded": 1}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (([], [], [], 1.0), "no chips"),
        (([1.0, 2.0], [1.0], ["train", "test"], 1.0), "one length"),
        (([1.0], [1.0], ["train"], -1.0), "distance_km"),
        (([np.nan], [1.0], ["train"], 1.0), "finite"),
        (([1.0], [91.0], ["train"], 1.0), "lat must lie"),
    ],
)
def test_audit_rejects_bad_input(args, message: str) -> None:
    with pytest.raises(GeofmError, match=message):
        leakage_audit(*args)


def test_split_map_png(random_chips, tmp_path: Path, monkeypatch) -> None:
    lon, lat, split = random_chips
    out = split_map_png(lon, lat, split, tmp_path / "map.png", "random chips")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setattr(audit, "_SCATTER_LIMIT", 100)  # the rasterised path for large stores
    out = split_map_png(lon, lat, split, tmp_path / "map_raster.png", "random chips")
    assert out.stat().st_size > 1000
    with pytest.raises(GeofmError, match="does not exist"):
        split_map_png(lon, lat, split, tmp_path / "missing" / "map.png", "x")
