"""Where a continued pretraining run starts: a geofm checkpoint or a published ViT.

``geofm pretrain --init pretrain.safetensors`` continues a geofm checkpoint's encoder (its
architecture and weights come from the checkpoint's card); ``--init ssl4eo_vits16_mae
--weights FILE`` continues a published encoder that :func:`~geofm.published.token_encoder.
as_token_encoder` turns into a geofm token encoder (other families are refused in one line).
An encoder whose card carries a release's contract is fed the store in the release's units and
statistics (:mod:`geofm.published.release`), and the checkpoint the run writes keeps that
contract and the release's provenance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from geofm.card import Architecture, BandContract, ModelCard
from geofm.errors import GeofmError
from geofm.loading import load_encoder, store_bands_for
from geofm.models.vit import TokenEncoder
from geofm.published.release import (
    check_store_scale,
    has_release_contract,
    release_contract,
    release_normalize,
)
from geofm.training.datamodule import MixedChipDataModule


@dataclass(frozen=True)
class PretrainInit:
    """The encoder a run continues.

    Attributes:
        ref: What ``init`` named (a checkpoint path or a release name).
        weights: The release file (``None`` for a geofm checkpoint).
        architecture: The geofm token encoder that carries the weights.
        state: Its weights.
        card: The card of ``ref`` (its contract and provenance).
    """

    ref: str
    weights: str | None
    architecture: Architecture
    state: Mapping[str, Tensor]
    card: ModelCard

    @property
    def released(self) -> bool:
        """Whether the encoder expects a release's units and statistics."""
        return has_release_contract(self.card)

    def store_bands(self, stores: Sequence[str | Path]) -> list[list[str]]:
        """The bands of each store to train on when none are named: every model band for a
        fixed-band encoder, the ones the store has for a band-token one.

        Raises:
            BandError: A store lacks bands the encoder needs.
        """
        return [store_bands_for(self.card, s) for s in stores]

    def check_normalization(self, setting: str) -> None:
        """A released encoder is fed its release's units and statistics, so
        ``data.normalization`` must be left at ``stats`` (checked before the stores are read).

        Raises:
            GeofmError: Another normalisation is asked for a released encoder.
        """
        if self.released and setting != "stats":
            raise GeofmError(f"data.normalization {setting} does not apply to {self.ref}: it "
                             "is fed its release's units and statistics",
                             hint="leave data.normalization at stats")

    def normalize(self, dm: MixedChipDataModule, split: str | None) -> None:
        """Feed a released encoder the release's units and statistics instead of the stores'
        (each store's values checked to be in its bands' units first); a geofm encoder keeps
        the stores' statistics.

        Raises:
            GeofmError: A store's values are not in the units its bands declare.
        """
        if not self.released:
            return
        for store, names in zip(dm.stores, dm.store_bands, strict=True):
            check_store_scale(store, names, split)
        dm.normalize = release_normalize(self.card.contract, dm.band_names)

    def contract(self, bands: Sequence[str], levels: Mapping[str, str]) -> BandContract:
        """The release's contract for the bands trained on (only for :attr:`released`)."""
        return release_contract(self.card.contract, bands, levels)

    def provenance(self) -> dict[str, Any]:
        """``encoder_source`` of the checkpoint the run writes."""
        return {"checkpoint": self.ref, "kind": self.card.kind,
                **({"weights": self.weights} if self.weights else {}),
                "data": dict(self.card.provenance.data)}


def load_pretrain_init(init: str | Path, weights: str | Path | None) -> PretrainInit:
    """The encoder ``init`` names, as a geofm token encoder's architecture and weights.

    Args:
        init: A geofm checkpoint, or a published release's name (``torchgeo:`` enum too).
        weights: The release's file, for a name.

    Raises:
        GeofmError: A release (or a checkpoint built on one) whose family runs its own
            tokenizer, checked before its file is read; a missing or foreign file.
    """
    from geofm.published.resolve import is_published_ref
    from geofm.published.token_encoder import as_token_encoder, check_continuable

    if is_published_ref(init):
        check_continuable(str(init))
    encoder, card = load_encoder(init, weights)
    token, architecture = as_token_encoder(encoder, card, init)
    return PretrainInit(str(init), None if weights is None else str(weights), architecture,
                        token.state_dict(), card)


def check_encoder_bands(encoder: TokenEncoder, bands: Sequence[str]) -> None:
    """A fixed-band encoder continues on exactly its bands, named as it names them (checked
    before anything trains).

    Raises:
        BandError: The stores serve other bands.
    """
    if not encoder.band_tokens:
        encoder.align_bands(list(bands))
