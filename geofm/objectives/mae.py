"""Masked autoencoder (He et al., arXiv 2111.06377) over any :class:`TokenEncoder`.

Random masking keeps 25 % of the tokens; the encoder sees only those; a small transformer
decoder runs over the full token set (mask tokens in the gaps) and predicts the pixels of every
token; the loss is the MSE on per-token normalised pixels of the masked tokens. With ChannelViT
the tokens are (band, patch) pairs, so the decoder also gets a band embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import torch
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from geofm.models.vit import TokenEncoder, init_weights
from geofm.objectives.common import (
    DecoderEmbedding,
    MaskedImageObjective,
    ObjectiveOutput,
    check_ratio,
    gather_tokens,
    index_mask,
    random_split,
    token_count,
)


class MAE(MaskedImageObjective):
    """MAE objective.

    Args:
        encoder: The encoder to pretrain.
        mask_ratio: Fraction of tokens hidden from the encoder.
        decoder_dim: Decoder width.
        decoder_depth: Decoder transformer blocks.
        decoder_heads: Decoder attention heads.
        norm_pix_loss: Normalise each token's target pixels (mean 0, std 1).
        hcs: Apply Hierarchical Channel Sampling to each training batch.
    """

    def __init__(
        self,
        encoder: TokenEncoder,
        mask_ratio: float = 0.75,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        hcs: bool = False,
    ) -> None:
        super().__init__(encoder, hcs, norm_pix_loss)
        self.mask_ratio = check_ratio("mask_ratio", mask_ratio)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.decoder_pos = DecoderEmbedding(decoder_dim, encoder)
        self.decoder_blocks = nn.ModuleList(
            Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True,
                  # timm annotates a class; a partial is what timm's own models pass.
                  norm_layer=cast(type[nn.Module], partial(nn.LayerNorm, eps=1e-6)))
            for _ in range(decoder_depth)
        )
        for block in self.decoder_blocks:
            cast(Any, block).attn.fused_attn = True
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.pixels_per_token)
        for module in (self.decoder_embed, self.decoder_pos, self.decoder_blocks,
                       self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def random_masking(
        self, batch_size: int, num_tokens: int, device: torch.device,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Indices of the visible ``[B, K]`` and masked ``[B, T - K]`` tokens.

        ``K = token_count(1 - mask_ratio, T)``, at least one token stays masked.
        """
        num_keep = min(token_count(1.0 - self.mask_ratio, num_tokens), num_tokens - 1)
        return random_split(batch_size, num_tokens, num_keep, device, generator)

    def forward_encoder(self, tokens: Tensor, keep_idx: Tensor) -> Tensor:
        """Encode the visible tokens: ``[B, T, D] -> [B, K, D]``."""
        return self.encoder.forward_tokens(tokens, keep_idx)

    def forward_decoder(
        self, latent: Tensor, keep_idx: Tensor, num_tokens: int,
        bands: Sequence[str], grid: tuple[int, int],
    ) -> Tensor:
        """Predict every token's pixels: ``[B, K, D] -> [B, T, P]``."""
        x = self.decoder_embed(latent)  # [B, K, Dd]
        b, _, dim = x.shape
        full = self.mask_token.to(x.dtype).expand(b, num_tokens, dim)  # [B, T, Dd]
        full = full.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, dim), x)
        full = full + self.decoder_pos(bands, grid, full)
        for block in self.decoder_blocks:
            full = block(full)
        return self.decoder_pred(self.decoder_norm(full))  # [B, T, P]

    def forward(
        self,
        images: Tensor,
        bands: Sequence[str],
        valid: Tensor | None = None,
        progress: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> ObjectiveOutput:
        """One MAE step.

        Args:
            images: ``[B, C, H, W]`` normalised pixels; non-finite values count as nodata.
            bands: Band names, length ``C``.
            valid: Optional ``[B, C, H, W]`` bool, ``False`` at nodata.
            progress: Training progress in ``[0, 1]`` (unused by MAE).
            generator: Optional random generator on ``images``' device.
        """
        batch = self.prepare(images, bands, valid, generator)
        tokens = self.encoder.tokenize(batch.inputs, batch.bands)  # [B, T, D]
        b, num_tokens, _ = tokens.shape
        keep_idx, masked_idx = self.random_masking(b, num_tokens, tokens.device, generator)
        latent = self.forward_encoder(tokens, keep_idx)  # [B, K, D]
        pred = self.forward_decoder(latent, keep_idx, num_tokens, batch.bands, batch.grid)
        target = gather_tokens(self.encoder.patchify(batch.targets), masked_idx)
        weights = gather_tokens(self.encoder.patchify(batch.valid.to(target.dtype)), masked_idx)
        pred = gather_tokens(pred, masked_idx)  # [B, T - K, P]
        loss, stats = self.forward_loss(pred, target, weights)
        visible = index_mask(keep_idx, num_tokens)  # [B, T]
        return self.assemble_output(
            loss, batch, pred, masked_idx, visible, keep_idx.shape[1], stats
        )
