"""The model side of prediction: a checkpoint ready to run on tiles."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import Tensor, nn

from geofm.card import ModelCard
from geofm.errors import GeofmError
from geofm.models.encoder import FeatureEncoder

if TYPE_CHECKING:
    from geofm.models.align import AlignModel


def patch_grid(feats: Tensor, height: int, width: int, patch: int) -> Tensor:
    """Patch features ``[B, N, D]`` (``N`` patches in row-major order) of ``height × width``
    images as an embedding grid ``[B, D, height / patch, width / patch]``: what
    ``predict --embed`` writes and the embedding ONNX export returns."""
    rows, cols = height // patch, width // patch
    return feats.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], rows, cols)


class Predictor:
    """A geofm model ready for tiled inference, with what its model card says.

    Args:
        module: A finetuned model (``module(images, bands)`` → logits), a bare encoder with
            ``forward_patch_features`` (embeddings only), or an image–text model with
            ``encode_patches`` and ``encode_text`` (:class:`~geofm.models.align.AlignModel`:
            embeddings and text queries).
        card: The model card (band contract, task, classes, tile and patch size, GSD).
        name: Where the model came from (the checkpoint file name), for output tags.

    Attributes:
        task: ``"segmentation"``, ``"regression"``, ``"multilabel"``, ``"classification"``, or
            ``None`` for a pretrained-only encoder or an aligned image–text model.
        bands: The card's band names (canonical).
        classes: Class (or regression target) names.
        texts: The texts a query predictor compares patches with (see :meth:`with_texts`).
        text_embedding: ``[T, E]`` L2-normalised embeddings of :attr:`texts` on
            :attr:`device`, or ``None``.
    """

    def __init__(self, module: nn.Module, card: ModelCard, name: str = "") -> None:
        self.module = module.eval()
        self.card = card
        self.name = name
        self.task: str | None = card.task.task if card.task is not None else None
        self.bands: list[str] = list(card.bands)
        self.classes: list[str] = list(card.classes)
        self.class_colors: list[str] = list(card.class_colors)
        self.mean = np.asarray(card.contract.mean, dtype=np.float32)
        self.std = np.asarray(card.contract.std, dtype=np.float32)
        self.flexible = card.flexible
        encoder = self.encoder
        # The encoder's own patch side is the stride of its feature grid (SatVision's SwinV2:
        # patch 4 on its card, features every 32 px); the card's serves modules without one.
        encoder_patch: int | None = getattr(encoder, "patch_size", None)
        self.patch_size = int(encoder_patch or card.patch_size or 1)
        self.embed_dim = int(getattr(encoder, "embed_dim", 0))
        self.gsd_m: float | None = card.gsd_m
        size = card.tile_size or (16 * self.patch_size, 16 * self.patch_size)
        self.tile_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.device = torch.device("cpu")
        self.texts: list[str] = []
        self.text_embedding: Tensor | None = None
        self.data_units = "native"

    def with_data_units(self, data_units: str) -> Predictor:
        """This model (shared, not copied) for inputs in ``data_units``: ``"native"`` (the
        products' stored numbers) or ``"physical"`` (reflectance 0–1, dB, K); the band contract
        converts either into what the model expects, and :func:`geofm.scale.check_scale`
        refuses values that do not fit the declared units.

        Raises:
            GeofmError: Unknown units.
        """
        from geofm.card import DATA_UNITS

        if data_units not in DATA_UNITS:
            raise GeofmError(f"data units must be one of {', '.join(DATA_UNITS)}, got "
                             f"{data_units!r}")
        twin = copy.copy(self)
        twin.data_units = data_units
        return twin

    @classmethod
    def from_checkpoint(cls, path: str | Path, weights: str | Path | None = None) -> Predictor:
        """Load a finetuned checkpoint, an aligned image–text one (embeddings and queries; also
        published open_clip / RemoteCLIP weights), a pretrained one (embeddings only), or a
        published encoder (``path`` its name, ``weights`` its file; embeddings only)."""
        from geofm.loading import load_model

        module, card = load_model(path, weights)
        assert isinstance(module, nn.Module)  # every model geofm loads is a module
        return cls(module, card, Path(path).name)

    @property
    def encoder(self) -> FeatureEncoder:
        """The token encoder (the finetuned model's, or the module itself)."""
        return cast(FeatureEncoder, getattr(self.module, "encoder", self.module))

    @property
    def model_name(self) -> str:
        """Registered architecture name (``channelvit_tiny``)."""
        return self.card.architecture.name or type(self.encoder).__name__

    def to(self, device: str | torch.device) -> Predictor:
        """Move the model to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
        try:
            self.device = torch.device(device)
            self.module.to(self.device)
            if self.text_embedding is not None:
                self.text_embedding = self.text_embedding.to(self.device)
        except (RuntimeError, AssertionError) as e:
            raise GeofmError(f"cannot use device {device!r} ({str(e).splitlines()[0]})",
                             hint="use device='cpu' or an available GPU") from None
        return self

    def replica(self, device: str | torch.device) -> Predictor:
        """An independent copy of this predictor (and its query texts) on ``device``."""
        twin = Predictor(copy.deepcopy(self.module), self.card, self.name)
        twin.texts, twin.text_embedding = list(self.texts), self.text_embedding
        twin.data_units = self.data_units
        return twin.to(device)

    def require_task(self) -> str:
        """The finetuned task, or a clear error for a pretrained-only checkpoint."""
        if self.task is None and self.has_text:
            raise GeofmError(f"{self.name or 'the model'} is an image–text model without a "
                             "task head", hint="map a text with query= ('geofm query'), or "
                             "use embed=True (--embed) for embeddings")
        if self.task is None:
            raise GeofmError(f"{self.name or 'the model'} is a pretrained encoder without a "
                             "task head", hint="use embed=True (--embed) for embeddings, or "
                             "finetune it first with 'geofm finetune'")
        return self.task

    @property
    def has_text(self) -> bool:
        """Whether the model has a text tower (an aligned image–text checkpoint)."""
        return all(callable(getattr(self.module, m, None))
                   for m in ("encode_patches", "encode_text", "encode_image"))

    def require_text(self) -> None:
        """Raise a clear error unless the model has a text tower.

        Raises:
            GeofmError: A pretrained or finetuned checkpoint (no text tower).
        """
        if not self.has_text:
            what = f"has no text tower (it is a {self.card.kind} checkpoint)"
            raise GeofmError(what, self.name or "the model", "align it with 'geofm align'")

    @torch.inference_mode()
    def encode_text(self, texts: Sequence[str]) -> Tensor:
        """``[T, E]`` L2-normalised text embeddings on :attr:`device`.

        Raises:
            GeofmError: No text tower, or an empty or blank text.
        """
        self.require_text()
        return cast("AlignModel", self.module).encode_text(list(texts)).float()

    @torch.inference_mode()
    def encode_image(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """``[B, E]`` L2-normalised embeddings of normalised images ``[B, C, H, W]``.

        Raises:
            GeofmError: No text tower (not an aligned image–text model).
        """
        self.require_text()
        aligned = cast("AlignModel", self.module)
        return aligned.encode_image(images.to(self.device), list(bands)).float()

    def with_texts(self, texts: Sequence[str]) -> Predictor:
        """A predictor for ``mode="query"``: this model (shared, not copied) with ``texts``
        embedded once, ready to be compared with every patch.

        Raises:
            GeofmError: No text tower, or an empty or blank text.
        """
        twin = copy.copy(self)
        twin.texts = list(texts)
        twin.text_embedding = self.encode_text(twin.texts)  # [T, E]
        return twin

    @torch.inference_mode()
    def outputs(self, images: Tensor, bands: Sequence[str], mode: str) -> Tensor:
        """Per-tile outputs ready for blending.

        Args:
            images: ``[B, C, H, W]`` normalised tiles on :attr:`device`.
            bands: Band names of the ``C`` channels.
            mode: ``"pixel"``, ``"scene"``, ``"embed"`` or ``"query"``.

        Returns:
            ``[B, K, H, W]`` scores or values (pixel), ``[B, K, 1, 1]`` scores (scene),
            ``[B, D, H/p, W/p]`` patch embeddings (embed), ``[B, T, H/p, W/p]`` cosine
            similarity of each patch's projected embedding with each text (query).
        """
        if mode == "query":
            if self.text_embedding is None:
                raise GeofmError("no query text given", hint="use Predictor.with_texts")
            aligned = cast("AlignModel", self.module)  # has_text: checked by with_texts
            patches = aligned.encode_patches(images, list(bands))  # [B, E, H/p, W/p]
            sim = torch.einsum("behw,te->bthw", patches.float(), self.text_embedding)
            return sim.clamp(-1.0, 1.0)  # [B, T, H/p, W/p], rounding kept inside [-1, 1]
        if mode == "embed":
            feats = self.encoder.forward_patch_features(images, list(bands))  # [B, N, D]
            return patch_grid(feats, images.shape[2], images.shape[3], self.patch_size)
        logits: Tensor = self.module(images, list(bands))  # [B, K] or [B, K, H, W]
        if self.task == "multilabel":
            scores = logits.sigmoid()
        elif self.task in ("classification", "segmentation"):
            scores = logits.softmax(dim=1)
        else:
            scores = logits
        if scores.ndim == 2:
            scores = scores[:, :, None, None]  # [B, K, 1, 1]
        return scores.float()


