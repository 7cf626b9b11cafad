"""Published open_clip weights from local files: the state dict, its architecture, the model.

A RemoteCLIP or OpenAI CLIP release is a plain state dict saved with ``torch.save`` (``.pt``,
``.pth``, ``.bin``) or safetensors; :func:`read_state_dict` reads it without executing pickled
code (``weights_only=True``), :func:`infer_clip_config` reads the architecture from the tensor
shapes and :func:`load_open_clip_model` returns the open_clip model with its weights and
tokenizer. Both towers build on this: the text tower (:mod:`geofm.models.text`) and the image
tower with the whole aligned model (:mod:`geofm.models.openclip`).
"""

from __future__ import annotations

import logging
import math
import pickle
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from geofm.errors import GeofmError
from geofm.extras import require
from geofm.safeload import describe_failure

KNOWN_ARCHS = ("ViT-B-32", "ViT-B-16", "ViT-L-14", "ViT-L-14-336", "ViT-H-14", "RN50",
               "RN101", "RN50x4")
_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a saved open_clip state dict, wrappers and ``module.`` prefixes removed.

    Raises:
        GeofmError: Missing or unreadable file, or not a dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise GeofmError("open_clip checkpoint not found", p)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds for foreign or pickled files
        raise GeofmError(f"cannot read weights ({describe_failure(e)})", p,
                         hint="pass a state dict saved with torch.save or safetensors") from None
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise GeofmError("is not a state dict", p)
    state = {re.sub(r"^(module\.)+", "", str(k)): v for k, v in obj.items()
             if k not in _EXTRA_KEYS}
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise GeofmError("holds values that are not tensors", p, hint="pass a plain state dict")
    if "text_projection" not in state or not any(k.startswith("visual.") for k in state):
        raise GeofmError("is not an open_clip CLIP state dict (no visual.* / text_projection)",
                         p)
    return state


def _count(state: dict[str, Tensor], prefix: str) -> int:
    """Number of distinct ``prefix<N>.`` blocks."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return len({m.group(1) for k in state if (m := pat.match(k))})


def infer_clip_config(state: dict[str, Tensor]) -> dict[str, Any]:
    """An open_clip ``model_cfg`` read from tensor shapes (heads assume 64-wide heads)."""
    text_width = int(state["ln_final.weight"].shape[0])
    text = {"context_length": int(state["positional_embedding"].shape[0]),
            "vocab_size": int(state["token_embedding.weight"].shape[0]),
            "width": text_width, "heads": max(text_width // 64, 1),
            "layers": _count(state, "transformer.resblocks."),
            "mlp_ratio": state["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / text_width}
    if "visual.proj" in state:
        width = int(state["visual.conv1.weight"].shape[0])
        patch = int(state["visual.conv1.weight"].shape[-1])
        grid = round(math.sqrt(state["visual.positional_embedding"].shape[0] - 1))
        vision: dict[str, Any] = {
            "layers": _count(state, "visual.transformer.resblocks."), "width": width,
            "patch_size": patch, "image_size": patch * grid,
            "mlp_ratio": state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width}
    else:
        grid = round(math.sqrt(state["visual.attnpool.positional_embedding"].shape[0] - 1))
        vision = {"layers": [_count(state, f"visual.layer{i}.") for i in (1, 2, 3, 4)],
                  "width": int(state["visual.layer1.0.conv1.weight"].shape[0]),
                  "image_size": grid * 32}
    return {"embed_dim": int(state["text_projection"].shape[1]), "vision_cfg": vision,
            "text_cfg": text}


def _same_shape(cfg: dict[str, Any], known: dict[str, Any]) -> bool:
    """Whether a built-in open_clip config has the inferred shapes."""
    if known.get("embed_dim") != cfg["embed_dim"] or "timm_model_name" in known["vision_cfg"]:
        return False
    for tower in ("vision_cfg", "text_cfg"):
        for key, value in cfg[tower].items():
            default = {"mlp_ratio": 4.0, "context_length": 77, "vocab_size": 49408}.get(key)
            if key != "heads" and known[tower].get(key, default) != value:
                return False
    return True


@contextmanager
def quiet_open_clip_init() -> Iterator[None]:
    """Hide open_clip's "initialized randomly" warning: weights are loaded right after."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def load_open_clip_model(path: str | Path, arch: str | None = None, quick_gelu: bool = False
                         ) -> tuple[nn.Module, Callable[[list[str]], Tensor], str | None]:
    """An open_clip model with its weights and tokenizer, from local files only.

    Args:
        path: A state-dict file, or an open_clip folder (``open_clip_config.json`` + weights).
        arch: open_clip architecture name of a state-dict file; ``None`` reads it from the
            tensor shapes.
        quick_gelu: Use QuickGELU (OpenAI's original weights); RemoteCLIP uses plain GELU.

    Returns:
        ``(clip, tokenizer, arch)``; ``arch`` is the built-in name used, or ``None`` for a
        folder or an architecture built from inferred shapes.

    Raises:
        GeofmError: Unreadable weights, or weights that do not fit the architecture.
    """
    open_clip = require("open_clip", "text")

    p = Path(path)
    if p.is_dir():
        if not (p / "open_clip_config.json").is_file():
            raise GeofmError("folder has no open_clip_config.json", p)
        if not any(p.glob(f"*.{ext}") for ext in ("safetensors", "bin", "pth", "pt")):
            raise GeofmError("open_clip folder has no weights file", p,
                             hint="put the *.safetensors or *.bin next to open_clip_config.json")
        try:
            with quiet_open_clip_init():
                clip = open_clip.create_model(f"local-dir:{p}", pretrained_text=False)
            tokenizer = open_clip.get_tokenizer(f"local-dir:{p}")
        except (OSError, RuntimeError, ValueError, KeyError, TypeError, EOFError,
                pickle.UnpicklingError, SafetensorError) as e:  # weights read weights-only
            raise GeofmError(f"cannot load the open_clip model ({describe_failure(e)})",
                             p, hint="pass a folder saved by open_clip (open_clip_config.json "
                             "and its weights)") from None
        return clip.eval(), tokenizer, None
    state = read_state_dict(p)
    if arch is None:
        cfg = infer_clip_config(state)
        arch = next((a for a in KNOWN_ARCHS if a in open_clip.list_models()
                     and _same_shape(cfg, open_clip.get_model_config(a))), None)
    if arch is not None:
        if arch not in open_clip.list_models():
            raise GeofmError(f"unknown open_clip architecture {arch!r}", p,
                             hint=f"use one of {', '.join(KNOWN_ARCHS)}")
        with quiet_open_clip_init():
            clip = open_clip.create_model(arch, pretrained=None, force_quick_gelu=quick_gelu,
                                          pretrained_text=False)
        tokenizer = open_clip.get_tokenizer(arch)
    else:
        clip = open_clip.model.CLIP(**cfg, quick_gelu=quick_gelu)
        tokenizer = open_clip.tokenizer.SimpleTokenizer(
            context_length=cfg["text_cfg"]["context_length"])
    if "logit_scale" in state:
        state["logit_scale"] = state["logit_scale"].reshape(clip.logit_scale.shape)
    own = clip.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in state if k in own and own[k].shape != state[k].shape]
    if missing or unexpected or reshaped:
        raise GeofmError(f"weights do not fit open_clip {arch or 'inferred architecture'} "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]}, "
                         f"other shapes {reshaped[:3]})", p,
                         hint="pass the architecture it was trained with "
                         f"({', '.join(KNOWN_ARCHS[:6])}, ...)")
    clip.load_state_dict(state, strict=False)
    return clip.eval(), tokenizer, arch
