"""Where a run's metrics go: ``metrics.csv`` always, TensorBoard event files on request."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger

from geofm.errors import GeofmError
from geofm.extras import require

LOGGERS = ("csv", "tensorboard")
"""Values of the ``trainer.logger`` setting (``tensorboard`` writes ``metrics.csv`` too)."""


def run_loggers(output: Path, kind: str | None, csv: Logger | None = None) -> list[Logger]:
    """The Lightning loggers of a run writing into ``output``.

    ``metrics.csv`` is always written (``geofm plot`` reads it); ``"tensorboard"`` adds event
    files under ``<output>/tensorboard`` (``tensorboard --logdir <output>/tensorboard``).

    Args:
        output: Run directory.
        kind: ``trainer.logger``: ``"csv"`` (or ``None``) or ``"tensorboard"``.
        csv: The CSV logger to use (default: a plain one writing ``<output>/metrics.csv``).

    Raises:
        GeofmError: An unknown logger, or TensorBoard requested but not installed (naming
            the ``tensorboard`` extra).
    """
    name = (kind or "csv").lower()
    if name not in LOGGERS:
        raise GeofmError(f"unknown logger {kind!r}", hint=f"use one of {', '.join(LOGGERS)}")
    loggers: list[Logger] = [csv if csv is not None else CSVLogger(output, name="", version="")]
    if name == "tensorboard":
        require("tensorboard", "tensorboard")
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(output, name="tensorboard", version="",
                                         default_hp_metric=False))
    return loggers
