"""SelectiveMAE ViT-B/16 pretrained on OpticalRS-13M, on timm's VisionTransformer.

SelectiveMAE (Wang et al., ICCV 2025, arXiv 2406.11933; github.com/Fengxiang23/SelectiveMAE)
pretrains a plain ViT with masked image modelling on OpticalRS-13M, 13 million 8-bit RGB
images from aerial and satellite sources. The release keeps MAE's layout (facebookresearch/mae):
``torch.save({"model": state_dict, ...})`` whose encoder keys are exactly timm's
``VisionTransformer`` keys, so timm is the implementation and the keys load unchanged:

==========================================  ===========================================
release key                                 here
==========================================  ===========================================
``patch_embed.proj.{weight,bias}``          ``vit.patch_embed.proj.*`` (Conv2d, 16 × 16)
``cls_token`` ``[1, 1, 768]``               ``vit.cls_token``
``pos_embed`` ``[1, 1 + 196, 768]``         ``vit.pos_embed`` (fixed 2-D sin-cos, zero
                                            row for the class token)
``blocks.N.{norm1,attn.qkv,attn.proj,       ``vit.blocks.N.*``
norm2,mlp.fc1,mlp.fc2}.*``
``norm.{weight,bias}``                      ``vit.norm.*``
``decoder_*``, ``mask_token``               dropped: the pixel decoder
``pos_embed_probs``, ``get_token_probs*``,  dropped: SelectiveMAE's token-selection
``hog.{weight_x,weight_y,gkern}``           network and HOG filters (pretraining only)
==========================================  ===========================================

**Input.** Three bands, red, green, blue (of any optical sensor, matched by common name:
:mod:`geofm.published.rgb`), as the 8-bit digital numbers of the pretraining
images, standardised with the ImageNet mean and std of ``[0, 1]`` RGB (the release's
``ToTensor`` + ``Normalize``); in the card's ``dn`` units that is ``mean = 255 · imagenet_mean``,
``std = 255 · imagenet_std``. Tiles are 224 × 224 at training, where nothing is resampled; other
sizes (multiples of 16) resample the position table with timm's ``dynamic_img_size`` (bicubic,
antialiased). SelectiveMAE's own finetuning resamples without antialiasing, so for tiles smaller
than 224 the two differ slightly; at 224 and above they agree.

**Pooling.** Pooled features are the class token after the final LayerNorm: SelectiveMAE's own
classification finetuning keeps ``global_pool=False`` (class token), and MAE's linear probing
does the same; MAE's average pooling instead needs a freshly initialised ``fc_norm`` that the
pretrained release does not have.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from geofm.bands import BAND_SETS
from geofm.models.registry import register_model
from geofm.models.vit import canonical_bands
from geofm.published.base import PublishedEncoder, PublishedSpec, consume, register_published
from geofm.published.rgb import rgb_channels

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

DROPPED_PREFIXES = ("decoder_", "mask_token", "pos_embed_probs", "get_token_probs", "hog.")
"""Release keys of the pretraining-only parts (MAE decoder, SelectiveMAE token selection)."""


class MAEViTEncoder(PublishedEncoder):
    """An MAE-layout ViT (timm ``VisionTransformer``) behind geofm's encoder calls.

    Args:
        bands: Registry names of the red, green and blue bands, in the release's order.
        img_size: Training tile side.
        patch_size: Patch side in pixels.
        embed_dim: Token width ``D``.
        depth: Number of transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden width over ``D``.
    """

    band_tokens = False

    def __init__(self, bands: Sequence[str] = BAND_SETS["rgb"], img_size: int = 224,
                 patch_size: int = 16, embed_dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.bands = canonical_bands(bands)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.vit = VisionTransformer(
            img_size=img_size, patch_size=patch_size, in_chans=len(self.bands), num_classes=0,
            global_pool="token", embed_dim=embed_dim, depth=depth, num_heads=num_heads,
            mlp_ratio=mlp_ratio, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6),
            dynamic_img_size=True)
        self.model_config: dict[str, Any] = {
            "bands": list(self.bands), "img_size": img_size, "patch_size": patch_size,
            "embed_dim": embed_dim, "depth": depth, "num_heads": num_heads,
            "mlp_ratio": mlp_ratio}

    @property
    def blocks(self) -> nn.Sequential:  # type: ignore[override]
        """timm's transformer blocks, first to last."""
        return self.vit.blocks

    @property
    def norm(self) -> nn.Module:  # type: ignore[override]
        """The final LayerNorm."""
        return self.vit.norm

    def _tokens(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """All tokens after the final norm, ``[B, 1 + N, D]`` (class token first)."""
        self.grid_size(images)
        idx = rgb_channels(bands, self.bands)
        x = images if idx == list(range(images.shape[1])) else images[:, idx]  # [B, 3, H, W]
        return self.vit.forward_features(x)  # [B, 1 + N, D]

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Patch tokens after the final norm, ``[B, N, D]``, row-major."""
        return self._tokens(images, bands)[:, 1:]

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """The class token after the final norm, ``[B, D]``."""
        return self._tokens(images, bands)[:, 0]


def convert_mae(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An MAE-layout release (encoder + decoder) → :class:`MAEViTEncoder` state dict.

    Raises:
        GeofmError: A key that is neither encoder nor a known pretraining-only part.
    """
    drop = [k for k in state if k.startswith(DROPPED_PREFIXES)]
    return consume(state, {"patch_embed.": "vit.patch_embed.", "cls_token": "vit.cls_token",
                           "pos_embed": "vit.pos_embed", "blocks.": "vit.blocks.",
                           "norm.": "vit.norm."}, drop=drop)


@register_model
def selectivemae_vit_base(**overrides: Any) -> MAEViTEncoder:
    """SelectiveMAE's ViT-B/16 (D = 768, 12 blocks, 12 heads) on RGB, 224 × 224."""
    return MAEViTEncoder(**overrides)


SELECTIVEMAE_VITB = register_published(PublishedSpec(
    name="selectivemae_vitb",
    title="SelectiveMAE ViT-B/16 (OpticalRS-13M)",
    architecture="selectivemae_vit_base",
    config={},
    bands=BAND_SETS["rgb"],
    input_units="dn",
    mean=tuple(255.0 * m for m in IMAGENET_MEAN),
    std=tuple(255.0 * s for s in IMAGENET_STD),
    processing_level="8-bit RGB",
    patch_size=16,
    image_size=224,
    gsd_m=0.0,
    flexible=False,
    licence="Apache-2.0",
    source="Wang et al., Harnessing Massive Satellite Imagery with Efficient Masked Image "
           "Modeling (ICCV 2025, arXiv 2406.11933); github.com/Fengxiang23/SelectiveMAE",
    weights_url="https://huggingface.co/initiacms/SelectiveMAE",
    weights_file="SelectiveMAE ViT-B OpticalRS-13M checkpoint (.pth)",
    convert=convert_mae,
    notes="8-bit RGB standardised with ImageNet statistics; the decoder and token-selection "
          "network are dropped knowingly; imagery of mixed sources, so GSD is not fixed (0).",
))
