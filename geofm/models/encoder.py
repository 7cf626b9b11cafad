"""The calls geofm makes on an image encoder, as structural types.

geofm's own encoders (:class:`~geofm.models.vit.ViT`, :class:`~geofm.models.channelvit.
ChannelViT`), published encoders (:class:`~geofm.published.PublishedEncoder`) and the open_clip
image tower are different classes; training, loading, evaluation and prediction are typed
against these protocols instead, so any ``nn.Module`` that offers the calls plugs in without
inheriting from a geofm class. :func:`~geofm.models.registry.create_model` returns an
:class:`Encoder`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol, Self

from torch import Tensor, nn


class FeatureEncoder(Protocol):
    """An ``nn.Module`` that turns band-named images into pooled and per-patch features.

    Enough to embed, align with text and predict on a patch grid (the open_clip image tower is
    one). Images arrive normalised by the model's band contract; ``bands`` names their channels
    with registry names.
    """

    @property
    def band_tokens(self) -> bool:
        """``True`` when the model takes any subset of bands (channel-flexible)."""

    @property
    def patch_size(self) -> int:
        """Input pixels per feature location along each side."""

    @property
    def embed_dim(self) -> int:
        """Feature width ``D``."""

    @property
    def training(self) -> bool:
        """``nn.Module``'s training flag."""

    def grid_size(self, images: Tensor) -> tuple[int, int]:
        """Feature grid ``(rows, cols)`` of ``images [B, C, H, W]``."""

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Pooled features ``[B, D]``."""

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Per-patch features ``[B, N, D]``, ``N = rows · cols`` in row-major order."""

    def __call__(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Pooled features ``[B, D]`` (``nn.Module.__call__`` → ``forward``)."""

    # The nn.Module calls geofm makes on an encoder.

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        """The module's parameters."""

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        """The module's parameters with their dotted names."""

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """The module's tensors by name (``nn.Module.state_dict``)."""

    def eval(self) -> Self:
        """Evaluation mode; returns the module."""

    def train(self, mode: bool = True) -> Self:
        """Training mode; returns the module."""

    def requires_grad_(self, requires_grad: bool = True) -> Self:
        """Set ``requires_grad`` on every parameter; returns the module."""

    def to(self, *args: Any, **kwargs: Any) -> Self:
        """Move or cast the parameters (``nn.Module.to``); returns the module."""

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True,
                        assign: bool = False) -> Any:
        """Copy tensors into the module."""


class Encoder(FeatureEncoder, Protocol):
    """A transformer encoder built by :func:`~geofm.models.registry.create_model`.

    Adds what finetuning needs (the ``blocks`` and final ``norm``, for layer-wise learning-rate
    decay and partial freezing) and what a checkpoint records (``model_name`` and
    ``model_config``: ``create_model(model_name, **model_config)`` rebuilds it).
    """

    model_name: str
    model_config: dict[str, Any]

    @property
    def blocks(self) -> nn.ModuleList | nn.Sequential:
        """The transformer blocks, first to last (timm keeps them in an ``nn.Sequential``)."""

    @property
    def norm(self) -> nn.Module:
        """The final normalisation applied to the tokens."""
