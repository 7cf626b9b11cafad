"""The band contract a training run hands to its model card."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from geofm.card import BandContract
from geofm.data.transforms import Normalize
from geofm.io.store import ChipStore, band_info
from geofm.models.encoder import FeatureEncoder


def trained_contract(encoder: FeatureEncoder, bands: Sequence[str], normalize: Normalize,
                     stores: Sequence[ChipStore], levels: Mapping[str, str]) -> BandContract:
    """The contract of an encoder trained on ``stores``: their bands as served, the run's
    normalisation, the stores' physical band descriptions and processing levels, and whether
    the encoder takes any subset of its bands (one token per band)."""
    return BandContract(
        bands=tuple(bands),
        mean=tuple(float(v) for v in normalize.mean.tolist()),
        std=tuple(float(v) for v in normalize.std.tolist()),
        flexible=bool(getattr(encoder, "band_tokens", False)),
        info=tuple(band_info(list(stores), list(bands))),
        processing_levels=dict(levels),
    )
