"""What every masked-image objective shares: input preparation, token sampling, the decoder's
position embedding, the nodata-aware pixel loss and the output record.

Nodata handling: a pixel is used only where ``valid`` is ``True`` *and* the value is finite.
Other pixels are zeroed in the encoder input (with ``torch.where``, so no gradient reaches them)
and carry zero weight in every loss; a token with no valid pixel contributes nothing.

Token counts: a ratio ``r`` of ``T`` tokens means ``max(1, floor(r · T + 0.5))`` tokens
(:func:`token_count`), the same in every objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any

import torch
from torch import Tensor, nn

from geofm.models.band_embedding import BandEmbedding
from geofm.models.hcs import drop_bands, sample_band_subset, zero_fill_bands
from geofm.models.vit import TokenEncoder, sincos_pos_embed


@dataclass
class ObjectiveOutput:
    """Result of one objective forward pass.

    The training step needs only ``loss``; the pixel-level views (``pred_pixels``,
    ``visible_mask``, ``target_mask``), which are as large as the batch, are built on first
    access, e.g. for a reconstruction preview, and cost nothing otherwise.

    Attributes:
        loss: Scalar training loss.
        images: ``[B, C, H, W]`` the encoder input (nodata zeroed, after channel sampling).
        bands: Band names of the ``C`` channels of every image-shaped tensor here.
        token_pred: ``[B, K, P]`` reconstructions of the target tokens, in input units.
        target_idx: ``[B, K]`` indices of the reconstructed tokens.
        visible_tokens: ``[B, T]`` bool, tokens the encoder saw unmasked.
        unpatchify: Maps ``[B, T, P]`` token pixels to ``[B, C, H, W]`` images.
        num_tokens: Tokens per image ``T``.
        num_visible: Tokens per image the encoder saw unmasked.
        num_targets: Tokens per image the decoder reconstructed.
    """

    loss: Tensor
    images: Tensor
    bands: list[str]
    token_pred: Tensor
    target_idx: Tensor
    visible_tokens: Tensor
    unpatchify: Callable[[Tensor], Tensor]
    num_tokens: int
    num_visible: int
    num_targets: int

    @cached_property
    def pred_pixels(self) -> Tensor:
        """``[B, C, H, W]`` reconstruction in input units where reconstructed, zero elsewhere."""
        b, _, p = self.token_pred.shape
        full = self.token_pred.new_zeros(b, self.num_tokens, p)  # [B, T, P]
        full.scatter_(1, self.target_idx.unsqueeze(-1).expand(-1, -1, p), self.token_pred)
        return self.unpatchify(full)

    @cached_property
    def visible_mask(self) -> Tensor:
        """``[B, C, H, W]`` bool, pixels of tokens the encoder saw unmasked."""
        return self._to_pixels(self.visible_tokens)

    @cached_property
    def target_mask(self) -> Tensor:
        """``[B, C, H, W]`` bool, pixels of tokens that were reconstructed."""
        return self._to_pixels(index_mask(self.target_idx, self.num_tokens))

    def _to_pixels(self, token_mask: Tensor) -> Tensor:
        p = self.token_pred.shape[-1]
        spread = token_mask.unsqueeze(-1).expand(-1, -1, p).to(self.token_pred.dtype)
        return self.unpatchify(spread) > 0


@dataclass
class PreparedBatch:
    """Encoder input and pixel targets, aligned to the encoder's band order.

    Attributes:
        inputs: ``[B, C, H, W]`` finite encoder input.
        targets: ``[B, C, H, W]`` finite reconstruction targets (zero where invalid).
        valid: ``[B, C, H, W]`` bool, pixels allowed into the loss.
        bands: Band names of the ``C`` channels.
        grid: Patch grid ``(rows, cols)``.
    """

    inputs: Tensor
    targets: Tensor
    valid: Tensor
    bands: list[str]
    grid: tuple[int, int]


def token_count(ratio: float, num_tokens: int) -> int:
    """``max(1, floor(ratio · num_tokens + 0.5))``, the rounding used by every objective."""
    return max(1, math.floor(ratio * num_tokens + 0.5))


def random_subset(
    batch_size: int,
    num_tokens: int,
    k: int,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``k`` distinct token indices per image, uniformly at random; ``[B, k]``."""
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    return noise.topk(k, dim=1).indices


def random_split(
    batch_size: int,
    num_tokens: int,
    k: int,
    device: torch.device,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """A uniform random split of each image's tokens into ``k`` and ``T - k`` indices."""
    noise = torch.rand(batch_size, num_tokens, device=device, generator=generator)
    order = noise.argsort(dim=1)  # [B, T], a random permutation per image
    return order[:, :k], order[:, k:]


def gumbel_topk(logits: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """Sample ``k`` indices per row without replacement, with probability ``softmax(logits)``.

    Gumbel-top-k: the ``k`` largest of ``logits + Gumbel noise`` are distributed exactly as
    ``k`` successive draws without replacement (``torch.multinomial(softmax(logits), k)``),
    in one vectorised ``topk``. ``-inf`` logits are never drawn.

    Args:
        logits: ``[B, T]``.
        k: Samples per row.
        generator: Optional random generator on ``logits``' device.

    Returns:
        ``[B, k]`` long indices.
    """
    uniform = torch.rand(logits.shape, device=logits.device, generator=generator)
    gumbel = -torch.log(-torch.log(uniform.clamp_(1e-20, 1.0 - 1e-7)))
    return (logits.float() + gumbel).topk(k, dim=1).indices


def check_ratio(name: str, value: float, include_one: bool = False) -> float:
    """``value`` if it lies in ``(0, 1)`` (``(0, 1]`` with ``include_one``).

    Raises:
        ValueError: Otherwise, naming the setting.
    """
    if not (0.0 < value < 1.0 or (include_one and value == 1.0)):
        interval = "(0, 1]" if include_one else "(0, 1)"
        raise ValueError(f"{name} must lie in {interval}, got {value}")
    return value


def index_mask(idx: Tensor, num_tokens: int) -> Tensor:
    """Boolean ``[B, T]`` mask that is ``True`` at ``idx [B, K]``."""
    mask = torch.zeros(idx.shape[0], num_tokens, dtype=torch.bool, device=idx.device)
    return mask.scatter_(1, idx, True)


def gather_tokens(x: Tensor, idx: Tensor) -> Tensor:
    """``x[b, idx[b]]`` for ``x [B, T, E]`` and ``idx [B, K]``; ``[B, K, E]``."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def normalize_patches(
    patches: Tensor, weights: Tensor, eps: float = 1e-6
) -> tuple[Tensor, Tensor, Tensor]:
    """Standardise each token's pixels over its valid pixels (MAE's ``norm_pix_loss``).

    Args:
        patches: ``[B, K, P]`` pixel values (finite).
        weights: ``[B, K, P]`` 1 for valid pixels, 0 otherwise.
        eps: Variance floor.

    Returns:
        ``(normalised [B, K, P], mean [B, K, 1], std [B, K, 1])``.
    """
    count = weights.sum(dim=-1, keepdim=True)  # [B, K, 1]
    mean = (patches * weights).sum(dim=-1, keepdim=True) / count.clamp(min=1)
    var = ((patches - mean) ** 2 * weights).sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)
    std = (var + eps).sqrt()
    return (patches - mean) / std, mean, std


def patch_loss(pred: Tensor, target: Tensor, weights: Tensor, kind: str = "mse") -> Tensor:
    """Mean over tokens of the mean per-pixel error over each token's valid pixels.

    Args:
        pred: ``[B, K, P]`` predictions.
        target: ``[B, K, P]`` targets, finite.
        weights: ``[B, K, P]`` 1 for pixels that count, 0 otherwise.
        kind: ``"mse"`` or ``"l1"``.

    Returns:
        Scalar loss; 0 (still attached to ``pred``) if no pixel counts.
    """
    diff = pred - target
    error = diff.square() if kind == "mse" else diff.abs()
    count = weights.sum(dim=-1)  # [B, K]
    per_token = (error * weights).sum(dim=-1) / count.clamp(min=1)  # [B, K]
    has_pixels = (count > 0).to(per_token.dtype)
    return (per_token * has_pixels).sum() / has_pixels.sum().clamp(min=1)


class DecoderEmbedding(nn.Module):
    """Fixed position embedding, plus a band embedding for band-token encoders.

    Args:
        dim: Decoder width.
        encoder: The encoder whose token layout the decoder follows.
    """

    def __init__(self, dim: int, encoder: TokenEncoder) -> None:
        super().__init__()
        self.dim = dim
        self.band_embed = (
            BandEmbedding(dim, known_bands=encoder.bands) if encoder.band_tokens else None
        )
        self._pos_cache: dict[tuple[Any, ...], Tensor] = {}

    def forward(self, bands: Sequence[str], grid: tuple[int, int], like: Tensor) -> Tensor:
        """Embedding ``[T, dim]`` for every token of the encoder's layout."""
        key = (grid, like.device, like.dtype)
        if key not in self._pos_cache:
            self._pos_cache[key] = sincos_pos_embed(self.dim, grid).to(like)
        pos = self._pos_cache[key]  # [N, Dd]
        if self.band_embed is None:
            return pos
        chan = self.band_embed(bands).to(like.dtype)  # [C, Dd]
        return (chan.unsqueeze(1) + pos.unsqueeze(0)).reshape(-1, self.dim)  # [C·N, Dd]


class MaskedImageObjective(nn.Module):
    """Base of the masked-image objectives: input preparation and output assembly.

    Args:
        encoder: A :class:`~geofm.models.vit.TokenEncoder` (``vit_*`` or ``channelvit_*``).
        hcs: Apply Hierarchical Channel Sampling to each training batch.
        norm_pix_loss: Normalise each token's target pixels (mean 0, std 1).
        loss_kind: ``"mse"`` or ``"l1"``.
    """

    def __init__(
        self,
        encoder: TokenEncoder,
        hcs: bool = False,
        norm_pix_loss: bool = True,
        loss_kind: str = "mse",
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.hcs = hcs
        self.norm_pix_loss = norm_pix_loss
        self.loss_kind = loss_kind
        self.pixels_per_token = encoder.pixels_per_token(len(encoder.bands))

    def prepare(
        self,
        images: Tensor,
        bands: Sequence[str],
        valid: Tensor | None,
        generator: torch.Generator | None = None,
    ) -> PreparedBatch:
        """Align bands, zero nodata, and apply channel sampling when training with ``hcs``."""
        if images.ndim != 4 or images.shape[1] != len(bands):
            raise ValueError(
                f"images {tuple(images.shape)} do not match {len(bands)} band names"
            )
        order = self.encoder.align_bands(bands)
        if order != list(range(len(bands))):
            images = images[:, order]
            valid = valid[:, order] if valid is not None else None
        bands = [bands[i] for i in order]
        usable = torch.isfinite(images)
        if valid is not None:
            usable = usable & valid.bool()
        clean = torch.where(usable, images, torch.zeros((), dtype=images.dtype))
        inputs = clean
        if self.hcs and self.training:
            keep = sample_band_subset(len(bands), generator if _on_cpu(generator) else None)
            if self.encoder.band_tokens:
                clean, bands = drop_bands(clean, bands, keep)
                usable = usable[:, keep.to(usable.device)]
                inputs = clean
            else:
                inputs = zero_fill_bands(clean, keep)
                kept = torch.zeros(len(bands), dtype=torch.bool, device=usable.device)
                kept[keep.to(usable.device)] = True
                usable = usable & kept.view(1, -1, 1, 1)
        grid = self.encoder.grid_size(inputs)
        return PreparedBatch(inputs, clean, usable, bands, grid)

    def forward_loss(
        self, pred: Tensor, target: Tensor, weights: Tensor
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Pixel loss over the valid pixels of the reconstructed tokens.

        Args:
            pred: ``[B, K, P]`` predictions.
            target: ``[B, K, P]`` target pixels.
            weights: ``[B, K, P]`` 1 for valid pixels, 0 otherwise.

        Returns:
            The scalar loss and, with ``norm_pix_loss``, the targets' ``(mean, std)``
            ``[B, K, 1]`` (to bring predictions back to input units).
        """
        stats = None
        if self.norm_pix_loss:
            target, mean, std = normalize_patches(target, weights)
            stats = (mean, std)
        return patch_loss(pred, target, weights, self.loss_kind), stats

    @torch.no_grad()
    def assemble_output(
        self,
        loss: Tensor,
        batch: PreparedBatch,
        pred: Tensor,
        target_idx: Tensor,
        visible: Tensor,
        num_visible: int,
        stats: tuple[Tensor, Tensor] | None,
    ) -> ObjectiveOutput:
        """Turn token-level results into the pixel-level :class:`ObjectiveOutput`.

        Args:
            loss: Scalar loss.
            batch: The prepared batch.
            pred: ``[B, K, P]`` predictions for the tokens at ``target_idx``.
            target_idx: ``[B, K]`` reconstructed token indices.
            visible: ``[B, T]`` bool, tokens the encoder saw unmasked.
            num_visible: Number of ``True`` per row of ``visible``.
            stats: ``(mean, std)`` ``[B, K, 1]`` of the normalised targets, or ``None``.
        """
        c = batch.inputs.shape[1]
        pred = pred.detach()
        if stats is not None:
            pred = pred * stats[1] + stats[0]
        return ObjectiveOutput(
            loss=loss,
            images=batch.inputs.detach(),
            bands=list(batch.bands),
            token_pred=pred,
            target_idx=target_idx,
            visible_tokens=visible,
            unpatchify=partial(self.encoder.unpatchify, num_bands=c, grid=batch.grid),
            num_tokens=visible.shape[1],
            num_visible=num_visible,
            num_targets=target_idx.shape[1],
        )


def _on_cpu(generator: torch.Generator | None) -> bool:
    return generator is not None and generator.device.type == "cpu"
