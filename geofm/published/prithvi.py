"""Prithvi-EO-2.0 (IBM and NASA): a ViT MAE pretrained on HLS time series, used one date at a time.

Follows the release's ``prithvi_mae.py`` (``PrithviViT``): a 3-D patch embedding (a ``Conv3d``
with a tubelet of one frame), a fixed 3-D sine-cosine position embedding with a class token
(for ``img_size`` and one frame; other grids interpolate it bicubically as the release does),
timm's ``Block`` and a final LayerNorm. Written here (with timm's blocks) rather than depended on
because the maintained implementation, TerraTorch's ``PrithviViT``, comes with a large
dependency tree geofm does not otherwise need.

Checkpoint layout: ``Prithvi_EO_V2_300M.pt`` / ``Prithvi_EO_V2_600M.pt`` are plain
``torch.save``'d state dicts of the MAE: ``encoder.*`` (with the 4-frame pretraining
``pos_embed``, a fixed table geofm recomputes for one frame, as TerraTorch does) and
``decoder.*`` (the MAE decoder, unused for features). :func:`convert_prithvi` consumes every
key, dropping those knowingly.

Input: the six HLS bands (Blue, Green, Red, Narrow NIR, SWIR 1, SWIR 2) as surface reflectance ×
10,000, normalised with the release's ``config.json`` mean and std.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

from geofm.errors import GeofmError
from geofm.models.registry import register_model
from geofm.published.base import PublishedEncoder, consume
from geofm.safeload import describe_failure, torch_load

PRITHVI_BANDS = ("S2.B02", "S2.B03", "S2.B04", "S2.B8A", "S2.B11", "S2.B12")
"""HLS Blue, Green, Red, Narrow NIR, SWIR 1, SWIR 2 as their Sentinel-2 MSI bands (HLS S30);
the Landsat-8/9 OLI equivalents (HLS L30) are :data:`PRITHVI_BANDS_LANDSAT`."""

PRITHVI_BANDS_LANDSAT = ("L8.B2", "L8.B3", "L8.B4", "L8.B5", "L8.B6", "L8.B7")

PRITHVI_MEAN = (1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0)
PRITHVI_STD = (2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0)
"""Per-band mean and std (reflectance × 10,000) from the Prithvi-EO-2.0 ``config.json``."""

_ENCODER_PARTS = ("patch_embed.", "blocks.", "norm.", "cls_token")

PRITHVI_SIZES: dict[str, dict[str, int]] = {
    "test": {"embed_dim": 64, "depth": 2, "num_heads": 4, "patch_size": 16},
    "300m": {"embed_dim": 1024, "depth": 24, "num_heads": 16, "patch_size": 16},
    "600m": {"embed_dim": 1280, "depth": 32, "num_heads": 16, "patch_size": 14},
}


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=float) / (dim / 2.0))  # [dim/2]
    out = np.einsum("m,d->md", pos.reshape(-1), omega)  # [M, dim/2]
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)  # [M, dim]


def sincos_pos_embed_3d(dim: int, grid: tuple[int, int, int]) -> Tensor:
    """Prithvi's fixed 3-D sine-cosine embedding ``[1, 1 + T·H·W, dim]`` (class token first,
    zeros): 6/16 of the width encodes the column, 6/16 the row, 4/16 the frame.

    Raises:
        ValueError: ``dim`` is not a multiple of 16.
    """
    if dim % 16:
        raise ValueError(f"Prithvi's position embedding width {dim} is not a multiple of 16")
    t, h, w = grid
    w_e = np.tile(_sincos_1d(dim // 16 * 6, np.arange(w)), (t * h, 1))
    h_e = np.tile(np.repeat(_sincos_1d(dim // 16 * 6, np.arange(h)), w, axis=0), (t, 1))
    t_e = np.repeat(_sincos_1d(dim // 16 * 4, np.arange(t)), h * w, axis=0)
    pos = np.concatenate([np.zeros([1, dim]), np.concatenate((w_e, h_e, t_e), axis=1)])
    return torch.from_numpy(pos).float().unsqueeze(0)  # [1, 1 + T*H*W, dim]


class _PatchEmbed3D(nn.Module):
    """``Conv3d`` over one-frame tubelets: ``[B, C, 1, H, W]`` → ``[B, H/p · W/p, D]``."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=(1, patch_size, patch_size),
                              stride=(1, patch_size, patch_size))

    def forward(self, x: Tensor) -> Tensor:
        tokens: Tensor = self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]
        return tokens


class PrithviEO2(PublishedEncoder):
    """Prithvi-EO-2.0's encoder on one date behind geofm's encoder calls.

    Pooled features are the mean of the normalised patch tokens (the class token is kept in the
    sequence, as pretrained, and left out of the pooling, as TerraTorch's heads do).

    Args:
        img_size: Tile side of the position table (224 in the release).
        patch_size: Patch side (16 for 300M, 14 for 600M).
        embed_dim: Token width.
        depth: Number of blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over token width.
        drop_path_rate: Stochastic depth for finetuning (0 as released).
        bands: Registry names of the six HLS bands in the release's order.
    """

    band_tokens = False
    pos_embed: Tensor

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, bands: Sequence[str] = PRITHVI_BANDS) -> None:
        super().__init__()
        self.bands = tuple(bands)
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.model_config: dict[str, Any] = {
            "img_size": img_size, "patch_size": patch_size, "embed_dim": embed_dim,
            "depth": depth, "num_heads": num_heads, "mlp_ratio": mlp_ratio,
            "drop_path_rate": drop_path_rate, "bands": list(self.bands)}
        self.patch_embed = _PatchEmbed3D(len(self.bands), embed_dim, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer(
            "pos_embed",
            sincos_pos_embed_3d(embed_dim, (1, img_size // patch_size, img_size // patch_size)),
            persistent=False)
        dpr = torch.linspace(0, drop_path_rate, depth).tolist() if drop_path_rate else [0.0] * depth
        self.blocks = nn.ModuleList([
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm,
                  drop_path=dpr[i]) for i in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)
        nn.init.normal_(self.cls_token, std=0.02)

    def _pos(self, rows: int, cols: int) -> Tensor:
        """Position table ``[1, 1 + rows·cols, D]`` for a grid, interpolated as the release does
        (bicubic, ``align_corners=True``) when it differs from ``img_size``'s."""
        base = self.img_size // self.patch_size
        if (rows, cols) == (base, base):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, base, base, self.embed_dim).permute(0, 3, 1, 2)  # [1, D, b, b]
        grid = F.interpolate(grid, size=(rows, cols), mode="bicubic", align_corners=True)
        return torch.cat((cls, grid.permute(0, 2, 3, 1).reshape(1, -1, self.embed_dim)), dim=1)

    def _tokens(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        rows, cols = self.grid_size(images)
        x = self.ordered(images, bands).unsqueeze(2)  # [B, 6, 1, H, W]
        pos = self._pos(rows, cols)  # [1, 1 + N, D]
        x = self.patch_embed(x) + pos[:, 1:]  # [B, N, D]
        cls = (self.cls_token + pos[:, :1]).expand(x.shape[0], -1, -1)  # [B, 1, D]
        x = torch.cat((cls, x), dim=1)  # [B, 1 + N, D]
        for block in self.blocks:
            x = block(x)
        tokens: Tensor = self.norm(x)  # [B, 1 + N, D]
        return tokens

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Normalised patch tokens ``[B, N, D]`` (class token removed), row-major."""
        return self._tokens(images, bands)[:, 1:]

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Mean of the normalised patch tokens ``[B, D]``."""
        return self._tokens(images, bands)[:, 1:].mean(dim=1)


@register_model
def prithvi_eo2_300m(**overrides: Any) -> PrithviEO2:
    """Prithvi-EO-2.0-300M (ViT-L/16, 1024 wide, 24 blocks)."""
    return PrithviEO2(**{**PRITHVI_SIZES["300m"], **overrides})


@register_model
def prithvi_eo2_600m(**overrides: Any) -> PrithviEO2:
    """Prithvi-EO-2.0-600M (ViT-H/14, 1280 wide, 32 blocks)."""
    return PrithviEO2(**{**PRITHVI_SIZES["600m"], **overrides})


@register_model
def prithvi_eo2_test(**overrides: Any) -> PrithviEO2:
    """A small Prithvi-EO-2.0-shaped ViT (same code path and key layout) for tests."""
    return PrithviEO2(**{**PRITHVI_SIZES["test"], **overrides})


def convert_prithvi(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The release's MAE state dict → :class:`PrithviEO2`'s.

    ``encoder.*`` maps onto the encoder; ``encoder.pos_embed`` (the fixed 4-frame pretraining
    table, recomputed for one frame) and every ``decoder.*`` tensor are dropped knowingly.

    Raises:
        GeofmError: A key is neither an encoder tensor nor one of the dropped ones (a ``-TL``
            release's coordinate encoders, for instance).
    """
    drop = ["encoder.pos_embed"] + [k for k in state if k.startswith("decoder.")]
    out = consume(state, {f"encoder.{part}": part for part in _ENCODER_PARTS}, drop=drop)
    return {k: v.float() if v.is_floating_point() else v for k, v in out.items()}


def read_prithvi(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a ``Prithvi_EO_V2_*.pt`` (or ``.safetensors``) file, read without running
    pickled code.

    Raises:
        GeofmError: Missing or unreadable file, pickled objects, or not a dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise GeofmError("Prithvi-EO-2.0 weights not found", p,
                         hint="download the .pt file from the model card's URL")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch_load(p)
    except Exception as e:  # torch.load raises many kinds; pickled objects included
        raise GeofmError(f"cannot read weights ({describe_failure(e)})", p,
                         hint="pass the release's state dict (.pt) or a .safetensors export") \
            from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, Tensor) for v in obj.values()):
        raise GeofmError("is not a state dict of tensors", p,
                         hint="pass the release's Prithvi_EO_V2_*.pt")
    return {str(k): v for k, v in obj.items()}


def load_prithvi(path: str | Path, name: str = "prithvi_eo2_300m", **config: Any) -> PrithviEO2:
    """Build ``name`` and load the release file at ``path`` into it (strict, every key used)."""
    from geofm.models.registry import create_model

    model = create_model(name, **config)
    assert isinstance(model, PrithviEO2)
    state = convert_prithvi(read_prithvi(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise GeofmError(f"the weights do not fit {name} ({str(e).splitlines()[0]})", path,
                         hint="check that the file is the release the model card names") from None
    return model
