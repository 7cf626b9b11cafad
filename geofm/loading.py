"""Loading models: one loader per card kind, and :func:`load_model` to pick among them.

Shared by evaluation, prediction, export and the analyst API. Band matching and normalisation
belong to the card's :class:`~geofm.card.BandContract`, so a band mismatch is the same clear
error everywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from geofm.card import Architecture, ModelCard
from geofm.checkpoint import is_geofm_checkpoint, load_checkpoint, read_card
from geofm.errors import GeofmError
from geofm.models import create_model
from geofm.models.align import AlignModel
from geofm.models.encoder import Encoder
from geofm.models.openclip import load_open_clip
from geofm.models.text import TextTower

if TYPE_CHECKING:
    from geofm.models.finetuner import Finetuner

def build_encoder(architecture: Architecture) -> Encoder:
    """An untrained encoder of ``architecture`` (the card's registered name and config); a
    published family's architecture is registered by importing the catalogue."""
    from geofm.models.registry import list_models

    if architecture.name not in list_models():
        from geofm.published.resolve import ensure_catalogue

        ensure_catalogue()
    return create_model(architecture.name, **architecture.config)


def encoder_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` tensors of a checkpoint, prefix removed."""
    return {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}


def load_encoder(path: str | Path, weights_file: str | Path | None = None
                 ) -> tuple[Encoder, ModelCard]:
    """The pretrained (or finetuned, or aligned) encoder of a geofm checkpoint, in eval mode;
    or a published encoder: ``path`` names the release (``"dofa_base"``,
    ``"torchgeo:DOFABase16_Weights.DOFA_MAE"``) and ``weights_file`` is its published file
    (see :mod:`geofm.published.resolve`)."""
    from geofm.published.resolve import (
        is_published_ref,
        load_published,
        refuse_weights_without_release,
    )

    refuse_weights_without_release(path, weights_file)
    if is_published_ref(path):
        return load_published(str(path), weights_file)
    weights, card = load_checkpoint(path)
    enc = build_encoder(card.architecture)
    state = encoder_state(weights)
    if not state:
        raise GeofmError("checkpoint holds no encoder weights", path)
    enc.load_state_dict(state, strict=True)
    return enc.eval(), card


def store_bands_for(card: ModelCard, store: str | Path) -> list[str]:
    """The bands of the chip store ``store`` to train a card's encoder on, when none are
    named: every model band for a fixed-band model, the ones the store has for a band-token
    model (a ChannelViT pretrained on several sensors finetunes on one of them).

    Raises:
        BandError: The store lacks bands the model needs (listed).
    """
    from geofm.io.store import open_store

    return card.contract.match(open_store(store).bands, store)


def load_finetuned(path: str | Path) -> tuple[Finetuner, ModelCard]:
    """A finetuned model (encoder + head) of a geofm checkpoint, in eval mode.

    Raises:
        GeofmError: Not a finetuned geofm checkpoint.
    """
    from geofm.models.finetuner import Finetuner

    weights, card = load_checkpoint(path)
    card.require("finetune", path, "finetune it first with 'geofm finetune'")
    assert card.task is not None  # a finetune card always has one
    model = Finetuner(build_encoder(card.architecture), task=card.task.task,
                      head=card.task.head, num_outputs=card.task.num_outputs, freeze="full")
    model.load_state_dict(weights, strict=True)
    return model.eval(), card


def is_open_clip_source(path: str | Path) -> bool:
    """Whether ``path`` holds published open_clip / RemoteCLIP weights rather than a geofm
    checkpoint: a folder, a ``.pt`` / ``.pth`` / ``.bin`` file, or a safetensors file without a
    geofm header."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in (".pt", ".pth", ".bin"):
        return True
    return p.suffix.lower() == ".safetensors" and p.is_file() and not is_geofm_checkpoint(p)


def load_aligned(path: str | Path) -> tuple[AlignModel, ModelCard]:
    """An image–text model of a geofm align checkpoint, in eval mode.

    The encoder and projections come from the checkpoint; the text tower is rebuilt from the
    card's text source (its weights are stored only when it was trained unlocked). A
    published open_clip / RemoteCLIP state dict (``.pt``, ``.pth``, ``.bin``) or open_clip folder
    is loaded with :func:`geofm.models.openclip.load_open_clip` (architecture read from the
    weights, Sentinel-2 RGB bands).

    Raises:
        GeofmError: Not an align checkpoint, or its text model cannot be loaded.
    """
    if is_open_clip_source(path):
        return load_open_clip(Path(path))
    weights, card = load_checkpoint(path)
    if card.kind != "align" or card.text is None:
        raise GeofmError(f"has no text tower (it is a {card.kind} checkpoint)", path,
                         "align it with 'geofm align'")
    spec = card.text
    text = TextTower.from_record(dict(spec.source))
    model = AlignModel(build_encoder(card.architecture), text, embed_dim=spec.embed_dim,
                       init_temperature=spec.init_temperature,
                       max_logit_scale=spec.max_logit_scale)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (text.locked and k.startswith("text."))]
    if missing or unexpected:
        raise GeofmError(f"align checkpoint does not fit its model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})", path)
    return model.eval(), card


def load_model(path: str | Path, weights: str | Path | None = None
               ) -> tuple[nn.Module | Encoder, ModelCard]:
    """Any model geofm reads, by its card's kind: a finetuned model (encoder + head), an
    image–text model (geofm align checkpoints and published open_clip / RemoteCLIP weights), an
    encoder (pretrained checkpoints), or a published encoder (``path`` a release name or
    ``torchgeo:Enum.MEMBER``, ``weights`` its published file), in eval mode.

    This is the one place that picks the loader.
    """
    from geofm.published.resolve import is_published_ref

    if weights is not None or is_published_ref(path):
        return load_encoder(path, weights)
    if is_open_clip_source(path):
        return load_aligned(path)
    kind = read_card(path).kind
    if kind == "finetune":
        return load_finetuned(path)
    if kind == "align":
        return load_aligned(path)
    return load_encoder(path)
