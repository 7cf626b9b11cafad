"""Briefly trained checkpoints for tests that need a real geofm model."""

from __future__ import annotations

from pathlib import Path

from geofm.training.config import PRETRAIN_DEFAULTS, apply_overrides, merge
from geofm.training.pretrain import run_pretrain


def pretrain_tiny(store: Path, out: Path, model: str, steps: int = 2) -> Path:
    """A ``model`` (e.g. ``vit_test``) pretrained with MAE for ``steps`` on ``store``."""
    cfg = apply_overrides(merge(PRETRAIN_DEFAULTS, {}), [
        f"data.store={store}", f"output={out}", f"model.name={model}", "model.kwargs={}",
        "objective.name=mae", "objective.kwargs={decoder_dim: 32, decoder_depth: 1, "
        "decoder_heads: 2}", "data.split=null", f"trainer.max_steps={steps}",
        "trainer.accelerator=cpu", "previews=0"])
    return Path(run_pretrain(cfg, progress=False)["checkpoint"])
