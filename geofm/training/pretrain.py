"""Self-supervised pretraining: encoder + objective as a LightningModule, and the run API.

``run_pretrain(cfg)`` is what ``geofm pretrain`` calls. It writes into ``cfg["output"]``:

- ``pretrain.safetensors``: the geofm checkpoint (weights + band contract + normalisation +
  model/objective configs + data provenance);
- ``checkpoints/last.ckpt``: Lightning's training state for ``--resume`` (your own runs only);
- ``config.yaml`` (resolved), ``metrics.csv`` (loss, lr, images/s, tokens/s per logged step;
  with several stores also ``train/loss_store<i>``, ``i`` counting the stores in
  ``data.store``'s order: the store's mean over all ranks' batches since the last row);
- ``previews/step_*.png``: input / visible tokens / reconstruction composites;
- ``probe.csv`` with ``probe.store`` set: kNN scores of the features during training
  (:mod:`geofm.training.probe`).

Every step's randomness (masking, channel sampling, drop-path) comes from a seed derived from
``(seed, global_step)``, so a resumed run takes exactly the step an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.parsing import AttributeDict

from geofm.card import Architecture, ModelCard, Provenance
from geofm.checkpoint import save_checkpoint
from geofm.diskspace import full_disk_reported
from geofm.errors import GeofmError
from geofm.io.outputs import check_writable
from geofm.io.store import ChipStore
from geofm.levels import merged_levels, store_levels
from geofm.models import create_model
from geofm.objectives import create_objective
from geofm.packaged import sample_store
from geofm.training.cards import trained_contract
from geofm.training.config import PRETRAIN_DEFAULTS, check_config
from geofm.training.datamodule import MixedChipDataModule, band_specs
from geofm.training.pretrain_init import check_encoder_bands, load_pretrain_init
from geofm.training.probe import KnnProbe, open_probe_store
from geofm.training.quiet import quiet_lightning
from geofm.training.schedule import LR_SCALINGS, adamw, scaled_lr, warmup_cosine
from geofm.training.trainer import (
    compile_blocks,
    fit_steps,
    gathered_state,
    resolve_precision,
)
from geofm.viz import reconstruction_preview


class NonFiniteLossError(GeofmError):
    """The training loss became NaN or infinite."""


class PretrainTask(L.LightningModule):
    """Encoder + self-supervised objective, AdamW with linear warm-up and cosine decay.

    Args:
        model: Registered encoder name.
        model_kwargs: Encoder overrides (``bands`` is set from ``bands``).
        objective: Registered objective name.
        objective_kwargs: Objective settings.
        bands: Band names the encoder is built for.
        lr: Peak learning rate.
        weight_decay: AdamW weight decay (not applied to norms, biases and embeddings).
        betas: AdamW betas.
        warmup_steps: Linear warm-up steps.
        max_steps: Total steps (cosine decay to 0 at the end).
        seed: Base seed of the per-step randomness.
        compile: Compile the encoder's and decoder's transformer blocks
            (:func:`~geofm.training.trainer.compile_blocks`).
        lr_scaling: How ``lr`` becomes the rate used (:func:`~geofm.training.schedule.scaled_lr`).
        batch_size: Images per step on one rank (for ``lr_scaling``).
    """

    if TYPE_CHECKING:  # Lightning annotates hparams as AttributeDict | MutableMapping
        @property
        def hparams(self) -> AttributeDict: ...

    def __init__(
        self,
        model: str,
        model_kwargs: dict[str, Any],
        objective: str,
        objective_kwargs: dict[str, Any],
        bands: list[str],
        lr: float = 1e-3,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 10,
        max_steps: int = 100,
        seed: int = 0,
        compile: bool = False,
        lr_scaling: str = "none",
        batch_size: int = 1,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.encoder = create_model(model, **{**model_kwargs, "bands": list(bands)})
        self.objective = create_objective(objective, self.encoder, **objective_kwargs)
        if compile:
            compile_blocks(self.objective)
        self._t0: float | None = None
        self._store_sums: torch.Tensor | None = None
        self.last_output: Any = None
        self.seen: set[int] = set()


    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        torch.manual_seed(self.hparams.seed * 1_000_003 + self.global_step)
        images = batch["image"]  # [B, C, H, W]
        if "meta" in batch:
            self.seen.update(int(i) for i in batch["meta"]["index"])
        progress = min(1.0, self.global_step / max(1, self.hparams.max_steps))
        out = self.objective(images, batch["bands"], valid=batch.get("valid"), progress=progress)
        if not torch.isfinite(out.loss):
            raise NonFiniteLossError(
                f"non-finite loss ({out.loss.item()}) at step {self.global_step}",
                hint="lower the learning rate (--set optim.lr=...) or check the store's pixels")
        # Kept for the previews, without the loss's graph: holding it would keep the step's
        # autograd nodes alive into the next step.
        self.last_output = dataclasses.replace(out, loss=out.loss.detach())
        b = images.shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=b, sync_dist=False)
        self._log_store_loss(batch, out.loss.detach(), b)
        opt = cast(LightningOptimizer, self.optimizers())  # one optimizer
        self.log("train/lr", opt.param_groups[0]["lr"], batch_size=b)
        self.log("train/visible_tokens", float(out.num_visible), batch_size=b)
        now = time.perf_counter()
        if self._t0 is not None:
            dt = max(now - self._t0, 1e-9)
            world = self.trainer.world_size
            self.log("train/images_per_s", b * world / dt, batch_size=b)
            self.log("train/tokens_per_s", b * world * out.num_visible / dt, batch_size=b)
        self._t0 = now
        return out.loss

    def exclude_time(self, seconds: float) -> None:
        """Leave ``seconds`` spent outside training (a probe) out of the next images/s."""
        if self._t0 is not None:
            self._t0 += seconds

    def _log_store_loss(self, batch: dict[str, Any], loss: torch.Tensor, b: int) -> None:
        """With several stores, each store's mean loss over every rank's batches since the
        last logged step, in a column of its own (NaN for a store without batches there)."""
        stores = len(getattr(getattr(self.trainer, "datamodule", None), "stores", ()))
        store = batch.get("meta", {}).get("store")
        if stores < 2 or store is None:
            return
        if self._store_sums is None:
            self._store_sums = torch.zeros(stores, 2, device=loss.device)  # [S, (sum, count)]
        self._store_sums[store] += torch.stack([loss.float(), torch.ones_like(loss.float())])
        # Lightning writes a row when its batch counter + 1 is a multiple of the interval; a
        # key logged only then never repeats a stale value. Every rank reaches this together.
        every: int = getattr(self.trainer, "log_every_n_steps", 0)  # set by Lightning at fit
        if not every or (self.global_step + 1) % every:  # 0: Lightning never logs
            return
        sums = self.trainer.strategy.reduce(self._store_sums.clone(), reduce_op="sum")
        means = sums[:, 0] / sums[:, 1]  # NaN where a store had no batch
        for i in range(stores):
            self.log(f"train/loss_store{i}", means[i], batch_size=b, sync_dist=False)
        self._store_sums.zero_()

    def effective_lr(self) -> float:
        """The peak learning rate after ``lr_scaling`` (global batch: all ranks, with gradient
        accumulation)."""
        trainer = self._trainer
        world = trainer.world_size if trainer is not None else 1
        accumulate = trainer.accumulate_grad_batches if trainer is not None else 1
        return scaled_lr(float(self.hparams.lr), self.hparams.lr_scaling,
                         self.hparams.batch_size * world * accumulate,
                         getattr(self.objective, "kept_ratio", None),
                         getattr(self.objective, "visible_ratio", None))

    def configure_optimizers(self) -> Any:
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "embed" in name or "token" in name else decay).append(p)
        opt = adamw(
            [{"params": decay, "weight_decay": self.hparams.weight_decay},
             {"params": no_decay, "weight_decay": 0.0}],
            self._trainer, lr=self.effective_lr(), betas=tuple(self.hparams.betas))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(self.hparams.warmup_steps, self.hparams.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _Previews(Callback):
    """Saves reconstruction previews at the end of training (rank 0)."""

    def __init__(self, out_dir: Path, count: int):
        self.out_dir, self.count = out_dir, count

    def on_train_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        assert isinstance(task, PretrainTask)  # attached to pretraining runs only
        out = task.last_output
        if out is None or self.count <= 0 or not trainer.is_global_zero:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        n = min(self.count, out.images.shape[0])

        def cpu(t: torch.Tensor) -> np.ndarray:
            return t[:n].detach().float().cpu().numpy()

        reconstruction_preview(
            cpu(out.images), cpu(out.visible_mask), cpu(out.pred_pixels), cpu(out.target_mask),
            out.bands, self.out_dir / f"step_{trainer.global_step:06d}.png",
            title=f"{task.hparams.model} + {task.hparams.objective}, step {trainer.global_step}")


class _DataRecord(Callback):
    """Writes which chips each rank trained on (``data_rank{R}.json``), for auditing runs."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir

    def on_train_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        assert isinstance(task, PretrainTask)  # attached to pretraining runs only
        seen = sorted(task.seen)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "num_chips_seen": len(seen), "chip_indices": seen[:100_000]}
        path = self.out_dir / f"data_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))


def store_paths(store: str | Path | list[str | Path] | None) -> list[str | Path]:
    """``data.store`` as a list: one path, several (a mixed-sensor run), or none."""
    if store is None:
        return []
    return list(store) if isinstance(store, (list, tuple)) else [store]


def check_chip_sizes(paths: list[str | Path], stores: list[ChipStore], patch_size: int,
                     fixed: bool = False) -> None:
    """Every store's chips must split into whole patches, checked before anything trains (a
    second store's batch may otherwise fail hours into a run). ``fixed``: the patch size is the
    continued encoder's, which the hint does not offer to change.

    Raises:
        GeofmError: Naming the store and its chip size.
    """
    for path, store in zip(paths, stores, strict=True):
        h, w = store.chip_size
        if h % patch_size or w % patch_size:
            change = "" if fixed else "set model.kwargs.patch_size to a divisor of both, or "
            raise GeofmError(f"chips of {h}×{w} px do not split into {patch_size}-px patches",
                             path, hint=f"{change}rebuild the store with a chip size that is a "
                             f"multiple of {patch_size}")


def run_pretrain(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Pretrain an encoder as configured (see :data:`geofm.training.config.PRETRAIN_DEFAULTS`).

    ``data.store`` may list several stores: a band-token encoder then trains on all of them,
    each batch from one store (:class:`~geofm.training.datamodule.MixedChipDataModule`), and the
    checkpoint's band contract is the union of their bands.

    Returns:
        ``{"output": dir, "checkpoint": path, "final_loss": float, "steps": int}``.
    """
    check_config(PRETRAIN_DEFAULTS, cfg)
    data, tr, opt = cfg["data"], cfg["trainer"], cfg["optim"]
    quiet_lightning()
    out = Path(cfg["output"])
    check_writable(out)
    init = None
    if cfg.get("init"):
        init = load_pretrain_init(cfg["init"], cfg.get("weights"))
    elif cfg.get("weights"):
        raise GeofmError("--weights goes with --init NAME (a published model's name)",
                         hint="pass --init NAME --weights FILE ('geofm models' lists them)")
    stores = store_paths(data["store"]) or [sample_store(quiet=not progress)]
    bands = data["bands"]
    if init is not None and bands is None:
        bands = init.store_bands(stores)
    specs = band_specs(bands, len(stores))
    if data["weights"] is not None and len(stores) == 1:
        raise GeofmError("data.weights shares batches between several stores, but one is given",
                         hint="list the stores in data.store (or repeat --data)")
    L.seed_everything(tr["seed"], workers=True, verbose=False)
    common = {"batch_size": data["batch_size"], "num_workers": data["num_workers"],
              "seed": tr["seed"], "arrays": ["image", "valid"]}
    normalization = data.get("normalization") or "stats"
    if init is not None:
        init.check_normalization(normalization)
    dm = MixedChipDataModule(stores, specs, split=data["split"], weights=data["weights"],
                             normalization=normalization, **common)
    if init is not None:
        init.normalize(dm, data["split"])
    lr_scaling = opt.get("lr_scaling") or "none"
    if lr_scaling not in LR_SCALINGS:
        raise GeofmError(f"unknown optim.lr_scaling {lr_scaling!r}",
                         hint=f"use one of {', '.join(LR_SCALINGS)}")
    if lr_scaling == "selective_mae" and cfg["objective"]["name"] != "selective_mae":
        raise GeofmError("optim.lr_scaling: selective_mae scales by the selective_mae "
                         f"objective's ratios, but the objective is {cfg['objective']['name']}",
                         hint="use lr_scaling: batch or none")
    model_name, model_kwargs = cfg["model"]["name"], dict(cfg["model"].get("kwargs") or {})
    model_bands = dm.band_names
    if init is not None:  # the init's architecture and its own bands, not model.*
        model_name, model_kwargs = init.architecture.name, dict(init.architecture.config)
        model_bands = list(model_kwargs["bands"])
    task = PretrainTask(
        model_name, model_kwargs,
        cfg["objective"]["name"], dict(cfg["objective"].get("kwargs") or {}),
        model_bands, lr=float(opt["lr"]), weight_decay=float(opt["weight_decay"]),
        betas=tuple(opt["betas"]), warmup_steps=opt["warmup_steps"],
        max_steps=tr["max_steps"], seed=tr["seed"], compile=bool(tr.get("compile", False)),
        lr_scaling=lr_scaling, batch_size=data["batch_size"])
    if init is not None:
        task.encoder.load_state_dict(init.state, strict=True)
        for names in dm.store_bands:
            check_encoder_bands(task.objective.encoder, names)
    served, opened = dm.store_bands, dm.stores
    check_chip_sizes(stores, opened, task.encoder.patch_size, fixed=init is not None)
    if not task.encoder.band_tokens and len({frozenset(b) for b in served}) > 1:
        raise GeofmError(
            "the stores serve different bands (" + "; ".join(
                f"{p}: {', '.join(b)}" for p, b in zip(stores, served, strict=True))
            + f") and {model_name} takes one fixed band list",
            hint="pretrain a band-token model (channelvit_*) or give every store the same "
            "--bands")
    precision = resolve_precision(tr)
    named = [str(p) for p in stores]
    resolved = {**cfg, "data": {**data, "store": named[0] if len(named) == 1 else named},
                "trainer": {**tr, "precision": precision}}
    with full_disk_reported(out, None, "config.yaml"):
        (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    callbacks: list[Callback] = [_Previews(out / "previews", cfg.get("previews", 3)),
                                 _DataRecord(out)]
    probe = None
    if cfg["probe"]["store"] and "fsdp" in str(tr["strategy"]).lower():
        # A sharded encoder only gathers its weights inside the trainer's own forward pass.
        raise GeofmError("the kNN probe does not run under FSDP",
                         hint="leave probe.store unset and probe the checkpoint with "
                         "'geofm eval --knn', or train with --strategy ddp")
    if cfg["probe"]["store"]:
        contract = trained_contract(task.encoder, dm.band_names, dm.normalize, opened, {})
        probe = KnnProbe(open_probe_store(cfg["probe"]), cfg["probe"], contract, out)
        callbacks.append(probe)
    trainer = fit_steps(task, dm, tr, out, callbacks, progress, cfg.get("resume"),
                        label="pretrain")
    result: dict[str, Any] = {"output": str(out), "steps": trainer.global_step,
                              "lr": task.effective_lr()}
    loss = trainer.callback_metrics.get("train/loss")
    result["final_loss"] = float(loss) if loss is not None else float("nan")
    weights = gathered_state(trainer, "objective")  # every rank: FSDP gathers the shards
    if trainer.is_global_zero:
        shares = data["weights"] or [None] * len(stores)
        records = [
            {"store": str(path), "split": data["split"], "bands": names,
             "split_method": store.attrs["split"]["method"],
             "num_chips": len(store.split_indices(data["split"])),
             "fingerprint": store.attrs["provenance"].get("fingerprint")}
            | ({} if share is None else {"weight": float(share)})
            for path, store, names, share in zip(stores, opened, served, shares, strict=True)]
        levels = merged_levels(store_levels(s.attrs) for s in opened)
        card = ModelCard(
            kind="pretrain",
            architecture=Architecture(task.encoder.model_name, task.encoder.model_config),
            contract=(init.contract(dm.band_names, levels) if init is not None and init.released
                      else trained_contract(task.encoder, dm.band_names, dm.normalize, opened,
                                            levels)),
            provenance=Provenance(
                data=records[0] if len(records) == 1 else {"stores": records},
                objective={"name": cfg["objective"]["name"],
                           "config": cfg["objective"].get("kwargs") or {}},
                training={"steps": trainer.global_step, "final_loss": result["final_loss"],
                          "lr": task.effective_lr(), "lr_scaling": lr_scaling,
                          "precision": precision, "world_size": trainer.world_size,
                          "probe": None if probe is None else probe.record},
                encoder_source={} if init is None else init.provenance(),
                release={} if init is None else init.card.provenance.release),
        )
        result["checkpoint"] = str(save_checkpoint(out / "pretrain.safetensors",
                                                   weights, card))
    return result
