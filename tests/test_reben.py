"""reBEN builder on the real sample: pixels equal torchgeo's, labels, footprints, resuming."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr
from shapely.geometry import Point

import geofm
from geofm.builders.reben import build_reben
from geofm.builders.reben_classes import CLASS_COLORS, CLASS_NAMES, CLC_TO_CLASS

from .conftest import REBEN_MINI


def test_store_layout_and_labels(reben_store: Path) -> None:
    store = geofm.open_store(reben_store)
    assert len(store) == 6 and store.chip_size == (120, 120)
    assert store.bands == list(geofm.BAND_SETS["s1s2"]) and len(store.bands) == 14
    assert store.arrays == ["image", "label", "mask"]
    meta = pd.read_parquet(REBEN_MINI / "metadata.parquet").sort_values("patch_id")
    chips = store.chips
    assert list(chips["chip_id"]) == list(meta["patch_id"])
    labels = store.read(np.arange(6))["label"]
    for k, names in enumerate(meta["labels"]):
        assert sorted(CLASS_NAMES[i] for i in np.flatnonzero(labels[k])) == sorted(names)
    assert store.attrs["split"]["method"] == "reben-official"
    assert list(chips["split"]) == [{"validation": "validation"}.get(s, s) for s in meta["split"]]
    assert chips["mask_placeholder"].all()  # the sample's reference maps are placeholders
    assert chips.loc[chips.chip_id.str.endswith("57_38"), "snow"].item()


def test_pixels_equal_torchgeo(reben_store: Path) -> None:
    from torchgeo.datasets import BigEarthNetV2

    store = geofm.open_store(reben_store)
    ids = list(store.chips["chip_id"])
    seen = 0
    for split in ("train", "val", "test"):
        tg = BigEarthNetV2(root=str(REBEN_MINI), split=split, bands="all")
        for i in range(len(tg)):
            s = tg[i]
            k = ids.index(tg.metadata_df.iloc[i]["patch_id"])
            ours = store.read([k])
            img = ours["image"][0]
            # Every Sentinel-2 band, 10 m copied and 20/60 m resampled, equals torchgeo's.
            np.testing.assert_array_equal(img[:12], s["image_s2"].numpy())
            # torchgeo orders S1 as [VH, VV] and reads float dB into int32 (rounded).
            s1 = s["image_s1"].numpy()
            assert np.abs(img[13] - s1[0]).max() < 1.0 and np.abs(img[12] - s1[1]).max() < 1.0
            np.testing.assert_array_equal(ours["mask"][0], s["mask"].numpy()[0])
            np.testing.assert_array_equal(ours["label"][0], s["label"].numpy())
            seen += 1
    assert seen == 6


def test_classes_match_torchgeo() -> None:
    from torchgeo.datasets import BigEarthNetV2

    assert tuple(BigEarthNetV2.class_set) == CLASS_NAMES
    assert dict(BigEarthNetV2.clc_codes) == CLC_TO_CLASS
    assert [BigEarthNetV2.clc_colors[n] for n in CLASS_NAMES] == list(CLASS_COLORS)


def test_footprints_are_wgs84_and_contain_centroids(reben_store: Path) -> None:
    chips = geofm.open_store(reben_store).chips
    assert chips.crs.to_epsg() == 4326
    for row in chips.itertuples():
        assert row.geometry.contains(Point(row.centroid_lon, row.centroid_lat))
        assert row.crs.startswith("EPSG:326")
        t = row.transform
        assert t[0] == 10.0 and t[4] == -10.0
        assert row.native_x == pytest.approx(t[2] + 600)
        assert row.native_y == pytest.approx(t[5] - 600)
    # Known: tile 33UUP patch in Austria near 13.7 E, 48.2 N.
    first = chips.iloc[0]
    assert first.country == "Austria" and 13.5 < first.centroid_lon < 14.0


def _arrays(path: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(path), mode="r")
    return {k: root[k][:] for k in ("image", "label", "mask")}


def _same_store(a: Path, b: Path) -> None:
    for k, v in _arrays(a).items():
        np.testing.assert_array_equal(v, _arrays(b)[k])
    ta = geofm.open_store(a).chips
    tb = geofm.open_store(b).chips
    pd.testing.assert_frame_equal(pd.DataFrame(ta.drop(columns="geometry")),
                                  pd.DataFrame(tb.drop(columns="geometry")))
    assert list(ta.geometry.to_wkb()) == list(tb.geometry.to_wkb())
    sa, sb = geofm.open_store(a).attrs, geofm.open_store(b).attrs
    assert sa["stats"] == sb["stats"]


KILL_SCRIPT = """
import os, signal, sys
import geofm.io.writer as w
import geofm.builders.reben as r
done = []
original = w.write_region
def write_then_die(*a, **k):
    if len(done) == 2:   # third region: pixels written, marker not yet -> kill -9
        import zarr
        root = zarr.open_group(str(a[0]), mode="r+")
        root["image"][4:6] = 12345.0
        os.kill(os.getpid(), signal.SIGKILL)
    original(*a, **k)
    done.append(1)
r.write_region = write_then_die
r.build_reben(sys.argv[1], sys.argv[2], scheduler="synchronous", shard_chips=2, progress=False)
"""


def test_resume_after_kill_gives_identical_store(tmp_path: Path) -> None:
    ref = tmp_path / "ref.zarr"
    build_reben(REBEN_MINI, ref, scheduler="synchronous", shard_chips=2, progress=False)
    out = tmp_path / "killed.zarr"
    proc = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(REBEN_MINI), str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with pytest.raises(geofm.GeofmError, match="unfinished build"):
        geofm.open_store(out)
    marks = json.loads((out / "_build" / "spec.json").read_text())
    assert marks["num_chips"] == 6
    assert sorted(os.listdir(out / "_build")).count("region-000001.json") == 1
    build_reben(REBEN_MINI, out, scheduler="synchronous", shard_chips=2, progress=False)
    _same_store(ref, out)


@pytest.mark.slow
def test_dask_local_cluster_build_equals_synchronous(tmp_path: Path) -> None:
    ref = tmp_path / "sync.zarr"
    build_reben(REBEN_MINI, ref, scheduler="synchronous", shard_chips=2, progress=False)
    out = tmp_path / "dask.zarr"
    build_reben(REBEN_MINI, out, workers=2, shard_chips=2, progress=False)
    _same_store(ref, out)
