"""Training curves of a run directory as one PNG: loss, learning rate, probe / validation scores.

Reads what every run writes (``metrics.csv``; ``probe.csv`` with a kNN probe) and nothing else,
so it works on a finished run, a running one and a copied one alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from geofm.errors import GeofmError


@dataclass
class CurvePanel:
    """One panel: a title, a y label, and named ``(steps, values)`` series."""

    title: str
    ylabel: str
    series: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    log_y: bool = False


def _series(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty values of ``column`` by step (a step logged twice keeps its last value)."""
    rows = frame[["step", column]].dropna()
    rows = rows.groupby("step", as_index=False).last()
    return rows["step"].to_numpy(np.int64), rows[column].to_numpy(np.float64)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as e:
        raise GeofmError(f"cannot read the metrics ({type(e).__name__})", path) from None
    if "step" not in frame.columns:
        raise GeofmError("has no 'step' column: not a geofm metrics file", path)
    return frame


def run_curves(run: str | Path) -> list[CurvePanel]:
    """The panels :func:`plot_run` draws for ``run``, in order.

    Loss (every ``*loss*`` column: training, per store, validation), learning rate (every
    ``*lr*`` column of the training log), then the kNN probe's scores (``probe.csv``) and the
    validation metrics (``val/*`` besides the loss), each where the run has them.

    Raises:
        GeofmError: No run directory, or no ``metrics.csv`` in it.
    """
    root = Path(run)
    if not root.is_dir():
        raise GeofmError("no such run directory", root, "pass a run directory such as "
                         "runs/pretrain")
    metrics = root / "metrics.csv"
    if not metrics.exists():
        raise GeofmError("no metrics.csv in the run directory", root,
                         "pass the --output directory of geofm pretrain, finetune or align")
    frame = _read_csv(metrics)
    columns = [c for c in frame.columns if c not in ("epoch", "step")]
    panels = []
    loss = CurvePanel("loss", "loss")
    lr = CurvePanel("learning rate", "learning rate")
    val = CurvePanel("validation", "score")
    for column in columns:
        steps, values = _series(frame, column)
        if not len(steps):
            continue
        name = column.split("/", 1)[-1]
        if "loss" in name:
            loss.series[column] = (steps, values)
        elif column.startswith("train/lr") or name == "lr":
            lr.series[column] = (steps, values)
        elif column.startswith("val/"):
            val.series[column] = (steps, values)
    if loss.series:  # a log scale only where the loss spans decades
        every = np.concatenate([v for _, v in loss.series.values()])
        loss.log_y = bool((every > 0).all() and every.max() / every.min() > 20)
    panels += [p for p in (loss, lr) if p.series]
    probe_csv = root / "probe.csv"
    if probe_csv.exists():
        probe = CurvePanel("kNN probe", "score")
        pframe = _read_csv(probe_csv)
        for column in pframe.columns:
            if column != "step":
                steps, values = _series(pframe, column)
                if len(steps):
                    probe.series[column] = (steps, values)
        if probe.series:
            panels.append(probe)
    if val.series:
        panels.append(val)
    if not panels:
        raise GeofmError("metrics.csv has no logged values yet", metrics,
                         "wait for the first logged steps (trainer.log_every_n_steps)")
    return panels


def plot_run(run: str | Path, output: str | Path | None = None) -> tuple[Path, list[str]]:
    """Draw a run's curves to a PNG.

    Args:
        run: A run directory (``--output`` of ``geofm pretrain``, ``finetune`` or ``align``).
        output: The PNG (default: ``<run>/curves.png``).

    Returns:
        The PNG's path and the panel titles, in order.

    Raises:
        GeofmError: No run or metrics, or the PNG cannot be written.

    Example:
        >>> from geofm.plot import plot_run
        >>> png, panels = plot_run("runs/pretrain")  # doctest: +SKIP
        >>> panels  # doctest: +SKIP
        ['loss', 'learning rate']
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = run_curves(run)
    out = Path(output) if output is not None else Path(run) / "curves.png"
    fig, axes = plt.subplots(len(panels), 1, figsize=(7, 2.6 * len(panels)), squeeze=False,
                             sharex=True)
    for ax, panel in zip(axes[:, 0], panels):
        for name, (steps, values) in panel.series.items():
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=name)
        ax.set_title(panel.title)
        ax.set_ylabel(panel.ylabel)
        if panel.log_y:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    axes[-1, 0].set_xlabel("step")
    fig.suptitle(str(Path(run).resolve().name))
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=90)
    except OSError as e:
        raise GeofmError(f"cannot write the plot ({e.strerror})", out,
                         "choose a writable -o path") from None
    finally:
        plt.close(fig)
    return out, [p.title for p in panels]
