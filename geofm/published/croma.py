"""CROMA ViT-B/8, optical branch: the 12 Sentinel-2 bands without B10.

================  ====================================================================
Release           torchgeo ``CROMABase_Weights.CROMA_VIT`` (``CROMA_base.pt``)
Paper / code      arXiv 2311.00566, github.com/antofuller/CROMA
Architecture      ViT-B/8 (D 768, 12 blocks, 16 heads), linear patch projection, 2D-ALiBi
                  attention biases instead of position embeddings; the release holds the
                  SAR encoder, the optical encoder and the joint encoder, each with its
                  pooling head — geofm uses the optical encoder and its head
Bands             S2 L1C B01–B09, B8A, B11, B12 (12, no B10), SSL4EO-S12 order
Input units       DN; CROMA maps each band's mean ± 2 std to 0–1 (here as mean − 2 std and
                  4 std, SSL4EO-S12 L1C statistics; CROMA also clips to 0–1, which the
                  affine card leaves out)
Patch, tile, GSD  8 px, 120 px, 10 m
Pooling           mean of the patch tokens through the release's GAP-FFN head
Licence           MIT
================  ====================================================================

The module is torchgeo's :class:`~torchgeo.models.CROMA` with the optical modality only. The
ALiBi biases are a function of the patch grid, not weights; other square tiles get their own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from torch import Tensor, nn

from geofm.errors import GeofmError
from geofm.models.registry import register_model
from geofm.published.base import PublishedEncoder, PublishedSpec, consume, register_published
from geofm.published.common import S2_NO_B10, SSL4EO_S2_MEAN, SSL4EO_S2_STD, heads

if TYPE_CHECKING:
    from torchgeo.models.croma import ViT


class CROMAOptical(PublishedEncoder):
    """CROMA-B's optical encoder on a fixed band list.

    Args:
        bands: Registry names of the 12 input bands, in channel order.
        image_size: Tile side the attention biases are built for (the release: 120).
    """

    band_tokens = False
    patch_size = 8
    embed_dim = 768

    def __init__(self, bands: Sequence[str] = S2_NO_B10, image_size: int = 120) -> None:
        super().__init__()
        from torchgeo.models import croma_base

        self.bands = tuple(bands)
        self.croma = croma_base(None, modalities=["optical"], image_size=image_size)
        # The ALiBi table is derived from the grid, never saved with the weights.
        bias = self._attn_bias
        del self.croma._buffers["attn_bias"]
        self.croma.register_buffer("attn_bias", bias, persistent=False)
        self._bias_cache: dict[tuple[int, str], Tensor] = {}
        self.model_config: dict[str, Any] = {"bands": list(self.bands),
                                             "image_size": image_size}

    @property
    def _attn_bias(self) -> Tensor:
        """The ALiBi table buffer of the release's grid."""
        return cast(Tensor, self.croma.attn_bias)

    @property
    def _encoder(self) -> ViT:
        """The optical encoder (torchgeo types it as ``nn.Module``)."""
        return cast("ViT", self.croma.s2_encoder)

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        """The 12 (attention, feed-forward) layers."""
        return self._encoder.transformer.layers

    @property
    def norm(self) -> nn.Module:  # type: ignore[override]
        """The encoder's final LayerNorm."""
        return self._encoder.transformer.norm_out

    def _bias(self, images: Tensor) -> Tensor:
        rows, cols = self.grid_size(images)
        if rows != cols:
            raise GeofmError(f"CROMA takes square tiles, not {images.shape[-2]}×"
                             f"{images.shape[-1]}", hint="crop the tiles to a square")
        if rows * cols == self._attn_bias.shape[-1]:
            return self._attn_bias
        key = (rows, str(images.device))
        if key not in self._bias_cache:
            from torchgeo.models.croma import get_2dalibi

            self._bias_cache[key] = get_2dalibi(self.croma.num_heads, rows * cols).to(
                images.device)
        return self._bias_cache[key]

    def forward_patch_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """The optical encoder's output tokens (after its final LayerNorm) ``[B, N, D]``."""
        tokens: Tensor = self._encoder(imgs=self.ordered(images, bands),
                                       attn_bias=self._bias(images))  # [B, N, D]
        return tokens

    def forward_features(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Mean of the tokens through the GAP-FFN head ``[B, D]``, as CROMA pools."""
        pooled: Tensor = self.croma.s2_GAP_FFN(
            self.forward_patch_features(images, bands).mean(dim=1))  # [B, D]
        return pooled


@register_model
def croma_vit_base_optical(**overrides: Any) -> CROMAOptical:
    """CROMA ViT-B/8, optical encoder (12 Sentinel-2 bands)."""
    return CROMAOptical(**overrides)


def convert_croma(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The release's nested ``{"s2_encoder": ..., "s2_GAP_FFN": ...}`` (flattened to dotted
    keys) → :class:`CROMAOptical`; the SAR and joint encoders are left out."""
    return consume(state, {"s2_encoder.": "croma.s2_encoder.",
                           "s2_GAP_FFN.": "croma.s2_GAP_FFN."},
                   drop=heads(state, "s1_encoder.", "s1_GAP_FFN.", "joint_encoder."))


_URL = ("https://hf.co/torchgeo/croma/resolve/387883f08af79d777167519c57cd826eda89a16f/"
        "CROMA_base-0238d814.pt")
_IDX = [i for i in range(13) if i != 10]  # SSL4EO order without B10

register_published(PublishedSpec(
    name="croma_base",
    title="CROMA ViT-B/8 (optical)",
    architecture="croma_vit_base_optical",
    config={"bands": list(S2_NO_B10), "image_size": 120},
    bands=S2_NO_B10,
    input_units="dn",
    mean=tuple(SSL4EO_S2_MEAN[i] - 2 * SSL4EO_S2_STD[i] for i in _IDX),
    std=tuple(4 * SSL4EO_S2_STD[i] for i in _IDX),
    processing_level="L1C",
    patch_size=8,
    image_size=120,
    gsd_m=10.0,
    flexible=False,
    licence="MIT",
    source="https://github.com/antofuller/CROMA",
    weights_url=_URL,
    weights_file=_URL.rsplit("/", 1)[-1],
    torchgeo_weights="CROMABase_Weights.CROMA_VIT",
    convert=convert_croma,
    notes="needs the 12 L1C bands without B10; maps mean ± 2 std to 0–1 without CROMA's clip",
))
