"""SimMIM (Xie et al., arXiv 2111.09886), as SatVision-TOA pretrains on 14 MODIS bands.

A random 60 % of the tokens have their patch embedding replaced by one learned mask token; the
encoder runs over all tokens; a linear head predicts each masked token's pixels; the loss is the
L1 error on the masked (valid) pixels, in the input's normalised units. The mask unit is the
model's patch (SatVision-TOA masks 8-pixel patches); with ChannelViT every (band, patch) token is
masked independently, so a masked band can be inferred from the other bands at that place.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from geofm.models.vit import TokenEncoder, init_weights
from geofm.objectives.common import (
    MaskedImageObjective,
    ObjectiveOutput,
    check_ratio,
    gather_tokens,
    index_mask,
    random_subset,
    token_count,
)


class SimMIM(MaskedImageObjective):
    """SimMIM objective.

    Args:
        encoder: The encoder to pretrain.
        mask_ratio: Fraction of tokens replaced by the mask token.
        norm_pix_loss: Normalise each token's target pixels (SimMIM's default is off).
        hcs: Apply Hierarchical Channel Sampling to each training batch.
    """

    def __init__(
        self,
        encoder: TokenEncoder,
        mask_ratio: float = 0.6,
        norm_pix_loss: bool = False,
        hcs: bool = False,
    ) -> None:
        super().__init__(encoder, hcs, norm_pix_loss, loss_kind="l1")
        self.mask_ratio = check_ratio("mask_ratio", mask_ratio)
        self.mask_token = nn.Parameter(torch.zeros(encoder.embed_dim))
        self.head = nn.Linear(encoder.embed_dim, self.pixels_per_token)
        self.head.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def random_masking(
        self, batch_size: int, num_tokens: int, device: torch.device,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Indices ``[B, M]`` of masked tokens, ``M = token_count(mask_ratio, T)``.

        At least one token stays visible; images need at least two tokens.
        """
        num_masked = min(token_count(self.mask_ratio, num_tokens), num_tokens - 1)
        return random_subset(batch_size, num_tokens, num_masked, device, generator)

    def forward_encoder(self, inputs: Tensor, bands: Sequence[str], masked: Tensor) -> Tensor:
        """Encode all tokens with the masked ones replaced: ``-> [B, T, D]``."""
        tokens = self.encoder.tokenize(inputs, bands, mask=masked, mask_token=self.mask_token)
        return self.encoder.forward_tokens(tokens)

    def forward(
        self,
        images: Tensor,
        bands: Sequence[str],
        valid: Tensor | None = None,
        progress: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> ObjectiveOutput:
        """One SimMIM step; arguments as :meth:`geofm.objectives.mae.MAE.forward`."""
        batch = self.prepare(images, bands, valid, generator)
        target_all = self.encoder.patchify(batch.targets)  # [B, T, P]
        b, num_tokens, _ = target_all.shape
        masked_idx = self.random_masking(b, num_tokens, target_all.device, generator)  # [B, M]
        masked = index_mask(masked_idx, num_tokens)  # [B, T]
        latent = self.forward_encoder(batch.inputs, batch.bands, masked)  # [B, T, D]
        pred = self.head(gather_tokens(latent, masked_idx))  # [B, M, P]
        target = gather_tokens(target_all, masked_idx)
        weights = gather_tokens(self.encoder.patchify(batch.valid.to(target.dtype)), masked_idx)
        loss, stats = self.forward_loss(pred, target, weights)
        return self.assemble_output(
            loss, batch, pred, masked_idx, ~masked, num_tokens - masked_idx.shape[1], stats
        )
