"""Training and evaluating on a published encoder: its release's contract, not store statistics.

A published encoder's weights expect inputs in the release's units and statistics (SSL4EO's
DN ÷ 10,000, DOFA's SSL4EO-S12 mean and std, a CLIP tower's 8-bit RGB). A run that starts from
one normalises the store's bands with the release's contract
(:meth:`~geofm.card.BandContract.normalization`, unit conversion folded in), checks first that
the store's values are in the units its bands declare (:func:`geofm.scale.check_scale`), and
writes a card that keeps the release's contract, architecture and provenance, so prediction and
export read everything from the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from geofm.card import NATIVE_UNITS, BandContract, ModelCard
from geofm.data.transforms import Normalize
from geofm.io.store import ChipStore
from geofm.scale import check_scale

SCALE_CHIPS = 8
"""Chips of the training split the scale guard looks at."""


def has_release_contract(card: ModelCard) -> bool:
    """Whether ``card``'s contract is a release's (its own units and statistics) rather than
    statistics geofm computed from a store in its native units."""
    return card.contract.input_units != NATIVE_UNITS


def release_normalize(contract: BandContract, bands: Sequence[str]) -> Normalize:
    """The transform that feeds a store's native ``bands`` as the release expects."""
    mean, std = contract.normalization(list(bands))
    return Normalize(list(bands), mean.tolist(), std.tolist())


def check_store_scale(store: ChipStore, bands: Sequence[str], split: str | None) -> None:
    """Refuse a store whose values are not in the native units its bands declare (checked on
    a few chips of ``split``).

    Raises:
        GeofmError: The values look like other units.
    """
    idx = store.split_indices(split)[:SCALE_CHIPS]
    if len(idx) == 0:
        return
    image = store.read(np.sort(idx), bands=list(bands), arrays=["image"])["image"]  # [N,C,H,W]
    check_scale(list(bands), np.moveaxis(image, 1, 0), "native", store.path)


def release_contract(contract: BandContract, used: Sequence[str],
                     levels: Mapping[str, str]) -> BandContract:
    """The release's contract for a model trained on the data bands ``used``: the model
    bands they stand for (a finetuned head saw only those), the release's statistics and
    units, and the processing levels of the training data."""
    stands = contract.stands_for(list(used))
    keep = [b for b in contract.bands if b in set(stands.values())]
    index = [contract.bands.index(b) for b in keep]
    info = tuple(contract.info[i] for i in index) if len(contract.info) == len(contract.bands) \
        else contract.info
    return replace(contract, bands=tuple(keep), mean=tuple(contract.mean[i] for i in index),
                   std=tuple(contract.std[i] for i in index), info=info,
                   processing_levels={**contract.processing_levels, **levels})
