"""Band-aware encoders, built by name.

>>> from geofm.models import create_model
>>> model = create_model("channelvit_tiny", bands=["S2.B04", "S2.B03", "S2.B02"])
>>> features = model(images, ["S2.B04", "S2.B03", "S2.B02"])  # [B, D]
"""

from __future__ import annotations

from geofm.models.band_embedding import BandEmbedding, band_features
from geofm.models.channelvit import ChannelViT
from geofm.models.encoder import Encoder, FeatureEncoder
from geofm.models.hcs import hierarchical_channel_sampling, sample_band_subset
from geofm.models.registry import create_model, list_models, register_model
from geofm.models.vit import TokenEncoder, ViT, sincos_pos_embed

__all__ = [
    "BandEmbedding",
    "ChannelViT",
    "Encoder",
    "FeatureEncoder",
    "TokenEncoder",
    "ViT",
    "band_features",
    "create_model",
    "hierarchical_channel_sampling",
    "list_models",
    "register_model",
    "sample_band_subset",
    "sincos_pos_embed",
]
