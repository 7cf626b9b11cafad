"""Published open_clip / RemoteCLIP checkpoints as geofm image–text models.

RemoteCLIP publishes open_clip models (``ViT-B-32``, ``ViT-L-14``, ``RN50``) as plain state
dicts saved with ``torch.save``. :func:`load_open_clip` reads such a file (``.pt``, ``.pth``,
``.bin`` or ``.safetensors``; a bare dict, a ``{"state_dict": ...}`` wrapper and ``module.``
prefixes from DDP are all accepted; ``torch.load`` runs with ``weights_only=True``, so nothing
pickled is executed) or an open_clip folder (``open_clip_config.json`` + weights) and returns
an :class:`~geofm.models.align.AlignModel` with the same ``encode_image`` / ``encode_patches`` /
``encode_text`` as a geofm-trained one.

State-dict keys, as published → where they live in the returned model:

==================================================  ============================================
``visual.*`` (ViT: ``conv1``, ``class_embedding``,   ``encoder.visual.*`` — the image tower,
``positional_embedding``, ``ln_pre``,                :class:`OpenCLIPImageEncoder`
``transformer.resblocks.N.*``, ``ln_post``,
``proj``; RN50: ``conv1-3``, ``bn1-3``,
``layer1-4.*``, ``attnpool.*``)
``token_embedding.weight``, ``positional_embedding``  ``text.backend.clip.*`` (same names) — the
``transformer.resblocks.N.*``, ``ln_final.*``,        text tower, locked
``text_projection``
``logit_scale`` (log of the inverse temperature)      ``logit_scale``
``input_resolution``, ``context_length``,             dropped (OpenAI extras)
``vocab_size``
==================================================  ============================================

The architecture is an open_clip name (``arch="ViT-B-32"``); without one it is read from the
tensor shapes (vision width, depth, patch and image size; text width, depth, context length),
matched to a built-in open_clip name when one fits. The image and text projections are the
model's own, so ``image_proj`` and ``text_proj`` are identities.

**Band contract and normalisation.** The image tower sees three bands, red, green, blue
(default Sentinel-2 ``S2.B04``, ``S2.B03``, ``S2.B02``, in any order). CLIP expects 8-bit-like
RGB in ``[0, 1]`` standardised with its mean and std; Sentinel-2 reflectance comes as digital
numbers 0–10000. geofm uses the usual true-colour stretch: ``rgb = clip(DN / 3000, 0, 1)``. The
header's ``normalization`` holds the affine part, ``mean = 3000·clip_mean``, ``std =
3000·clip_std``, so ``(DN − mean) / std`` is exactly CLIP's input before clipping; the image
tower then clamps each channel to the values that ``rgb = 0`` and ``rgb = 1`` map to. Data is
normalised with the header as for any geofm model, and the clip happens inside.

**Resolution.** ``encode_image`` resizes (bilinear, antialiased) to the model's training size
(224 for RemoteCLIP). ``encode_patches`` runs at the input's own size (``H`` and ``W`` multiples
of the patch size: 32 for ViT-B-32 and RN50, 14 for ViT-L-14; ViT position embeddings are
interpolated for other grids) and returns CLIP-space features per patch as MaskCLIP does: in
the ViT's last block each token attends only to itself (its value path), then ``ln_post`` and
``proj``; for RN50 the attention pool's value and output projections are applied per location.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geofm.card import Architecture, BandContract, ModelCard, Provenance, TextSpec
from geofm.errors import BandError, GeofmError
from geofm.models.align import AlignModel
from geofm.models.openclip_weights import load_open_clip_model
from geofm.models.text import OpenCLIPTextEncoder, TextTower
from geofm.models.vit import canonical_bands

RGB_BANDS = ("S2.B04", "S2.B03", "S2.B02")
RGB_STRETCH = 3000.0  # reflectance DN that maps to full brightness (true-colour stretch)
# --- the image tower --------------------------------------------------------------------------

def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class OpenCLIPImageEncoder(nn.Module):
    """An open_clip image tower behind the geofm encoder interface, with an RGB band contract.

    Args:
        visual: open_clip ``VisionTransformer`` or ``ModifiedResNet``.
        bands: Names of the red, green and blue bands, in that order.
        mean: CLIP's per-channel mean of ``[0, 1]`` RGB.
        std: CLIP's per-channel std.

    Attributes:
        embed_dim: Width of the projected CLIP embedding.
        patch_size: Input pixels per feature location (ViT patch, 32 for ResNets).
        image_size: ``(H, W)`` the model was trained at.
    """

    band_tokens = False
    low: Tensor
    high: Tensor

    def __init__(self, visual: Any, bands: Sequence[str] = RGB_BANDS,
                 mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                 std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711)) -> None:
        super().__init__()
        if len(bands) != 3:
            raise BandError(f"an open_clip image tower takes 3 bands (red, green, blue), got "
                            f"{list(bands)}")
        self.visual: Any = visual  # open_clip ships no types
        self.bands = canonical_bands(bands)
        self.is_vit = hasattr(visual, "class_embedding")
        self.image_size = _pair(visual.image_size)
        self.patch_size = _pair(visual.patch_size)[0] if self.is_vit else 32
        self.embed_dim = int(visual.output_dim)
        m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        # CLIP-normalised values of rgb = 0 and rgb = 1: the clip of the true-colour stretch.
        self.register_buffer("low", -m / s, persistent=False)
        self.register_buffer("high", (1 - m) / s, persistent=False)

    def _rgb(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """``images`` in red, green, blue order, clamped to the stretch."""
        given = canonical_bands(bands)
        if set(given) != set(self.bands) or images.shape[1] != 3:
            raise BandError(f"this open_clip model takes bands {', '.join(self.bands)}; got "
                            f"{', '.join(given)}", hint="pass the red, green and blue bands")
        x = images[:, [given.index(b) for b in self.bands]]
        low, high = self.low.to(x.dtype), self.high.to(x.dtype)
        return torch.maximum(torch.minimum(x, high), low)  # [B, 3, H, W]

    def grid_size(self, images: Tensor) -> tuple[int, int]:
        """Feature grid ``(H/p, W/p)`` of ``images [B, C, H, W]``."""
        h, w = images.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise GeofmError(f"image size {h}×{w} is not a multiple of the patch size {p}",
                             hint=f"use tiles of {self.image_size[0]}×{self.image_size[1]}")
        return h // p, w // p

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """CLIP image embeddings ``[B, E]`` (unnormalised), at the training size."""
        x = self._rgb(images, bands)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", antialias=True,
                              align_corners=False)
        return self.visual(x)  # [B, E]

    def forward(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """See :meth:`forward_features`."""
        return self.forward_features(images, bands)

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """CLIP-space features per location ``[B, N, E]`` (row-major, unnormalised)."""
        self.grid_size(images)
        x = self._rgb(images, bands)
        return self._vit_dense(x) if self.is_vit else self._resnet_dense(x)

    def _vit_dense(self, x: Tensor) -> Tensor:
        v = self.visual
        blocks = list(v.transformer.resblocks)
        if v.attn_pool is not None or not all(isinstance(getattr(b, "attn", None),
                                                         nn.MultiheadAttention) for b in blocks):
            raise GeofmError("per-patch features are not available for this open_clip image "
                             "tower (attention pooling or custom attention blocks)")
        x = v.conv1(x)  # [B, W, gh, gw]
        grid = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)  # [B, N, W]
        pos = v.positional_embedding.to(x.dtype)  # [1 + N0, W]
        patch_pos = pos[1:]
        if tuple(grid) != tuple(v.grid_size):
            g0 = v.grid_size
            patch_pos = F.interpolate(
                patch_pos.reshape(1, g0[0], g0[1], -1).permute(0, 3, 1, 2), size=tuple(grid),
                mode="bicubic", align_corners=False).permute(0, 2, 3, 1).reshape(-1, x.shape[-1])
        cls = (v.class_embedding.to(x.dtype) + pos[0]).expand(x.shape[0], 1, -1)  # [B, 1, W]
        x = v.ln_pre(torch.cat([cls, x + patch_pos], dim=1))  # [B, 1 + N, W]
        batch_first = getattr(v.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for block in blocks[:-1]:
            x = block(x)
        x = _self_attention_block(blocks[-1], x)
        if not batch_first:
            x = x.transpose(0, 1)
        tokens = v.ln_post(x[:, 1:])  # [B, N, W]
        return tokens @ v.proj if v.proj is not None else tokens  # [B, N, E]

    def _resnet_dense(self, x: Tensor) -> Tensor:
        v = self.visual
        x = v.stem(x)
        x = v.layer4(v.layer3(v.layer2(v.layer1(x))))  # [B, C, H/32, W/32]
        tokens = x.flatten(2).transpose(1, 2)  # [B, N, C]
        return v.attnpool.c_proj(v.attnpool.v_proj(tokens))  # [B, N, E]


def _self_attention_block(block: Any, x: Tensor) -> Tensor:
    """An open_clip residual block in which every token attends only to itself."""
    attn: nn.MultiheadAttention = block.attn
    d = x.shape[-1]
    w_v = attn.in_proj_weight[2 * d:] if attn.in_proj_weight is not None else attn.v_proj_weight
    b_v = attn.in_proj_bias[2 * d:] if attn.in_proj_bias is not None else None
    value = attn.out_proj(F.linear(block.ln_1(x), w_v, b_v))  # [B, L, W]
    x = x + block.ls_1(value)
    return x + block.ls_2(block.mlp(block.ln_2(x)))


# --- the model --------------------------------------------------------------------------------

class OpenCLIPAlign(AlignModel):
    """An open_clip model as an :class:`AlignModel` (identity projections, its own scale).

    Args:
        encoder: The image tower.
        text: The text tower (kind ``"open_clip"``).
        logit_scale: The checkpoint's log inverse temperature.
    """

    def __init__(self, encoder: OpenCLIPImageEncoder, text: TextTower,
                 logit_scale: float = math.log(100.0)) -> None:
        nn.Module.__init__(self)
        self.encoder = encoder
        self.text = text
        self.embed_dim = encoder.embed_dim
        self.init_temperature = math.exp(-logit_scale)
        self.max_logit_scale = 100.0
        self.image_proj = nn.Identity()
        self.text_proj = nn.Identity()
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale)))

    def settings(self) -> dict[str, Any]:
        """The alignment settings (``text`` rebuilds the whole model)."""
        return {**super().settings(), "arch": self.text.source.get("arch")}


def load_open_clip(path: str | Path, arch: str | None = None,
                   bands: Sequence[str] = RGB_BANDS, stretch: float = RGB_STRETCH,
                   quick_gelu: bool = False) -> tuple[OpenCLIPAlign, ModelCard]:
    """A published open_clip / RemoteCLIP model from a local file, ready for geofm.

    Args:
        path: State-dict file (``.pt``, ``.pth``, ``.bin``, ``.safetensors``) or open_clip folder.
        arch: open_clip architecture (``"ViT-B-32"``, ``"ViT-L-14"``, ``"RN50"``); ``None`` reads
            it from the tensor shapes.
        bands: The red, green and blue band names of the data.
        stretch: Reflectance DN shown at full brightness (``rgb = clip(DN / stretch, 0, 1)``).
        quick_gelu: QuickGELU activations (OpenAI's original CLIP weights).

    Returns:
        The model in eval mode (text tower locked) and its card: kind ``"open_clip"``, the RGB
        band contract with the normalisation of the module docstring, patch and tile size,
        and the text tower.

    Raises:
        GeofmError: Unreadable file or weights that do not fit ``arch``.
    """
    p = Path(path).expanduser().resolve()
    clip, tokenizer, arch = load_open_clip_model(p, arch, quick_gelu)
    pre = getattr(clip.visual, "preprocess_cfg", None) or {}
    mean = tuple(pre.get("mean") or (0.48145466, 0.4578275, 0.40821073))
    std = tuple(pre.get("std") or (0.26862954, 0.26130258, 0.27577711))
    visual = clip.visual
    logit_scale = clip.logit_scale
    assert isinstance(logit_scale, Tensor)  # open_clip's learned nn.Parameter
    scale = float(logit_scale.detach().reshape(-1)[0])
    encoder = OpenCLIPImageEncoder(visual, bands, mean, std)
    source = {"name": str(p), "kind": "open_clip", **({"arch": arch} if arch else {})}
    text = TextTower(OpenCLIPTextEncoder(clip, tokenizer), source, locked=True)
    model = OpenCLIPAlign(encoder, text, scale).eval()
    settings = model.settings()
    card = ModelCard(
        kind="open_clip",
        architecture=Architecture(f"open_clip:{arch or 'custom'}",
                                  {"arch": arch, "source": str(p), "quick_gelu": quick_gelu}),
        contract=BandContract(bands=tuple(encoder.bands),
                              mean=tuple(stretch * v for v in mean),
                              std=tuple(stretch * v for v in std)),
        tile_size=(int(encoder.image_size[0]), int(encoder.image_size[1])),
        patch_size=int(encoder.patch_size),
        text=TextSpec(embed_dim=int(settings["embed_dim"]), source=dict(settings["text"]),
                      init_temperature=float(settings["init_temperature"]),
                      max_logit_scale=float(settings["max_logit_scale"])),
        provenance=Provenance(release={"source": str(p), "arch": arch, "stretch": stretch}),
    )
    return model, card
