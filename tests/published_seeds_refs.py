"""Release files and reference forwards for the seeds' published encoders.

Used by ``tests/test_published_seeds.py`` and ``scripts/published_refs/seeds_a.py``.

* Release files: random weights under the exact key names, wrappers and dtype of each release,
  written from the official code's module layout (cited per builder), never from geofm's.
* References: SelectiveMAE and RemoteCLIP run in the maintained implementations the releases
  target (timm's ``VisionTransformer`` loading the MAE keys directly; open_clip's ``CLIP``).
  ChannelViT's official code is not installable (it pulls its training stack), so
  :func:`official_channelvit_forward` re-implements its forward line by line from
  ``channelvit/backbone/hcs_channel_vit.py`` and ``channelvit/backbone/vit.py``
  (github.com/insitro/ChannelViT, v1.0.0), in plain tensor operations on the release's state
  dict: no geofm code is involved.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from torch import Tensor

REPO = Path(__file__).resolve().parents[1]
S2_SCENE = REPO / "datasets" / "sentinel2_l1c" / "s2_l1c_13band_10m_256px.tif"
S2_ORDER = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11",
            "B12")


# --- the real chip ----------------------------------------------------------------------------

def s2_chip(bands: tuple[str, ...], size: int, batch: int = 2) -> Tensor:
    """``batch`` windows of the real Sentinel-2 L1C scene, DN, ``[B, C, size, size]``.

    Args:
        bands: Sentinel-2 band names (``"B04"`` or ``"S2.B04"``), in the wanted order.
        size: Window side (≤ 256 / batch along the diagonal).
    """
    idx = [S2_ORDER.index(b.split(".")[-1]) + 1 for b in bands]
    with rasterio.open(S2_SCENE) as src:
        data = src.read(idx).astype(np.float32)  # [C, 256, 256]
    step = (data.shape[-1] - size) // max(batch - 1, 1)
    wins = [data[:, i * step:i * step + size, i * step:i * step + size] for i in range(batch)]
    return torch.from_numpy(np.stack(wins))  # [B, C, size, size]


def true_colour_8bit(dn: Tensor, stretch: float = 3000.0) -> Tensor:
    """Sentinel-2 DN as the 8-bit RGB an aerial-image model saw: ``clip(DN / stretch) · 255``."""
    return (dn / stretch).clamp(0, 1) * 255.0


def standardise(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``(x - mean) / std`` per channel of ``x [B, C, H, W]``."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def _w(gen: torch.Generator, *shape: int, std: float = 0.02) -> Tensor:
    return torch.randn(*shape, generator=gen) * std


def _ln(gen: torch.Generator, prefix: str, dim: int) -> dict[str, Tensor]:
    return {f"{prefix}.weight": 1.0 + _w(gen, dim, std=0.1), f"{prefix}.bias": _w(gen, dim)}


def _linear(gen: torch.Generator, prefix: str, out: int, inp: int, bias: bool = True
            ) -> dict[str, Tensor]:
    d = {f"{prefix}.weight": _w(gen, out, inp, std=1.0 / math.sqrt(inp))}
    if bias:
        d[f"{prefix}.bias"] = _w(gen, out)
    return d


def _vit_block(gen: torch.Generator, prefix: str, dim: int, qkv_bias: bool = True
               ) -> dict[str, Tensor]:
    """One timm/DINO/MAE ``Block``: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2."""
    return {**_ln(gen, f"{prefix}.norm1", dim),
            **_linear(gen, f"{prefix}.attn.qkv", 3 * dim, dim, bias=qkv_bias),
            **_linear(gen, f"{prefix}.attn.proj", dim, dim), **_ln(gen, f"{prefix}.norm2", dim),
            **_linear(gen, f"{prefix}.mlp.fc1", 4 * dim, dim),
            **_linear(gen, f"{prefix}.mlp.fc2", dim, 4 * dim)}


# --- SelectiveMAE -----------------------------------------------------------------------------

def mae_sincos(dim: int, grid: int) -> np.ndarray:
    """MAE's ``get_2d_sincos_pos_embed(dim, grid, cls_token=True)``: ``[1 + grid², dim]``."""
    gh, gw = np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)
    mesh = np.stack(np.meshgrid(gw, gh)).reshape(2, 1, grid, grid)

    def one(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one(dim // 2, mesh[0]), one(dim // 2, mesh[1])], axis=1)
    return np.concatenate([np.zeros([1, dim]), emb], axis=0).astype(np.float32)


def selectivemae_release(depth: int = 12, decoder_depth: int = 2, dim: int = 768,
                         decoder_dim: int = 512, patch: int = 16, img: int = 224, seed: int = 0
                         ) -> dict[str, Tensor]:
    """Random weights with the keys of SelectiveMAE's ``MaskedAutoencoderViT``
    (``SelectiveMAE/models_selectivemae.py``: encoder, cross-attention decoder, token-selection
    network ``get_token_probs``, HOG buffers), float32 as saved by ``misc.save_model``."""
    g = torch.Generator().manual_seed(seed)
    n = (img // patch) ** 2
    sd: dict[str, Tensor] = {
        "cls_token": _w(g, 1, 1, dim),
        "pos_embed": torch.from_numpy(mae_sincos(dim, img // patch))[None],
        "patch_embed.proj.weight": _w(g, dim, 3, patch, patch, std=1.0 / math.sqrt(3 * patch**2)),
        "patch_embed.proj.bias": _w(g, dim)}
    for i in range(depth):
        sd.update(_vit_block(g, f"blocks.{i}", dim))
    sd.update(_ln(g, "norm", dim))
    sd.update(_linear(g, "decoder_embed1", decoder_dim, dim))
    sd["mask_token"] = _w(g, 1, 1, decoder_dim)
    for i in range(decoder_depth):
        p = f"decoder_blocks.{i}"
        sd.update({**_ln(g, f"{p}.norm1", decoder_dim),
                   **_linear(g, f"{p}.cross_attn.q", decoder_dim, decoder_dim),
                   **_linear(g, f"{p}.cross_attn.kv", 2 * decoder_dim, dim),
                   **_linear(g, f"{p}.cross_attn.proj", decoder_dim, decoder_dim),
                   **_ln(g, f"{p}.norm2", decoder_dim),
                   **_linear(g, f"{p}.mlp.fc1", 4 * decoder_dim, decoder_dim),
                   **_linear(g, f"{p}.mlp.fc2", decoder_dim, 4 * decoder_dim)})
    sd.update(_ln(g, "decoder_norm", decoder_dim))
    sd.update(_linear(g, "decoder_pred", patch**2 * 3, decoder_dim))
    sd["pos_embed_probs"] = _w(g, 1, n, dim)
    sd["decoder_pos_embed"] = torch.from_numpy(mae_sincos(decoder_dim, img // patch))[None]
    sd.update(_vit_block(g, "get_token_probs.0", dim, qkv_bias=False))
    sd.update(_linear(g, "get_token_probs.1", 1, dim))
    sd.update(_linear(g, "get_token_probs_linear", 1, dim))
    kx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]]).view(1, 1, 3, 3).repeat(3, 1, 1, 1)
    gk = torch.exp(-0.5 * ((torch.arange(16.0) - 7.5) / 8) ** 2)
    sd.update({"hog.weight_x": kx, "hog.weight_y": kx.transpose(2, 3).contiguous(),
               "hog.gkern": (gk[:, None] * gk[None]) / (gk[:, None] * gk[None]).sum()})
    return sd


def timm_mae_reference(release: dict[str, Tensor], depth: int) -> torch.nn.Module:
    """timm's ViT-B/16 with the release's encoder keys loaded directly (strict)."""
    import timm

    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0,
                              depth=depth).eval()
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in release.items() if k in own}, strict=True)
    return model


# --- ChannelViT -------------------------------------------------------------------------------

def channelvit_release(depth: int = 12, in_chans: int = 18, dim: int = 384, patch: int = 8,
                       img: int = 224, seed: int = 0, hcs: bool = True) -> dict[str, Tensor]:
    """Random weights with the keys of the official ``ChannelVisionTransformer``
    (``hcs_channel_vit.py`` with ``hcs``: ``patch_embed.channel_embed`` is an ``nn.Embedding``;
    ``channel_vit.py`` without: a ``[1, D, C, 1, 1]`` parameter), ``num_classes=0`` (no head),
    float32, as ``hubconf.py`` loads them (a bare state dict)."""
    g = torch.Generator().manual_seed(seed)
    n = (img // patch) ** 2
    sd: dict[str, Tensor] = {
        "cls_token": _w(g, 1, 1, dim),
        "pos_embed": _w(g, 1, 1 + n, dim, std=0.5),
        "patch_embed.proj.weight": _w(g, dim, 1, 1, patch, patch, std=1.0 / patch),
        "patch_embed.proj.bias": _w(g, dim)}
    if hcs:
        sd["patch_embed.channel_embed.weight"] = _w(g, in_chans, dim, std=0.5)
    else:
        sd["patch_embed.channel_embed"] = _w(g, 1, dim, in_chans, 1, 1, std=0.5)
    for i in range(depth):
        sd.update(_vit_block(g, f"blocks.{i}", dim))
    sd.update(_ln(g, "norm", dim))
    return sd


def official_channelvit_forward(sd: dict[str, Tensor], x: Tensor, channels: list[int],
                                num_heads: int, eps: float = 1e-6) -> Tensor:
    """The official eval-mode forward, all tokens after the final norm ``[B, 1 + C·N, D]``.

    Follows ``ChannelVisionTransformer.prepare_tokens`` (``PatchEmbedPerChannel.forward``: shared
    ``Conv3d`` ``(1, p, p)``, channel embedding looked up by ``extra_tokens["channels"]`` and
    added; class token prepended; ``interpolate_pos_encoding`` added), then the DINO ``Block``s
    (``x + attn(norm1(x))``, ``x + mlp(norm2(x))``, softmax attention with ``head_dim ** -0.5``)
    and ``norm``. ``forward`` returns ``[:, 0]`` of this.
    """
    weight = sd["patch_embed.proj.weight"]
    patch = weight.shape[-1]
    b, nc, w, h = x.shape
    t = F.conv3d(x.unsqueeze(1), weight, sd["patch_embed.proj.bias"],
                 stride=(1, patch, patch))  # B Cout Cin H W
    if "patch_embed.channel_embed.weight" in sd:
        idx = torch.tensor(channels).expand(b, -1)  # extra_tokens["channels"]
        chan = F.embedding(idx, sd["patch_embed.channel_embed.weight"]).permute(0, 2, 1)
        t = t + chan.unsqueeze(-1).unsqueeze(-1)
    else:
        t = t + sd["patch_embed.channel_embed"][:, :, channels, :, :]
    t = t.flatten(2).transpose(1, 2)  # B CinHW Cout
    t = torch.cat((sd["cls_token"].expand(b, -1, -1), t), dim=1)
    t = t + _interpolate_pos_encoding(sd["pos_embed"], t, w, h, nc, patch)
    dim = t.shape[-1]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}"
        y = F.layer_norm(t, (dim,), sd[f"{p}.norm1.weight"], sd[f"{p}.norm1.bias"], eps)
        bn, n, c = y.shape
        qkv = F.linear(y, sd[f"{p}.attn.qkv.weight"], sd.get(f"{p}.attn.qkv.bias"))
        qkv = qkv.reshape(bn, n, 3, num_heads, c // num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * (c // num_heads) ** -0.5).softmax(dim=-1)
        y = (attn @ v).transpose(1, 2).reshape(bn, n, c)
        t = t + F.linear(y, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
        y = F.layer_norm(t, (dim,), sd[f"{p}.norm2.weight"], sd[f"{p}.norm2.bias"], eps)
        y = F.linear(F.gelu(F.linear(y, sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])),
                     sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
        t = t + y
        i += 1
    return F.layer_norm(t, (dim,), sd["norm.weight"], sd["norm.bias"], eps)


def _interpolate_pos_encoding(pos_embed: Tensor, x: Tensor, w: int, h: int, c: int,
                              patch: int) -> Tensor:
    """``ChannelVisionTransformer.interpolate_pos_encoding`` (one extra token, the class)."""
    npatch = x.shape[1] - 1
    n = pos_embed.shape[1] - 1
    if npatch == n and w == h:
        return pos_embed
    class_pos_embed = pos_embed[:, :1]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // patch
    h0 = h // patch
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = F.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(n)), int(math.sqrt(n)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(n), h0 / math.sqrt(n)), mode="bicubic")
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, 1, -1, dim)
    patch_pos_embed = patch_pos_embed.expand(1, c, -1, dim).reshape(1, -1, dim)
    return torch.cat((class_pos_embed, patch_pos_embed), dim=1)


# --- RemoteCLIP -------------------------------------------------------------------------------

TINY_CLIP_CFG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"layers": 2, "width": 64, "patch_size": 32, "image_size": 224},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 1,
                 "layers": 1}}
"""ViT-B-32's key layout (patch 32, 224 px) at test width and depth."""


def remoteclip_release(cfg: dict[str, Any] | None = None, seed: int = 0
                       ) -> tuple[torch.nn.Module, dict[str, Tensor]]:
    """An open_clip ``CLIP`` with random weights and its state dict, as RemoteCLIP publishes
    (``torch.save(model.state_dict())``, open_clip key names, float32)."""
    import logging

    import open_clip

    torch.manual_seed(seed)
    logging.disable(logging.WARNING)  # open_clip's "initialized randomly": that is the point
    try:
        if cfg is None:
            clip = open_clip.create_model("ViT-B-32", pretrained=None, pretrained_text=False)
        else:
            clip = open_clip.model.CLIP(**cfg)
    finally:
        logging.disable(logging.NOTSET)
    return clip.eval(), clip.state_dict()
