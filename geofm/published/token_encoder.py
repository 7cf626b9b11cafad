"""Published ViTs as geofm token encoders, so geofm's objectives can continue pretraining them.

geofm's objectives (MAE, SimMIM, SelectiveMAE) mask tokens inside the encoder's tokenizer: they
call :meth:`~geofm.models.vit.TokenEncoder.patchify`, ``tokenize`` and ``forward_tokens``. A
release that is a plain ViT (a linear patch embedding, a class token and a learned position
table) is the same network as geofm's :class:`~geofm.models.vit.ViT` with ``class_token=True``
and ``pos_embed="learned"``; :func:`as_token_encoder` moves its weights over, key for key:

===================================  ====================================================
timm ``VisionTransformer``           geofm ``ViT``
===================================  ====================================================
``patch_embed.proj.weight``          ``patch_embed.weight`` ``[D, C·p·p]``: the Conv2d
``[D, C, p, p]``                     kernel flattened in the order :meth:`ViT.patchify` uses
``patch_embed.proj.bias``            ``patch_embed.bias``
``cls_token`` ``[1, 1, D]``          ``cls_token``
``pos_embed`` ``[1, 1 + N, D]``      ``cls_pos_embed`` (row 0) and ``pos_embed_table``
``blocks.*``, ``norm.*``             unchanged (both are timm ``Block`` s, LayerNorm eps 1e-6)
===================================  ====================================================

With ``pos_antialias`` the table is resampled for other tile sizes exactly as timm's
``dynamic_img_size`` does, so the converted encoder's features equal the release's at any size.

The SSL4EO-S12 ViT-S/16s and SelectiveMAE's ViT-B/16 convert; a ChannelViT release already is a
geofm ChannelViT. The other families run a tokenizer of their own that is part of the model
(DOFA's and Copernicus-FM's wavelength hypernetworks, Panopticon's channel attention,
CROMA's and Scale-MAE's position schemes, Prithvi's temporal patches, SatVision's Swin
windows, RemoteCLIP's CLIP tower), with no geofm token stream to mask: they are refused
(:func:`refuse_pretraining`) and can be finetuned instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

import torch
from torch import nn

from geofm.card import Architecture, ModelCard
from geofm.errors import GeofmError
from geofm.models.encoder import Encoder
from geofm.models.registry import create_model
from geofm.models.vit import SIZES, TokenEncoder, ViT

if TYPE_CHECKING:
    from timm.models.vision_transformer import Block, VisionTransformer

CONTINUABLE_ARCHITECTURES = ("ssl4eo_vit_small_patch16", "selectivemae_vit_base",
                             "channelvit_release_small")
"""Registered architectures of the releases pretraining can continue (the first two convert
to a geofm ViT, the last is a geofm ChannelViT)."""


def continuable_releases() -> list[str]:
    """Names of the releases ``geofm pretrain --init NAME`` continues, sorted."""
    from geofm.published.resolve import published_specs

    return [s.name for s in published_specs() if s.architecture in CONTINUABLE_ARCHITECTURES]


def refuse_pretraining(init: str | Path, family: str) -> NoReturn:
    """Refuse to continue pretraining a release whose tokenizer geofm cannot mask.

    Args:
        init: What ``--init`` named (a release or a checkpoint built on one).
        family: Its registered architecture.

    Raises:
        GeofmError: Always: one line naming the releases that can be continued and suggesting
            to finetune this one.
    """
    from geofm.published.resolve import is_published_ref

    weights = " --weights FILE" if is_published_ref(init) else ""
    raise GeofmError(
        f"pretrain cannot continue {init} ({family}): it runs its release's own tokenizer, "
        "which geofm's objectives cannot mask; pretraining continues "
        f"{', '.join(continuable_releases())} or a geofm checkpoint",
        hint=f"finetune it instead (geofm finetune --init {init}{weights})")


def check_continuable(ref: str) -> None:
    """Refuse a published ``ref`` whose family cannot be continued, before its file is read.

    Raises:
        GeofmError: See :func:`refuse_pretraining`.
    """
    from geofm.published.resolve import spec_for

    spec = spec_for(ref)
    if spec.architecture not in CONTINUABLE_ARCHITECTURES:
        refuse_pretraining(ref, spec.architecture)


def _timm_vit(encoder: object) -> tuple[VisionTransformer, tuple[str, ...]] | None:
    """The timm ViT inside a converted family and its bands, or ``None`` for any other
    encoder."""
    from geofm.published.selectivemae import MAEViTEncoder
    from geofm.published.ssl4eo import SSL4EOViT

    if isinstance(encoder, (SSL4EOViT, MAEViTEncoder)):
        return encoder.vit, tuple(encoder.bands)
    return None


def _size_name(embed_dim: int, depth: int, num_heads: int) -> str:
    """The registered ``vit_*`` whose width, depth and heads are these; else the one of this
    width (the config overrides depth and heads); else ``vit_base``."""
    for size, dims in SIZES.items():
        if (dims["embed_dim"], dims["depth"], dims["num_heads"]) == (embed_dim, depth,
                                                                      num_heads):
            return f"vit_{size}"
    for size, dims in SIZES.items():
        if dims["embed_dim"] == embed_dim:
            return f"vit_{size}"
    return "vit_base"


def _check_plain(vit: VisionTransformer, ref: str) -> None:
    """A timm ViT geofm's ViT reproduces: one class token, no register tokens, a learned
    table with a class row, a Conv2d patch embedding, no pre-norm, no layer scale."""
    from timm.models.vision_transformer import Block

    plain = (
        vit.cls_token is not None and vit.reg_token is None and vit.pos_embed is not None
        and not vit.no_embed_class and vit.num_prefix_tokens == 1
        and isinstance(vit.norm_pre, nn.Identity) and isinstance(vit.patch_embed.norm,
                                                                nn.Identity)
        and isinstance(vit.patch_embed.proj, nn.Conv2d)
        and all(type(b) is Block and isinstance(b.ls1, nn.Identity)
                and isinstance(b.ls2, nn.Identity) for b in vit.blocks)
        and isinstance(vit.norm, nn.LayerNorm) and vit.norm.eps == 1e-6)
    if not plain:
        raise GeofmError(f"{ref} is not a plain ViT with one class token and a learned "
                         "position table, which geofm's ViT reproduces",
                         hint="finetune it instead (geofm finetune --init NAME --weights FILE)")


def convert_timm_vit(vit: VisionTransformer, bands: tuple[str, ...], ref: str = "the encoder"
                     ) -> ViT:
    """A geofm :class:`ViT` with the weights of the timm ViT ``vit`` on ``bands``.

    Raises:
        GeofmError: ``vit`` is not a plain class-token ViT (:func:`_check_plain`).
    """
    _check_plain(vit, ref)
    proj = vit.patch_embed.proj
    assert isinstance(proj, nn.Conv2d)  # checked above
    dim, _, p, _ = proj.weight.shape  # [D, C, p, p]
    img = vit.patch_embed.img_size
    assert img is not None  # a learned table is laid out for a size
    first = cast("Block", vit.blocks[0])  # checked above
    fc1 = cast(nn.Linear, first.mlp.fc1)
    depth, heads = len(vit.blocks), int(cast(Any, first.attn).num_heads)
    config = {"bands": list(bands), "patch_size": int(p), "embed_dim": int(dim),
              "depth": depth, "num_heads": heads,
              "mlp_ratio": fc1.out_features / dim, "class_token": True,
              "pos_embed": "learned", "img_size": [int(img[0]), int(img[1])],
              "pos_antialias": True}
    model = create_model(_size_name(int(dim), depth, heads), **config)
    assert isinstance(model, ViT)
    state = {k: v for k, v in vit.state_dict().items()
             if not k.startswith(("patch_embed.", "pos_embed", "cls_token", "head"))}
    assert vit.pos_embed is not None and vit.cls_token is not None  # checked above
    pos = vit.pos_embed.detach()  # [1, 1 + N, D]
    state |= {"patch_embed.weight": proj.weight.detach().reshape(dim, -1),  # [D, C·p·p]
              "patch_embed.bias": proj.bias.detach() if proj.bias is not None
              else torch.zeros(dim),
              "cls_token": vit.cls_token.detach(),
              "cls_pos_embed": pos[0, :1],  # [1, D]
              "pos_embed_table": pos[0, 1:]}  # [N, D]
    model.load_state_dict(state, strict=True)
    return model


def as_token_encoder(encoder: Encoder, card: ModelCard, ref: str | Path = "the encoder"
                     ) -> tuple[TokenEncoder, Architecture]:
    """``encoder`` as a geofm token encoder that geofm's objectives can pretrain, with the
    architecture that rebuilds it.

    geofm's own encoders (and a ChannelViT release) pass through unchanged; a converted family
    (SSL4EO-S12's ViT-S/16, SelectiveMAE's ViT-B/16) becomes a geofm ``vit_small`` /
    ``vit_base`` with the same weights (:func:`convert_timm_vit`), in the same mode.

    Raises:
        GeofmError: Any other published family (:func:`refuse_pretraining`).
    """
    if isinstance(encoder, TokenEncoder):  # its resolved config (a release's card has none)
        return encoder, Architecture(encoder.model_name, dict(encoder.model_config))
    found = _timm_vit(encoder)
    if found is None:
        refuse_pretraining(ref, card.architecture.name)
    model = convert_timm_vit(*found, ref=str(ref))
    model.train(encoder.training)
    return model, Architecture(model.model_name, dict(model.model_config))
