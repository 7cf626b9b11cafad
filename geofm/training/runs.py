"""Configured training runs, as ``geofm pretrain``, ``finetune`` and ``align`` start them.

A run's config is built in one order everywhere: the command's defaults
(:mod:`geofm.training.config`), then a recipe (a YAML file or a shipped config's name, see
``geofm configs``), then named overrides (the command-line flags), then ``KEY=VALUE``
settings (``--set``); the result is checked against the defaults before the run starts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from geofm.errors import GeofmError

PRETRAIN_FILES = (("pretrain.safetensors (checkpoint)", "pretrain.safetensors"),
                  ("config.yaml", "config.yaml"), ("metrics.csv", "metrics.csv"),
                  ("previews/", "previews"), ("checkpoints/last.ckpt", "checkpoints/last.ckpt"))
"""What a pretraining run may write into its directory: ``(shown as, relative path)``."""


def run_config(kind: str, recipe: str | Path | None = None,
               overrides: Mapping[str, Any] | None = None,
               sets: Sequence[str] | None = None) -> dict[str, Any]:
    """The checked config of a ``kind`` run (``"pretrain"``, ``"finetune"`` or ``"align"``).

    Args:
        kind: The run.
        recipe: A YAML path or a shipped config's name (``reben_s1s2``); ``None``: defaults.
        overrides: Dotted keys and values (``{"optim.lr": 3e-4}``); ``None`` values are
            left out, the others are read as a ``--set`` value is.
        sets: ``KEY=VALUE`` settings applied last.

    Raises:
        GeofmError: An unknown recipe, key or value.
    """
    from geofm.packaged import resolve_config
    from geofm.training.config import (
        ALIGN_DEFAULTS,
        FINETUNE_DEFAULTS,
        PRETRAIN_DEFAULTS,
        apply_overrides,
        check_keys,
        check_values,
        load_yaml,
        merge,
    )

    defaults = {"pretrain": PRETRAIN_DEFAULTS, "finetune": FINETUNE_DEFAULTS,
                "align": ALIGN_DEFAULTS}[kind]
    path = None if recipe is None else resolve_config(str(recipe), kind)
    cfg = merge(defaults, {})
    if path:
        loaded = load_yaml(path)
        check_keys(defaults, loaded, path)
        cfg = merge(defaults, loaded)
    given = [f"{k}={v}" for k, v in (overrides or {}).items() if v is not None]
    cfg = apply_overrides(cfg, given + list(sets or []))
    check_values(defaults, cfg)
    return cfg


def pretrain(recipe: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
             sets: Sequence[str] | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Pretrain as configured (:func:`run_config`, then
    :func:`~geofm.training.pretrain.run_pretrain`).

    Returns:
        :func:`~geofm.training.pretrain.run_pretrain`'s result, with ``"files"``: what the
        run wrote into its directory, as listed in :data:`PRETRAIN_FILES` (a run shorter than
        the log interval writes no ``metrics.csv``). Another rank of a distributed run gets
        a result without ``"checkpoint"``.
    """
    from geofm.training.pretrain import run_pretrain

    result = run_pretrain(run_config("pretrain", recipe, overrides, sets), progress=progress)
    if "checkpoint" in result:
        out = Path(result["output"])
        result["files"] = [shown for shown, rel in PRETRAIN_FILES if (out / rel).exists()]
    return result


def finetune(recipe: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
             sets: Sequence[str] | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Finetune as configured (:func:`run_config`, then
    :func:`~geofm.training.finetune.run_finetune`).

    Raises:
        GeofmError: No chip store given (``data.store``).
    """
    from geofm.training.finetune import run_finetune

    cfg = run_config("finetune", recipe, overrides, sets)
    if cfg["data"]["store"] is None:
        raise GeofmError("no chip store given", hint="pass --data STORE")
    return run_finetune(cfg, progress=progress)


def align(recipe: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
          sets: Sequence[str] | None = None, *, progress: bool = True) -> dict[str, Any]:
    """Align as configured (:func:`run_config`, then :func:`~geofm.training.align.run_align`)."""
    from geofm.training.align import run_align

    return run_align(run_config("align", recipe, overrides, sets), progress=progress)


def store_bands(text: str) -> object:
    """One store's ``--bands`` among several: a count, a named set, or its band names as a list
    (so that one name is not read as one name for every store)."""
    from geofm.bands import is_band_set, parse_bands
    from geofm.training.config import parse_value

    value = parse_value(text)
    if isinstance(value, str) and not is_band_set(value):
        return parse_bands(value)
    return value


def one_or_list(values: Sequence[str], parse: Callable[[str], object] = str) -> str | None:
    """A repeatable flag's values as one override value: None, the value, or a JSON list."""
    if len(values) < 2:
        return values[0] if values else None
    return json.dumps([parse(v) for v in values])
