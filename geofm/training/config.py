"""Run configs: nested dicts from YAML, overridden key by key from the command line.

Every key can be set with ``--set section.key=value`` (values parsed as YAML, so ``3``, ``1e-4``,
``true``, ``[a, b]`` and ``null`` work); the common keys also have their own flags.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import yaml

from geofm.errors import GeofmError


def step_trainer(max_steps: int, checkpoint_every_n_steps: int) -> dict[str, Any]:
    """The ``trainer`` section that :func:`geofm.training.trainer.fit_steps` reads (pretraining and
    alignment)."""
    return {
        "max_steps": max_steps,
        "accelerator": "auto",
        "devices": 1,
        "num_nodes": 1,
        "strategy": "auto",
        "precision": None,  # None: bf16-mixed on GPU, 32-true on CPU
        "gradient_clip_val": 1.0,
        "log_every_n_steps": 5,
        "checkpoint_every_n_steps": checkpoint_every_n_steps,
        "seed": 0,
        "logger": "csv",  # or tensorboard: event files in <output>/tensorboard, beside the CSV
    }


PRETRAIN_DEFAULTS: dict[str, Any] = {
    # An encoder to continue: a geofm checkpoint (pretrain.safetensors), or a published ViT's
    # name (ssl4eo_vits16_*, selectivemae_vitb, channelvit_so2sat_*) with weights: FILE. Its
    # architecture and weights come from it (model.name and model.kwargs are then ignored); a
    # published one is fed the store in its release's units and statistics.
    "init": None,
    "weights": None,  # its weights file (with init: NAME)
    "data": {
        # A path, or a list of paths to pretrain a band-token model across sensors (None: the
        # embedded real reBEN sample).
        "store": None,
        # None: every band of each store (the sample's 14 s1s2 bands); with several stores,
        # one selection for all or a list of one per store.
        "bands": None,
        "weights": None,  # several stores: relative share of batches each (None: by chips)
        "split": "train",
        "batch_size": 3,
        "num_workers": 0,
        "normalization": "stats",  # or satvision: SatVision-TOA's fixed MODIS scaling
    },
    "model": {"name": "channelvit_tiny", "kwargs": {"depth": 4}},
    "objective": {"name": "selective_mae",
                  "kwargs": {"hcs": True, "decoder_dim": 128, "decoder_depth": 2,
                             "decoder_heads": 4}},
    "optim": {"lr": 1.0e-3, "weight_decay": 0.05, "warmup_steps": 10, "betas": [0.9, 0.95],
              # none: lr as given; batch: lr × global batch / 256 (MAE); selective_mae: also
              # × kept_ratio / (1 − visible_ratio), the released SelectiveMAE rule
              "lr_scaling": "none"},
    "trainer": {
        **step_trainer(max_steps=120, checkpoint_every_n_steps=50),
        "compile": False,  # torch.compile the transformer blocks (worth it on GPUs)
    },
    "output": "runs/pretrain",
    "resume": None,
    "previews": 3,
    "probe": {
        "store": None,  # a labelled store to score the features on during training (kNN)
        "every_n_steps": 100,
        "train_split": "train",  # its chips that vote
        "split": "validation",  # its chips that are scored
        "k": 20,
        "task": "multilabel",  # or classification (one label per chip)
        "max_chips": 2000,  # of each split (a fixed random subset)
    },
}


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins. A ``kwargs`` mapping is replaced whole: the
    constructor arguments of one model or objective never mix with another's."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "kwargs":
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A config file as a dict (errors name the file)."""
    p = Path(path)
    if not p.exists():
        raise GeofmError("config file not found", p)
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise GeofmError(f"invalid YAML ({str(e).splitlines()[0]})", p) from None
    if not isinstance(data, dict):
        raise GeofmError("config must be a mapping of sections", p)
    return data


def check_keys(defaults: dict[str, Any], update: dict[str, Any], source: Any = None,
               prefix: str = "") -> None:
    """Every key of ``update`` (a config file's contents) must exist in ``defaults``, except
    inside free-form ``kwargs`` mappings, so a misspelt key is an error rather than ignored.

    Raises:
        GeofmError: Naming the first unknown key, the file, and the known keys beside it.
    """
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in defaults:
            raise GeofmError(f"unknown config key {dotted!r}", source,
                             hint=f"known keys here: {', '.join(sorted(defaults))}")
        if key != "kwargs" and isinstance(value, dict) and isinstance(defaults[key], dict):
            check_keys(defaults[key], value, source, f"{dotted}.")


POSITIVE_INTS = ("batch_size", "max_steps", "log_every_n_steps", "checkpoint_every_n_steps",
                 "val_every_n_steps", "per_chip", "every_n_steps", "k", "max_chips",
                 "embed_dim")
"""Integer settings that must be at least 1."""

AT_LEAST_ZERO = ("num_workers", "weight_decay", "warmup_steps", "unfreeze_last", "seed",
                 "previews", "gradient_clip_val")
"""Numeric settings that must be at least 0."""

ABOVE_ZERO = ("lr", "encoder_lr", "text_lr", "init_temperature")
"""Numeric settings that must be greater than 0 (learning rates: a run that cannot learn is
refused; ``optim.freeze_encoder`` keeps an encoder as it is)."""

UNIT_INTERVAL = ("layer_decay",)
"""Numeric settings in (0, 1]."""

NULLABLE = ("gradient_clip_val",)
"""Numeric settings that take null (no gradient clipping)."""

NULLABLE_COUNTS = ("crop",)
"""Settings that are null or an integer of at least 1 (``data.crop``: no crop)."""

FREE_TYPED = ("devices", "num_nodes")
"""Integer defaults that also take strings (``devices: auto``, ``devices: "0,1"``)."""


def check_values(defaults: dict[str, Any], cfg: dict[str, Any], prefix: str = "") -> None:
    """Settings whose default is a number must be finite numbers (integers where the default
    is) within their range (counts at least 1, learning rates above 0, weight decay and
    warm-up at least 0, AdamW betas in [0, 1), layer decay in (0, 1]), so a bad value is one
    clear error before anything runs.

    Raises:
        GeofmError: Naming the key, the value and the range.
    """
    for key, default in defaults.items():
        dotted, value = f"{prefix}{key}", cfg.get(key)
        if isinstance(default, dict) and key != "kwargs":
            if not isinstance(value, dict):
                raise GeofmError(f"config key {dotted!r} must be a mapping of settings, "
                                 f"got {value!r}")
            check_values(default, value, f"{dotted}.")
            continue
        if key == "betas":
            _check_betas(dotted, value)
            continue
        if key in NULLABLE_COUNTS and value is not None:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise GeofmError(f"config key {dotted!r} must be null or an integer of at "
                                 f"least 1, got {value!r}")
            continue
        if value is None and isinstance(default, (int, float)) and not isinstance(default, bool) \
                and key not in NULLABLE + FREE_TYPED:
            raise GeofmError(f"config key {dotted!r} needs a value, got null")
        if value is None or isinstance(default, bool):
            continue
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if key in FREE_TYPED:  # devices: "auto", "0,1", -1 (every device) or a count
            if (is_int and value < (1 if key == "num_nodes" else -1)) or value == 0:
                raise GeofmError(f"config key {dotted!r} must be at least 1, got {value}")
            continue
        if isinstance(default, int) and not is_int:
            raise GeofmError(f"config key {dotted!r} must be an integer, got {value!r}")
        # YAML reads 1e-3 (no decimal point) as a string; the runs read it with float().
        if isinstance(default, float) and not (is_int or isinstance(value, float)) \
                and not (isinstance(value, str) and _is_number(value)):
            raise GeofmError(f"config key {dotted!r} must be a number, got {value!r}")
        if isinstance(default, (int, float)):
            _check_range(dotted, key, float(value) if isinstance(value, str) else value)


def check_config(defaults: dict[str, Any], cfg: dict[str, Any]) -> None:
    """:func:`check_values` of a run's config as the run reads it (keys it lacks take their
    defaults): what ``run_pretrain``, ``run_finetune`` and ``run_align`` check first, so Python
    callers get the command line's errors before anything loads or trains."""
    check_values(defaults, merge(defaults, cfg))


def _check_range(dotted: str, key: str, value: float) -> None:
    """A numeric setting within its range (see the tuples above)."""
    if not math.isfinite(value):
        raise GeofmError(f"config key {dotted!r} must be a finite number, got {value}")
    least = 1 if key in POSITIVE_INTS else 0 if key in AT_LEAST_ZERO else None
    if least is not None and value < least:
        raise GeofmError(f"config key {dotted!r} must be at least {least}, got {value}")
    if key in ABOVE_ZERO and value <= 0:
        hint = ("to keep the encoder as it is, set optim.freeze_encoder=true"
                if key == "encoder_lr" else None)
        raise GeofmError(f"config key {dotted!r} must be greater than 0, got {value}",
                         hint=hint)
    if key in UNIT_INTERVAL and not 0 < value <= 1:
        raise GeofmError(f"config key {dotted!r} must be in (0, 1], got {value}")


def _check_betas(dotted: str, value: Any) -> None:
    """AdamW's ``[beta1, beta2]``: two numbers in [0, 1)."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
        isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in value)
    if not ok:
        raise GeofmError(f"config key {dotted!r} must be two numbers in [0, 1), got {value!r}",
                         hint="e.g. --set optim.betas=[0.9,0.95]")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def set_key(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``cfg["a"]["b"] = value`` for ``dotted = "a.b"``; the key must exist in the defaults
    unless its parent is a free-form ``kwargs`` mapping."""
    keys = dotted.split(".")
    node = cfg
    for i, k in enumerate(keys[:-1]):
        if not isinstance(node.get(k), dict):
            if (node.get(k) is None and i > 0 and keys[i - 1] == "kwargs") or k == "kwargs":
                node[k] = {}
            else:
                raise GeofmError(f"unknown config key {dotted!r}")
        node = node[k]
    if keys[-1] not in node and not (len(keys) >= 2 and keys[-2] == "kwargs"):
        raise GeofmError(f"unknown config key {dotted!r}",
                         hint=f"known keys in this section: {', '.join(sorted(node))}")
    node[keys[-1]] = value


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key=value`` strings (values parsed as YAML)."""
    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise GeofmError(f"override {item!r} is not key=value", hint="e.g. --set optim.lr=3e-4")
        key, raw = item.split("=", 1)
        set_key(out, key.strip(), parse_value(raw))
    return out


def parse_value(raw: str) -> Any:
    """A command-line value as YAML, with ``1e-4``-style floats read as numbers."""
    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


FINETUNE_DEFAULTS: dict[str, Any] = {
    "init": None,  # pretrained geofm checkpoint, or a published model's name (required)
    "weights": None,  # a published model's weights file (with init: NAME)
    "task": "multilabel",
    "data": {
        "store": None,
        "bands": None,  # None: the model's bands the store has (all, for a fixed-band model)
        "train_split": "train",
        "val_split": "validation",
        "batch_size": 8,
        "num_workers": 0,
    },
    # kind None: by task; hcs: Hierarchical Channel Sampling on every training batch
    "head": {"kind": None, "freeze": "frozen", "unfreeze_last": 0, "hcs": False},
    "optim": {"lr": 1.0e-3, "weight_decay": 0.05, "layer_decay": 0.75, "warmup_steps": 5},
    "trainer": {"max_steps": 100, "accelerator": "auto", "devices": 1, "precision": None,
                "log_every_n_steps": 5, "val_every_n_steps": 50, "seed": 0,
                "logger": "csv"},  # or tensorboard (event files beside metrics.csv)
    "output": "runs/finetune",
}

ALIGN_DEFAULTS: dict[str, Any] = {
    "init": None,  # pretrained geofm checkpoint, or a published model's name (required)
    "weights": None,  # a published model's weights file (with init: NAME)
    "data": {
        "store": None,
        "bands": None,  # None: the model's bands the store has (all, for a fixed-band model)
        "split": "train",  # only this split's captions train (null: every chip)
        "crop": None,  # random square training crop in px (None: whole chips)
        "batch_size": 64,
        "num_workers": 0,
    },
    "captions": {"seed": 0, "per_chip": 1},  # for stores without captions: made from labels
    "text": {"model": None, "locked": True},  # None: the bundled all-MiniLM-L6-v2
    "model": {"embed_dim": 256, "init_temperature": 0.07},
    "templates": None,  # zero-shot templates recorded in the checkpoint (None: geofm's)
    "optim": {"lr": 1.0e-3, "encoder_lr": 1.0e-4, "text_lr": 1.0e-5, "freeze_encoder": False,
              "weight_decay": 0.05, "warmup_steps": 10},
    "trainer": step_trainer(max_steps=200, checkpoint_every_n_steps=100),
    "output": "runs/align",
    "resume": None,
}
