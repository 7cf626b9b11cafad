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
