"""Panopticon ViT-B/14: any optical or SAR channel set, fused by cross-attention over channels.

================  ====================================================================
Release           torchgeo ``Panopticon_Weights.VIT_BASE14`` (the DINOv2 teacher)
Paper / code      arXiv 2503.10845, github.com/Panopticon-FM/panopticon
Architecture      timm ``vit_base_patch14_dinov2`` (D 768, 12 blocks, layer scale) behind
                  Panopticon's patch embedding: a per-channel patch projection, then
                  attention over the channels keyed by each channel's spectral embedding
Bands             any optical band (centre wavelength in nm from geofm's band registry)
                  and Sentinel-1 VV / VH (Panopticon's SAR ids -1 / -2); the card lists the
                  13 Sentinel-2 L1C bands
Input units       DN, standardised per band (SSL4EO-S12 L1C statistics); the release leaves
                  normalisation to the dataset
Patch, tile, GSD  14 px, 224 px (the release's 518 px position table resized to it, as
                  torchgeo does), 10 m
Pooling           class token after the final LayerNorm
Licence           Apache-2.0
================  ====================================================================

The module is torchgeo's :class:`~torchgeo.models.Panopticon`, whose position table is fixed at
construction: build it with ``img_size`` equal to the tiles' side.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from geofm.bands import get_band
from geofm.errors import BandError, GeofmError
from geofm.models.registry import register_model
from geofm.published.base import (
    PublishedEncoder,
    PublishedSpec,
    StateConverter,
    consume,
    register_published,
)
from geofm.published.common import S2_L1C, SSL4EO_S2_MEAN, SSL4EO_S2_STD

SAR_IDS = {"S1.VV": -1.0, "S1.VH": -2.0}
"""Panopticon's channel ids for SAR polarisations (transmit/receive, orbit unknown)."""

RELEASE_IMG_SIZE = 518
"""The tile side the release's position table is laid out for (37 × 37 patches)."""

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


def channel_ids(bands: Sequence[str]) -> list[float]:
    """Panopticon's channel ids: centre wavelength in nm for optical bands, -1 / -2 for VV / VH.

    Raises:
        BandError: A band is neither optical nor a Sentinel-1 polarisation Panopticon knows.
    """
    ids = []
    for name in bands:
        band = get_band(name)
        if band.name in SAR_IDS:
            ids.append(SAR_IDS[band.name])
        elif band.kind == "optical":
            ids.append(band.wavelength_um * 1000.0)
        else:
            raise BandError(f"Panopticon has no channel id for {band.name}",
                            hint="pass optical bands or S1.VV / S1.VH")
    return ids


class PanopticonEncoder(PublishedEncoder):
    """Panopticon ViT-B/14 on whichever optical / SAR bands arrive.

    Args:
        img_size: Tile side the model is built for (the position table is fixed to it).
        bands: The bands the model card lists (any supported subset works at run time).
    """

    band_tokens = True
    patch_size = 14
    embed_dim = 768

    def __init__(self, img_size: int = 224, bands: Sequence[str] = S2_L1C) -> None:
        super().__init__()
        from torchgeo.models import Panopticon

        self.bands = tuple(bands)
        self.img_size = img_size
        self.panopticon = Panopticon(img_size=img_size)
        self.model_config: dict[str, Any] = {"img_size": img_size, "bands": list(self.bands)}

    @property
    def _vit(self) -> VisionTransformer:
        """The timm DINOv2 ViT inside (torchgeo types it as ``nn.Module``)."""
        return cast("VisionTransformer", self.panopticon.model)

    @property
    def blocks(self) -> nn.Sequential:  # type: ignore[override]
        """The 12 transformer blocks."""
        return self._vit.blocks

    @property
    def norm(self) -> nn.Module:  # type: ignore[override]
        """The final LayerNorm."""
        return self._vit.norm

    def _tokens(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        grid = self.grid_size(images)
        side = self.img_size // self.patch_size
        if grid != (side, side):
            raise GeofmError(f"this Panopticon is built for {self.img_size} px tiles, not "
                             f"{images.shape[-2]}×{images.shape[-1]}",
                             hint=f"crop the tiles to {self.img_size} px or build the model "
                                  "with img_size set to the tiles' side")
        ids = torch.tensor(channel_ids(bands), device=images.device)
        ids = ids.unsqueeze(0).repeat(images.shape[0], 1)  # [B, C]; Panopticon edits it in place
        # Panopticon's patch embedding takes the images and channel ids as one dict.
        forward = cast(Callable[[dict[str, Tensor]], Tensor], self._vit.forward_features)
        return forward({"imgs": images, "chn_ids": ids})  # [B, 1 + N, D]

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Patch tokens after the final LayerNorm ``[B, N, D]``."""
        return self._tokens(images, bands)[:, self._vit.num_prefix_tokens:]

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """The class token after the final LayerNorm ``[B, D]``."""
        return self._vit.forward_head(self._tokens(images, bands), pre_logits=True)


@register_model
def panopticon_vit_base_patch14(**overrides: Any) -> PanopticonEncoder:
    """Panopticon ViT-B/14 (D = 768, 12 blocks)."""
    return PanopticonEncoder(**overrides)


def _converter(img_size: int) -> StateConverter:
    def convert(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Teacher keys (timm layout) → :class:`PanopticonEncoder`: the masked-image-modelling
        ``mask_token`` is left out and the 37 × 37 position table resized to the tile, as
        torchgeo's loader does."""
        from torchgeo.models.copernicusfm import resize_abs_pos_embed

        out = consume(state, {"": "panopticon.model."}, drop=("mask_token",))
        key = "panopticon.model.pos_embed"
        if key in out:
            out[key] = resize_abs_pos_embed(out[key], img_size // 14, RELEASE_IMG_SIZE // 14)
        return out

    return convert


_URL = ("https://hf.co/lewaldm/panopticon/resolve/c8c2bb9555819e8b2bcedf5b3b00e3bf531554e7/"
        "panopticon_vitb14_teacher.pth")

register_published(PublishedSpec(
    name="panopticon_base",
    title="Panopticon ViT-B/14",
    architecture="panopticon_vit_base_patch14",
    config={"img_size": 224, "bands": list(S2_L1C)},
    bands=S2_L1C,
    input_units="dn",
    mean=SSL4EO_S2_MEAN,
    std=SSL4EO_S2_STD,
    processing_level="L1C",
    patch_size=14,
    image_size=224,
    gsd_m=10.0,
    flexible=True,
    licence="Apache-2.0",
    source="https://github.com/Panopticon-FM/panopticon",
    weights_url=_URL,
    weights_file=_URL.rsplit("/", 1)[-1],
    torchgeo_weights="Panopticon_Weights.VIT_BASE14",
    convert=_converter(224),
    notes="channel-flexible: optical bands by registry wavelength, S1 VV/VH by id",
))
