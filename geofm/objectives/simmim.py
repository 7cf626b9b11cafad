"""SimMIM (Xie et al., arXiv 2111.09886), as SatVision-TOA pretrains on 14 MODIS bands.

A random 60 % of the tokens have their patch embedding replaced by one learned mask token; the
encoder runs over all tokens; a linear head predicts each masked token's pixels; the loss is the
L1 error on the masked (valid) pixels, in the input's normalised units. The mask unit is the
model's patch by default; ``mask_patch_size`` masks larger squares of whole patches instead, as
SimMIM and SatVision-TOA do (mask patch 8 px over a model patch of 4 px: each masked square hides
2 × 2 tokens). With ChannelViT every (band, square) unit is masked independently, so a masked
band can be inferred from the other bands at that place. The number of masked units is
``round(mask_ratio · units)`` (SatVision-TOA takes the ceiling; on its 16 × 16 grid of 8-px
squares both give 154).
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
        mask_patch_size: Side in pixels of the masked squares, a multiple of the model's patch
            size (default: the patch size, one token per square).
    """

    def __init__(
        self,
        encoder: TokenEncoder,
        mask_ratio: float = 0.6,
        norm_pix_loss: bool = False,
        hcs: bool = False,
        mask_patch_size: int | None = None,
    ) -> None:
        super().__init__(encoder, hcs, norm_pix_loss, loss_kind="l1")
        self.mask_ratio = check_ratio("mask_ratio", mask_ratio)
        p = encoder.patch_size
        self.mask_patch_size = mask_patch_size or p
        if self.mask_patch_size < p or self.mask_patch_size % p:
            raise ValueError(
                f"mask_patch_size {self.mask_patch_size} is not a multiple of the model's "
                f"patch size {p}"
            )
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

    def unit_masking(
        self, batch_size: int, groups: int, grid: tuple[int, int], device: torch.device,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Indices ``[B, M]`` of the tokens under randomly masked squares of
        ``mask_patch_size`` pixels (``groups`` band groups of ``grid`` tokens each, band-major).

        Raises:
            ValueError: The token grid does not split into whole squares.
        """
        s = self.mask_patch_size // self.encoder.patch_size
        gh, gw = grid
        if gh % s or gw % s:
            raise ValueError(
                f"a {gh}×{gw} patch grid does not split into {self.mask_patch_size}-px mask "
                f"squares of {s}×{s} patches"
            )
        uh, uw = gh // s, gw // s
        units = groups * uh * uw
        unit_idx = self.random_masking(batch_size, units, device, generator)  # [B, U]
        band, rest = unit_idx // (uh * uw), unit_idx % (uh * uw)
        row, col = rest // uw, rest % uw  # [B, U]
        offset = torch.arange(s, device=device)
        rows = (row * s).unsqueeze(-1) + offset  # [B, U, s]
        cols = (col * s).unsqueeze(-1) + offset
        token = rows.unsqueeze(-1) * gw + cols.unsqueeze(-2)  # [B, U, s, s]
        token = token + (band * gh * gw).view(batch_size, -1, 1, 1)
        return token.reshape(batch_size, -1)  # [B, U·s²]

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
        if self.mask_patch_size == self.encoder.patch_size:
            masked_idx = self.random_masking(b, num_tokens, target_all.device, generator)
        else:
            groups = num_tokens // (batch.grid[0] * batch.grid[1])  # bands, or 1 for a ViT
            masked_idx = self.unit_masking(b, groups, batch.grid, target_all.device, generator)
        # masked_idx: [B, M]
        masked = index_mask(masked_idx, num_tokens)  # [B, T]
        latent = self.forward_encoder(batch.inputs, batch.bands, masked)  # [B, T, D]
        pred = self.head(gather_tokens(latent, masked_idx))  # [B, M, P]
        target = gather_tokens(target_all, masked_idx)
        weights = gather_tokens(self.encoder.patchify(batch.valid.to(target.dtype)), masked_idx)
        loss, stats = self.forward_loss(pred, target, weights)
        return self.assemble_output(
            loss, batch, pred, masked_idx, ~masked, num_tokens - masked_idx.shape[1], stats
        )
