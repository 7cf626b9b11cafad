"""ChannelViT's released So2Sat checkpoints as geofm ChannelViTs.

insitro publishes supervised ChannelViT-S/8 models trained with Hierarchical Channel Sampling on
So2Sat LCZ42 (github.com/insitro/ChannelViT, ``hubconf.py``; ``hcs_channelvit_small(
patch_size=8, in_chans=18)``, default ``img_size=[224]``, no classifier head). Each file is a
bare ``torch.save`` state dict of ``channelvit/backbone/hcs_channel_vit.py``'s
``ChannelVisionTransformer``; geofm's :class:`~geofm.models.channelvit.ChannelViT` built with
``class_token=True, pos_embed="learned", img_size=224, channel_embed="learned",
pos_interp="dino"`` is the same network:

=============================================  ===============================================
release key                                    here
=============================================  ===============================================
``cls_token`` ``[1, 1, 384]``                  ``cls_token``
``pos_embed`` ``[1, 1 + 28·28, 384]``          row 0 → ``cls_pos_embed`` ``[1, D]``, the rest
                                               → ``pos_embed_table`` ``[784, D]``
``patch_embed.proj.weight`` ``[384,1,1,8,8]``  ``patch_embed.weight`` ``[384, 64]`` (the
                                               ``Conv3d (1, p, p)`` kernel, row-major)
``patch_embed.proj.bias``                      ``patch_embed.bias``
``patch_embed.channel_embed.weight``           ``channel_embed`` ``[18, 384]`` (the
``[18, 384]`` (HCS: ``nn.Embedding``), or      non-HCS release's parameter transposed)
``patch_embed.channel_embed`` ``[1,D,C,1,1]``
``blocks.N.{norm1,attn.qkv,attn.proj,norm2,    ``blocks.N.*`` (timm ``Block``, same names)
mlp.fc1,mlp.fc2}.*``
``norm.{weight,bias}``                         ``norm.*``
=============================================  ===============================================

**Channels.** So2Sat's 18 channels are 8 Sentinel-1 (real and imaginary parts of unfiltered VH
and VV, Lee-filtered VH and VV intensities, the real and imaginary parts of the Lee-filtered
covariance) and 10 Sentinel-2 bands, B2 B3 B4 B5 B6 B7 B8 B8A B11 B12, as reflectance 0–1
(``channelvit/config/data/so2sat_*.yaml`` feeds channels 0–17 in that order). The Sentinel-1
channels are complex SAR components with no band in geofm's registry, so the card lists the 10
Sentinel-2 bands (table rows 8–17) with the release's own mean and std
(``channelvit/config/transformations/so2sat.yaml``); the 8 SAR rows load with the rest and are
never fed. The model was trained with HCS, so any subset of the 10 bands is valid input.

**Pooling.** The class token after the final norm, as the release's ``forward`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from geofm.errors import GeofmError
from geofm.models.channelvit import ChannelViT
from geofm.models.registry import register_model
from geofm.published.base import PublishedEncoder, PublishedSpec, consume, register_published

SO2SAT_S2_BANDS = ("S2.B02", "S2.B03", "S2.B04", "S2.B05", "S2.B06", "S2.B07", "S2.B08",
                   "S2.B8A", "S2.B11", "S2.B12")
SO2SAT_S2_ROWS = tuple(range(8, 18))
# So2Sat normalisation of channels 8–17 (channelvit/config/transformations/so2sat.yaml).
SO2SAT_S2_MEAN = (0.12442144, 0.11015362, 0.102517806, 0.11548226, 0.15986235, 0.1819497,
                  0.17501162, 0.19551599, 0.15673669, 0.11150938)
SO2SAT_S2_STD = (0.039532706, 0.047356457, 0.06560701, 0.06269057, 0.07596791, 0.08922283,
                 0.09054905, 0.09972874, 0.0992988, 0.08763404)


class ChannelViTRelease(ChannelViT, PublishedEncoder):  # type: ignore[misc]
    """geofm's ChannelViT in a release's layout, also a :class:`PublishedEncoder`.

    Takes any subset of its bands (``band_tokens``), one token per band and patch.
    """


def convert_channelvit(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official ChannelViT state dict → :class:`ChannelViTRelease` state dict.

    Raises:
        GeofmError: An unknown key, or a tensor of an unexpected shape.
    """
    out = consume(state, {"cls_token": "cls_token", "pos_embed": "pos_embed",
                          "patch_embed.proj.": "patch_embed.",
                          "patch_embed.channel_embed": "channel_embed",
                          "blocks.": "blocks.", "norm.": "norm."})
    pos = out.pop("pos_embed", None)
    chan = out.pop("channel_embed.weight", None)
    if chan is None:
        chan = out.pop("channel_embed", None)
        if chan is not None and chan.ndim == 5:  # [1, D, C, 1, 1] (non-HCS release)
            chan = chan[0, :, :, 0, 0].t()
    if pos is None or chan is None or pos.ndim != 3 or chan.ndim != 2:
        raise GeofmError("the weights lack ChannelViT's pos_embed [1, 1 + N, D] or channel "
                         "embedding", hint="check that the file is an insitro/ChannelViT release")
    out["cls_pos_embed"] = pos[0, :1]  # [1, D]
    out["pos_embed_table"] = pos[0, 1:]  # [N, D]
    out["channel_embed"] = chan  # [R, D]
    weight = out["patch_embed.weight"]  # [D, 1, 1, p, p]
    out["patch_embed.weight"] = weight.reshape(weight.shape[0], -1)  # [D, p·p]
    return out


RELEASE_LAYOUT: dict[str, Any] = {
    "class_token": True, "pos_embed": "learned", "img_size": 224, "channel_embed": "learned",
    "pos_interp": "dino"}
"""The official ``ChannelVisionTransformer`` as ChannelViT options."""


@register_model
def channelvit_release_small(**overrides: Any) -> ChannelViTRelease:
    """The official ChannelViT-S/8 (D = 384, 12 blocks, 6 heads) as released for So2Sat."""
    config: dict[str, Any] = {
        "bands": SO2SAT_S2_BANDS, "patch_size": 8, "embed_dim": 384, "depth": 12,
        "num_heads": 6, "channel_rows": SO2SAT_S2_ROWS, "num_channel_rows": 18,
        **RELEASE_LAYOUT}
    return ChannelViTRelease(**{**config, **overrides})


def _so2sat_spec(split: str) -> PublishedSpec:
    file = f"so2sat_channelvit_small_p8_with_hcs_{split}_split_supervised.pth"
    return PublishedSpec(
        name=f"channelvit_so2sat_{split}",
        title=f"ChannelViT-S/8 + HCS, supervised on So2Sat LCZ42 ({split} split)",
        architecture="channelvit_release_small",
        config={},
        bands=SO2SAT_S2_BANDS,
        input_units="reflectance",
        mean=SO2SAT_S2_MEAN,
        std=SO2SAT_S2_STD,
        processing_level="L1C",
        patch_size=8,
        image_size=32,
        gsd_m=10.0,
        flexible=True,
        licence="CC-BY-NC-4.0",
        source="Bao et al., Channel Vision Transformers: An Image Is Worth C x 16 x 16 Words "
               "(ICLR 2024, arXiv 2309.16108); github.com/insitro/ChannelViT",
        weights_url=f"https://github.com/insitro/ChannelViT/releases/download/v1.0.0/{file}",
        weights_file=file,
        convert=convert_channelvit,
        notes="learned channel, position and class-token embeddings load exactly; the 8 "
              "So2Sat Sentinel-1 channels have no registry band and are not fed; any subset "
              "of the 10 Sentinel-2 bands is accepted (trained with HCS).",
    )


CHANNELVIT_SO2SAT_RANDOM = register_published(_so2sat_spec("random"))
CHANNELVIT_SO2SAT_HARD = register_published(_so2sat_spec("hard"))
