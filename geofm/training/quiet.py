"""Silencing Lightning messages that say nothing about a geofm run."""

from __future__ import annotations

import logging
import warnings

_IRRELEVANT = (
    r".*You passed in a `val_dataloader` but have no `validation_step`.*",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated.*",
    r".*The number of training batches .* is smaller than the logging interval.*",
    r".*Experiment logs directory .* exists and is not empty.*",
    r".*does not have many workers which may be a bottleneck.*",
    # Mid-epoch resumes are exact: the step runs' StoreBatchSampler skips what the restored
    # epoch consumed (geofm.training.datamodule.sharded_loader).
    r".*resuming from a checkpoint that ended before the epoch ended.*",
    # Frozen encoders and locked text towers are in eval mode on purpose.
    r".*module\(s\) in eval mode at the start of training.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    # A finetune run without a validation split validates nothing, on purpose.
    r".*Total length of .* across ranks is zero.*",
    # Validation metrics leave classes without positives out of macro averages (geofm.metrics).
    r".*No positive samples found in target.*",
    # Resuming into another --output: Lightning's note on its own checkpoint bookkeeping.
    r".*The dirpath has changed from .*",
    r".*The `srun` command is available on your system but is not used.*",
)


def quiet_lightning() -> None:
    """Drop Lightning's tips and warnings that do not apply to geofm's runs."""
    for pattern in _IRRELEVANT:
        warnings.filterwarnings("ignore", message=pattern)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)
