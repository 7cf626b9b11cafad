"""Plain multispectral Vision Transformer and the token-encoder base it shares with ChannelViT.

An encoder turns ``images [B, C, H, W]`` with their band names into tokens, and tokens into
features. Objectives use the token-level API: :meth:`TokenEncoder.patchify` (pixel targets in
token order), :meth:`TokenEncoder.tokenize` (embedded tokens with position information) and
:meth:`TokenEncoder.forward_tokens` (encode a subset of tokens, gathered before the blocks so
compute scales with the kept count). Downstream heads use :meth:`TokenEncoder.forward` (pooled
``[B, D]``) and :meth:`TokenEncoder.forward_patch_features` (``[B, N, D]``).

Positions are fixed 2-D sine-cosine embeddings computed for whatever patch grid the input has, so
one model serves 120 × 120 reBEN chips (patch 8: 15 × 15 patches) and 128 × 128 MODIS chips
(16 × 16) without interpolation. Height and width must be multiples of the patch size.

Two options restore the original ViT / ChannelViT layout: ``pos_embed="learned"`` (a learned
table for the grid of ``img_size``, bicubically interpolated for other grids, as DINO and
ChannelViT do) and ``class_token=True`` (a learned token prepended before the blocks; pooled
features are then its output instead of the mean of the patch tokens). ``pos_antialias=True``
resamples the learned table as timm's ``resample_abs_pos_embed`` does (bicubic with
antialiasing, which PyTorch computes with the Keys kernel ``a = -0.5`` instead of ``-0.75``), so
a timm ViT converted to this class (:mod:`geofm.published.token_encoder`) gives the same tokens
at every tile size, not only at its own.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from functools import partial
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from geofm.bands import BAND_SETS, get_band
from geofm.errors import BandError, GeofmError
from geofm.models.registry import register_model

DEFAULT_PATCH_SIZE = 8
SIZES: dict[str, dict[str, int]] = {
    "test": {"embed_dim": 32, "depth": 2, "num_heads": 2},
    "tiny": {"embed_dim": 192, "depth": 12, "num_heads": 3},
    "small": {"embed_dim": 384, "depth": 12, "num_heads": 6},
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


def sincos_pos_embed(dim: int, grid: tuple[int, int]) -> Tensor:
    """Fixed 2-D sine-cosine position embedding, as in MAE.

    Args:
        dim: Embedding width, a multiple of 4.
        grid: Patch grid ``(rows, cols)``.

    Returns:
        ``[rows * cols, dim]`` in row-major patch order.
    """
    if dim % 4:
        raise ValueError(f"position embedding width {dim} is not a multiple of 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # [D/4]
    rows, cols = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64),
        torch.arange(grid[1], dtype=torch.float64),
        indexing="ij",
    )
    out_x = cols.reshape(-1, 1) * omega  # [N, D/4]
    out_y = rows.reshape(-1, 1) * omega  # [N, D/4]
    emb = torch.cat([out_x.sin(), out_x.cos(), out_y.sin(), out_y.cos()], dim=1)  # [N, D]
    return emb.float()


def canonical_bands(bands: Sequence[str]) -> tuple[str, ...]:
    """Canonical registry names of ``bands``; raises :class:`BandError` on unknown or repeats."""
    names = tuple(get_band(b).name for b in bands)
    if len(set(names)) != len(names):
        raise BandError(f"a band is given twice in {list(bands)}")
    return names


def init_weights(module: nn.Module) -> None:
    """MAE initialisation: Xavier-uniform linear layers, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TokenEncoder(nn.Module, abc.ABC):
    """Transformer over patch tokens; subclasses decide how pixels become tokens.

    Attributes:
        band_tokens: ``True`` when each token is one (band, patch) pair (ChannelViT), ``False``
            when a token covers all bands of a patch (ViT).
        bands: Registry names of the bands the model was built for (set by each subclass).
        model_name: Registered name, set by :func:`~geofm.models.registry.create_model`.
        model_config: The resolved constructor arguments (set by each subclass).
    """

    band_tokens: bool = False
    pos_antialias: bool = False
    bands: tuple[str, ...]
    model_name: str
    model_config: dict[str, Any]

    def __init__(
        self,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        class_token: bool = False,
        pos_embed: str = "sincos",
        img_size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        if pos_embed not in ("sincos", "learned"):
            raise ValueError(f"pos_embed must be 'sincos' or 'learned', got {pos_embed!r}")
        self.pos_kind = pos_embed
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed_table: nn.Parameter | None = None
        self.cls_pos_embed: nn.Parameter | None = None
        self.pos_grid: tuple[int, int] | None = None
        if pos_embed == "learned":
            if img_size is None:
                raise ValueError("learned position embeddings need img_size (the chip side)")
            size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
            if len(size) != 2 or size[0] % patch_size or size[1] % patch_size:
                raise ValueError(f"img_size {img_size} is not a multiple of patch {patch_size}")
            self.pos_grid = (size[0] // patch_size, size[1] // patch_size)
            table = torch.zeros(self.pos_grid[0] * self.pos_grid[1], embed_dim)
            self.pos_embed_table = nn.Parameter(nn.init.trunc_normal_(table, std=0.02))
            if class_token:
                self.cls_pos_embed = nn.Parameter(
                    nn.init.trunc_normal_(torch.zeros(1, embed_dim), std=0.02))
        if self.cls_token is not None:
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias=True,
                drop_path=drop_path_rate * i / max(depth - 1, 1),
                # timm annotates a class; a partial is what timm's own models pass.
                norm_layer=cast(type[nn.Module], partial(nn.LayerNorm, eps=1e-6)),
            )
            for i in range(depth)
        )
        for block in self.blocks:
            # Route attention through F.scaled_dot_product_attention (flash kernels on GPU).
            cast(Any, block).attn.fused_attn = True
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._pos_cache: dict[tuple[Any, ...], Tensor] = {}

    # --- geometry -----------------------------------------------------------------------------

    def grid_size(self, images: Tensor) -> tuple[int, int]:
        """Patch grid ``(rows, cols)`` of ``images [B, C, H, W]``."""
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise GeofmError(
                f"image size {h}×{w} is not a multiple of the patch size {p}",
                hint="crop or pad the chips, or build the model with another patch_size",
            )
        return h // p, w // p

    def pos_embed(self, grid: tuple[int, int], like: Tensor) -> Tensor:
        """Position embedding ``[N, D]`` for ``grid`` on ``like``'s device and dtype."""
        if self.pos_embed_table is not None and self.pos_grid is not None:
            table = self.pos_embed_table.to(like.dtype)  # [N0, D]
            if tuple(grid) == self.pos_grid:
                return table
            g = table.reshape(1, *self.pos_grid, -1).permute(0, 3, 1, 2)  # [1, D, h0, w0]
            g = F.interpolate(g.float(), size=tuple(grid), mode="bicubic", align_corners=False,
                              antialias=self.pos_antialias)
            return g.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(like.dtype)
        key = (grid, like.device, like.dtype)
        if key not in self._pos_cache:
            emb = sincos_pos_embed(self.embed_dim, grid)
            self._pos_cache[key] = emb.to(device=like.device, dtype=like.dtype)
        return self._pos_cache[key]

    # --- per-model token layout (subclasses) --------------------------------------------------

    @abc.abstractmethod
    def align_bands(self, bands: Sequence[str]) -> list[int]:
        """Channel indices that put ``bands`` in the order the model expects."""
        ...

    @abc.abstractmethod
    def pixels_per_token(self, num_bands: int) -> int:
        """Number of pixel values one token covers."""
        ...

    @abc.abstractmethod
    def patchify(self, images: Tensor) -> Tensor:
        """Pixel values per token, ``[B, C, H, W] -> [B, T, pixels_per_token]``."""
        ...

    @abc.abstractmethod
    def unpatchify(self, patches: Tensor, num_bands: int, grid: tuple[int, int]) -> Tensor:
        """Inverse of :meth:`patchify`, ``[B, T, P] -> [B, C, H, W]``."""
        ...

    @abc.abstractmethod
    def tokenize(
        self,
        images: Tensor,
        bands: Sequence[str],
        mask: Tensor | None = None,
        mask_token: Tensor | None = None,
    ) -> Tensor:
        """Embedded tokens ``[B, T, D]`` with position (and band) information added.

        Args:
            images: ``[B, C, H, W]``, finite.
            bands: Band names, length ``C``.
            mask: Optional ``[B, T]`` bool; where ``True`` the patch embedding is replaced by
                ``mask_token`` before positions are added (SimMIM).
            mask_token: ``[D]`` learned token used with ``mask``.
        """
        ...

    # --- encoding ----------------------------------------------------------------------------

    def forward_tokens(
        self, tokens: Tensor, keep_idx: Tensor | None = None, with_class: bool = False
    ) -> Tensor:
        """Encode tokens, optionally only those at ``keep_idx``.

        Args:
            tokens: ``[B, T, D]`` from :meth:`tokenize`.
            keep_idx: Optional ``[B, K]`` long indices into ``T``; the tokens are gathered
                before the first block, so the cost scales with ``K``.
            with_class: Return the class token's output in front (only for an encoder built
                with ``class_token``; otherwise ignored).

        Returns:
            ``[B, K, D]`` (``K = T`` without ``keep_idx``), after the final LayerNorm;
            ``[B, 1 + K, D]`` with ``with_class`` and a class token.
        """
        if keep_idx is not None:
            tokens = torch.gather(
                tokens, 1, keep_idx.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
            )  # [B, K, D]
        if self.cls_token is not None:
            cls = self.cls_token.to(tokens.dtype).expand(tokens.shape[0], -1, -1)  # [B, 1, D]
            if self.cls_pos_embed is not None:
                cls = cls + self.cls_pos_embed.to(tokens.dtype)
            tokens = torch.cat([cls, tokens], dim=1)  # [B, 1 + K, D]
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        if self.cls_token is not None and not with_class:
            return tokens[:, 1:]
        return tokens

    @abc.abstractmethod
    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Per-location features ``[B, N, D]`` for dense heads."""
        ...

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Pooled features ``[B, D]``: the class token's output, or the mean over all tokens
        for an encoder without one."""
        tokens = self.tokenize(images, bands)  # [B, T, D]
        if self.cls_token is not None:
            return self.forward_tokens(tokens, with_class=True)[:, 0]  # [B, D]
        return self.forward_tokens(tokens).mean(dim=1)  # [B, D]

    def layout_config(self) -> dict[str, Any]:
        """The class-token and position-embedding settings, for ``model_config``."""
        return {"class_token": self.cls_token is not None, "pos_embed": self.pos_kind,
                "img_size": None if self.pos_grid is None else
                [self.pos_grid[0] * self.patch_size, self.pos_grid[1] * self.patch_size]}

    def forward(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Pooled features ``[B, D]``; see :meth:`forward_features`."""
        return self.forward_features(images, bands)


class ViT(TokenEncoder):
    """Multispectral ViT: one token per patch over a fixed, ordered band list.

    The patch embedding is a linear map of the ``C × p × p`` patch (the same as a ``Conv2d``
    with kernel and stride ``p``). Inputs must carry exactly the model's bands, in any order;
    they are reordered by name. A missing band is an error; the only zero-filling is
    Hierarchical Channel Sampling's (:mod:`geofm.models.hcs`), which marks those bands.

    Args:
        bands: The input bands (canonical names or aliases); default the 14-band ``s1s2`` set.
        patch_size: Patch side in pixels.
        embed_dim: Token width ``D``.
        depth: Number of transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over ``D``.
        drop_path_rate: Stochastic depth at the last block (linear ramp).
        class_token: Prepend a learned class token (MAE's ViT); pooled features are its output.
        pos_embed: ``"sincos"`` (fixed, any grid) or ``"learned"`` (needs ``img_size``).
        img_size: Chip side (or ``(H, W)``) the learned position table is made for.
        pos_antialias: Resample the learned table for other grids with antialiasing, as timm's
            ViT does (a converted timm ViT sets it; geofm's own ViTs keep plain bicubic).
    """

    def __init__(
        self,
        bands: Sequence[str] = BAND_SETS["s1s2"],
        patch_size: int = DEFAULT_PATCH_SIZE,
        embed_dim: int = 192,
        depth: int = 12,
        num_heads: int = 3,
        mlp_ratio: float = 4.0,
        drop_path_rate: float = 0.0,
        class_token: bool = False,
        pos_embed: str = "sincos",
        img_size: int | Sequence[int] | None = None,
        pos_antialias: bool = False,
    ) -> None:
        super().__init__(patch_size, embed_dim, depth, num_heads, mlp_ratio, drop_path_rate,
                         class_token, pos_embed, img_size)
        self.pos_antialias = pos_antialias
        self.bands = canonical_bands(bands)
        self.model_config = {
            "bands": list(self.bands),
            "patch_size": patch_size,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "mlp_ratio": mlp_ratio,
            "drop_path_rate": drop_path_rate,
            **self.layout_config(),
            **({"pos_antialias": True} if pos_antialias else {}),
        }
        self.patch_embed = nn.Linear(len(self.bands) * patch_size**2, embed_dim)
        self.apply(init_weights)

    def align_bands(self, bands: Sequence[str]) -> list[int]:
        """Indices into ``bands`` giving the model's band order.

        Raises:
            BandError: ``bands`` is not exactly the model's band set.
        """
        given = canonical_bands(bands)
        if set(given) != set(self.bands):
            missing = [b for b in self.bands if b not in given]
            extra = [b for b in given if b not in self.bands]
            raise BandError(
                f"this ViT was built for bands {', '.join(self.bands)}; "
                f"missing {missing or 'none'}, unexpected {extra or 'none'}",
                hint="pass exactly those bands, or use a channelvit_* model for other bands",
            )
        return [given.index(b) for b in self.bands]

    def pixels_per_token(self, num_bands: int) -> int:
        """``C · p²`` values per token."""
        return num_bands * self.patch_size**2

    def patchify(self, images: Tensor) -> Tensor:
        """``[B, C, H, W] -> [B, N, C·p·p]``, patches in row-major order."""
        b, c, h, w = images.shape
        p = self.patch_size
        x = images.reshape(b, c, h // p, p, w // p, p)
        x = x.permute(0, 2, 4, 1, 3, 5)  # [B, gh, gw, C, p, p]
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, patches: Tensor, num_bands: int, grid: tuple[int, int]) -> Tensor:
        """``[B, N, C·p·p] -> [B, C, H, W]``."""
        b = patches.shape[0]
        p = self.patch_size
        x = patches.reshape(b, grid[0], grid[1], num_bands, p, p)
        x = x.permute(0, 3, 1, 4, 2, 5)  # [B, C, gh, p, gw, p]
        return x.reshape(b, num_bands, grid[0] * p, grid[1] * p)

    def _ordered(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        if tuple(bands) == self.bands:
            return images
        return images[:, self.align_bands(bands)]

    def tokenize(
        self,
        images: Tensor,
        bands: Sequence[str],
        mask: Tensor | None = None,
        mask_token: Tensor | None = None,
    ) -> Tensor:
        """Tokens ``[B, N, D]``: patch embedding (or mask token) plus position."""
        grid = self.grid_size(images)
        tokens = self.patch_embed(self.patchify(self._ordered(images, bands)))  # [B, N, D]
        if mask is not None and mask_token is not None:
            tokens = torch.where(mask.unsqueeze(-1), mask_token.to(tokens.dtype), tokens)
        return tokens + self.pos_embed(grid, tokens)

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Per-patch features ``[B, N, D]``."""
        return self.forward_tokens(self.tokenize(images, bands))


def _vit(size: str, overrides: dict[str, Any]) -> ViT:
    return ViT(**{**SIZES[size], **overrides})


@register_model
def vit_test(**overrides: Any) -> ViT:
    """Two-block ViT (D = 32) for tests."""
    return _vit("test", overrides)


@register_model
def vit_tiny(**overrides: Any) -> ViT:
    """ViT-Ti (D = 192, 12 blocks, 3 heads), patch 8."""
    return _vit("tiny", overrides)


@register_model
def vit_small(**overrides: Any) -> ViT:
    """ViT-S (D = 384, 12 blocks, 6 heads), patch 8."""
    return _vit("small", overrides)


@register_model
def vit_base(**overrides: Any) -> ViT:
    """ViT-B (D = 768, 12 blocks, 12 heads), patch 8."""
    return _vit("base", overrides)


@register_model
def vit_large(**overrides: Any) -> ViT:
    """ViT-L (D = 1024, 24 blocks, 16 heads), patch 8."""
    return _vit("large", overrides)
