"""geofm checkpoints: weights in safetensors, the model card in a JSON header.

One file, ``*.safetensors``. Its metadata holds a key ``geofm`` with a JSON document: the
:class:`~geofm.card.ModelCard` (:meth:`~geofm.card.ModelCard.to_header`) plus ``format``,
``format_version`` and ``geofm_version``. Reading goes through
:meth:`~geofm.card.ModelCard.from_header`, which also reads the version-1 headers of older
checkpoints.

Loading reads tensors and JSON only: no pickled code is ever executed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from geofm._version import __version__
from geofm.card import CARD_VERSION, FORMAT, ModelCard
from geofm.diskspace import full_disk_reported
from geofm.errors import GeofmError
from geofm.filemode import apply_umask


def save_checkpoint(path: str | Path, state_dict: dict[str, torch.Tensor],
                    card: ModelCard) -> Path:
    """Write weights and header atomically (temporary name, then rename), readable as the
    user's umask allows (``0644`` under umask ``022``).

    Args:
        path: Output ``.safetensors`` path.
        state_dict: Tensors to store (made contiguous; shared storage is copied).
        card: The model card, written as the JSON header.

    Raises:
        GeofmError: The disk is full (the temporary file is removed, ``path`` is untouched).
    """
    path = Path(path)
    full = {"format": FORMAT, "format_version": CARD_VERSION, "geofm_version": __version__,
            **card.to_header()}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + ".tmp")
    needed = sum(t.numel() * t.element_size() for t in tensors.values())
    try:
        with full_disk_reported(path.parent, needed, f"the checkpoint {path.name}"):
            save_file(tensors, str(tmp), metadata={"geofm": json.dumps(full, default=str)})
            apply_umask(tmp)  # safetensors creates its files private (0600)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def is_geofm_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a safetensors file carrying a geofm header (no weights are read)."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        return False
    try:
        with safe_open(str(p), framework="pt") as f:
            return "geofm" in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return False


def read_card(path: str | Path) -> ModelCard:
    """The model card of a geofm checkpoint, without loading weights.

    Raises:
        GeofmError: Missing file, not safetensors, or not a geofm checkpoint.
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.exists():
        raise GeofmError("checkpoint not found", p)
    if p.is_dir():
        raise GeofmError("is a folder, not a checkpoint file", p,
                         "pass a geofm checkpoint (*.safetensors)")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise GeofmError(f"not a safetensors file ({str(e).splitlines()[0]})", p,
                         "pass a geofm checkpoint (*.safetensors)") from None
    if "geofm" not in meta:
        raise GeofmError("is a safetensors file but not a geofm checkpoint", p)
    try:
        header = json.loads(meta["geofm"])
    except json.JSONDecodeError:
        raise GeofmError("the checkpoint's header is not valid JSON", p,
                         "the file is damaged; copy it again") from None
    return ModelCard.from_header(header, p, stored=True)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelCard]:
    """Weights and model card of a geofm checkpoint (CPU tensors).

    Raises:
        GeofmError: Missing, unreadable or truncated file, or not a geofm checkpoint.
    """
    card = read_card(path)
    try:
        weights = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise GeofmError(f"cannot read the checkpoint's weights ({str(e).splitlines()[0]})",
                         path, "the file is damaged or incomplete; copy it again") from None
    return weights, card
