"""Copernicus-FM ViT-B/16: one encoder for any spectral band set, from its wavelength and
bandwidth.

================  ====================================================================
Release           torchgeo ``CopernicusFM_Base_Weights.CopernicusFM_ViT``
Paper / code      arXiv 2503.11849, github.com/zhu-xlab/Copernicus-FM
Architecture      ViT-B/16 (D 768, 12 blocks); the patch kernel is generated from each band's
                  Fourier-encoded centre wavelength and bandwidth (spectral hypernetwork)
Bands             any optical bands (wavelength and bandwidth in nm from geofm's band
                  registry); the card lists the 13 Sentinel-2 L1C bands
Input units       DN, standardised per band (SSL4EO-S12 L1C statistics; Copernicus-Pretrain
                  shares SSL4EO-S12's Sentinel-2 grid)
Patch, tile, GSD  16 px, 224 px, 10 m
Metadata          location, time and patch area unknown (the release's learned tokens)
Pooling           mean of the patch tokens, then ``fc_norm`` (absent from the release, so
                  at its initial value, as torchgeo's loader leaves it)
Licence           CC-BY-4.0
================  ====================================================================

The module is torchgeo's :class:`~torchgeo.models.CopernicusFM`; its language-embedding
("variable") patch embedding is kept so the release loads whole, but geofm feeds spectral
bands only.
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
    consume,
    register_published,
)
from geofm.published.common import (
    S2_L1C,
    SSL4EO_S2_MEAN,
    SSL4EO_S2_STD,
    bandwidths_um,
    heads,
    wavelengths_um,
    with_unit_norm,
)


class CopernicusFMEncoder(ClassTokenViTEncoder):
    """Copernicus-FM ViT-B/16 on whichever optical bands arrive.

    Args:
        img_size: Tile side the position table is laid out for (the release: 224).
        bands: The bands the model card lists (any optical subset works at run time).
    """

    band_tokens = True
    patch_size = 16
    embed_dim = 768

    def __init__(self, img_size: int = 224, bands: Sequence[str] = S2_L1C) -> None:
        super().__init__()
        from torchgeo.models import copernicusfm_base

        self.bands = tuple(bands)
        self.fm = copernicusfm_base(None, img_size=img_size, patch_size=16, num_classes=0,
                                    global_pool=True)
        self.model_config: dict[str, Any] = {"img_size": img_size, "bands": list(self.bands)}

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        """The 12 transformer blocks."""
        return self.fm.blocks

    @property
    def norm(self) -> nn.Module:  # type: ignore[override]
        """``fc_norm``, the LayerNorm after pooling."""
        return self.fm.fc_norm

    def _tokens(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Tokens after the last block ``[B, 1 + N, D]``: CopernicusFM's ``forward_features``
        in spectral mode with unknown metadata, up to its pooling."""
        from torchgeo.models.copernicusfm import resize_abs_pos_embed

        grid = self.grid_size(images)
        fm = self.fm
        waves = torch.tensor([w * 1000 for w in wavelengths_um(bands)], device=images.device)
        widths = torch.tensor([w * 1000 for w in bandwidths_um(bands)], device=images.device)
        x: Tensor = fm.patch_embed_spectral(images, wavelengths=waves.float(),
                                    bandwidths=widths.float(), kernel_size=self.patch_size)
        side = round(fm.num_patches ** 0.5)
        pos = resize_abs_pos_embed(fm.pos_embed, grid, (side, side), num_prefix_tokens=1)
        # Unknown location, time and area: the release's learned tokens.
        pos = (pos + fm.coord_fc(fm.coord_token) + fm.scale_fc(fm.scale_token)
               + fm.time_fc(fm.time_token))  # [1, 1 + N, D]
        x = x + pos[:, 1:, :]  # [B, N, D]
        cls = (fm.cls_token + pos[:, :1, :]).expand(x.shape[0], -1, -1)  # [B, 1, D]
        x = torch.cat((cls, x), dim=1)  # [B, 1 + N, D]
        for block in fm.blocks:
            x = block(x)
        return x



@register_model
def copernicusfm_vit_base_patch16(**overrides: Any) -> CopernicusFMEncoder:
    """Copernicus-FM ViT-B/16 (D = 768, 12 blocks)."""
    return CopernicusFMEncoder(**overrides)


def convert_copernicusfm(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Release keys → :class:`CopernicusFMEncoder`; ``fc_norm`` at its initial value when the
    release has none (torchgeo's loader does the same); a ``head.*`` is left out."""
    out = consume(state, {"": "fm."}, drop=heads(state, "head."))
    return with_unit_norm(out, "fm.fc_norm", CopernicusFMEncoder.embed_dim)


_URL = ("https://huggingface.co/torchgeo/copernicus-fm/resolve/"
        "f395812cc990ba25a451dbb9c9e6d95c8482947e/CopernicusFM_ViT_base_varlang-085350e4.pth")

register_published(PublishedSpec(
    name="copernicusfm_base",
    title="Copernicus-FM ViT-B/16",
    architecture="copernicusfm_vit_base_patch16",
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
    source="https://github.com/zhu-xlab/Copernicus-FM",
    weights_url=_URL,
    weights_file=_URL.rsplit("/", 1)[-1],
    torchgeo_weights="CopernicusFM_Base_Weights.CopernicusFM_ViT",
    convert=convert_copernicusfm,
    notes="channel-flexible: embeds whichever optical bands arrive by their registry "
          "wavelength and bandwidth",
))
