"""Reference forwards and release-format files for SatVision-TOA and Prithvi-EO-2.0.

Neither release's code is installable here (pytorch-caney is not on PyPI; TerraTorch pulls a
large dependency tree), so these follow the official code line by line, independently of
geofm's modules (geofm uses timm's SwinV2; these do not):

- :class:`CaneySwinV2` is pytorch-caney's ``models/encoders/swinv2.py`` (Microsoft SwinV2 with
  ``extra_norm_period``), and :func:`caney_scale` its ``transforms/modis_toa_scale.py``
  ``MinMaxEmissiveScaleReflectance`` followed by ``ToTensor``;
- :class:`PrithviMAEReference` is ``prithvi_mae.py`` of Prithvi-EO-2.0 / TerraTorch
  (``PrithviViT`` + ``MAEDecoder``: 3-D patch embedding, fixed 3-D sin-cos position embedding
  with a class token, bicubic position interpolation for other grids).

The ``save_*_release`` helpers write random weights exactly as the releases lay them out.
"""

from __future__ import annotations

import argparse
import collections
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import Tensor, nn

# ---------------------------------------------------------------------------------------------
# SatVision-TOA (pytorch-caney)
# ---------------------------------------------------------------------------------------------

CANEY_REFLECTANCE = [0, 1, 2, 3, 4, 6]
CANEY_EMISSIVE = [5, 7, 8, 9, 10, 11, 12, 13]
CANEY_BT_MIN = np.array([223.1222, 178.9174, 204.3739, 204.7677, 194.8686, 202.1759, 201.3823,
                         203.3537], dtype=np.float32)
CANEY_BT_MAX = np.array([352.7182, 261.2920, 282.5529, 319.0373, 295.0209, 324.0677, 321.5254,
                         285.9848], dtype=np.float32)


def caney_scale(chip: np.ndarray) -> Tensor:
    """``MinMaxEmissiveScaleReflectance`` then ``ToTensor``: ``[H, W, 14]`` → ``[14, H, W]``."""
    img = chip.copy()
    img[:, :, CANEY_REFLECTANCE] = img[:, :, CANEY_REFLECTANCE] * 0.01
    img[:, :, CANEY_EMISSIVE] = (img[:, :, CANEY_EMISSIVE] - CANEY_BT_MIN) / (
        CANEY_BT_MAX - CANEY_BT_MIN)
    return torch.from_numpy(img.transpose(2, 0, 1).copy())


def modis_toa_chip(seed: int, size: int = 128) -> np.ndarray:
    """A MODIS-TOA-like chip in SatVision-TOA's file format: ``float32 [H, W, 14]``, reflective
    bands in percent (about 5–60) and emissive bands as brightness temperature (about
    210–300 K), smooth fields as clouds and land give."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = np.empty((size, size, 14), np.float32)
    for c in range(14):
        a, b, ph = [*rng.uniform(1, 4, 2).tolist(), rng.uniform(0, 6.28)]
        field = 0.5 + 0.35 * np.sin(a * 6.28 * xx + ph) * np.cos(b * 6.28 * yy)
        field = field + 0.05 * rng.standard_normal((size, size))
        out[:, :, c] = 5 + 55 * field if c in CANEY_REFLECTANCE else 210 + 90 * field
    return out


def _window_partition(x: Tensor, ws: int) -> Tensor:
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, ws, ws, c)


def _window_reverse(windows: Tensor, ws: int, h: int, w: int) -> Tensor:
    b = int(windows.shape[0] / (h * w / ws / ws))
    x = windows.view(b, h // ws, w // ws, ws, ws, -1)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(b, h, w, -1)


class _CaneyAttention(nn.Module):
    def __init__(self, dim: int, ws: int, heads: int) -> None:
        super().__init__()
        self.ws, self.heads = ws, heads
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones((heads, 1, 1))))
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512, bias=True), nn.ReLU(inplace=True),
                                     nn.Linear(512, heads, bias=False))
        rh = torch.arange(-(ws - 1), ws, dtype=torch.float32)
        table = torch.stack(torch.meshgrid([rh, rh], indexing="ij")).permute(1, 2, 0)
        table = table.contiguous().unsqueeze(0)
        table = table / (ws - 1) * 8
        table = torch.sign(table) * torch.log2(torch.abs(table) + 1.0) / np.log2(8)
        self.register_buffer("relative_coords_table", table)
        coords = torch.stack(torch.meshgrid([torch.arange(ws), torch.arange(ws)],
                                            indexing="ij"))
        flat = torch.flatten(coords, 1)
        rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
        rel[:, :, 0] += ws - 1
        rel[:, :, 1] += ws - 1
        rel[:, :, 0] *= 2 * ws - 1
        self.register_buffer("relative_position_index", rel.sum(-1))
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b_, n, c = x.shape
        bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias), self.v_bias))
        qkv = F.linear(x, self.qkv.weight, bias).reshape(b_, n, 3, self.heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        attn = attn * torch.clamp(self.logit_scale, max=torch.log(torch.tensor(1.0 / 0.01))).exp()
        table = self.cpb_mlp(self.relative_coords_table).view(-1, self.heads)
        bias_pos = table[self.relative_position_index.view(-1)].view(
            self.ws * self.ws, self.ws * self.ws, -1).permute(2, 0, 1).contiguous()
        attn = attn + 16 * torch.sigmoid(bias_pos).unsqueeze(0)
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(b_ // nw, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        attn = attn.softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b_, n, c))


class _CaneyMlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _CaneyBlock(nn.Module):
    def __init__(self, dim: int, res: tuple[int, int], heads: int, ws: int, shift: int,
                 extra_norm: bool) -> None:
        super().__init__()
        self.res = res
        if min(res) <= ws:
            shift, ws = 0, min(res)
        self.ws, self.shift = ws, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _CaneyAttention(dim, ws, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim) if extra_norm else nn.Identity()
        self.mlp = _CaneyMlp(dim, int(dim * 4.0))
        mask = None
        if shift > 0:
            h, w = res
            img_mask = torch.zeros((1, h, w, 1))
            cnt = 0
            for hs in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                for wsl in (slice(0, -ws), slice(-ws, -shift), slice(-shift, None)):
                    img_mask[:, hs, wsl, :] = cnt
                    cnt += 1
            mw = _window_partition(img_mask, ws).view(-1, ws * ws)
            mask = mw.unsqueeze(1) - mw.unsqueeze(2)
            mask = mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)
        self.register_buffer("attn_mask", mask)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.res
        b, _, c = x.shape
        shortcut = x
        x = x.view(b, h, w, c)
        if self.shift > 0:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        win = _window_partition(x, self.ws).view(-1, self.ws * self.ws, c)
        win = self.attn(win, self.attn_mask).view(-1, self.ws, self.ws, c)
        x = _window_reverse(win, self.ws, h, w)
        if self.shift > 0:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + self.norm1(x.reshape(b, h * w, c))
        x = x + self.norm2(self.mlp(x))
        return self.norm3(x)


class _CaneyMerging(nn.Module):
    def __init__(self, res: tuple[int, int], dim: int) -> None:
        super().__init__()
        self.res = res
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(2 * dim)

    def forward(self, x: Tensor) -> Tensor:
        h, w = self.res
        b, _, c = x.shape
        x = x.view(b, h, w, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]],
                      -1).view(b, -1, 4 * c)
        return self.norm(self.reduction(x))


class _CaneyLayer(nn.Module):
    def __init__(self, dim: int, res: tuple[int, int], depth: int, heads: int, ws: int,
                 downsample: bool, period: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            _CaneyBlock(dim, res, heads, ws, 0 if i % 2 == 0 else ws // 2,
                        bool(period and (i + 1) % period == 0))
            for i in range(depth)])
        self.downsample = _CaneyMerging(res, dim) if downsample else None

    def forward(self, x: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x)
        return self.downsample(x) if self.downsample is not None else x


class _CaneyPatchEmbed(nn.Module):
    def __init__(self, patch: int, chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(chans, dim, kernel_size=patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class CaneySwinV2(nn.Module):
    """pytorch-caney's ``SwinTransformerV2`` (``num_classes=0``, no APE, patch norm)."""

    def __init__(self, img_size: int = 128, patch_size: int = 4, in_chans: int = 14,
                 embed_dim: int = 512, depths: Sequence[int] = (2, 2, 42, 2),
                 num_heads: Sequence[int] = (16, 32, 64, 128), window_size: int = 8,
                 extra_norm_period: int = 6) -> None:
        super().__init__()
        self.patch_embed = _CaneyPatchEmbed(patch_size, in_chans, embed_dim)
        grid = img_size // patch_size
        n = len(depths)
        self.layers = nn.ModuleList([
            _CaneyLayer(embed_dim * 2 ** i, (grid // 2 ** i, grid // 2 ** i), depths[i],
                        num_heads[i], window_size, i < n - 1, extra_norm_period)
            for i in range(n)])
        self.norm = nn.LayerNorm(embed_dim * 2 ** (n - 1))

    def tokens(self, x: Tensor) -> Tensor:
        """Normalised last-stage tokens ``[B, L, C]``."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """``norm`` → ``AdaptiveAvgPool1d(1)`` → flatten, as pytorch-caney."""
        return torch.flatten(F.adaptive_avg_pool1d(self.tokens(x).transpose(1, 2), 1), 1)


def randomize(module: nn.Module, seed: int) -> None:
    """Random values for every parameter (LayerNorm weights near 1, the rest small)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("logit_scale"):
                p.copy_(np.log(10.0) + 0.3 * noise)
            elif "norm" in ["", *name.split(".")][-2] and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.05 * noise)


def save_satvision_release(path: Path, seed: int = 0, extra: dict | None = None,
                           **config: object) -> CaneySwinV2:
    """Write ``mp_rank_00_model_states.pt`` as DeepSpeed does for the SimMIM model (bf16
    ``module`` with ``encoder.*``, ``encoder.mask_token`` and ``decoder.0``, plus DeepSpeed's
    bookkeeping), and return the reference encoder holding the same (bf16-rounded) values."""
    enc = CaneySwinV2(**config)  # type: ignore[arg-type]
    randomize(enc, seed)
    enc = enc.to(torch.bfloat16).float()
    dim = enc.norm.normalized_shape[0]
    in_chans = enc.patch_embed.proj.in_channels
    module = collections.OrderedDict()
    for k, v in enc.state_dict().items():
        module[f"encoder.{k}"] = v.to(torch.bfloat16) if v.is_floating_point() else v
    g = torch.Generator().manual_seed(seed + 1)
    module["encoder.mask_token"] = torch.randn(1, 1, enc.patch_embed.proj.out_channels,
                                               generator=g).to(torch.bfloat16)
    module["decoder.0.weight"] = torch.randn(32 ** 2 * in_chans, dim, 1, 1,
                                             generator=g).to(torch.bfloat16)
    module["decoder.0.bias"] = torch.zeros(32 ** 2 * in_chans, dtype=torch.bfloat16)
    params = [k for k, _ in enc.named_parameters()]
    buffers = [f"encoder.{k}" for k, _ in enc.named_buffers()]
    states = {
        "module": module,
        "buffer_names": buffers,
        "optimizer": None,
        "param_shapes": [collections.OrderedDict(
            (f"encoder.{k}", module[f"encoder.{k}"].shape) for k in params)],
        "frozen_param_shapes": None,
        "shared_params": {},
        "frozen_param_fragments": None,
        "lr_scheduler": {"last_epoch": 100, "base_lrs": [3e-4]},
        "data_sampler": None,
        "random_ltd": None,
        "sparse_tensor_module_names": set(),
        "skipped_steps": 0,
        "global_steps": 1000,
        "global_samples": 64000,
        "dp_world_size": 8,
        "mp_world_size": 1,
        "ds_config": {"bf16": {"enabled": True}, "zero_optimization": {"stage": 2},
                      "train_micro_batch_size_per_gpu": 64},
        "ds_version": "0.14.4",
        **(extra or {}),
    }
    torch.save(states, path)
    return enc


def disallowed_extra() -> dict:
    """A client-state entry the weights-only unpickler refuses (an argparse namespace)."""
    return {"args": argparse.Namespace(cfg="mim_pretrain_swinv2_satvision_giant_128.yaml")}


# ---------------------------------------------------------------------------------------------
# Prithvi-EO-2.0 (prithvi_mae.py)
# ---------------------------------------------------------------------------------------------


def _sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(dim // 2, dtype=float)
    omega /= dim / 2.0
    omega = 1.0 / 10000 ** omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def sincos_3d(dim: int, grid: Sequence[int], cls_token: bool = True) -> np.ndarray:
    """``get_3d_sincos_pos_embed`` of prithvi_mae.py."""
    t, h, w = grid
    w_e = np.tile(_sincos_1d(dim // 16 * 6, np.arange(w)), (t * h, 1))
    h_e = np.tile(np.repeat(_sincos_1d(dim // 16 * 6, np.arange(h)), w, axis=0), (t, 1))
    t_e = np.repeat(_sincos_1d(dim // 16 * 4, np.arange(t)), h * w, axis=0)
    pos = np.concatenate((w_e, h_e, t_e), axis=1)
    return np.concatenate([np.zeros([1, dim]), pos], axis=0) if cls_token else pos


class _PrithviPatchEmbed(nn.Module):
    def __init__(self, patch: int, chans: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(chans, dim, kernel_size=(1, patch, patch), stride=(1, patch, patch))

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class PrithviViTReference(nn.Module):
    """``PrithviViT`` of prithvi_mae.py (no temporal/location coordinates)."""

    def __init__(self, img_size: int, patch_size: int, num_frames: int, in_chans: int,
                 embed_dim: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.grid = [num_frames, img_size // patch_size, img_size // patch_size]
        self.patch = patch_size
        self.embed_dim = embed_dim
        self.patch_embed = _PrithviPatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_buffer("pos_embed", torch.from_numpy(
            sincos_3d(embed_dim, self.grid)).float().unsqueeze(0))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, 4.0, qkv_bias=True,
                                           norm_layer=nn.LayerNorm) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim)

    def _pos(self, shape: Sequence[int]) -> Tensor:
        """``_interpolate_pos_encoding`` of prithvi_mae.py."""
        t, h, w = shape
        hp, wp = h // self.patch, w // self.patch
        if [t, hp, wp] == self.grid:
            return self.pos_embed
        grid = self.grid
        pos = self.pos_embed
        if t != grid[0]:
            grid = [t, *grid[1:]]
            pos = torch.from_numpy(sincos_3d(self.embed_dim, grid)).float().unsqueeze(0)
        cls, patch = pos[:, :1], pos[:, 1:]
        patch = patch.reshape(*grid, self.embed_dim).permute(0, 3, 1, 2)
        patch = F.interpolate(patch, size=(hp, wp), mode="bicubic", align_corners=True)
        patch = patch.permute(0, 2, 3, 1).reshape(1, -1, self.embed_dim)
        return torch.cat((cls, patch), dim=1)

    def forward_features(self, x: Tensor) -> Tensor:
        """All tokens after the final norm ``[B, 1 + N, D]`` (the last of ``forward_features``'s
        list in prithvi_mae.py)."""
        if x.dim() == 4:
            x = x.unsqueeze(2)  # [B, C, 1, H, W]
        pos = self._pos(x.shape[-3:])
        x = self.patch_embed(x) + pos[:, 1:, :]
        cls = (self.cls_token + pos[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat((cls, x), dim=1)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


class _MAEDecoderKeys(nn.Module):
    """``MAEDecoder``'s parameters and buffers (the release carries them as ``decoder.*``)."""

    def __init__(self, embed_dim: int, dec_dim: int, depth: int, heads: int, patch: int,
                 chans: int, n_tokens: int) -> None:
        super().__init__()
        self.decoder_embed = nn.Linear(embed_dim, dec_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_dim))
        self.register_buffer("decoder_pos_embed", torch.zeros(1, n_tokens, dec_dim))
        self.decoder_blocks = nn.ModuleList([Block(dec_dim, heads, 4.0, qkv_bias=True)
                                             for _ in range(depth)])
        self.decoder_norm = nn.LayerNorm(dec_dim)
        self.decoder_pred = nn.Linear(dec_dim, patch * patch * chans)


def save_prithvi_release(path: Path, seed: int = 0, img_size: int = 224, patch_size: int = 16,
                         embed_dim: int = 1024, depth: int = 24, num_heads: int = 16,
                         pretrain_frames: int = 4) -> PrithviViTReference:
    """Write ``Prithvi_EO_V2_*.pt`` as released (a plain state dict of the MAE: ``encoder.*``
    with the pretraining's 4-frame ``pos_embed``, ``decoder.*``), and return the single-frame
    reference encoder holding the same weights."""
    pre = PrithviViTReference(img_size, patch_size, pretrain_frames, 6, embed_dim, depth,
                              num_heads)
    randomize(pre, seed)
    dec = _MAEDecoderKeys(embed_dim, 64, 1, 4, patch_size, 6, pre.pos_embed.shape[1])
    randomize(dec, seed + 1)
    state = {f"encoder.{k}": v for k, v in pre.state_dict().items()}
    state.update({f"decoder.{k}": v for k, v in dec.state_dict().items()})
    torch.save(state, path)
    ref = PrithviViTReference(img_size, patch_size, 1, 6, embed_dim, depth, num_heads)
    own = {k: v for k, v in pre.state_dict().items() if k != "pos_embed"}
    ref.load_state_dict({**own, "pos_embed": ref.pos_embed}, strict=True)
    return ref
