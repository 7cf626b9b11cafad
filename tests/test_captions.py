"""Captions from labels, reference-map areas and Mask-to-Box boxes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import geofm
from geofm.curation import captions as C
from geofm.io.schema import CHIP_TABLE
from geofm.io.store import validate_store

from .synthetic import make_store

NAMES = ["Arable land", "Coniferous forest", "Inland waters", "Urban fabric"]


def _set_placeholder(path: Path, value: bool) -> None:
    store = geofm.open_store(path)
    chips = store.chips.copy()
    chips["mask_placeholder"] = value
    chips.to_parquet(path / CHIP_TABLE, index=False)


def test_join_and_names() -> None:
    assert C.join_names(["a"]) == "a"
    assert C.join_names(["a", "b"]) == "a and b"
    assert C.join_names(["a", "b", "c"]) == "a, b and c"
    assert C.caption_name("Coniferous_forest") == "coniferous forest"
    assert C.caption_name("CLC Urban fabric") == "CLC urban fabric"
    assert len(C.LABEL_TEMPLATES) >= 8


def test_label_caption_names_every_class_with_every_template() -> None:
    rng = np.random.default_rng(0)
    for n in range(1, 5):
        for _ in range(60):
            cap = C.caption_from_labels(NAMES[:n], None, rng)
            for name in NAMES[:n]:
                assert C.caption_name(name) in cap, cap


def test_area_order_largest_first() -> None:
    mask = np.full((10, 10), 255, np.uint8)
    mask[:6] = 3  # Urban fabric: 60 pixels
    mask[6:8] = 1  # Coniferous forest: 20 pixels
    areas = C.class_areas(mask, len(NAMES))
    np.testing.assert_allclose(areas, [0, 0.25, 0, 0.75])
    rng = np.random.default_rng(1)
    pool = [*C.LABEL_TEMPLATES, *C.AREA_TEMPLATES]
    seen = set()
    for _ in range(100):
        # Given order puts the smaller class first; the caption must not.
        cap = C.caption_from_labels([NAMES[1], NAMES[3]], [areas[1], areas[3]], rng, pool)
        assert cap.index("urban fabric") < cap.index("coniferous forest"), cap
        seen.add(cap)
    assert any("mostly urban fabric" in c for c in seen)


def test_dominance_templates_need_areas() -> None:
    rng = np.random.default_rng(2)
    pool = [*C.LABEL_TEMPLATES, *C.AREA_TEMPLATES]
    caps = {C.caption_from_labels(NAMES[:3], None, rng, pool) for _ in range(200)}
    assert not any(w in c for c in caps for w in ("mostly", "dominated", "largely"))


def test_boxes_equal_hand_computed_components() -> None:
    mask = np.zeros((8, 8), np.uint8)
    mask[0:2, 0:3] = 1  # blob of class 1, top left
    mask[5:8, 6:8] = 1  # second blob of class 1, bottom right
    mask[3, 3] = 2
    mask[4, 4] = 2  # touches (3, 3) at a corner: one component under 8-connectivity
    mask[7, 0] = 255
    boxes = C.boxes_from_mask(mask, min_pixels=1)
    assert boxes == [
        (0, (0, 0, 8, 8), 64 - 6 - 6 - 2 - 1),
        (1, (0, 0, 2, 3), 6),
        (1, (5, 6, 8, 8), 6),
        (2, (3, 3, 5, 5), 2),
    ]
    assert C.boxes_from_mask(mask, min_pixels=3) == boxes[:3]
    cap = C.caption_from_boxes(boxes[1:3], ["bg", "Coniferous forest"], mask.shape,
                               np.random.default_rng(0), ["there {be} {boxes}"])
    assert cap == "there are two patches of coniferous forest scattered across the image"


@pytest.mark.parametrize(("rows", "cols", "word"), [
    (slice(0, 3), slice(0, 3), "in the top left"),
    (slice(0, 3), slice(9, 12), "in the top right"),
    (slice(9, 12), slice(0, 3), "in the bottom left"),
    (slice(9, 12), slice(9, 12), "in the bottom right"),
    (slice(5, 7), slice(5, 7), "in the centre"),
])
def test_location_words_for_corner_blobs(rows: slice, cols: slice, word: str) -> None:
    mask = np.zeros((12, 12), np.uint8)
    mask[rows, cols] = 1
    boxes = [b for b in C.boxes_from_mask(mask, min_pixels=1) if b[0] == 1]
    cap = C.caption_from_boxes(boxes, ["bg", "Inland waters"], mask.shape,
                               np.random.default_rng(0), ["there {be} {boxes}"])
    assert cap == f"there is one patch of inland waters {word}"


def test_count_and_row_words() -> None:
    assert [C.count_word(n) for n in (1, 2, 3, 4, 6, 7, 50)] == [
        "one", "two", "three", "several", "several", "many", "many"]
    top = [(0, c, 2, c + 1) for c in (0, 5, 10)]
    assert C.location_word(top, (12, 12)) == "across the top"
    assert C.location_word([(0, 0, 12, 12)], (12, 12), [144]) == "covering most of the image"


def test_store_captions_deterministic_and_complete(reben_store: Path) -> None:
    store = geofm.open_store(reben_store)
    a = C.caption_store(store, seed=0, per_chip=2)
    assert a == C.caption_store(store, seed=0, per_chip=2, batch_size=4)
    assert a != C.caption_store(store, seed=1, per_chip=2)
    labels = store.read(np.arange(len(store)))["label"]
    for caps, row in zip(a, labels, strict=True):
        assert len(caps) == 2 and caps[0] != caps[1]
        for k in np.flatnonzero(row):
            for cap in caps:
                assert C.caption_name(store.classes[k]) in cap, cap


def test_placeholder_masks_are_ignored(store_copy: Path) -> None:
    store = geofm.open_store(store_copy)
    assert store.chips["mask_placeholder"].all() and "mask" in store.arrays
    labels_only = C.caption_store(store, seed=3, per_chip=3, use_masks=False)
    assert C.caption_store(store, seed=3, per_chip=3) == labels_only
    # The same maps flagged as real are used (areas, boxes), so the captions change.
    _set_placeholder(store_copy, False)
    real = C.caption_store(geofm.open_store(store_copy), seed=3, per_chip=3)
    assert real != labels_only
    assert any(c.startswith(("there", "an aerial image with", "seen from", "in this", "a remote"))
               and "patch" in c for caps in real for c in caps)


def test_write_captions_round_trip(store_copy: Path) -> None:
    store = geofm.open_store(store_copy)
    caps = C.caption_store(store, seed=7, per_chip=2)
    C.write_captions(store, caps, seed=7, templates_id=C.DEFAULT_TEMPLATES)
    again = geofm.open_store(store_copy)
    assert [list(c) for c in again.chips["captions"]] == caps
    meta = again.attrs["captions"]
    assert meta["seed"] == 7 and meta["per_chip"] == 2
    assert meta["templates_id"] == C.DEFAULT_TEMPLATES
    assert set(C.LABEL_TEMPLATES) <= set(meta["templates"])
    assert meta["method"] == "labels only" and meta["mask_chips"] == 0
    assert not (store_copy / (CHIP_TABLE + ".tmp")).exists()
    assert validate_store(store_copy) == []
    with pytest.raises(geofm.GeofmError, match="caption lists"):
        C.write_captions(again, caps[:-1], seed=7)


def test_store_without_labels_is_one_line_error(tmp_path: Path) -> None:
    store = geofm.open_store(make_store(tmp_path / "s.zarr", ["S2.B04", "S2.B03"], n=2, size=8))
    for call in (lambda: C.caption_store(store),
                 lambda: C.write_captions(store, [["x"], ["y"]], seed=0)):
        with pytest.raises(geofm.GeofmError, match="no labels") as err:
            call()
        assert "\n" not in str(err.value)
