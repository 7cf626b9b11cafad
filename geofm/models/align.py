"""Image–text alignment model: a geofm encoder and a text tower in one embedding space.

Both towers end in a linear projection to ``embed_dim`` and L2 normalisation, as in CLIP; a
learnable ``logit_scale`` (log of the inverse temperature) scales their cosine similarities.
Image embeddings come from the encoder's pooled features; per-location embeddings (for text→map
queries) come from its patch features through the same projection, so a text scores every patch
on the scale it scores whole images.

>>> model = AlignModel(create_model("channelvit_tiny", bands=bands), TextTower.from_source())
>>> img, txt, scale = model(images, bands, ["forest", "a lake"])  # [B, E], [2, E], []
>>> similarity = scale * img @ txt.T                              # [B, 2]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geofm.card import Architecture, BandContract, ModelCard, TextSpec
from geofm.checkpoint import save_checkpoint
from geofm.models.encoder import FeatureEncoder
from geofm.models.text import TextTower


class AlignModel(nn.Module):
    """A band-aware image tower and a text tower projected into one space.

    Args:
        encoder: An image encoder (``vit_*``, ``channelvit_*``, a published one), usually
            pretrained.
        text: The text tower (locked or not).
        embed_dim: Width ``E`` of the shared embedding space.
        init_temperature: Initial softmax temperature ``T``; ``logit_scale`` starts at
            ``log(1 / T)``.
        max_logit_scale: Cap on ``exp(logit_scale)`` (CLIP's 100), for stability.
    """

    def __init__(self, encoder: FeatureEncoder, text: TextTower, embed_dim: int = 256,
                 init_temperature: float = 0.07, max_logit_scale: float = 100.0) -> None:
        super().__init__()
        self.encoder: FeatureEncoder = encoder
        self.text = text
        self.embed_dim = int(embed_dim)
        self.init_temperature = float(init_temperature)
        self.max_logit_scale = float(max_logit_scale)
        self.image_proj: nn.Module = nn.Linear(encoder.embed_dim, embed_dim)
        self.text_proj: nn.Module = nn.Linear(text.dim, embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))

    def scale(self) -> Tensor:
        """``exp(logit_scale)``, capped at ``max_logit_scale`` (a scalar tensor)."""
        return self.logit_scale.clamp(max=math.log(self.max_logit_scale)).exp()

    def encode_image(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Image embeddings.

        Args:
            images: ``[B, C, H, W]`` normalised as the encoder was trained.
            bands: Band names of the ``C`` channels.

        Returns:
            ``[B, E]``, L2-normalised.
        """
        feats = self.encoder.forward_features(images, list(bands))  # [B, D]
        return F.normalize(self.image_proj(feats), dim=-1)  # [B, E]

    def encode_patches(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Per-location embeddings on the patch grid.

        Args:
            images: ``[B, C, H, W]``, ``H`` and ``W`` multiples of the patch size ``p``.
            bands: Band names of the ``C`` channels.

        Returns:
            ``[B, E, H/p, W/p]``, L2-normalised along ``E``.
        """
        gh, gw = self.encoder.grid_size(images)
        feats = self.encoder.forward_patch_features(images, list(bands))  # [B, N, D]
        emb = F.normalize(self.image_proj(feats), dim=-1)  # [B, N, E]
        return emb.transpose(1, 2).reshape(emb.shape[0], emb.shape[2], gh, gw)  # [B, E, gh, gw]

    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """Text embeddings ``[T, E]``, L2-normalised; raises GeofmError on empty text."""
        feats = self.text(texts)  # [T, text.dim]
        return F.normalize(self.text_proj(feats), dim=-1)  # [T, E]

    def forward(self, images: Tensor, bands: Sequence[str],
                texts: Sequence[str]) -> tuple[Tensor, Tensor, Tensor]:
        """Image embeddings ``[B, E]``, text embeddings ``[T, E]`` and the logit scale ``[]``."""
        return self.encode_image(images, bands), self.encode_text(texts), self.scale()

    def settings(self) -> dict[str, Any]:
        """The alignment settings the model card records (:class:`~geofm.card.TextSpec`)."""
        return {"embed_dim": self.embed_dim, "init_temperature": self.init_temperature,
                "max_logit_scale": self.max_logit_scale,
                "text": {**self.text.source, "locked": self.text.locked}}


def aligned_state(
    model: AlignModel, state: dict[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """The weights to save: all of them, less ``text.*`` while the text tower is locked.

    Args:
        model: The model.
        state: Its full state dict where the caller gathered it (sharded training); default
            ``model.state_dict()``.
    """
    state = model.state_dict() if state is None else state
    if model.text.locked:
        state = {k: v for k, v in state.items() if not k.startswith("text.")}
    return state


def save_aligned(
    path: str | Path,
    model: AlignModel,
    card: ModelCard,
    state: dict[str, Tensor] | None = None,
) -> Path:
    """Write an align checkpoint.

    Args:
        path: Output ``.safetensors`` path.
        model: The trained model.
        card: The model card (kind ``align``, its :class:`~geofm.card.TextSpec` describing
            ``model``'s text tower).
        state: The model's full state dict where the caller gathered it (sharded training).
    """
    return save_checkpoint(path, aligned_state(model, state), card)


def aligned_card(model: AlignModel, contract: BandContract, *,
                 templates: Sequence[str] = (), captions: Mapping[str, Any] | None = None,
                 **fields: Any) -> ModelCard:
    """The card of an aligned model built in Python: its encoder's architecture, its text
    tower and settings, and ``contract``; ``fields`` are further :class:`ModelCard` fields
    (``classes``, ``tile_size``, ``provenance``, ...)."""
    settings = model.settings()
    encoder = model.encoder
    text = TextSpec(embed_dim=int(settings["embed_dim"]), source=settings["text"],
                    init_temperature=float(settings["init_temperature"]),
                    max_logit_scale=float(settings["max_logit_scale"]),
                    templates=tuple(templates), captions=dict(captions or {}))
    return ModelCard(kind="align",
                     architecture=Architecture(getattr(encoder, "model_name", ""),
                                               getattr(encoder, "model_config", {})),
                     contract=contract, text=text, **fields)
