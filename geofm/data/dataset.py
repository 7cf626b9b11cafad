"""A torchgeo ``NonGeoDataset`` over a chip store, returning geofm sample dicts.

The sample dict, documented once::

    {
        "image": Tensor[C, H, W] float32,   # pixels in physical units (dB, reflectance × 10⁴ ...)
        "bands": list[str],                 # canonical band names, length C
        "label": Tensor[K] int64,           # multi-hot scene labels (stores with labels)
        "mask": Tensor[H, W] int64,         # class per pixel, 255 = ignore (stores with masks)
        "valid": Tensor[C, H, W] bool,      # False where the source flagged nodata (if stored)
        "target": Tensor[T, H, W] float32,  # pixel regression targets, NaN unknown (if stored)
        "meta": {"index": int, "chip_id": str},
    }

Non-finite pixels are never hidden: a NaN stays NaN and is also False in ``valid`` when the
store has one; objectives and heads mask them out of their losses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torchgeo.datasets import NonGeoDataset

from geofm.io.schema import CHIP_TABLE
from geofm.io.store import ChipStore, open_store

Sample = dict[str, Any]


class ChipDataset(NonGeoDataset):
    """Chips of one split of a store, as sample dicts.

    Args:
        store: A store or its path.
        split: ``"train"``, ``"validation"`` (or ``"val"``), ``"test"`` or None for all chips.
        bands: Bands to serve (names, a named set or a count; default all, store order).
        transforms: A callable on sample dicts (e.g. :class:`geofm.data.transforms.Normalize`).
        indices: Serve exactly these store indices instead of a split.
        arrays: Arrays to read (default: every array the store has); pretraining reads only
            ``["image", "valid"]`` and never decodes labels or masks.
    """

    def __init__(
        self,
        store: str | Path | ChipStore,
        split: str | None = None,
        bands: Sequence[str] | str | int | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        indices: Sequence[int] | np.ndarray | None = None,
        arrays: Sequence[str] | None = None,
    ):
        self.store = store if isinstance(store, ChipStore) else open_store(store)
        self.arrays = None if arrays is None else list(arrays)
        self.split = split
        self.indices = (np.asarray(indices, dtype=np.int64) if indices is not None
                        else self.store.split_indices(split))
        band_idx = self.store.band_indices(bands)
        self.bands = [self.store.bands[i] for i in band_idx]
        self._band_idx = None if len(band_idx) == len(self.store.bands) and \
            np.array_equal(band_idx, np.arange(len(band_idx))) else band_idx
        self.transforms = transforms
        self._chip_ids = pd.read_parquet(self.store.path / CHIP_TABLE,
                                         columns=["chip_id"])["chip_id"].to_numpy()

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Sample:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """Read several samples in one store call (torch's DataLoader uses this for batches)."""
        store_idx = self.indices[np.asarray(indices, dtype=np.int64)]
        batch = self.store.read(store_idx, arrays=self.arrays)
        if self._band_idx is not None:
            batch["image"] = batch["image"][:, self._band_idx]
            if "valid" in batch:
                batch["valid"] = batch["valid"][:, self._band_idx]
        # One tensor per array for the whole batch; samples are views into it, so collating an
        # untransformed batch hands the same memory back without a copy.
        image = torch.from_numpy(batch["image"].astype(np.float32, copy=False))
        label = torch.from_numpy(batch["label"].astype(np.int64)) if "label" in batch else None
        mask = torch.from_numpy(batch["mask"].astype(np.int64)) if "mask" in batch else None
        valid = torch.from_numpy(batch["valid"]) if "valid" in batch else None
        target = torch.from_numpy(batch["target"]) if "target" in batch else None
        samples = []
        for k, i in enumerate(store_idx):
            s: Sample = {
                "image": image[k],
                "bands": self.bands,
                "meta": {"index": int(i), "chip_id": str(self._chip_ids[i])},
            }
            if label is not None:
                s["label"] = label[k]
            if mask is not None:
                s["mask"] = mask[k]
            if valid is not None:
                s["valid"] = valid[k]
            if target is not None:
                s["target"] = target[k]
            samples.append(self.transforms(s) if self.transforms else s)
        return samples


def collate_samples(samples: list[Sample]) -> Sample:
    """Stack sample dicts into a batch dict; ``bands`` is shared and kept once.

    Returns:
        ``{"image": [B, C, H, W], "bands": list[str], "label"?: [B, K], "mask"?: [B, H, W],
        "valid"?: [B, C, H, W], "meta": {"index": Tensor[B], "chip_id": list[str],
        "store"?: int}}`` (``store``: the batch's store in a several-store run).
    """
    bands = samples[0]["bands"]
    if any(s["bands"] != bands for s in samples):
        raise ValueError("samples in one batch must share their band list")
    out: Sample = {"bands": list(bands)}
    for key in ("image", "label", "mask", "valid", "target"):
        if key in samples[0]:
            out[key] = _stack([s[key] for s in samples])
    if "meta" in samples[0]:
        out["meta"] = {
            "index": torch.tensor([s["meta"]["index"] for s in samples]),
            "chip_id": [s["meta"]["chip_id"] for s in samples],
        }
        if "store" in samples[0]["meta"]:  # several stores: a batch comes from one
            out["meta"]["store"] = int(samples[0]["meta"]["store"])
    return out




def _stack(tensors: list[Tensor]) -> Tensor:
    """``torch.stack``, or the batch tensor itself when ``tensors`` are its rows in order."""
    base = tensors[0]._base
    if (base is not None and base.is_contiguous() and base.shape[0] == len(tensors)
            and base.shape[1:] == tensors[0].shape
            and all(t._base is base and t.data_ptr() == base[k].data_ptr()
                    for k, t in enumerate(tensors))):
        return base
    return torch.stack(tensors)
