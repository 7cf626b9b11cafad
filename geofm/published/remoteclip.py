"""RemoteCLIP's released image towers, as catalogued published encoders.

RemoteCLIP (Liu et al., IEEE TGRS 2024, arXiv 2306.11029; github.com/ChenDelong1999/RemoteCLIP)
publishes open_clip checkpoints, ``RemoteCLIP-{RN50,ViT-B-32,ViT-L-14}.pt`` on Hugging Face
(``chendelong/RemoteCLIP``): bare ``torch.save`` state dicts of open_clip's ``CLIP``. The whole
image–text model is loaded, as before, by :func:`geofm.models.openclip.load_open_clip` (text
queries, zero-shot, retrieval); this module adds the release's card to the catalogue and an
image-tower-only encoder for the encoder paths (finetuning heads, kNN, embeddings), built by
open_clip and fed by :class:`~geofm.models.openclip.OpenCLIPImageEncoder`'s RGB contract.

**Card.** Three bands, red, green, blue (of any optical sensor, matched by common name:
:mod:`geofm.published.rgb`), as the 8-bit digital numbers of the aerial and
satellite images RemoteCLIP was trained on, standardised with OpenAI CLIP's mean and std of
``[0, 1]`` RGB (open_clip's ``preprocess``): in ``dn`` units ``mean = 255 · clip_mean``,
``std = 255 · clip_std``. 224 × 224 tiles, patch 32 (ViT-B-32) or 14 (ViT-L-14).

**Keys.** ``visual.*`` → the encoder's ``visual.*`` (same names); the text tower
(``token_embedding.weight``, ``positional_embedding``, ``transformer.*``, ``ln_final.*``,
``text_projection``), ``logit_scale`` and OpenAI's ``input_resolution`` / ``context_length`` /
``vocab_size`` extras are dropped knowingly (the image tower does not use them). Pooled features
are open_clip's ``encode_image`` output (unnormalised); per-patch features are MaskCLIP's, as
:class:`OpenCLIPImageEncoder` computes them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from torch import Tensor, nn

from geofm.bands import BAND_SETS
from geofm.errors import GeofmError
from geofm.extras import require
from geofm.models.openclip import OpenCLIPImageEncoder, _no_init_warnings
from geofm.models.registry import register_model
from geofm.published.base import PublishedEncoder, PublishedSpec, consume, register_published
from geofm.published.rgb import rgb_channels

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.",
             "text_projection", "logit_scale", "input_resolution", "context_length",
             "vocab_size")
"""Top-level keys of an open_clip ``CLIP`` state dict that belong to the text side."""


class RemoteCLIPEncoder(OpenCLIPImageEncoder, PublishedEncoder):
    """An open_clip ViT image tower as a published encoder.

    Args:
        arch: open_clip architecture name (``"ViT-B-32"``, ``"ViT-L-14"``).
        bands: Registry names of the red, green and blue bands.
        model_cfg: An open_clip model config used instead of ``arch``'s (same key layout,
            other sizes).
    """

    def __init__(self, arch: str = "ViT-B-32", bands: Sequence[str] = BAND_SETS["rgb"],
                 model_cfg: Mapping[str, Any] | None = None) -> None:
        open_clip = require("open_clip", "text")
        if model_cfg is None and arch not in open_clip.list_models():
            raise GeofmError(f"unknown open_clip architecture {arch!r}")
        cfg = dict(model_cfg) if model_cfg is not None else open_clip.get_model_config(arch)
        with _no_init_warnings():  # only the image tower is built (as open_clip's CLIP does)
            visual = open_clip.model._build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"])
        if not hasattr(visual, "transformer"):
            raise GeofmError(f"{arch} is not a ViT image tower",
                             hint="use load_open_clip for ResNet towers")
        super().__init__(visual, bands, CLIP_MEAN, CLIP_STD)
        self.model_config: dict[str, Any] = {
            "arch": arch, "bands": list(self.bands),
            **({"model_cfg": dict(model_cfg)} if model_cfg is not None else {})}

    def _rgb(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Red, green, blue (by name or common name), clamped to the 8-bit range."""
        return super()._rgb(images[:, rgb_channels(bands, self.bands)], self.bands)

    @property
    def blocks(self) -> nn.ModuleList:  # type: ignore[override]
        """The tower's residual attention blocks, first to last."""
        transformer = cast(nn.Module, self.visual.transformer)
        return cast(nn.ModuleList, transformer.resblocks)

    @property
    def norm(self) -> nn.Module:  # type: ignore[override]
        """The tower's final LayerNorm (``ln_post``)."""
        return cast(nn.Module, self.visual.ln_post)


def convert_open_clip_visual(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An open_clip ``CLIP`` state dict → :class:`RemoteCLIPEncoder` state dict.

    Raises:
        GeofmError: A key that is neither image tower nor text side.
    """
    drop = [k for k in state if k.startswith(TEXT_KEYS)]
    return consume(state, {"visual.": "visual."}, drop=drop)


@register_model
def remoteclip_vit_b32(**overrides: Any) -> RemoteCLIPEncoder:
    """RemoteCLIP's ViT-B-32 image tower (open_clip), 224 × 224, patch 32."""
    return RemoteCLIPEncoder(**{"arch": "ViT-B-32", **overrides})


@register_model
def remoteclip_vit_l14(**overrides: Any) -> RemoteCLIPEncoder:
    """RemoteCLIP's ViT-L-14 image tower (open_clip), 224 × 224, patch 14."""
    return RemoteCLIPEncoder(**{"arch": "ViT-L-14", **overrides})


def _spec(name: str, arch: str, factory: str, patch: int) -> PublishedSpec:
    return PublishedSpec(
        name=name,
        title=f"RemoteCLIP {arch} (image tower)",
        architecture=factory,
        config={},
        bands=BAND_SETS["rgb"],
        input_units="dn",
        mean=tuple(255.0 * m for m in CLIP_MEAN),
        std=tuple(255.0 * s for s in CLIP_STD),
        processing_level="8-bit RGB",
        patch_size=patch,
        image_size=224,
        gsd_m=0.0,
        flexible=False,
        licence="Apache-2.0",
        source="Liu et al., RemoteCLIP: A Vision Language Foundation Model for Remote Sensing "
               "(IEEE TGRS 2024, arXiv 2306.11029); github.com/ChenDelong1999/RemoteCLIP",
        weights_url=f"https://huggingface.co/chendelong/RemoteCLIP/resolve/main/"
                    f"RemoteCLIP-{arch}.pt",
        weights_file=f"RemoteCLIP-{arch}.pt",
        convert=convert_open_clip_visual,
        notes="8-bit RGB with CLIP statistics; the whole image-text model loads with "
              "load_open_clip (text queries), the image tower alone here; GSD mixed (0).",
        extra={"open_clip_arch": arch},
    )


REMOTECLIP_VITB32 = register_published(_spec("remoteclip_vitb32", "ViT-B-32",
                                             "remoteclip_vit_b32", 32))
REMOTECLIP_VITL14 = register_published(_spec("remoteclip_vitl14", "ViT-L-14",
                                             "remoteclip_vit_l14", 14))
