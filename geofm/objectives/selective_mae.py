"""SelectiveMAE (Wang et al., arXiv 2406.11933), for any band count and token layout.

MAE spends most of its compute on tokens that teach little. SelectiveMAE encodes only 15 % of the
tokens and reconstructs only 25 %, chosen by content:

1. **Scoring.** A HOG layer (:mod:`geofm.objectives.hog`) gives every token a score;
   ``softmax(score / temperature)`` is the token distribution. geofm's ``scoring="richness"``
   (default) scores ``log(edge strength) + orientation entropy``, standardised per image, so
   textured tokens are favoured; ``scoring="released"`` reproduces the released code, whose
   scores (a standardised HOG vector, averaged) are zero up to rounding, so its draw is uniform.
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

import itertools
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
from geofm.objectives.hog import (
    hog_histograms,
    hog_richness,
    released_hog_features,
    released_hog_scores,
)

# PSTS breakpoints, from the paper's 1200-epoch schedule, as fractions of training.
PSTS_BREAKPOINTS = (200 / 1200, 220 / 1200, 1180 / 1200, 1.0)
# The released training script's breakpoints, in epochs of its 800-epoch run
# (``main_pretrain.py``: ``expansion_step=[0, 300 - 20, 300, 600 - 20, 600]``).
RELEASED_PSTS_EPOCHS = (280, 300, 580, 600)
SCORINGS = ("richness", "released")
COUNTINGS = ("nearest", "floor")
DECODER_MEMORIES = ("projected", "raw")


def psts_schedule(
    progress: float, breakpoints: Sequence[float] = PSTS_BREAKPOINTS
) -> tuple[float, float, float]:
    """Share of PSTS tokens taken as most similar, least similar and random.

    Piecewise linear in training progress ``p`` with breakpoints ``(a, b, c, d)``:
    ``(1, 0, 0)`` until ``a`` (default 1/6, epoch 200 of 1200), a linear hand-over to
    ``(0, 1, 0)`` by ``b``, least similar until ``c``, then a linear hand-over to ``(0, 0, 1)``
    by ``d`` (and beyond).

    Args:
        progress: Training progress in ``[0, 1]`` (values outside are clamped).
        breakpoints: ``(a, b, c, d)``, increasing fractions of training.

    Returns:
        ``(near, far, random)``, summing to 1.
    """
    p = min(max(progress, 0.0), 1.0)
    near_end, far_start, far_end, random_start = breakpoints
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


def released_psts_schedule(
    epoch: int, breakpoints: Sequence[int] = RELEASED_PSTS_EPOCHS
) -> tuple[float, float, float]:
    """The released code's PSTS stage for a whole epoch (``TokenSelect_smooth``).

    With breakpoints ``(a, b, c, d)`` in epochs: most similar through epoch ``a`` (inclusive);
    for ``a < e < b`` a share ``1 - (e - a) / (b - a)`` most similar and the rest least similar;
    least similar from ``b`` through ``c`` (inclusive); for ``c < e < d`` a share
    ``1 - (e - c) / (d - c)`` least similar and the rest random; random from ``d`` on. The stage
    changes once per epoch, not within one. With :func:`progressive_selection`'s
    ``floor_counts`` the token counts follow the release's ``int()`` truncation.

    Args:
        epoch: Zero-based epoch.
        breakpoints: ``(a, b, c, d)``, increasing epochs.

    Returns:
        ``(near, far, random)``, summing to 1.
    """
    a, b, c, d = breakpoints
    if epoch <= a:
        return 1.0, 0.0, 0.0
    if epoch < b:
        near = 1 - (epoch - a) / (b - a)
        return near, 1.0 - near, 0.0
    if epoch <= c:
        return 0.0, 1.0, 0.0
    if epoch < d:
        far = 1 - (epoch - c) / (d - c)
        return 0.0, far, 1.0 - far
    return 0.0, 0.0, 1.0


def _share_counts(
    shares: tuple[float, float, float], n: int, floor_counts: bool
) -> tuple[int, int, int]:
    """Split ``n`` tokens into (near, far, random) counts by ``shares``."""
    near, far, rand = shares
    if floor_counts:  # the release: int() of the first share, the second takes the rest
        if rand == 0.0:
            n_near = int(near * n)
            return n_near, n - n_near, 0
        n_far = int(far * n)
        return 0, n_far, n - n_far
    n_near = round(near * n)
    n_far = min(round(far * n), n - n_near)
    return n_near, n_far, n - n_near - n_far


def progressive_selection(
    features: Tensor,
    seed_idx: Tensor,
    num_select: int,
    progress: float,
    steps: int = 2,
    generator: torch.Generator | None = None,
    shares: tuple[float, float, float] | None = None,
    floor_counts: bool = False,
) -> Tensor:
    """PSTS: add ``num_select`` tokens by cosine similarity to the tokens chosen so far.

    Each round ranks the unchosen tokens by their highest cosine similarity to any chosen
    token, takes the round's share from the top (``near``), the bottom (``far``) and at random
    per :func:`psts_schedule` (or ``shares``), and adds them to the chosen set.

    Args:
        features: ``[B, T, E]`` token features (no gradient needed).
        seed_idx: ``[B, S]`` indices of the seeds.
        num_select: Tokens to add per image.
        progress: Training progress in ``[0, 1]``.
        steps: Rounds; the similarity is refreshed with each round's picks.
        generator: Optional random generator on ``features``' device.
        shares: ``(near, far, random)`` to use instead of ``psts_schedule(progress)``.
        floor_counts: Count each round's tokens as the release does: the rounds take
            ``n // steps`` tokens and the last one the rest, and shares are truncated
            (:func:`released_psts_schedule`); otherwise the first rounds take the remainder
            and shares are rounded.

    Returns:
        ``[B, num_select]`` indices, disjoint from ``seed_idx``.
    """
    feats = F.normalize(features.detach().float(), dim=-1)  # [B, T, E]
    num_tokens = feats.shape[1]
    chosen = index_mask(seed_idx, num_tokens)  # [B, T]
    best = (feats @ gather_tokens(feats, seed_idx).transpose(1, 2)).amax(dim=-1)  # [B, T]
    shares = shares if shares is not None else psts_schedule(progress)
    picks: list[Tensor] = []
    if floor_counts:
        base = num_select // steps
        rounds = [base] * (steps - 1) + [num_select - base * (steps - 1)]
    else:
        rounds = [num_select // steps + (i < num_select % steps) for i in range(steps)]
    for i, n in enumerate(r for r in rounds if r > 0):
        n_near, n_far, n_random = _share_counts(shares, n, floor_counts)
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
        dim: Width of the queries.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over ``dim``.
        memory_dim: Width of the memory (default ``dim``).
        norm_memory: LayerNorm the memory before the key/value projection. The released
            SelectiveMAE decoder does not: its keys and values are a linear map of the
            encoder's (already normalised) output.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        memory_dim: int | None = None,
        norm_memory: bool = True,
    ) -> None:
        super().__init__()
        if num_heads < 1 or dim % num_heads:
            raise ValueError(f"decoder width {dim} does not split into {num_heads} heads")
        norm = partial(nn.LayerNorm, eps=1e-6)
        memory_dim = memory_dim or dim
        self.num_heads = num_heads
        self.norm_q, self.norm_mlp = norm(dim), norm(dim)
        self.norm_kv: nn.Module = norm(memory_dim) if norm_memory else nn.Identity()
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(memory_dim, 2 * dim)
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

    geofm's defaults depart from the released code in four places, each with a switch that
    restores the release (``configs/pretrain/selectivemae_paper.yaml`` sets them all):

    * ``scoring``: ``"richness"`` (geofm) scores a token by ``log(edge strength) +
      orientation entropy`` of its gradient histogram, standardised over the image, so rich
      tokens are drawn more often. ``"released"`` reproduces the released ``HOGLayerC``
      (:func:`~geofm.objectives.hog.released_hog_features`), whose logits are all zero up to
      float rounding: the softmax is uniform and tokens are drawn at random.
    * ``psts_breakpoints`` / ``psts_epochs``: fractions of training (geofm: the paper's
      200/220/1180/1200 of 1200 epochs, continuous); with ``psts_epochs`` the breakpoints are
      epochs and the stage changes once per epoch as in the released script
      (:func:`released_psts_schedule`, released values 280/300/580/600 of 800).
    * ``counts``: ``"nearest"`` (geofm) rounds token counts to the nearest integer and gives
      the seeds the larger half; ``"floor"`` truncates as the release does
      (``int(T · visible_ratio)`` visible, ``int(V / 2)`` seeds, ``int(T · kept_ratio)``
      targets, the second PSTS round the larger).
    * ``decoder_memory``: ``"projected"`` (geofm) projects the encoder output to the decoder
      width and LayerNorms it in every block; ``"raw"`` reads the encoder's output directly
      (class token included, when the encoder has one) with each block's key/value projection,
      as the released decoder does.

    Args:
        encoder: The encoder to pretrain.
        visible_ratio: Fraction of tokens encoded (paper: mask ratio 0.85).
        kept_ratio: Fraction of tokens reconstructed.
        decoder_dim: Decoder width.
        decoder_depth: Cross-attention decoder blocks.
        decoder_heads: Decoder attention heads.
        norm_pix_loss: Normalise each token's target pixels.
        temperature: Softmax temperature on the token scores.
        psts_steps: PSTS rounds (the released code uses 2).
        num_bins: HOG orientation bins.
        hcs: Apply Hierarchical Channel Sampling to each training batch.
        scoring: ``"richness"`` or ``"released"`` (see above).
        psts_breakpoints: ``(a, b, c, d)`` of the PSTS schedule; fractions of training, or
            epochs with ``psts_epochs`` (default: the paper's fractions, or the released epochs
            280/300/580/600 when ``psts_epochs`` is set).
        psts_epochs: Total epochs of the run; the breakpoints are then epochs and training
            progress ``p`` is epoch ``floor(p · psts_epochs)``.
        counts: ``"nearest"`` or ``"floor"`` (see above).
        decoder_memory: ``"projected"`` or ``"raw"`` (see above).
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
        scoring: str = "richness",
        psts_breakpoints: Sequence[float] | None = None,
        psts_epochs: int | None = None,
        counts: str = "nearest",
        decoder_memory: str = "projected",
    ) -> None:
        super().__init__(encoder, hcs, norm_pix_loss)
        self.visible_ratio = check_ratio("visible_ratio", visible_ratio)
        self.kept_ratio = check_ratio("kept_ratio", kept_ratio, include_one=True)
        for name, value, known in (("scoring", scoring, SCORINGS), ("counts", counts, COUNTINGS),
                                   ("decoder_memory", decoder_memory, DECODER_MEMORIES)):
            if value not in known:
                raise ValueError(f"{name} must be one of {', '.join(known)}, got {value!r}")
        if psts_epochs is not None and psts_epochs < 1:
            raise ValueError(f"psts_epochs must be a positive number of epochs, got {psts_epochs}")
        default = RELEASED_PSTS_EPOCHS if psts_epochs is not None else PSTS_BREAKPOINTS
        breakpoints = tuple(psts_breakpoints) if psts_breakpoints is not None else default
        if len(breakpoints) != 4 or any(
            y < x for x, y in itertools.pairwise(breakpoints)
        ):
            raise ValueError(
                f"psts_breakpoints must be four non-decreasing values, got {list(breakpoints)}"
            )
        if psts_epochs is None and not (breakpoints[0] >= 0.0 and breakpoints[-1] <= 1.0):
            raise ValueError(
                f"psts_breakpoints {list(breakpoints)} are fractions of training and must lie "
                "in [0, 1]; set psts_epochs to give them in epochs"
            )
        self.scoring = scoring
        self.psts_breakpoints = breakpoints
        self.psts_epochs = psts_epochs
        self.counts = counts
        self.decoder_memory = decoder_memory
        self.temperature = temperature
        self.psts_steps = psts_steps
        self.num_bins = num_bins
        raw = decoder_memory == "raw"
        self.decoder_embed: nn.Module = (
            nn.Identity() if raw else nn.Linear(encoder.embed_dim, decoder_dim)
        )
        self.mask_token = nn.Parameter(torch.zeros(decoder_dim))
        self.decoder_pos = DecoderEmbedding(decoder_dim, encoder)
        self.decoder_blocks = nn.ModuleList(
            CrossAttentionBlock(decoder_dim, decoder_heads,
                                memory_dim=encoder.embed_dim if raw else decoder_dim,
                                norm_memory=not raw)
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.pixels_per_token)
        for module in (self.decoder_embed, self.decoder_pos, self.decoder_blocks,
                       self.decoder_norm, self.decoder_pred):
            module.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def token_counts(self, num_tokens: int) -> tuple[int, int, int]:
        """``(seeds, visible, targets)`` per image for ``T`` tokens."""
        if self.counts == "floor":
            visible = min(max(2, int(num_tokens * self.visible_ratio)), num_tokens - 1)
            seeds = visible // 2
            targets = min(max(1, int(num_tokens * self.kept_ratio)), num_tokens - visible)
            return seeds, visible, targets
        visible = min(token_count(self.visible_ratio, num_tokens), num_tokens - 1)
        seeds = (visible + 1) // 2
        targets = min(token_count(self.kept_ratio, num_tokens), num_tokens - visible)
        return seeds, visible, targets

    def psts_shares(self, progress: float) -> tuple[float, float, float]:
        """``(near, far, random)`` shares of the PSTS tokens at training ``progress``."""
        if self.psts_epochs is None:
            return psts_schedule(progress, self.psts_breakpoints)
        epoch = int(min(max(progress, 0.0), 1.0) * self.psts_epochs + 1e-9)
        return released_psts_schedule(epoch, self.psts_breakpoints)  # type: ignore[arg-type]

    def token_scores(self, inputs: Tensor, valid: Tensor) -> Tensor:
        """Logits ``[B, T]`` of the token distribution, in the encoder's token order (already
        divided by the temperature)."""
        per_band = self.encoder.band_tokens
        if self.scoring == "released":
            feats = released_hog_features(
                inputs, self.encoder.patch_size, self.num_bins, per_band=per_band
            )  # [B, T, F]
            return released_hog_scores(feats) / self.temperature
        # A (band, patch) token is scored by its own band's histogram; a patch token of a plain
        # ViT by one histogram over all its bands, each pixel voting with its strongest band.
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
            features, seed_idx, num_visible - num_seeds, progress, self.psts_steps, generator,
            shares=self.psts_shares(progress), floor_counts=self.counts == "floor",
        )  # [B, V - S]
        visible_idx = torch.cat([seed_idx, psts_idx], dim=1)  # [B, V]
        masked_scores = scores.float().scatter(1, visible_idx, -torch.inf)
        target_idx = gumbel_topk(masked_scores, num_targets, generator)  # [B, R]
        return TokenSelection(seed_idx, psts_idx, visible_idx, target_idx)

    def forward_encoder(self, tokens: Tensor, visible_idx: Tensor) -> Tensor:
        """Encode the selected tokens: ``[B, T, D] -> [B, V, D]`` (``[B, 1 + V, D]`` with the
        class token in front when the decoder reads the raw output of an encoder that has one).
        """
        return self.encoder.forward_tokens(
            tokens, visible_idx, with_class=self.decoder_memory == "raw"
        )

    def forward_decoder(
        self, latent: Tensor, target_idx: Tensor, bands: Sequence[str], grid: tuple[int, int]
    ) -> Tensor:
        """Reconstruct only the target tokens: ``[B, V, D] -> [B, R, P]``."""
        memory = self.decoder_embed(latent)  # [B, V, Dd], or the raw [B, (1 +) V, D]
        pos = self.decoder_pos(bands, grid, latent)  # [T, Dd]
        queries = self.mask_token.to(latent.dtype) + pos[target_idx]  # [B, R, Dd]
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
