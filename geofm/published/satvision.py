"""SatVision-TOA: a SwinV2 pretrained with SimMIM on 14 MODIS top-of-atmosphere bands.

The release (nasa-nccs-hpda/pytorch-caney, arXiv 2411.17000) is a Microsoft-layout Swin
Transformer V2 with one addition: an extra LayerNorm (``norm3``) after every sixth block of a
stage (``NORM_PERIOD: 6``), as in SwinV2-G. The module here is timm's maintained
:class:`~timm.models.swin_transformer_v2.SwinTransformerV2` (same cosine window attention,
continuous position bias MLP and residual post-norm) with those extra norms added as a forward
hook on the blocks that carry one, so the release's block parameters keep their names.

Checkpoint layout: the release is DeepSpeed's ``mp_rank_00_model_states.pt``, a ``torch.save``'d
dict whose ``"module"`` entry holds the SimMIM model's bf16 tensors (``encoder.*`` — the
SwinV2 — plus ``encoder.mask_token`` and the ``decoder.0`` pixel-prediction conv) beside
DeepSpeed's bookkeeping (``buffer_names``, ``param_shapes``, ``ds_config``, ...).
:func:`read_deepspeed_module` reads it with the weights-only unpickler; a file that holds
objects it refuses is refused in one line with the export recipe. :func:`convert_satvision`
renames the Microsoft keys the way timm's ``checkpoint_filter_fn`` does (each stage's patch
merging moves from the end of stage ``i`` to the start of stage ``i + 1``), drops the
recomputed buffers (``relative_coords_table``, ``relative_position_index``, ``attn_mask``) and
the SimMIM-only tensors, and casts bf16 to float32.

Input: the 14 bands in pytorch-caney's ``MinMaxEmissiveScaleReflectance`` scaling — reflectance
0–1 for bands 1, 2, 3, 6, 7, 26 and per-band min–max scaled brightness temperature for
21, 27–33 (:func:`geofm.data.satvision.satvision_stats` gives the constants as mean/std).
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from timm.models.swin_transformer_v2 import SwinTransformerV2
from torch import Tensor, nn

from geofm.bands import BAND_SETS
from geofm.errors import GeofmError
from geofm.models.registry import register_model
from geofm.published.base import PublishedEncoder, consume
from geofm.safeload import describe_failure, refused_global, torch_load

SATVISION_SIZES: dict[str, dict[str, Any]] = {
    "test": {"embed_dim": 32, "depths": (2, 2, 6, 2), "num_heads": (2, 4, 4, 8),
             "extra_norm_period": 3},
    "giant": {"embed_dim": 512, "depths": (2, 2, 42, 2), "num_heads": (16, 32, 64, 128),
              "extra_norm_period": 6},
}
"""SwinV2 sizes: the release (``giant``, pytorch-caney's
``mim_pretrain_swinv2_satvision_giant_128`` config) and a small one for tests."""

_BUFFERS = ("relative_coords_table", "relative_position_index", "attn_mask")
_ENCODER_PARTS = ("patch_embed.", "layers.", "norm.")
_SIMMIM_ONLY = ("encoder.mask_token", "decoder.0.weight", "decoder.0.bias")


def _apply_norm3(block: nn.Module, args: Any, output: Tensor) -> Tensor:
    """Forward hook: the release's extra post-block LayerNorm (``norm3``)."""
    norm3: nn.Module = getattr(block, "norm3")  # noqa: B009 - set after timm builds the block
    normed: Tensor = norm3(output)  # [B, H, W, C]
    return normed


class SatVisionTOA(PublishedEncoder):
    """SatVision-TOA's SwinV2 encoder behind geofm's encoder calls.

    Tokens leave the last stage on a grid of stride ``patch_size · 2³`` (32 pixels for the
    release's patch 4), so :attr:`patch_size` here is that stride: ``forward_patch_features``
    gives ``[B, (H/32)·(W/32), D]`` and :meth:`grid_size` its rows and columns. Pooled features
    are the mean of the normalised last-stage tokens, as pytorch-caney's ``forward_features``.

    Args:
        img_size: Tile side the windows and attention masks are built for (128 in the release).
        patch_size: Side of the patch embedding (4).
        embed_dim: Width of the first stage (512); the output width is ``embed_dim · 8``.
        depths: Blocks per stage.
        num_heads: Attention heads per stage.
        window_size: Attention window side (8).
        mlp_ratio: MLP hidden width over block width.
        extra_norm_period: A ``norm3`` after every this many blocks of a stage (0: none).
        extra_norm_stage: Also a ``norm3`` after the last block of each stage.
        drop_path_rate: Stochastic depth for finetuning.
        bands: The 14 MODIS bands in the release's channel order.
    """

    band_tokens = False

    def __init__(self, img_size: int = 128, patch_size: int = 4, embed_dim: int = 512,
                 depths: Sequence[int] = (2, 2, 42, 2),
                 num_heads: Sequence[int] = (16, 32, 64, 128), window_size: int = 8,
                 mlp_ratio: float = 4.0, extra_norm_period: int = 6,
                 extra_norm_stage: bool = False, drop_path_rate: float = 0.0,
                 bands: Sequence[str] = BAND_SETS["modis14"]) -> None:
        super().__init__()
        self.bands = tuple(bands)
        self.img_size = img_size
        self.model_config: dict[str, Any] = {
            "img_size": img_size, "patch_size": patch_size, "embed_dim": embed_dim,
            "depths": list(depths), "num_heads": list(num_heads), "window_size": window_size,
            "mlp_ratio": mlp_ratio, "extra_norm_period": extra_norm_period,
            "extra_norm_stage": extra_norm_stage, "drop_path_rate": drop_path_rate,
            "bands": list(self.bands)}
        self.swin = SwinTransformerV2(
            img_size=img_size, patch_size=patch_size, in_chans=len(self.bands), num_classes=0,
            embed_dim=embed_dim, depths=tuple(depths), num_heads=tuple(num_heads),
            window_size=window_size, mlp_ratio=mlp_ratio, drop_path_rate=drop_path_rate)
        for stage in self._stages():
            depth = len(stage)
            for i, block in enumerate(stage):
                last = extra_norm_stage and i + 1 == depth
                if (extra_norm_period and (i + 1) % extra_norm_period == 0) or last:
                    block.norm3 = nn.LayerNorm(block.dim)
                    block.register_forward_hook(_apply_norm3)
        self.patch_size = patch_size * 2 ** (len(depths) - 1)
        self.embed_dim = self.swin.num_features

    def _stages(self) -> list[nn.ModuleList]:
        """Each stage's blocks, first stage to last."""
        return [cast(nn.ModuleList, stage.blocks) for stage in self.swin.layers]

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        """Every SwinV2 block, first stage to last (a view: the stages own them)."""
        return nn.ModuleList([b for stage in self._stages() for b in stage])

    @property
    def norm(self) -> nn.Module:  # type: ignore[override]
        """The final LayerNorm over the last stage's tokens."""
        return self.swin.norm

    def grid_size(self, images: Tensor) -> tuple[int, int]:
        """Token grid ``(rows, cols)`` of ``images [B, C, H, W]`` after the last stage.

        Raises:
            GeofmError: The tile is not ``img_size`` square (windows and masks are built for it).
        """
        h, w = images.shape[-2:]
        if (h, w) != (self.img_size, self.img_size):
            raise GeofmError(f"SatVision-TOA takes {self.img_size}×{self.img_size} tiles, "
                             f"not {h}×{w}",
                             hint=f"cut the scene into {self.img_size}-pixel tiles")
        return h // self.patch_size, w // self.patch_size

    def _tokens(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        self.grid_size(images)
        x = self.ordered(images, bands)  # [B, 14, H, W]
        return self.swin.forward_features(x)  # [B, H/32, W/32, D], normalised

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Normalised last-stage tokens ``[B, (H/32)·(W/32), D]``, row-major."""
        return self._tokens(images, bands).flatten(1, 2)  # [B, N, D]

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Mean of the normalised last-stage tokens ``[B, D]``."""
        return self._tokens(images, bands).mean(dim=(1, 2))  # [B, D]


@register_model
def satvision_toa_giant(**overrides: Any) -> SatVisionTOA:
    """SatVision-TOA giant (SwinV2, ~2.65 B parameters with the SimMIM decoder)."""
    return SatVisionTOA(**{**SATVISION_SIZES["giant"], **overrides})


@register_model
def satvision_toa_test(**overrides: Any) -> SatVisionTOA:
    """A small SatVision-TOA-shaped SwinV2 (same code path and key layout) for tests."""
    return SatVisionTOA(**{**SATVISION_SIZES["test"], **overrides})


def convert_satvision(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The release's ``"module"`` tensors → :class:`SatVisionTOA`'s state dict.

    Every key is consumed: ``encoder.*`` maps onto the timm SwinV2 (patch merging moved to the
    start of the next stage, as timm's ``checkpoint_filter_fn`` does for Microsoft-layout
    checkpoints); recomputed buffers and the SimMIM mask token and decoder are dropped
    knowingly. bf16 tensors become float32.

    Raises:
        GeofmError: A key is neither an encoder tensor nor one of the dropped ones.
    """
    drop = [k for k in state if k.rsplit(".", 1)[-1] in _BUFFERS] + list(_SIMMIM_ONLY)
    renamed = consume(state, {f"encoder.{part}": f"swin.{part}" for part in _ENCODER_PARTS},
                      drop=drop)
    out: dict[str, Tensor] = {}
    for key, value in renamed.items():
        key = re.sub(r"^swin\.layers\.(\d+)\.downsample",
                     lambda m: f"swin.layers.{int(m.group(1)) + 1}.downsample", key)
        out[key] = value.float() if value.is_floating_point() else value
    return out


_EXPORT_RECIPE = ("where DeepSpeed is installed, allow that one class with "
                  "torch.serialization.add_safe_globals, load the file, save its \"module\" "
                  "dict with safetensors.torch.save_file, and pass the .safetensors file")


def read_deepspeed_module(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a DeepSpeed ``mp_rank_00_model_states.pt`` (its ``"module"`` entry), or of
    the same tensors exported to ``.safetensors``, read without running pickled code.

    Raises:
        GeofmError: Missing file; a file holding pickled objects the weights-only unpickler
            refuses (one line naming the object and the safetensors export recipe); or no
            ``"module"`` dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise GeofmError("SatVision-TOA weights not found", p,
                         hint="download mp_rank_00_model_states.pt from the model card's URL")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch_load(p)
    except pickle.UnpicklingError as e:
        found = refused_global(e) or "an object"
        raise GeofmError(f"the DeepSpeed file holds a pickled object geofm does not load "
                         f"({found}); nothing in it was run", p,
                         hint=f"export its weights: {_EXPORT_RECIPE}") from None
    except Exception as e:  # torch.load raises many kinds for foreign files
        raise GeofmError(f"cannot read weights ({describe_failure(e)})", p) from None
    if isinstance(obj, dict) and isinstance(obj.get("module"), dict):
        obj = obj["module"]
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(v, Tensor) for v in obj.values()):
        raise GeofmError("is not a DeepSpeed model-states file (no \"module\" dict of tensors)",
                         p, hint="pass the release's mp_rank_00_model_states.pt")
    return {str(k): v for k, v in obj.items()}


def load_satvision(path: str | Path, name: str = "satvision_toa_giant",
                   **config: Any) -> SatVisionTOA:
    """Build ``name`` and load the release file at ``path`` into it (strict, every key used)."""
    from geofm.models.registry import create_model

    model = create_model(name, **config)
    assert isinstance(model, SatVisionTOA)
    state = convert_satvision(read_deepspeed_module(path))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise GeofmError(f"the weights do not fit {name} ({str(e).splitlines()[0]})", path,
                         hint="check that the file is the release the model card names") from None
    return model

