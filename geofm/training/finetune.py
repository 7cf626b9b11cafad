"""Finetuning a pretrained encoder with a head, and the run API ``geofm finetune`` calls.

Writes into ``cfg["output"]``: ``finetune.safetensors`` (the model selected on the validation
split, with everything prediction needs in its model card), ``config.yaml``, ``metrics.csv`` and
``checkpoints/`` (Lightning state for resuming).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.parsing import AttributeDict
from torch import Tensor

from geofm.card import Architecture, Provenance, TaskSpec
from geofm.checkpoint import save_checkpoint
from geofm.errors import GeofmError
from geofm.io.outputs import check_writable
from geofm.levels import store_levels
from geofm.loading import build_encoder, load_encoder, store_bands_for
from geofm.metrics import HIGHER_IS_BETTER, PRIMARY, batch_targets, task_metrics
from geofm.models.finetuner import TASKS, Finetuner, task_loss
from geofm.published.release import (
    check_store_scale,
    has_release_contract,
    release_contract,
    release_normalize,
)
from geofm.training.cards import trained_contract
from geofm.training.config import FINETUNE_DEFAULTS, check_config
from geofm.training.datamodule import ChipDataModule
from geofm.training.loggers import run_loggers
from geofm.training.progress import StepProgress
from geofm.training.quiet import quiet_lightning
from geofm.training.schedule import adamw, warmup_cosine


class FinetuneTask(L.LightningModule):
    """Encoder + head trained for one task; validation metrics from torchmetrics.

    Args:
        encoder_name: Registered encoder name.
        encoder_config: Its constructor arguments (from the pretraining checkpoint or the
            published release's card).
        bands: Bands fed to the model.
        task: One of :data:`TASKS`.
        head: Head kind (``linear``, ``attentive``, ``mlp``, ``segmentation``).
        num_outputs: Classes or regression targets.
        freeze: ``frozen``, ``partial`` or ``full``.
        unfreeze_last: Blocks trained in ``partial`` mode.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        layer_decay: Layer-wise learning-rate decay (1 = none).
        warmup_steps: Linear warm-up steps.
        max_steps: Total steps (cosine decay).
        seed: Base seed of per-step randomness.
        hcs: Hierarchical Channel Sampling on every training batch.
    """

    if TYPE_CHECKING:  # Lightning annotates hparams as AttributeDict | MutableMapping
        @property
        def hparams(self) -> AttributeDict: ...

    def __init__(self, encoder_name: str, encoder_config: dict[str, Any], bands: list[str],
                 task: str, head: str, num_outputs: int, freeze: str = "frozen",
                 unfreeze_last: int = 0, lr: float = 1e-3, weight_decay: float = 0.05,
                 layer_decay: float = 0.75, warmup_steps: int = 5, max_steps: int = 100,
                 seed: int = 0, hcs: bool = False):
        super().__init__()
        self.save_hyperparameters()
        encoder = build_encoder(Architecture(encoder_name, encoder_config))
        self.model = Finetuner(encoder, task=task, head=head, num_outputs=num_outputs,
                               freeze=freeze, unfreeze_last=unfreeze_last, hcs=hcs)
        self._val: list[tuple[Tensor, Tensor]] = []
        self.val_metrics: dict[str, Any] = {}

    def forward(self, images: Tensor, bands: list[str]) -> Tensor:
        return self.model(images, bands)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        torch.manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
        out = self.model(batch["image"], batch["bands"])
        loss = task_loss(self.hparams.task, out, batch_targets(self.hparams.task, batch))
        if not torch.isfinite(loss):
            raise GeofmError(f"non-finite loss at step {self.global_step}",
                             hint="lower the learning rate")
        b = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        opt = cast(LightningOptimizer, self.optimizers())  # one optimizer
        self.log("train/lr", opt.param_groups[0]["lr"], batch_size=b)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self.model(batch["image"], batch["bands"])
        self._val.append((out.detach().cpu(), batch_targets(self.hparams.task, batch).cpu()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        outs = torch.cat([o for o, _ in self._val])
        tgts = torch.cat([t for _, t in self._val])
        self._val.clear()
        self.val_metrics = task_metrics(self.hparams.task, outs, tgts)
        for k, v in self.val_metrics.items():
            if isinstance(v, float) and not math.isnan(v):
                self.log(f"val/{k}", v, prog_bar=k == PRIMARY[self.hparams.task])

    def configure_optimizers(self) -> Any:
        groups = self.model.param_groups(lr=self.hparams.lr,
                                         weight_decay=self.hparams.weight_decay,
                                         layer_decay=self.hparams.layer_decay)
        opt = adamw(groups, self._trainer, lr=self.hparams.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(self.hparams.warmup_steps, self.hparams.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def _check_task(task: str, dm: ChipDataModule) -> int:
    """Number of outputs for ``task`` on this store, or a clear error if the store cannot
    supervise it."""
    store = dm.store
    if task not in TASKS:
        raise GeofmError(f"unknown task {task!r}", hint=f"use one of {', '.join(TASKS)}")
    arrays = store.arrays
    if task in ("multilabel", "classification") and "label" not in arrays:
        raise GeofmError(f"task {task} needs scene labels but the store has none", store.path)
    if task == "segmentation" and "mask" not in arrays:
        raise GeofmError("task segmentation needs masks but the store has none", store.path,
                         "build the store with reference maps or choose another task")
    if task == "regression" and "target" not in arrays:
        raise GeofmError("task regression needs a target array but the store has none",
                         store.path)
    if task == "classification":
        labels = store.read(np.arange(len(store)), arrays=["label"])["label"]
        if (labels.sum(1) != 1).any():
            raise GeofmError("the store's labels are multi-label (rows with ≠ 1 class)",
                             store.path, "use --task multilabel")
    if task == "regression":
        return len(store.attrs.get("target_names", []))
    return len(store.classes)


def run_finetune(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Finetune as configured (see :data:`geofm.training.config.FINETUNE_DEFAULTS`).

    Returns:
        ``{"output", "checkpoint", "steps", "val_metrics", "selected_on"}``.
    """
    check_config(FINETUNE_DEFAULTS, cfg)
    data, tr, opt, head = cfg["data"], cfg["trainer"], cfg["optim"], cfg["head"]
    quiet_lightning()
    out = Path(cfg["output"])
    check_writable(out)
    if not cfg.get("init"):
        raise GeofmError("no pretrained checkpoint given", hint="pass --init PRETRAINED")
    if not data.get("store"):
        raise GeofmError("no chip store given", hint="pass --data STORE")
    init_encoder, init_card = load_encoder(cfg["init"], cfg.get("weights"))
    state = init_encoder.state_dict()
    del init_encoder
    released = has_release_contract(init_card)
    L.seed_everything(tr["seed"], workers=True, verbose=False)
    bands = data["bands"]  # a count of 0 is refused, not read as "unset"
    if bands is None:
        bands = store_bands_for(init_card, data["store"])
    dm = ChipDataModule(data["store"], bands=bands, batch_size=data["batch_size"],
                        num_workers=data["num_workers"], train_split=data["train_split"],
                        val_split=data["val_split"], seed=tr["seed"])
    if released:  # the release's units and statistics, not the store's
        check_store_scale(dm.store, dm.band_names, data["train_split"])
        dm.normalize = release_normalize(init_card.contract, dm.band_names)
    task_name = cfg["task"]
    num_outputs = _check_task(task_name, dm)
    if len(dm.dataset(data["train_split"])) == 0:
        raise GeofmError(f"split {data['train_split']!r} is empty", dm.store.path)
    kind = head["kind"] or ("segmentation" if task_name in ("segmentation", "regression")
                            else "linear")
    task = FinetuneTask(
        init_card.architecture.name, dict(init_card.architecture.config), dm.band_names,
        task_name, kind,
        num_outputs, freeze=head["freeze"], unfreeze_last=head["unfreeze_last"],
        lr=float(opt["lr"]), weight_decay=float(opt["weight_decay"]),
        layer_decay=float(opt["layer_decay"]), warmup_steps=opt["warmup_steps"],
        max_steps=tr["max_steps"], seed=tr["seed"], hcs=bool(head.get("hcs", False)))
    task.model.encoder.load_state_dict(state, strict=True)
    if task_name == "regression":
        targets = dm.store.read(dm.store.split_indices(data["train_split"]),
                                arrays=["target"])["target"]
        t = targets.astype(np.float64).transpose(1, 0, 2, 3).reshape(targets.shape[1], -1)
        task.model.set_target_scale(np.nanmean(t, axis=1), np.nanstd(t, axis=1))
    (out / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    primary = PRIMARY[task_name]
    select = ModelCheckpoint(dirpath=out / "checkpoints", monitor=f"val/{primary}",
                             mode="max" if HIGHER_IS_BETTER[task_name] else "min",
                             save_top_k=1, save_last=True)
    trainer = L.Trainer(
        max_steps=tr["max_steps"], accelerator=tr["accelerator"], devices=tr["devices"],
        precision=tr["precision"] or "32-true", log_every_n_steps=tr["log_every_n_steps"],
        val_check_interval=min(tr["val_every_n_steps"], tr["max_steps"]),
        check_val_every_n_epoch=None,
        logger=run_loggers(out, tr.get("logger")), num_sanity_val_steps=0,
        callbacks=[select, *([StepProgress("finetune")] if progress else [])],
        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, datamodule=dm)
    best = select.best_model_path
    if best:
        task.load_state_dict(torch.load(best, map_location="cpu", weights_only=True)["state_dict"])
    trainer.validate(task, datamodule=dm, verbose=False)
    store = dm.store
    is_regression = task_name == "regression"
    levels = {**init_card.contract.processing_levels, **store_levels(store.attrs)}
    card = init_card.with_(
        kind="finetune",
        contract=(release_contract(init_card.contract, dm.band_names, store_levels(store.attrs))
                  if released else
                  trained_contract(task.model.encoder, dm.band_names, dm.normalize, [store],
                                   levels)),
        tile_size=tuple(store.chip_size),
        patch_size=int(task.model.encoder.patch_size),
        gsd_m=store.attrs.get("gsd_m"),
        classes=tuple(store.attrs["target_names"] if is_regression else store.classes),
        class_colors=() if is_regression else tuple(store.class_colors),
        task=TaskSpec(task=task_name, head=kind, num_outputs=num_outputs,
                      freeze=head["freeze"], unfreeze_last=head["unfreeze_last"],
                      hcs=bool(head.get("hcs", False)),
                      selection={"split": data["val_split"], "metric": primary,
                                 "best_checkpoint": Path(best).name if best else None},
                      val_metrics={k: v for k, v in task.val_metrics.items()
                                   if isinstance(v, float)}),
        text=None,
        provenance=Provenance(
            data={"store": str(store.path), "train_split": data["train_split"],
                  "val_split": data["val_split"], "split_method": store.attrs["split"]["method"],
                  "fingerprint": store.attrs["provenance"].get("fingerprint")},
            encoder_source={"checkpoint": str(cfg["init"]), "kind": init_card.kind,
                            **({"weights": str(cfg["weights"])} if cfg.get("weights") else {}),
                            "data": dict(init_card.provenance.data)},
            release=init_card.provenance.release),
    )
    ckpt = save_checkpoint(out / "finetune.safetensors", task.model.state_dict(), card)
    return {"output": str(out), "checkpoint": str(ckpt), "steps": trainer.global_step,
            "val_metrics": task.val_metrics,
            "selected_on": f"{data['val_split']}:{primary}" if data["val_split"] else None}
