"""Chip store: fast reads equal zarr's, statistics, validation, dataset and xarray view."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

import geofm
from geofm.data import ChipDataset, collate_samples
from geofm.data.transforms import Normalize
from geofm.errors import StoreError
from geofm.io.shardread import ShardReader
from geofm.io.stats import BandStats
from geofm.io.store import validate_store


def test_fast_reader_equals_zarr(reben_store: Path) -> None:
    for name in ("image", "mask"):
        reader = ShardReader(reben_store / name)
        assert reader.fast
        full = zarr.open_array(str(reben_store / name), mode="r")[:]
        idx = np.array([5, 0, 3, 3, 1])
        np.testing.assert_array_equal(reader.read(idx), full[idx])
    with pytest.raises(IndexError):
        ShardReader(reben_store / "image").read([6])


def test_fast_reader_handles_many_shards_and_unwritten_chips(tmp_path: Path) -> None:
    from zarr.codecs import BloscCodec

    a = zarr.create_array(str(tmp_path / "a"), shape=(10, 2, 4, 4), dtype="uint16",
                          chunks=(1, 2, 4, 4), shards=(4, 2, 4, 4), fill_value=7,
                          compressors=BloscCodec(cname="lz4", shuffle="shuffle"))
    data = np.arange(10 * 32, dtype=np.uint16).reshape(10, 2, 4, 4)
    a[:6] = data[:6]  # chips 6..9 never written: shard 2 missing, shard 1 half empty
    r = ShardReader(tmp_path / "a")
    assert r.fast and r.shard_chips == 4
    got = r.read(np.arange(10))
    np.testing.assert_array_equal(got[:6], data[:6])
    assert (got[6:] == 7).all()


def test_reader_falls_back_for_other_layouts(tmp_path: Path) -> None:
    a = zarr.create_array(str(tmp_path / "plain"), shape=(5, 3, 2, 2), dtype="float32",
                          chunks=(2, 3, 2, 2))
    data = np.random.default_rng(0).normal(size=(5, 3, 2, 2)).astype(np.float32)
    a[:] = data
    r = ShardReader(tmp_path / "plain")
    assert not r.fast
    np.testing.assert_array_equal(r.read([4, 0, 4]), data[[4, 0, 4]])


def test_stats_are_exact_and_mergeable() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(1000, 50, size=(7, 3, 5, 5)).astype(np.float32)
    x[0, 1, 0, 0] = np.nan
    valid = np.ones_like(x, dtype=bool)
    valid[2, 2] = False
    whole = BandStats.of(x, valid)
    merged = BandStats.of(x[:3], valid[:3]).merge(BandStats.of(x[3:], valid[3:]))
    np.testing.assert_array_equal(whole.count, merged.count)
    np.testing.assert_allclose(whole.total, merged.total, rtol=1e-12)
    for c in range(3):
        ok = np.isfinite(x[:, c]) & valid[:, c]
        ref = x[:, c][ok].astype(np.float64)
        assert whole.count[c] == ref.size
        assert whole.mean[c] == pytest.approx(ref.mean(), rel=1e-12)
        assert whole.std[c] == pytest.approx(ref.std(), rel=1e-9)
        assert whole.minimum[c] == ref.min()


def test_store_stats_match_pixels(reben_store: Path) -> None:
    store = geofm.open_store(reben_store)
    img = store.read(np.arange(len(store)))["image"].astype(np.float64)
    np.testing.assert_allclose(store.stats.mean, img.mean(axis=(0, 2, 3)), rtol=1e-10)
    np.testing.assert_allclose(store.stats.std, img.std(axis=(0, 2, 3)), rtol=1e-8)


def test_validate_sound_store(reben_store: Path) -> None:
    assert validate_store(reben_store, deep=True) == []


def test_validate_reports_damage(store_copy: Path) -> None:
    shard = store_copy / "image" / "c" / "0" / "0" / "0" / "0"
    shard.unlink()
    (store_copy / "_build").mkdir()
    problems = validate_store(store_copy)
    assert any("shard file missing" in p and str(shard) in p for p in problems)
    assert any("leftover build directory" in p for p in problems)
    (store_copy / "chips.parquet").unlink()
    assert any("chip table missing" in p for p in validate_store(store_copy))


def test_validate_deep_detects_changed_pixels(store_copy: Path) -> None:
    a = zarr.open_array(str(store_copy / "image"), mode="r+")
    a[0] = a[0] + 1
    assert any("statistics differ" in p for p in validate_store(store_copy, deep=True))


def test_open_refuses_unfinished_and_foreign(store_copy: Path, tmp_path: Path) -> None:
    root = zarr.open_group(str(store_copy), mode="r+")
    attrs = dict(root.attrs["geofm"])
    attrs["complete"] = False
    root.attrs["geofm"] = attrs
    with pytest.raises(StoreError, match="unfinished build"):
        geofm.open_store(store_copy)
    with pytest.raises(StoreError, match="no such chip store"):
        geofm.open_store(tmp_path / "nope.zarr")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="not a chip store"):
        geofm.open_store(tmp_path / "empty")


def test_dataset_samples_and_batches(reben_store: Path) -> None:
    store = geofm.open_store(reben_store)
    mean, std = store.band_stats()
    ds = ChipDataset(store, split="train", transforms=Normalize(store.bands, mean, std))
    assert len(ds) == 3
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate_samples)
    batch = next(iter(loader))
    assert batch["image"].shape == (2, 14, 120, 120)
    assert batch["label"].shape == (2, 19) and batch["mask"].shape == (2, 120, 120)
    assert batch["bands"] == store.bands
    assert batch["valid"].all()
    raw = ChipDataset(store, split="test", bands=["S2.B04", "S1.VH"])
    s = raw[0]
    full = store.read([raw.indices[0]])["image"][0]
    np.testing.assert_array_equal(s["image"].numpy(), full[[3, 13]])
    assert s["bands"] == ["S2.B04", "S1.VH"]
    with pytest.raises(StoreError, match="empty"):
        ChipDataset(store, split="nonexistent")


def test_normalize_masks_nonfinite() -> None:
    t = Normalize(["a", "b"], [1.0, 2.0], [2.0, 4.0])
    x = torch.tensor([[[1.0, float("nan")]], [[6.0, 2.0]]])  # [2, 1, 2]
    s = t({"image": x, "bands": ["b", "a"]})
    assert torch.isfinite(s["image"]).all()
    assert s["valid"].tolist() == [[[True, False]], [[True, True]]]
    assert s["image"][0, 0, 0] == pytest.approx((1.0 - 2.0) / 4.0)
    assert s["image"][1, 0, 0] == pytest.approx((6.0 - 1.0) / 2.0)


def test_xarray_view(reben_store: Path) -> None:
    store = geofm.open_store(reben_store)
    ds = store.to_xarray()
    assert ds["image"].dims == ("chip", "band", "y", "x")
    assert list(ds["band"].values) == store.bands
    np.testing.assert_array_equal(ds["image"].sel(band="S1.VV").isel(chip=2).values,
                                  store.read([2])["image"][0, 12])


def test_write_split_validates(store_copy: Path) -> None:
    store = geofm.open_store(store_copy)
    with pytest.raises(StoreError, match="labels"):
        store.write_split(np.array(["train"] * 5 + ["bogus"]), "x", {})
    with pytest.raises(StoreError, match="6 chips"):
        store.write_split(np.array(["train"] * 2), "x", {})
    store.write_split(np.array(["train", "train", "validation", "test", "", "test"]), "m", {"a": 1})
    again = geofm.open_store(store_copy)
    assert again.attrs["split"]["counts"] == {"train": 2, "validation": 1, "test": 2, "excluded": 1}
    assert list(again.split_indices("val")) == [2]
    shutil.rmtree(store_copy)


def test_collate_reuses_the_batch_tensor(reben_store: Path) -> None:
    store = geofm.open_store(reben_store)
    ds = ChipDataset(store)
    samples = ds.__getitems__([4, 1, 2])
    batch = collate_samples(samples)
    assert batch["image"].data_ptr() == samples[0]["image"].data_ptr()  # no copy
    np.testing.assert_array_equal(batch["image"].numpy(), store.read([4, 1, 2])["image"])
    mean, std = store.band_stats()
    normed = ChipDataset(store, transforms=Normalize(store.bands, mean, std)).__getitems__([4, 1])
    stacked = collate_samples(normed)
    assert stacked["image"].shape == (2, 14, 120, 120)
    torch.testing.assert_close(stacked["image"][1], normed[1]["image"])


def test_read_selected_arrays_decodes_no_pixels(reben_store: Path) -> None:
    store = geofm.open_store(reben_store)
    only = store.read([3, 1], arrays=["label"])
    assert set(only) == {"label"}
    assert "image" not in store._readers  # the image shards were never opened
    np.testing.assert_array_equal(only["label"],
                                  geofm.open_store(reben_store).read([3, 1])["label"])
