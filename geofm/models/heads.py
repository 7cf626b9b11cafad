"""Task heads on encoder outputs: linear and attentive probes, an MLP and a dense decoder.

Each head declares what it reads through its ``input_kind`` attribute, which
:class:`~geofm.models.finetuner.Finetuner` uses to pick the encoder output:

=============  ===========  =========================================================
kind           input_kind   input
=============  ===========  =========================================================
linear         pooled       ``[B, D]`` mean-pooled features
mlp            pooled       ``[B, D]``
attentive      tokens       ``[B, T, D]`` every output token (ChannelViT: ``T = C·N``)
segmentation   patches      ``[B, N, D]`` one feature per location, plus the grid
=============  ===========  =========================================================

Scene heads return ``[B, K]`` logits; :class:`SegmentationHead` returns ``[B, K, H, W]`` at the
full input resolution (class logits, or ``K`` regression targets).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geofm.errors import GeofmError

InputKind = Literal["pooled", "tokens", "patches"]


class Head(nn.Module):
    """Base of the task heads; ``input_kind`` names the encoder output the head reads."""

    input_kind: ClassVar[InputKind] = "pooled"


def _init_linear(module: nn.Module) -> None:
    """Truncated-normal (σ = 0.02) linear weights and zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class LinearProbe(Head):
    """LayerNorm then a linear classifier on pooled features.

    LayerNorm rather than the usual non-affine BatchNorm keeps the probe independent of the
    batch composition, so it behaves the same in training, evaluation and with batch size 1.

    Args:
        dim: Feature width ``D``.
        num_outputs: Number of outputs ``K``.
    """

    input_kind: ClassVar[InputKind] = "pooled"

    def __init__(self, dim: int, num_outputs: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_outputs)
        self.apply(_init_linear)

    def forward(self, features: Tensor) -> Tensor:
        """``[B, D] -> [B, K]`` logits."""
        return self.fc(self.norm(features))


class MLPHead(Head):
    """LayerNorm, ``Linear → GELU → Dropout → Linear`` on pooled features.

    Args:
        dim: Feature width ``D``.
        num_outputs: Number of outputs ``K``.
        hidden: Hidden width; default ``D``.
        dropout: Dropout before the output layer.
    """

    input_kind: ClassVar[InputKind] = "pooled"

    def __init__(
        self, dim: int, num_outputs: int, hidden: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        hidden = hidden or dim
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_outputs)
        self.apply(_init_linear)

    def forward(self, features: Tensor) -> Tensor:
        """``[B, D] -> [B, K]`` logits."""
        return self.fc2(self.drop(self.act(self.fc1(self.norm(features)))))


class AttentiveProbe(Head):
    """Efficient attentive probe (EP) over all output tokens.

    From "Attention, Please! Revisiting Attentive Probing for Masked Image Modeling" (Psomas et
    al., arXiv 2506.10178). A standard attentive probe runs multi-head cross-attention from a
    learned query with query, key, value and output projections (``4 D²`` weights). EP drops the
    projections that a learned query makes redundant and lets several queries share the work:

    1. Keys are the tokens themselves, LayerNorm-ed: ``X̂ = LN(X)``, ``[B, T, D]``. No key
       projection (the LayerNorm's ``2 D`` affine parameters stand in for it); no query
       projection, since the ``M`` queries ``Q [M, D]`` are free parameters already.
    2. Heads split the channel dimension: with ``H`` heads of width ``d = D / H``, query ``m``
       in head ``h`` scores every token, ``A[h, m] = softmax_t(Q[m, h·d:(h+1)·d] ·
       X̂[t, h·d:(h+1)·d]ᵀ / √d)``, ``[B, H, M, T]``.
    3. One value projection ``V = X̂ W_V``, ``W_V [D, D_v]`` without bias, is cut into
       ``M · H`` contiguous slices of width ``D_v / (M·H)``; the slice of pair ``(m, h)`` is
       pooled with that pair's attention, ``o[m, h] = A[h, m] · V[:, slice(m, h)]``. No output
       projection.
    4. The pooled slices are concatenated into ``[B, D_v]`` (each query contributes its own
       channels rather than being averaged), LayerNorm-ed without affine parameters, and
       classified by one linear layer ``[D_v, K]``.

    Trainable parameters: ``M·D + 2 D + D·D_v + D_v·K + K``, against
    ``M·D + 4 D² + 4 D + D·K + K`` for a probe built on :class:`torch.nn.MultiheadAttention`
    of the same width. With ``H = 1`` and ``D_v = D`` this is the reference EP up to two
    normalisations: the input LayerNorm (the reference attends to the raw encoder output), and
    the non-affine LayerNorm after pooling, which replaces the reference's non-affine BatchNorm
    so the probe does not depend on batch statistics.

    Args:
        dim: Token width ``D``.
        num_outputs: Number of outputs ``K``.
        num_queries: Learned queries ``M`` (32, the reference implementation's default).
        num_heads: Heads ``H``; ``D`` must be divisible by ``H``.
        value_dim: Pooled width ``D_v``; default ``D``. Must be divisible by ``M · H``.
        dropout: Dropout on the pooled features before the classifier.
    """

    input_kind: ClassVar[InputKind] = "tokens"

    def __init__(
        self,
        dim: int,
        num_outputs: int,
        num_queries: int = 32,
        num_heads: int = 1,
        value_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        value_dim = value_dim or dim
        if num_queries < 1 or num_heads < 1:
            raise GeofmError(
                f"attentive probe needs at least one query and one head, "
                f"got num_queries={num_queries}, num_heads={num_heads}"
            )
        if dim % num_heads:
            raise GeofmError(f"attentive probe: width {dim} is not divisible by {num_heads} heads")
        if value_dim % (num_queries * num_heads):
            raise GeofmError(
                f"attentive probe: value width {value_dim} is not divisible by "
                f"num_queries × num_heads = {num_queries * num_heads}",
                hint="choose num_queries and num_heads whose product divides the width",
            )
        self.num_queries = num_queries
        self.num_heads = num_heads
        self.value_dim = value_dim
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)
        self.value = nn.Linear(dim, value_dim, bias=False)
        self.out_norm = nn.LayerNorm(value_dim, elementwise_affine=False)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(value_dim, num_outputs)
        self.apply(_init_linear)

    def attention(self, tokens: Tensor) -> Tensor:
        """Attention of every (head, query) pair over the tokens.

        Args:
            tokens: ``[B, T, D]``.

        Returns:
            ``[B, H, M, T]``, each row summing to one.
        """
        return self._attention(self.norm(tokens))

    def _attention(self, keys: Tensor) -> Tensor:
        b, t, d = keys.shape
        h, m = self.num_heads, self.num_queries
        hd = d // h
        q = self.queries.view(m, h, hd).transpose(0, 1)  # [H, M, d]
        k = keys.view(b, t, h, hd).transpose(1, 2)  # [B, H, T, d]
        logits = torch.einsum("hmc,bhtc->bhmt", q, k) * hd**-0.5  # [B, H, M, T]
        return logits.softmax(dim=-1)

    def pool(self, tokens: Tensor) -> Tensor:
        """Pooled representation ``[B, T, D] -> [B, D_v]`` (before the classifier)."""
        keys = self.norm(tokens)  # [B, T, D]
        attn = self._attention(keys)  # [B, H, M, T]
        b, t, _ = keys.shape
        h, m = self.num_heads, self.num_queries
        values = self.value(keys).view(b, t, m, h, self.value_dim // (m * h))  # [B, T, M, H, dv]
        pooled = torch.einsum("bhmt,btmhc->bmhc", attn, values)  # [B, M, H, dv]
        return pooled.reshape(b, self.value_dim)  # [B, D_v]

    def forward(self, tokens: Tensor) -> Tensor:
        """``[B, T, D] -> [B, K]`` logits."""
        return self.fc(self.drop(self.out_norm(self.pool(tokens))))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of ``[B, C, H, W]``, separately at every pixel."""

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        x = x.permute(0, 2, 3, 1)  # [B, H, W, C]
        x = F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class SegmentationHead(Head):
    """Light convolutional decoder from patch features to full-resolution maps.

    Patch features ``[B, N, D]`` are LayerNorm-ed and laid out on their grid
    ``[B, D, rows, cols]``. A 3 × 3 convolution maps them to ``hidden`` channels; then one
    stage per factor 2 of the patch size (``ConvTranspose2d`` with kernel and stride 2,
    per-pixel LayerNorm, GELU) doubles the resolution, halving the channels down to
    ``min(hidden, 32)``. A 3 × 3 convolution refines the result, and a 1 × 1 convolution gives
    the ``K`` outputs; an odd remainder ``f`` of the patch size (``p = 2^a · f``) is covered
    exactly by predicting ``K · f²`` channels and a pixel shuffle. The output is therefore
    ``[B, K, rows·p, cols·p]`` — the input size — for any image whose sides are multiples of
    ``p``, with no interpolation. Every operation is local (no batch or global statistics), so a
    change at one patch only affects nearby pixels.

    Used for semantic segmentation (``K`` class logits) and pixel regression (``K`` targets).

    Args:
        dim: Feature width ``D``.
        num_classes: Output channels ``K``.
        patch_size: Encoder patch size ``p``.
        hidden: Channels after the first convolution.
    """

    input_kind: ClassVar[InputKind] = "patches"

    def __init__(self, dim: int, num_classes: int, patch_size: int, hidden: int = 128) -> None:
        super().__init__()
        if patch_size < 1 or hidden < 1 or num_classes < 1:
            raise GeofmError(
                f"segmentation head needs positive sizes, got patch_size={patch_size}, "
                f"hidden={hidden}, num_classes={num_classes}"
            )
        self.patch_size = patch_size
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(dim)
        self.stem = nn.Sequential(
            nn.Conv2d(dim, hidden, 3, padding=1), LayerNorm2d(hidden), nn.GELU()
        )
        stages: list[nn.Module] = []
        channels, floor, remainder = hidden, min(hidden, 32), patch_size
        while remainder % 2 == 0:
            out = max(channels // 2, floor)
            stages += [nn.ConvTranspose2d(channels, out, 2, stride=2), LayerNorm2d(out), nn.GELU()]
            channels, remainder = out, remainder // 2
        self.upsample = nn.Sequential(*stages)
        self.refine = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.GELU())
        self.classifier = nn.Conv2d(channels, num_classes * remainder**2, 1)
        self.pixel_shuffle = nn.PixelShuffle(remainder)

    def forward(self, features: Tensor, grid: tuple[int, int]) -> Tensor:
        """Decode patch features to pixels.

        Args:
            features: ``[B, N, D]``, patches in row-major order.
            grid: ``(rows, cols)`` with ``rows · cols = N``.

        Returns:
            ``[B, K, rows·p, cols·p]``.
        """
        b, n, d = features.shape
        rows, cols = grid
        if rows * cols != n:
            raise ValueError(f"grid {rows}×{cols} does not hold {n} patch features")
        x = self.norm(features).transpose(1, 2).reshape(b, d, rows, cols)  # [B, D, rows, cols]
        x = self.stem(x)  # [B, hidden, rows, cols]
        x = self.refine(self.upsample(x))  # [B, c, rows·p/f, cols·p/f]
        return self.pixel_shuffle(self.classifier(x))  # [B, K, rows·p, cols·p]


HEADS: dict[str, type[Head]] = {
    "linear": LinearProbe,
    "attentive": AttentiveProbe,
    "mlp": MLPHead,
    "segmentation": SegmentationHead,
}


def head_input_kind(kind: str) -> InputKind:
    """What the head ``kind`` reads: ``"pooled"``, ``"tokens"`` or ``"patches"``."""
    return _head_class(kind).input_kind


def _head_class(kind: str) -> type[Head]:
    if kind not in HEADS:
        raise GeofmError(f"unknown head {kind!r}; known heads: {', '.join(HEADS)}")
    return HEADS[kind]


def create_head(
    kind: str, dim: int, num_outputs: int, *, patch_size: int | None = None, **kwargs: Any
) -> Head:
    """Build a head by name.

    Args:
        kind: ``"linear"``, ``"attentive"``, ``"mlp"`` or ``"segmentation"``.
        dim: Encoder width ``D``.
        num_outputs: Classes or regression targets ``K``.
        patch_size: Encoder patch size; required by ``"segmentation"``.
        **kwargs: Further constructor arguments of the head (``num_queries=8``,
            ``hidden=256``, ...).

    Returns:
        The head; its ``input_kind`` says which encoder output it expects.

    Raises:
        GeofmError: Unknown kind, an argument the head does not take, or a segmentation head
            without ``patch_size``.
    """
    cls = _head_class(kind)
    fixed = {"self", "dim", "num_outputs", "num_classes", "patch_size"}
    accepted = set(inspect.signature(cls.__init__).parameters) - fixed
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise GeofmError(
            f"head {kind!r} does not take {', '.join(unknown)}; "
            f"it takes {', '.join(sorted(accepted)) or 'no further arguments'}"
        )
    if cls is SegmentationHead:
        if patch_size is None:
            raise GeofmError("a segmentation head needs the encoder's patch_size")
        return SegmentationHead(dim, num_outputs, patch_size, **kwargs)
    return cls(dim, num_outputs, **kwargs)
