"""ChannelViT: one token per (band, patch), band identity from physics.

Following ChannelViT (arXiv 2309.16108), every band of every patch becomes its own token through
a patch embedding shared by all bands (a linear map of the ``p × p`` patch, the same as a
``Conv3d`` with kernel ``(1, p, p)``). Position embeddings are shared across bands; a channel
embedding is added per band. Unlike the paper, the channel embedding comes from the band's
physical description (:class:`~geofm.models.band_embedding.BandEmbedding`), so the model accepts
any registered band, in any number and order.

Token order is band-major: token ``t`` is band ``t // N`` at patch ``t % N`` (``N`` patches).
With no class token and mean pooling (geofm's default), the pooled output does not depend on the
band order. The paper's model has a class token and a learned position table shared across bands:
``class_token=True, pos_embed="learned", img_size=...`` builds that.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geofm.bands import BAND_SETS
from geofm.models.band_embedding import BandEmbedding
from geofm.models.registry import register_model
from geofm.models.vit import DEFAULT_PATCH_SIZE, SIZES, TokenEncoder, canonical_bands, init_weights


class ChannelViT(TokenEncoder):
    """Band-token ViT with physics-derived channel embeddings.

    Args:
        bands: Bands that get a learned per-band offset on top of the physical embedding
            (usually the pretraining bands); default the 14-band ``s1s2`` set. Any registered
            band is accepted at run time.
        patch_size: Patch side in pixels.
        embed_dim: Token width ``D``.
        depth: Number of transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over ``D``.
        drop_path_rate: Stochastic depth at the last block (linear ramp).
        band_offsets: Learn a per-band offset for ``bands`` on top of the physical embedding.
            Without it every band, seen or not, is embedded from its physics alone.
        class_token: Prepend a learned class token, as the paper's model does; pooled
            features are then its output (the paper classifies from it).
        pos_embed: ``"sincos"`` (geofm: fixed, any grid) or ``"learned"`` (the paper: a learned
            table shared across bands, for the grid of ``img_size``, bicubically
            interpolated for other grids).
        img_size: Chip side (or ``(H, W)``) of the learned position table.
    """

    band_tokens = True

    def __init__(
        self,
        bands: Sequence[str] = BAND_SETS["s1s2"],
        patch_size: int = DEFAULT_PATCH_SIZE,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        band_offsets: bool = True,
        class_token: bool = False,
        pos_embed: str = "sincos",
        img_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__(patch_size, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate,
                         class_token, pos_embed, img_size)
        self.bands = canonical_bands(bands)
        self.model_config = {
            "bands": list(self.bands),
            "patch_size": patch_size,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "drop_path_rate": drop_path_rate,
            "band_offsets": band_offsets,
            **self.layout_config(),
        }
        self.patch_embed = nn.Linear(patch_size**2, embed_dim)
        self.band_embed = BandEmbedding(embed_dim, known_bands=self.bands if band_offsets else ())
        self.apply(init_weights)

    def align_bands(self, bands: Sequence[str]) -> list[int]:
        """Any registered bands are accepted as given; checks names and repeats."""
        return list(range(len(canonical_bands(bands))))

    def pixels_per_token(self, num_bands: int) -> int:
        """``p²`` values per token."""
        return self.patch_size**2

    def patchify(self, images: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C·N, p·p]``, band-major token order."""
        b, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p)
        x = x.permute(0, 1, 2, 4, 3, 5)  # [B, C, gh, gw, p, p]
        return x.reshape(b, c * (h // p) * (w // p), p * p)

    def unpatchify(self, patches: Tensor, num_bands: int, grid: tuple[int, int]) -> Tensor:
        """``[B, C·N, p·p] -> [B, C, H, W]``."""
        b = patches.shape[0]
        p = self.patch_size
        x = patches.reshape(b, num_bands, grid[0], grid[1], p, p)
        x = x.permute(0, 1, 2, 4, 3, 5)  # [B, C, gh, p, gw, p]
        return x.reshape(b, num_bands, grid[0] * p, grid[1] * p)

    def token_embed(self, bands: Sequence[str], grid: tuple[int, int], like: Tensor) -> Tensor:
        """Position plus channel embedding for every token, ``[C·N, D]``."""
        pos = self.pos_embed(grid, like)  # [N, D]
        chan = self.band_embed(bands).to(like.dtype)  # [C, D]
        return (chan.unsqueeze(1) + pos.unsqueeze(0)).reshape(-1, self.embed_dim)  # [C·N, D]

    def tokenize(
        self,
        images: Tensor,
        bands: Sequence[str],
        mask: Tensor | None = None,
        mask_token: Tensor | None = None,
    ) -> Tensor:
        """Tokens ``[B, C·N, D]``: shared patch embedding (or mask token) + position + band."""
        if images.shape[1] != len(bands):
            raise ValueError(f"{images.shape[1]} channels but {len(bands)} band names")
        grid = self.grid_size(images)
        tokens = self.patch_embed(self.patchify(images))  # [B, C·N, D]
        if mask is not None and mask_token is not None:
            tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        return tokens + self.token_embed(bands, grid, tokens)

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Per-location features ``[B, N, D]``: each location's band tokens averaged."""
        b, c = images.shape[:2]
        tokens = self.forward_tokens(self.tokenize(images, bands))  # [B, C·N, D]
        return tokens.reshape(b, c, -1, self.embed_dim).mean(dim=1)  # [B, N, D]


def _channelvit(size: str, overrides: dict[str, Any]) -> ChannelViT:
    return ChannelViT(**{**SIZES[size], **overrides})


@register_model
def channelvit_test(**overrides: Any) -> ChannelViT:
    """Two-block ChannelViT (D = 32) for tests."""
    return _channelvit("test", overrides)


@register_model
def channelvit_tiny(**overrides: Any) -> ChannelViT:
    """ChannelViT-Ti (D = 192, 12 blocks, 3 heads), patch 8."""
    return _channelvit("tiny", overrides)


@register_model
def channelvit_small(**overrides: Any) -> ChannelViT:
    """ChannelViT-S (D = 384, 12 blocks, 6 heads), patch 8."""
    return _channelvit("small", overrides)


@register_model
def channelvit_base(**overrides: Any) -> ChannelViT:
    """ChannelViT-B (D = 768, 12 blocks, 12 heads), patch 8."""
    return _channelvit("base", overrides)


@register_model
def channelvit_large(**overrides: Any) -> ChannelViT:
    """ChannelViT-L (D = 1024, 24 blocks, 16 heads), patch 8."""
    return _channelvit("large", overrides)
