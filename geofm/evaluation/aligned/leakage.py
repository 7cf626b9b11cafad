"""Perceptual-hash check for near-duplicate chips between evaluated and training chips."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from geofm.curation.dedup import hamming, near_duplicate_pairs, phash64
from geofm.io.store import ChipStore, open_store
from geofm.viz import composite_bands, stretch

DUPLICATE_RADIUS = 4
"""Largest Hamming distance (of 64 bits) between the pHashes of near-duplicate chips."""

MAX_LISTED = 50
"""Pairs and chip ids listed in a report (all are counted)."""



def chip_hashes(store: ChipStore, indices: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """64-bit pHashes (:func:`geofm.curation.dedup.phash64`) of chips rendered as RGB composites.

    The composite is the store's true-colour bands where it has them (else the first three
    bands, or VV/VH/VV for radar), each chip stretched 2–98 % to 8 bits.

    Returns:
        ``[len(indices)]`` uint64.
    """
    rgb = [store.bands[i] for i in composite_bands(store.bands)]
    idx = np.asarray(indices, dtype=np.int64)
    out = np.zeros(len(idx), dtype=np.uint64)
    for start in range(0, len(idx), batch_size):
        part = idx[start:start + batch_size]
        images = store.read(part, bands=list(dict.fromkeys(rgb)), arrays=["image"])["image"]
        order = [list(dict.fromkeys(rgb)).index(b) for b in rgb]
        for j, img in enumerate(images[:, order].astype(np.float32)):
            out[start + j] = phash64((stretch(img) * 255).round().astype(np.uint8))
    return out


def duplicate_check(store: ChipStore, split: str | None, trained_on: Mapping[str, Any],
                    radius: int = DUPLICATE_RADIUS) -> dict[str, Any]:
    """Chips of ``split`` that the model trained on, and near duplicates of its training chips.

    The reference is the model's training chips (``trained_on``, its card's training data
    record: ``store`` and ``split``)
    when that store exists; otherwise this store's ``train`` split. Chips with the same chip id
    in both sets are counted as shared; other pairs whose pHashes differ in at most ``radius``
    bits are near duplicates.

    Returns:
        A JSON-ready dict: reference, radius, method, counts and the first pairs.
    """
    train = trained_on
    note = ""
    ref_store: ChipStore | None = None
    ref_split: str | None = "train"
    if train.get("store") and Path(train["store"]).exists():
        ref_store, ref_split = open_store(train["store"]), train.get("split")
        note = "the checkpoint's training chips"
    else:
        note = ("the checkpoint names no training store" if not train.get("store")
                else f"the training store {train['store']} was not found")
        note += "; compared with this store's train split"
        if "train" in set(store.chips["split"]) and split != "train":
            ref_store = store
    result: dict[str, Any] = {
        "radius": int(radius),
        "method": "64-bit DCT pHash of each chip's 2–98 % stretched RGB composite; near "
                  f"duplicates differ in at most {radius} bits",
        "reference": {"store": str(ref_store.path) if ref_store else None,
                      "split": ref_split, "what": note},
    }
    if ref_store is None:
        result["checked"] = False
        return result
    ev_idx = store.split_indices(split)
    rf_idx = ref_store.split_indices(ref_split)
    ev_ids = store.chips["chip_id"].to_numpy()[ev_idx]
    rf_ids = ref_store.chips["chip_id"].to_numpy()[rf_idx]
    shared = sorted(set(ev_ids) & set(rf_ids))
    h_ev, h_rf = chip_hashes(store, ev_idx), chip_hashes(ref_store, rf_idx)
    hashes = np.concatenate([h_ev, h_rf])
    pairs = near_duplicate_pairs(hashes, radius) if len(hashes) > 1 else np.zeros((0, 2), int)
    n = len(h_ev)
    cross = pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)]
    rows = [(int(a), int(b) - n) for a, b in cross if ev_ids[a] != rf_ids[b - n]]
    dist = [int(hamming(h_ev[a], h_rf[b])) for a, b in rows]
    result.update({
        "checked": True,
        "evaluated_chips": n,
        "reference_chips": len(h_rf),
        "shared_chips": len(shared),
        "shared_chip_ids": shared[:MAX_LISTED],
        "near_duplicate_pairs": len(rows),
        "evaluated_with_near_duplicate": len({a for a, _ in rows}),
        "pairs": [{"evaluated": str(ev_ids[a]), "reference": str(rf_ids[b]), "distance": d}
                  for (a, b), d in list(zip(rows, dist, strict=True))[:MAX_LISTED]],
    })
    return result
