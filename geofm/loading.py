"""Loading geofm checkpoints as ready models, and matching their bands to data.

Shared by evaluation, prediction and the analyst API: one place decides which bands of a store
or raster a model uses, so a band mismatch is the same clear error everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from geofm.bands import match_by_wavelength
from geofm.checkpoint import is_geofm_checkpoint, load_checkpoint
from geofm.errors import BandError, GeofmError
from geofm.models import create_model
from geofm.models.align import AlignModel
from geofm.models.encoder import Encoder
from geofm.models.openclip import load_open_clip
from geofm.models.text import TextTower

if TYPE_CHECKING:
    from geofm.models.finetuner import Finetuner


def encoder_from_header(header: dict[str, Any]) -> Encoder:
    """An untrained encoder with the checkpoint's architecture and band contract."""
    model = header["model"]
    return create_model(model["name"], **model["config"])


def encoder_state(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``encoder.*`` tensors of a checkpoint, prefix removed."""
    return {k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")}


def load_encoder(path: str | Path) -> tuple[Encoder, dict[str, Any]]:
    """The pretrained (or finetuned) encoder of a geofm checkpoint, in eval mode."""
    weights, header = load_checkpoint(path)
    enc = encoder_from_header(header)
    state = encoder_state(weights)
    if not state:
        raise GeofmError("checkpoint holds no encoder weights", path)
    enc.load_state_dict(state, strict=True)
    return enc.eval(), header


def is_channel_flexible(header: dict[str, Any]) -> bool:
    """True for encoders that accept any subset of bands (one token per band: ChannelViT)."""
    return header["model"]["name"].startswith("channelvit")


def match_bands(model_bands: Sequence[str], available: Sequence[str], flexible: bool,
                source: str | Path | None = None) -> list[str]:
    """The model bands to feed, in the model's order, from what ``available`` offers.

    A channel-flexible model takes every model band present (by name, else by wavelength) and
    needs at least one; any other model needs all of them.

    Returns:
        The available band names to read, aligned to the model bands they stand for.

    Raises:
        BandError: Bands are missing (listed in the message).
    """
    avail = list(available)
    direct = [b for b in model_bands if b in avail]
    if len(direct) == len(model_bands):
        return list(model_bands)
    if not flexible:
        missing = [b for b in model_bands if b not in avail]
        raise BandError(f"the model needs bands {', '.join(missing)} that the data lacks "
                        f"(data has {', '.join(avail)})", source,
                        "use data with those bands or a channel-flexible (channelvit) model")
    if direct:
        return direct
    by_wl = match_by_wavelength(list(model_bands), avail)
    matched = [v for v in by_wl.values() if v is not None]
    if not matched:
        raise BandError(f"none of the data's bands ({', '.join(avail)}) match the model's "
                        f"({', '.join(model_bands)}) by name or wavelength", source)
    return list(dict.fromkeys(matched))


def store_bands_for(header: dict[str, Any], store: str | Path) -> list[str]:
    """The bands of the chip store ``store`` to train a checkpoint's encoder on, when none are
    named: every model band for a fixed-band model, the ones the store has for a band-token
    model (a ChannelViT pretrained on several sensors finetunes on one of them).

    Raises:
        BandError: The store lacks bands the model needs (listed).
    """
    from geofm.io.store import open_store

    names = open_store(store).bands
    return match_bands(header["bands"], names, is_channel_flexible(header), store)


def load_finetuned(path: str | Path) -> tuple[Finetuner, dict[str, Any]]:
    """A finetuned model (encoder + head) of a geofm checkpoint, in eval mode.

    Raises:
        GeofmError: Not a finetuned geofm checkpoint.
    """
    from geofm.models.finetuner import Finetuner

    weights, header = load_checkpoint(path)
    if header.get("kind") != "finetune":
        raise GeofmError(f"is a {header.get('kind', 'unknown')} checkpoint, not a finetuned "
                         "model", path, "finetune it first with 'geofm finetune'")
    head = header["head"]
    model = Finetuner(encoder_from_header(header), task=header["task"], head=head["kind"],
                      num_outputs=head["num_outputs"], freeze="full")
    model.load_state_dict(weights, strict=True)
    return model.eval(), header


def is_open_clip_source(path: str | Path) -> bool:
    """Whether ``path`` holds published open_clip / RemoteCLIP weights rather than a geofm
    checkpoint: a folder, a ``.pt`` / ``.pth`` / ``.bin`` file, or a safetensors file without a
    geofm header."""
    p = Path(path)
    if p.is_dir() or p.suffix.lower() in (".pt", ".pth", ".bin"):
        return True
    return p.suffix.lower() == ".safetensors" and p.is_file() and not is_geofm_checkpoint(p)


def load_aligned(path: str | Path) -> tuple[AlignModel, dict[str, Any]]:
    """An image–text model of a geofm align checkpoint, in eval mode.

    The encoder and projections come from the checkpoint; the text tower is rebuilt from the
    header's ``text`` entry (its weights are stored only when it was trained unlocked). A
    published open_clip / RemoteCLIP state dict (``.pt``, ``.pth``, ``.bin``) or open_clip folder
    is loaded with :func:`geofm.models.openclip.load_open_clip` (architecture read from the
    weights, Sentinel-2 RGB bands).

    Raises:
        GeofmError: Not an align checkpoint, or its text model cannot be loaded.
    """
    if is_open_clip_source(path):
        return load_open_clip(Path(path))
    weights, header = load_checkpoint(path)
    kind = header.get("kind", "unknown")
    if kind != "align":
        raise GeofmError(f"has no text tower (it is a {kind} checkpoint)", path,
                         "align it with 'geofm align'")
    settings = header.get("align") or {}
    text_info = header.get("text") or settings.get("text") or {}
    text = TextTower.from_header(text_info)
    model = AlignModel(encoder_from_header(header), text,
                       embed_dim=int(settings["embed_dim"]),
                       init_temperature=float(settings.get("init_temperature", 0.07)),
                       max_logit_scale=float(settings.get("max_logit_scale", 100.0)))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not (text.locked and k.startswith("text."))]
    if missing or unexpected:
        raise GeofmError(f"align checkpoint does not fit its model (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})", path)
    return model.eval(), header
