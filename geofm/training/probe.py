"""A kNN probe of the encoder during pretraining.

A masked-image-modelling loss says how well pixels are reconstructed, not how useful the
features are. With ``probe.store`` set, the pretraining run scores the encoder's frozen
features every ``probe.every_n_steps`` steps (and before the first and after the last) with
the DINO-style weighted kNN vote of :func:`geofm.evaluation.finetuned.knn_metrics`: up to
``probe.max_chips`` ``train_split`` chips of a labelled store vote for the labels of up to as
many of its ``split`` chips (the same seeded subsets every time). Nothing is trained on the
labels. Rows go to ``probe.csv`` in the run directory; the last one also goes into the
model card (``provenance.training.probe``).
"""

from __future__ import annotations

import csv
import time
import warnings
from pathlib import Path
from typing import Any, cast

import lightning as L
from lightning.pytorch.callbacks import Callback

from geofm.card import BandContract
from geofm.errors import GeofmError
from geofm.io.store import ChipStore, open_valid_store
from geofm.models.encoder import FeatureEncoder


def open_probe_store(cfg: dict[str, Any]) -> ChipStore:
    """The probe's store, its settings checked before training starts.

    Raises:
        GeofmError: A setting of the wrong type, an unknown task, the same split voting and
            scored, an invalid store, one without scene labels, or an empty split.
    """
    if not isinstance(cfg["store"], (str, Path)):
        raise GeofmError(f"probe.store must be one store path, not {cfg['store']!r}")
    for key in ("every_n_steps", "k", "max_chips"):
        value = cfg[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise GeofmError(f"probe.{key} must be a positive integer, not {value!r}")
    if cfg["task"] not in ("multilabel", "classification"):
        raise GeofmError(f"probe.task must be multilabel or classification, not {cfg['task']!r}")
    splits = (cfg["train_split"], cfg["split"])
    if not all(isinstance(x, str) for x in splits) or splits[0] == splits[1]:
        raise GeofmError(f"probe.train_split and probe.split must name two different splits, "
                         f"not {splits[0]!r} and {splits[1]!r}",
                         hint="chips scored against themselves would inflate the probe")
    store = open_valid_store(cfg["store"], "probe store")
    if "label" not in store.arrays:
        raise GeofmError("the probe needs scene labels but the store has none", store.path,
                         hint="probe with a labelled store (e.g. a reBEN build)")
    for split in splits:
        store.split_indices(split)  # raises a StoreError naming the store's splits
    return store


class KnnProbe(Callback):
    """Scores the pretraining encoder with a kNN probe on a labelled store.

    Every rank computes the probe (a sharded encoder would need all of them for a forward
    pass; FSDP runs refuse the probe) on at most ``max_chips`` chips of each split; rank 0
    writes the rows. The probe's time is left out of the task's images/s (``exclude_time``).

    Args:
        store: The labelled store (:func:`open_probe_store`).
        cfg: The ``probe`` config section.
        contract: The run's band contract.
        out_dir: Run directory (``probe.csv`` goes there).
    """

    def __init__(self, store: ChipStore, cfg: dict[str, Any], contract: BandContract,
                 out_dir: Path):
        # The model's bands must be in the store, checked before training starts.
        contract.match(store.bands, store.path)
        self.store, self.cfg, self.contract = store, cfg, contract
        self.path = out_dir / "probe.csv"
        self.rows: list[dict[str, Any]] = []

    def _probe(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        from geofm.evaluation.finetuned import knn_metrics

        step = trainer.global_step
        if self.rows and self.rows[-1]["step"] == step:
            return
        start = time.perf_counter()
        with trainer.precision_plugin.forward_context(), warnings.catch_warnings():
            # A class absent from the scored chips has no AP; the metrics leave it out.
            warnings.filterwarnings("ignore", message="No positive samples")
            # Every pretraining task holds its encoder as ``encoder``.
            encoder = cast(FeatureEncoder, task.encoder)
            r = knn_metrics(encoder, self.contract, self.store, split=self.cfg["split"],
                            train_split=self.cfg["train_split"], k=self.cfg["k"],
                            task=self.cfg["task"], max_chips=self.cfg["max_chips"])
        row = {"step": step, **{k: float(v) for k, v in r["metrics"].items()
                                if isinstance(v, (int, float))}}
        self.rows.append(row)
        if trainer.is_global_zero:
            fields = list(dict.fromkeys(k for r in self.rows for k in r))  # a task change adds
            with self.path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(self.rows)
        exclude = getattr(task, "exclude_time", None)
        if exclude is not None:
            exclude(time.perf_counter() - start)

    def on_train_start(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        if self.path.exists():  # a resumed run keeps the rows of the steps before it
            with self.path.open(newline="") as f:
                rows = [{k: float(v) if v else float("nan") for k, v in row.items()}
                        for row in csv.DictReader(f)]
            self.rows = [{**r, "step": int(r["step"])} for r in rows
                         if r["step"] < trainer.global_step]
        self._probe(trainer, task)

    def on_train_batch_end(self, trainer: L.Trainer, task: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        if trainer.global_step % self.cfg["every_n_steps"] == 0:
            self._probe(trainer, task)

    def on_train_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        self._probe(trainer, task)

    @property
    def record(self) -> dict[str, Any]:
        """What the model card keeps: the settings and the last row."""
        keep = ("split", "train_split", "k", "task", "max_chips")
        return {"store": str(self.cfg["store"]), **{k: self.cfg[k] for k in keep},
                **(self.rows[-1] if self.rows else {})}
