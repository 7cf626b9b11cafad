"""Following a training run: global step / max steps with rate and ETA, on stderr.

Lightning's own bar counts batches per epoch, so a run over a small store prints
``Epoch 17: 1/1`` once per epoch; and it writes to stdout, mixing with a run's report.
:class:`StepProgress` counts optimizer steps against ``max_steps`` on stderr instead: a live
tqdm bar on a terminal, and one plain line every tenth of the run (or every few minutes) when
stderr is a file or a pipe, so a log stays readable.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks import Callback
from tqdm import tqdm

LOG_FRACTION = 0.1
"""Without a terminal, a line each time this fraction of the steps is done ..."""
LOG_SECONDS = 300.0
"""... or this many seconds have passed since the last line."""


def format_seconds(seconds: float) -> str:
    """``75`` → ``"1:15"``, ``3725`` → ``"1:02:05"``; ``"?"`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StepProgress(Callback):
    """Progress of a step-based run on stderr (rank 0 only).

    Args:
        label: What runs (``"pretrain"``, ``"finetune"``, ``"align"``).
        stream: Where to write (default: ``sys.stderr`` at the start of training).
        interactive: Draw a live bar (default: when ``stream`` is a terminal).
    """

    def __init__(self, label: str, stream: TextIO | None = None,
                 interactive: bool | None = None) -> None:
        self.label = label
        self.stream = stream
        self.interactive = interactive
        self.bar: tqdm | None = None
        self.total = 0
        self._t0 = 0.0
        self._step0 = 0
        self._last_line = 0.0
        self._next_step = 0
        self._last_step = -1
        self._printed = -1

    def _out(self) -> TextIO:
        return self.stream if self.stream is not None else sys.stderr

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        out = self._out()
        self.total = int(trainer.max_steps)
        self._step0 = int(trainer.global_step)
        self._t0 = self._last_line = time.monotonic()
        self._next_step = self._step0 + self._log_every()
        interactive = self.interactive
        if interactive is None:
            interactive = bool(getattr(out, "isatty", lambda: False)())
        if interactive:
            self.bar = tqdm(total=self.total, initial=self._step0, desc=self.label,
                            unit="step", file=out, dynamic_ncols=True, leave=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| step {n_fmt}/"
                            "{total_fmt} [{elapsed}<{remaining}, {rate_fmt}]{postfix}")
        elif self._step0:
            print(f"{self.label}: resuming at step {self._step0}/{self.total}", file=out,
                  flush=True)

    def _log_every(self) -> int:
        return max(1, math.ceil(self.total * LOG_FRACTION))

    def on_train_batch_end(self, trainer: L.Trainer, task: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if not trainer.is_global_zero:
            return
        step = int(trainer.global_step)
        if step == self._last_step:  # gradient accumulation: no optimizer step yet
            return
        self._last_step = step
        shown = metrics_text(trainer.progress_bar_metrics)
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix_str(shown, refresh=True)
            return
        now = time.monotonic()
        if step >= self._next_step or now - self._last_line >= LOG_SECONDS or step >= self.total:
            self._line(step, shown, now)
            while self._next_step <= step:
                self._next_step += self._log_every()

    def _line(self, step: int, shown: str, now: float) -> None:
        elapsed = now - self._t0
        done = step - self._step0
        rate = done / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - step) / rate if done > 0 else float("nan")
        pct = 100.0 * step / max(1, self.total)
        text = (f"{self.label}: step {step}/{self.total} ({pct:.0f}%)"
                + (f", {shown}" if shown else "")
                + (f", {rate:.2f} steps/s" if done > 0 else "")
                + f", elapsed {format_seconds(elapsed)}, ETA {format_seconds(eta)}")
        print(text, file=self._out(), flush=True)
        self._last_line, self._printed = now, step

    def on_train_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        elif self._last_step >= 0 and self._printed != self._last_step:
            self._line(int(trainer.global_step), metrics_text(trainer.progress_bar_metrics),
                       time.monotonic())

    def on_exception(self, trainer: L.Trainer, task: L.LightningModule,
                     exception: BaseException) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def metrics_text(metrics: dict[str, Any]) -> str:
    """``{"train/loss": 0.51234}`` → ``"loss 0.5123"``: the values a task marks for the bar."""
    parts = []
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            continue
        name = key.removeprefix("train/")
        parts.append(f"{name} {number:.4g}")
    return ", ".join(parts)
