"""DOFA (Dynamic One-For-All) ViT-B/16 and ViT-L/16: one encoder for any band set.

================  ====================================================================
Release           torchgeo ``DOFABase16_Weights.DOFA_MAE``, ``DOFALarge16_Weights.DOFA_MAE``
Paper / code      arXiv 2403.15356, github.com/zhu-xlab/DOFA
Architecture      ViT-B/16 (D 768, 12 blocks) / ViT-L/16 (D 1024, 24 blocks); the patch
                  embedding's kernel is generated from each band's centre wavelength
Bands             any optical bands (wavelengths from geofm's band registry); the card lists
                  the 13 Sentinel-2 L1C bands
Input units       DN, standardised per band (SSL4EO-S12 L1C statistics); the release leaves
                  normalisation to the dataset
Patch, tile, GSD  16 px, 224 px, 10 m (Sentinel-2)
Pooling           mean of the patch tokens, then ``fc_norm`` (absent from the release, so
                  at its initial value, as torchgeo's loader leaves it)
Licence           CC-BY-4.0
================  ====================================================================

The module is torchgeo's :class:`~torchgeo.models.DOFA`. Its position table is laid out for
224 px tiles; another tile size interpolates it (bicubic, as timm does). Patch features are the
tokens after the last block through the same ``fc_norm`` the pooled feature goes through.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geofm.models.registry import register_model
from geofm.published.base import (
    ClassTokenViTEncoder,
    PublishedSpec,
    StateConverter,
    consume,
    register_published,
)
from geofm.published.common import (
    S2_L1C,
    SSL4EO_S2_MEAN,
    SSL4EO_S2_STD,
    heads,
    wavelengths_um,
    with_unit_norm,
)

SIZES: dict[str, dict[str, int]] = {
    "base": {"embed_dim": 768, "depth": 12, "num_heads": 12},
    "large": {"embed_dim": 1024, "depth": 24, "num_heads": 16},
}


class DOFAEncoder(ClassTokenViTEncoder):
    """DOFA on whichever optical bands arrive.

    Args:
        size: ``"base"`` or ``"large"``.
        img_size: Tile side the position table is laid out for (the release: 224).
        bands: The bands the model card lists (any optical subset works at run time).
    """

    band_tokens = True
    patch_size = 16

    def __init__(self, size: str = "base", img_size: int = 224,
                 bands: Sequence[str] = S2_L1C) -> None:
        super().__init__()
        if size not in SIZES:
            raise ValueError(f"size must be one of {sorted(SIZES)}, not {size!r}")
        from torchgeo.models import DOFA

        self.bands = tuple(bands)
        self.embed_dim = SIZES[size]["embed_dim"]
        dims = SIZES[size]
        self.dofa = DOFA(img_size=img_size, patch_size=16, num_classes=0, global_pool=True,
                         embed_dim=dims["embed_dim"], depth=dims["depth"],
                         num_heads=dims["num_heads"])
        self.model_config: dict[str, Any] = {"size": size, "img_size": img_size,
                                             "bands": list(self.bands)}

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        """The transformer blocks."""
        return self.dofa.blocks

    @property
    def norm(self) -> nn.Module:  # type: ignore[override]
        """``fc_norm``, the LayerNorm after pooling."""
        return self.dofa.fc_norm

    def _pos_embed(self, grid: tuple[int, int]) -> Tensor:
        from timm.layers import resample_abs_pos_embed

        table = self.dofa.pos_embed  # [1, 1 + N0, D]
        side = round((table.shape[1] - 1) ** 0.5)
        if grid == (side, side):
            return table
        resampled: Tensor = resample_abs_pos_embed(
            table, new_size=list(grid), old_size=[side, side], num_prefix_tokens=1)
        return resampled  # [1, 1 + N, D]

    def _tokens(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Tokens after the last block ``[B, 1 + N, D]`` (DOFA's ``forward_features`` up to
        its pooling, with the position table fitted to the grid)."""
        grid = self.grid_size(images)
        waves = torch.tensor(wavelengths_um(bands), device=images.device).float()  # [C]
        x: Tensor
        x, _ = self.dofa.patch_embed(images, waves)  # [B, N, D]
        pos = self._pos_embed(grid)
        x = x + pos[:, 1:, :]
        cls = (self.dofa.cls_token + pos[:, :1, :]).expand(x.shape[0], -1, -1)  # [B, 1, D]
        x = torch.cat((cls, x), dim=1)  # [B, 1 + N, D]
        for block in self.dofa.blocks:
            x = block(x)
        return x



@register_model
def dofa_vit_base_patch16(**overrides: Any) -> DOFAEncoder:
    """DOFA ViT-B/16 (D = 768, 12 blocks)."""
    return DOFAEncoder(**{"size": "base", **overrides})


@register_model
def dofa_vit_large_patch16(**overrides: Any) -> DOFAEncoder:
    """DOFA ViT-L/16 (D = 1024, 24 blocks)."""
    return DOFAEncoder(**{"size": "large", **overrides})


def _converter(dim: int) -> StateConverter:
    def convert(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """DOFA release keys → :class:`DOFAEncoder`; ``fc_norm`` at its initial value when
        the release has none (torchgeo's loader does the same); a ``head.*`` is left out."""
        out = consume(state, {"": "dofa."}, drop=heads(state, "head."))
        return with_unit_norm(out, "dofa.fc_norm", dim)

    return convert


_BASE = "https://hf.co/torchgeo/dofa/resolve/b8db318b64a90b9e085ec04ba8851233c5893666/"
for _size, _file, _enum in (("base", "dofa_base_patch16_224-a0275954.pth", "DOFABase16_Weights"),
                            ("large", "dofa_large_patch16_224-0ff904d3.pth",
                             "DOFALarge16_Weights")):
    register_published(PublishedSpec(
        name=f"dofa_{_size}",
        title=f"DOFA ViT-{_size[0].upper()}/16",
        architecture=f"dofa_vit_{_size}_patch16",
        config={"img_size": 224, "bands": list(S2_L1C)},
        bands=S2_L1C,
        input_units="dn",
        mean=SSL4EO_S2_MEAN,
        std=SSL4EO_S2_STD,
        processing_level="L1C",
        patch_size=16,
        image_size=224,
        gsd_m=10.0,
        flexible=True,
        licence="CC-BY-4.0",
        source="https://github.com/zhu-xlab/DOFA",
        weights_url=_BASE + _file,
        weights_file=_file,
        torchgeo_weights=f"{_enum}.DOFA_MAE",
        convert=_converter(SIZES[_size]["embed_dim"]),
        notes="channel-flexible: embeds whichever optical bands arrive by their registry "
              "wavelengths",
    ))
