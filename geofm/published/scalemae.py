"""Scale-MAE ViT-L/16 on RGB, with its ground-sample-distance-aware position encoding.

================  ====================================================================
Release           torchgeo ``ScaleMAELarge16_Weights.FMOW_RGB``
Paper / code      arXiv 2212.14532, github.com/bair-climate-initiative/scale-mae
Architecture      timm ViT-L/16 (D 1024, 24 blocks); sine-cosine position encoding scaled
                  by the resolution ``res`` (torchgeo's default 1.0)
Bands             red, green, blue (fMoW-RGB); for Sentinel-2: B04, B03, B02
Input units       reflectance 0–1, standardised with ImageNet statistics (the release reads
                  8-bit RGB ÷ 255; reflectance stands in for it)
Patch, tile, GSD  16 px, 224 px, fMoW's sub-metre to metre GSD
Pooling           class token after the final LayerNorm
Licence           CC-BY-NC-4.0
================  ====================================================================

The module is torchgeo's :class:`~torchgeo.models.ScaleMAE`. Its position encoding is computed,
not learned (the release's ``pos_embed`` tensor is loaded but unused), so any square tile works.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from geofm.errors import GeofmError
from geofm.models.registry import register_model
from geofm.published.base import PublishedEncoder, PublishedSpec, consume, register_published
from geofm.published.common import heads, with_unit_norm

S2_RGB = ("S2.B04", "S2.B03", "S2.B02")


class ScaleMAEEncoder(PublishedEncoder):
    """Scale-MAE ViT-L/16 on three visible bands.

    Args:
        bands: Registry names of the red, green and blue bands, in that order.
        res: The resolution factor of the position encoding (torchgeo's default: 1.0).
    """

    band_tokens = False
    patch_size = 16
    embed_dim = 1024

    def __init__(self, bands: Sequence[str] = S2_RGB, res: float = 1.0) -> None:
        super().__init__()
        from torchgeo.models import scalemae_large_patch16

        self.bands = tuple(bands)
        self.res = float(res)
        self.model = scalemae_large_patch16(None, res=self.res, num_classes=0,
                                            in_chans=len(self.bands))
        self.model.patch_embed.strict_img_size = False
        self.model_config: dict[str, Any] = {"bands": list(self.bands), "res": self.res}

    @property
    def blocks(self) -> nn.Sequential:  # type: ignore[override]
        """The 24 transformer blocks."""
        return self.model.blocks

    @property
    def norm(self) -> nn.Module:  # type: ignore[override]
        """The final LayerNorm."""
        return self.model.norm

    def _tokens(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Tokens after the final LayerNorm ``[B, 1 + N, D]``: ScaleMAE's forward with the
        resolution-scaled encoding computed for this tile's grid."""
        from torchgeo.models.scale_mae import get_2d_sincos_pos_embed_with_resolution

        rows, cols = self.grid_size(images)
        if rows != cols:
            raise GeofmError(f"Scale-MAE takes square tiles, not {images.shape[-2]}×"
                             f"{images.shape[-1]}", hint="crop the tiles to a square")
        m = self.model
        x = m.patch_embed(self.ordered(images, bands))  # [B, N, D]
        res = torch.full((x.shape[0],), self.res, dtype=x.dtype, device=x.device)
        pos = get_2d_sincos_pos_embed_with_resolution(self.embed_dim, rows, res,
                                                      cls_token=True).to(x.dtype)
        assert m.cls_token is not None  # ScaleMAE is built with a class token
        x = torch.cat((m.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + pos
        x = m.norm_pre(m.patch_drop(m.pos_drop(x)))
        tokens: Tensor = m.norm(m.blocks(x))  # [B, 1 + N, D]
        return tokens

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Patch tokens after the final LayerNorm ``[B, N, D]``."""
        return self._tokens(images, bands)[:, self.model.num_prefix_tokens:]

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """The class token after the final LayerNorm ``[B, D]``."""
        return self.model.forward_head(self._tokens(images, bands), pre_logits=True)


@register_model
def scalemae_vit_large_patch16(**overrides: Any) -> ScaleMAEEncoder:
    """Scale-MAE ViT-L/16 on RGB."""
    return ScaleMAEEncoder(**overrides)


def convert_scalemae(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm-layout release keys → :class:`ScaleMAEEncoder`; a ``head.*`` is left out and a
    missing final norm stays at its initial value, as torchgeo's (non-strict) loader leaves
    it."""
    out = consume(state, {"": "model."}, drop=heads(state, "head."))
    return with_unit_norm(out, "model.norm", ScaleMAEEncoder.embed_dim)


_URL = ("https://hf.co/isaaccorley/vit_large_patch16_224_fmow_rgb_scalemae/resolve/"
        "9dc7f569424baeb780698352cf6e87638c882123/"
        "vit_large_patch16_224_fmow_rgb_scalemae-98ed9821.pth")

register_published(PublishedSpec(
    name="scalemae_large",
    title="Scale-MAE ViT-L/16 (fMoW RGB)",
    architecture="scalemae_vit_large_patch16",
    config={"bands": list(S2_RGB), "res": 1.0},
    bands=S2_RGB,
    input_units="reflectance",
    mean=(0.485, 0.456, 0.406),
    std=(0.229, 0.224, 0.225),
    processing_level="L1C",
    patch_size=16,
    image_size=224,
    gsd_m=1.0,
    flexible=False,
    licence="CC-BY-NC-4.0",
    source="https://github.com/bair-climate-initiative/scale-mae",
    weights_url=_URL,
    weights_file=_URL.rsplit("/", 1)[-1],
    torchgeo_weights="ScaleMAELarge16_Weights.FMOW_RGB",
    convert=convert_scalemae,
    notes="RGB only; trained on 8-bit fMoW RGB, fed reflectance 0–1 in its place",
))
