"""SelectiveMAE (Wang et al., arXiv 2406.11933), for any band count and token layout.

MAE spends most of its compute on tokens that teach little. SelectiveMAE encodes only 15 % of the
tokens and reconstructs only 25 %, chosen by content:

1. **Scoring.** A HOG layer (:mod:`geofm.objectives.hog`) gives every token a semantic-richness
   score; ``softmax(score / temperature)`` is the token distribution.
2. **Seeds.** Half of the visible tokens are drawn from that distribution without replacement.
3. **Progressive Semantic Token Selection (PSTS).** The other half is added by cosine similarity
   (of the token embeddings) to the tokens chosen so far, in ``psts_steps`` rounds. Which end of
   the similarity ranking is taken follows training progress (:func:`psts_schedule`): the most
   similar tokens first (easy, coherent context), then the least similar (diverse context), then
   random.
4. **Targets.** The reconstructed tokens are drawn by the same distribution among the masked ones.
5. **Decoder.** Mask queries for just the target tokens (position and, for ChannelViT, band
   embedding) cross-attend to the encoder output; the loss is normalised-pixel MSE.

Counts, with ``T`` tokens per image (see :func:`~geofm.objectives.common.token_count`):
``V = token_count(visible_ratio, T)`` visible tokens, of which ``ceil(V / 2)`` are seeds;
``R = min(token_count(kept_ratio, T), T - V)`` reconstructed tokens.

Everything after the HOG layer is a handful of batched ``topk`` / matmul calls; nothing loops
over tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

from geofm.models.vit import TokenEncoder, init_weights
from geofm.objectives.common import (
    DecoderEmbedding,
    MaskedImageObjective,
    ObjectiveOutput,
    check_ratio,
    gather_tokens,
    gumbel_topk,
    index_mask,
    token_count,
)
from geofm.objectives.hog import hog_histograms, hog_richness

# PSTS breakpoints, from the paper's 1200-epoch schedule, as fractions of training.
PSTS_BREAKPOINTS = (200 / 1200, 220 / 1200, 1180 / 1200, 1.0)


def psts_schedule(progress: float) -> tuple[float, float, float]:
    """Share of PSTS tokens taken as most similar, least similar and random.

    Piecewise linear in training progress ``p``: ``(1, 0, 0)`` until 1/6 (epoch 200 of 1200),
    a linear hand-over to ``(0, 1, 0)`` by 220/1200, least similar until 1180/1200, then a
    linear hand-over to ``(0, 0, 1)`` at the end (and beyond).

    Args:
        progress: Training progress in ``[0, 1]`` (values outside are clamped).

    Returns:
        ``(near, far, random)``, summing to 1.
    """
    p = min(max(progress, 0.0), 1.0)
    near_end, far_start, far_end, random_start = PSTS_BREAKPOINTS
    if p < near_end:
        return 1.0, 0.0, 0.0
    if p < far_start:
        t = (p - near_end) / (far_start - near_end)
        return 1.0 - t, t, 0.0
    if p < far_end:
        return 0.0, 1.0, 0.0
    if p < random_start:
        t = (p - far_end) / (random_start - far_end)
        return 0.0, 1.0 - t, t
    return 0.0, 0.0, 1.0


def progressive_selection(
    features: Tensor,
    seed_idx: Tensor,
    num_select: int,
    progress: float,
    steps: int = 2,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PSTS: add ``num_select`` tokens by cosine similarity to the tokens chosen so far.

    Each round ranks the unchosen tokens by their highest cosine similarity to any chosen
    token, takes the round's share from the top (``near``), the bottom (``far``) and at random
    per :func:`psts_schedule`, and adds them to the chosen set.

    Args:
        features: ``[B, T, E]`` token features (no gradient needed).
        seed_idx: ``[B, S]`` indices of the seeds.
        num_select: Tokens to add per image.
        progress: Training progress in ``[0, 1]``.
        steps: Rounds; the similarity is refreshed with each round's picks.
        generator: Optional random generator on ``features``' device.

    Returns:
        ``[B, num_select]`` indices, disjoint from ``seed_idx``.
    """
    feats = F.normalize(features.detach().float(), dim=-1)  # [B, T, E]
    num_tokens = feats.shape[1]
    chosen = index_mask(seed_idx, num_tokens)  # [B, T]
    best = (feats @ gather_tokens(feats, seed_idx).transpose(1, 2)).amax(dim=-1)  # [B, T]
    near, far, _ = psts_schedule(progress)
    picks: list[Tensor] = []
    rounds = [num_select // steps + (i < num_select % steps) for i in range(steps)]
    for i, n in enumerate(r for r in rounds if r > 0):
        n_near = round(near * n)
        n_far = min(round(far * n), n - n_near)
        n_random = n - n_near - n_far
        added: list[Tensor] = []
        if n_near:
            added.append(best.masked_fill(chosen, -torch.inf).topk(n_near, dim=1).indices)
            chosen.scatter_(1, added[-1], True)
        if n_far:
            ranked = best.masked_fill(chosen, torch.inf)
            added.append(ranked.topk(n_far, dim=1, largest=False).indices)
            chosen.scatter_(1, added[-1], True)
        if n_random:
            noise = torch.rand(best.shape, device=best.device, generator=generator)
            added.append(noise.masked_fill(chosen, -1.0).topk(n_random, dim=1).indices)
            chosen.scatter_(1, added[-1], True)
        new = torch.cat(added, dim=1)  # [B, n]
        picks.append(new)
        if i < len(rounds) - 1:
            sim_new = feats @ gather_tokens(feats, new).transpose(1, 2)  # [B, T, n]
            best = torch.maximum(best, sim_new.amax(dim=-1))
    return torch.cat(picks, dim=1)


@dataclass
class TokenSelection:
    """Token indices chosen for one batch, each ``[B, ·]``.

    Attributes:
        seed_idx: HOG-sampled seeds.
        psts_idx: Tokens added by PSTS.
        visible_idx: ``seed_idx`` then ``psts_idx``: what the encoder sees.
        target_idx: Masked tokens chosen for reconstruction.
    """

    seed_idx: Tensor
    psts_idx: Tensor
    visible_idx: Tensor
    target_idx: Tensor


class CrossAttentionBlock(nn.Module):
    """Pre-norm block: queries cross-attend to a memory, then an MLP.

    Args:
        dim: Width of queries and memory.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"decoder width {dim} does not split into {num_heads} heads")
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.num_heads = num_heads
        self.norm_q, self.norm_kv, self.norm_mlp = norm(dim), norm(dim), norm(dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, memory: Tensor) -> Tensor:
        """``x [B, Q, D]`` attends to ``memory [B, K, D]``; returns ``[B, Q, D]``."""
        b, nq, d = x.shape
        h = self.num_heads
        q = self.q(self.norm_q(x)).reshape(b, nq, h, d // h).transpose(1, 2)  # [B, h, Q, d/h]
        kv = self.kv(self.norm_kv(memory)).reshape(b, -1, 2, h, d // h).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, kv[0], kv[1])  # [B, h, Q, d/h]
        x = x + self.proj(attn.transpose(1, 2).reshape(b, nq, d))
        return x + self.mlp(self.norm_mlp(x))


class SelectiveMAE(MaskedImageObjective):
    """SelectiveMAE objective.

    Args:
        encoder: The encoder to pretrain.
        visible_ratio: Fraction of tokens encoded (paper: mask ratio 0.85).
        kept_ratio: Fraction of tokens reconstructed.
        decoder_dim: Decoder width.
        decoder_depth: Cross-attention decoder blocks.
        decoder_heads: Decoder attention heads.
        norm_pix_loss: Normalise each token's target pixels.
        temperature: Softmax temperature on the standardised HOG scores.
        psts_steps: PSTS rounds (the released code uses 2).
        num_bins: HOG orientation bins.
        hcs: Apply Hierarchical Channel Sampling to each training batch.
    """

    def __init__(
        self,
        encoder: TokenEncoder,
        visible_ratio: float = 0.15,
        kept_ratio: float = 0.25,
        decoder_dim: int = 512,
        decoder_depth: int = 8,
        decoder_heads: int = 16,
        norm_pix_loss: bool = True,
        temperature: float = 1.0,
        psts_steps: int = 2,
        num_bins: int = 9,
        hcs: bool = False,
    ) -> None:
        super().__init__(encoder, hcs, norm_pix_loss)
        self.visible_ratio = check_ratio("visible_ratio", visible_ratio)
        self.kept_ratio = check_ratio("kept_ratio", kept_ratio, include_one=True)
        self.temperature = temperature
        self.psts_steps = psts_steps
        self.num_bins = num_bins
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.decoder_pos = DecoderEmbedding(decoder_dim, encoder)
        self.decoder_blocks = nn.ModuleList(
            CrossAttentionBlock(decoder_dim, decoder_heads) for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.pixels_per_token)
        for module in (self.decoder_embed, self.decoder_pos, self.decoder_blocks,
                       self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def token_counts(self, num_tokens: int) -> tuple[int, int, int]:
        """``(seeds, visible, targets)`` per image for ``T`` tokens."""
        visible = min(token_count(self.visible_ratio, num_tokens), num_tokens - 1)
        seeds = (visible + 1) // 2
        targets = min(token_count(self.kept_ratio, num_tokens), num_tokens - visible)
        return seeds, visible, targets

    def token_scores(self, inputs: Tensor, valid: Tensor) -> Tensor:
        """HOG richness logits ``[B, T]`` in the encoder's token order (already / temperature)."""
        # A (band, patch) token is scored by its own band's histogram; a patch token of a plain
        # ViT by one histogram over all its bands, each pixel voting with its strongest band.
        per_band = self.encoder.band_tokens
        hist = hog_histograms(
            inputs, self.encoder.patch_size, self.num_bins, valid, strongest_band=not per_band
        )  # [B, C or 1, N, K]
        b, c, n, k = hist.shape
        return hog_richness(hist.reshape(b, c * n, k)) / self.temperature

    @torch.no_grad()
    def select_tokens(
        self,
        scores: Tensor,
        features: Tensor,
        progress: float,
        generator: torch.Generator | None = None,
    ) -> TokenSelection:
        """Choose seeds, PSTS tokens and reconstruction targets.

        Args:
            scores: ``[B, T]`` logits of the token distribution.
            features: ``[B, T, E]`` features for the PSTS similarity.
            progress: Training progress in ``[0, 1]``.
            generator: Optional random generator on ``scores``' device.
        """
        num_seeds, num_visible, num_targets = self.token_counts(scores.shape[1])
        seed_idx = gumbel_topk(scores, num_seeds, generator)  # [B, S]
        psts_idx = progressive_selection(
            features, seed_idx, num_visible - num_seeds, progress, self.psts_steps, generator
        )  # [B, V - S]
        visible_idx = torch.cat([seed_idx, psts_idx], dim=1)  # [B, V]
        masked_scores = scores.float().scatter(1, visible_idx, -torch.inf)
        target_idx = gumbel_topk(masked_scores, num_targets, generator)  # [B, R]
        return TokenSelection(seed_idx, psts_idx, visible_idx, target_idx)

    def forward_encoder(self, tokens: Tensor, visible_idx: Tensor) -> Tensor:
        """Encode the selected tokens: ``[B, T, D] -> [B, V, D]``."""
        return self.encoder.forward_tokens(tokens, visible_idx)

    def forward_decoder(
        self, latent: Tensor, target_idx: Tensor, bands: Sequence[str], grid: tuple[int, int]
    ) -> Tensor:
        """Reconstruct only the target tokens: ``[B, V, D] -> [B, R, P]``."""
        memory = self.decoder_embed(latent)  # [B, V, Dd]
        pos = self.decoder_pos(bands, grid, memory)  # [T, Dd]
        queries = self.mask_token.to(memory.dtype) + pos[target_idx]  # [B, R, Dd]
        for block in self.decoder_blocks:
            queries = block(queries, memory)
        return self.decoder_pred(self.decoder_norm(queries))  # [B, R, P]

    def forward(
        self,
        images: Tensor,
        bands: Sequence[str],
        valid: Tensor | None = None,
        progress: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> ObjectiveOutput:
        """One SelectiveMAE step.

        Args:
            images: ``[B, C, H, W]`` normalised pixels; non-finite values count as nodata.
            bands: Band names, length ``C``.
            valid: Optional ``[B, C, H, W]`` bool, ``False`` at nodata.
            progress: Training progress in ``[0, 1]``; drives the PSTS schedule.
            generator: Optional random generator on ``images``' device.
        """
        batch = self.prepare(images, bands, valid, generator)
        tokens = self.encoder.tokenize(batch.inputs, batch.bands)  # [B, T, D]
        scores = self.token_scores(batch.inputs, batch.valid)  # [B, T]
        sel = self.select_tokens(scores, tokens, progress, generator)
        latent = self.forward_encoder(tokens, sel.visible_idx)  # [B, V, D]
        pred = self.forward_decoder(latent, sel.target_idx, batch.bands, batch.grid)
        target = gather_tokens(self.encoder.patchify(batch.targets), sel.target_idx)
        weights = gather_tokens(
            self.encoder.patchify(batch.valid.to(target.dtype)), sel.target_idx
        )  # [B, R, P]
        loss, stats = self.forward_loss(pred, target, weights)
        visible = index_mask(sel.visible_idx, tokens.shape[1])
        return self.assemble_output(
            loss, batch, pred, sel.target_idx, visible, sel.visible_idx.shape[1], stats
        )
