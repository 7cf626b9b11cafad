"""Optimizers and learning-rate schedules shared by the tasks."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


def warmup_cosine(warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """Factor for ``LambdaLR``: linear warm-up over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps``."""
    total = max(1, total_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, total - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))

    return factor


def adamw(params: Any, trainer: Any, **kwargs: Any) -> torch.optim.AdamW:
    """AdamW with the fused kernel wherever Lightning allows it.

    Lightning's mixed-precision plugin refuses gradient clipping with an optimizer that unscales
    gradients itself (the fused kernels do), so under ``16-mixed``/``bf16-mixed`` with clipping
    the multi-tensor (``foreach``) implementation is used instead.

    Args:
        params: Parameters or parameter groups.
        trainer: The module's trainer (``None`` outside a fit: fused).
        **kwargs: AdamW arguments (``lr``, ``betas``, ``weight_decay``).
    """
    precision = str(getattr(trainer, "precision", "32-true"))
    clipping = bool(getattr(trainer, "gradient_clip_val", None))
    if "mixed" in precision and clipping:
        return torch.optim.AdamW(params, foreach=True, **kwargs)
    return torch.optim.AdamW(params, fused=True, **kwargs)


LR_SCALINGS = ("none", "batch", "selective_mae")
"""``optim.lr_scaling`` values of pretraining."""


def scaled_lr(
    lr: float, scaling: str, global_batch: int, kept_ratio: float | None = None,
    visible_ratio: float | None = None,
) -> float:
    """The learning rate a pretraining run uses, from ``optim.lr`` and ``optim.lr_scaling``.

    * ``"none"``: ``lr`` as given (an absolute rate).
    * ``"batch"``: MAE's rule, ``lr`` is a base rate for batch 256:
      ``lr × global_batch / 256``.
    * ``"selective_mae"``: the released SelectiveMAE rule (``main_pretrain.py``): the MAE rule
      times ``kept_ratio / mask_ratio`` with ``mask_ratio = 1 − visible_ratio``; for the paper's
      0.25 / 0.85 and base rate 1.5e-4 at global batch 2048 that is 3.53e-4.

    Args:
        lr: ``optim.lr``.
        scaling: One of :data:`LR_SCALINGS`.
        global_batch: Images per optimizer step over all ranks.
        kept_ratio: The SelectiveMAE objective's ``kept_ratio``.
        visible_ratio: Its ``visible_ratio``.

    Raises:
        ValueError: Unknown ``scaling``, or ``"selective_mae"`` without the ratios.
    """
    if scaling not in LR_SCALINGS:
        raise ValueError(f"optim.lr_scaling must be one of {', '.join(LR_SCALINGS)}, "
                         f"got {scaling!r}")
    if scaling == "none":
        return lr
    lr = lr * global_batch / 256
    if scaling == "batch":
        return lr
    if kept_ratio is None or visible_ratio is None:
        raise ValueError("optim.lr_scaling: selective_mae needs the selective_mae objective")
    return lr * kept_ratio / (1.0 - visible_ratio)
