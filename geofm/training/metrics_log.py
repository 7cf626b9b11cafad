"""``metrics.csv`` of step-based runs, kept across ``--resume``.

Lightning's CSV logger deletes an existing ``metrics.csv`` when a run starts. A run resumed into
its own output directory keeps the rows of the steps before the checkpoint it resumes from (the
rows of later steps are dropped: the resumed run takes those steps again and logs them anew).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, cast

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from geofm.filemode import apply_umask


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer that keeps the rows logged before step ``keep_before``."""

    def __init__(self, log_dir: str, keep_before: int | None) -> None:
        self.keep_before = keep_before
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if self.keep_before is None or not path.is_file():
            super()._check_log_dir_exists()
            return
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            keep = self.keep_before
            rows = [r for r in reader if (s := _step(r)) is not None and s < keep]
        if "step" not in fields:  # not a metrics log of a run: start afresh
            super()._check_log_dir_exists()
            return
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=sorted(fields))
            writer.writeheader()
            writer.writerows(rows)
        apply_umask(tmp)
        os.replace(tmp, path)
        self.metrics_keys = sorted(fields)


def _step(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row["step"]))
    except (KeyError, TypeError, ValueError):
        return None


class ResumingCSVLogger(CSVLogger):
    """``CSVLogger(output, name="", version="")`` that keeps the rows before ``keep_before``
    (the global step of the checkpoint a run resumes from; ``None``: a fresh log)."""

    def __init__(self, output: Path, keep_before: int | None = None) -> None:
        super().__init__(output, name="", version="")
        self._keep_before = keep_before

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(self.log_dir, self._keep_before)
        return cast(ExperimentWriter, self._experiment)
