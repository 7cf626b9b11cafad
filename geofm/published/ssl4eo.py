"""SSL4EO-S12 ViT-S/16 encoders (MAE, DINO, MoCo-v3) on the 13 Sentinel-2 L1C bands.

========================  ===========================================================
Release                   torchgeo ``ViTSmall16_Weights.SENTINEL2_ALL_{MAE,DINO,MOCO}``
Paper / code              arXiv 2211.07044, github.com/zhu-xlab/SSL4EO-S12
Architecture              timm ``vit_small_patch16_224``: D = 384, 12 blocks, 6 heads
Bands                     S2 L1C B01–B12 with B8A and B10 (13), band-number order
Input units, scaling      DN (TOA reflectance × 10,000) ÷ 10,000 (mean 0, std 10,000)
Patch, tile, GSD          16 px, 224 px, 10 m
Pooling                   class token after the final LayerNorm (timm ``global_pool="token"``)
Licence                   CC-BY-4.0 (SSL4EO-S12 weights)
========================  ===========================================================

The module is torchgeo's builder (timm's ViT) with ``dynamic_img_size`` so a tile of another
size interpolates the learned position table; at 224 px nothing is interpolated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor, nn

from geofm.models.registry import register_model
from geofm.published.base import PublishedEncoder, PublishedSpec, consume, register_published
from geofm.published.common import S2_L1C, heads, with_unit_norm

if TYPE_CHECKING:
    from timm.models.vision_transformer import VisionTransformer


class SSL4EOViT(PublishedEncoder):
    """An SSL4EO-S12 ViT-S/16 on a fixed band list.

    Args:
        bands: Registry names of the model's input bands, in channel order.
        img_size: Tile side the position table is laid out for (the release: 224).
    """

    band_tokens = False
    patch_size = 16
    embed_dim = 384

    def __init__(self, bands: Sequence[str] = S2_L1C, img_size: int = 224) -> None:
        super().__init__()
        from torchgeo.models import vit_small_patch16_224

        self.bands = tuple(bands)
        # torchgeo builds it with timm and types it as nn.Module.
        self.vit = cast("VisionTransformer", vit_small_patch16_224(
            None, in_chans=len(self.bands), img_size=img_size, num_classes=0,
            dynamic_img_size=True))
        self.model_config: dict[str, Any] = {"bands": list(self.bands), "img_size": img_size}

    @property
    def blocks(self) -> nn.Sequential:  # type: ignore[override]
        """The 12 transformer blocks."""
        return self.vit.blocks

    @property
    def norm(self) -> nn.Module:  # type: ignore[override]
        """The final LayerNorm."""
        return self.vit.norm

    def _tokens(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        self.grid_size(images)
        return self.vit.forward_features(self.ordered(images, bands))  # [B, 1 + N, D]

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Patch tokens after the final LayerNorm ``[B, N, D]``."""
        return self._tokens(images, bands)[:, self.vit.num_prefix_tokens:]

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """The class token after the final LayerNorm ``[B, D]``."""
        return self.vit.forward_head(self._tokens(images, bands), pre_logits=True)


@register_model
def ssl4eo_vit_small_patch16(**overrides: Any) -> SSL4EOViT:
    """SSL4EO-S12 ViT-S/16 on the 13 Sentinel-2 L1C bands."""
    return SSL4EOViT(**overrides)


def convert_ssl4eo(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """timm-layout release keys → :class:`SSL4EOViT`; a ``head.*`` classifier is left out,
    and a release saved without the final norm gets it at its initial value, as torchgeo's
    loader leaves it."""
    out = consume(state, {"": "vit."}, drop=heads(state, "head."))
    return with_unit_norm(out, "vit.norm", SSL4EOViT.embed_dim)


_URLS = {
    "mae": "https://huggingface.co/wangyi111/SSL4EO-S12/resolve/"
           "75c72195d35201dc1fb210818993518c25da566b/B13_vits16_mae_ep99_enc.pth",
    "dino": "https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_dino/resolve/"
            "5b41dd418a79de47ac9f5be3e035405a83818a62/"
            "vit_small_patch16_224_sentinel2_all_dino-36bcc127.pth",
    "moco": "https://hf.co/torchgeo/vit_small_patch16_224_sentinel2_all_moco/resolve/"
            "1cb683f6c14739634cdfaaceb076529adf898c74/"
            "vit_small_patch16_224_sentinel2_all_moco-67c9032d.pth",
}
_TITLES = {"mae": "MAE", "dino": "DINO", "moco": "MoCo-v3"}

for _method, _url in _URLS.items():
    register_published(PublishedSpec(
        name=f"ssl4eo_vits16_{_method}",
        title=f"SSL4EO-S12 ViT-S/16 ({_TITLES[_method]})",
        architecture="ssl4eo_vit_small_patch16",
        config={"bands": list(S2_L1C), "img_size": 224},
        bands=S2_L1C,
        input_units="dn",
        mean=(0.0,) * len(S2_L1C),
        std=(10000.0,) * len(S2_L1C),
        processing_level="L1C",
        patch_size=16,
        image_size=224,
        gsd_m=10.0,
        flexible=False,
        licence="CC-BY-4.0",
        source="https://github.com/zhu-xlab/SSL4EO-S12",
        weights_url=_url,
        weights_file=_url.rsplit("/", 1)[-1],
        torchgeo_weights=f"ViTSmall16_Weights.SENTINEL2_ALL_{_method.upper()}",
        convert=convert_ssl4eo,
        notes="needs all 13 L1C bands in DN; divides by 10,000 as the release did",
    ))
