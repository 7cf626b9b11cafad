"""Image–text alignment: a pretrained geofm encoder and a text tower trained contrastively.

``run_align(cfg)`` is what ``geofm align`` calls. It writes into ``cfg["output"]``:

- ``align.safetensors``: the aligned model (image encoder, projections, temperature, and the
  text tower's weights when it was unlocked) with a model card recording the bands, normalisation,
  text tower, zero-shot templates, caption provenance and training data;
- ``config.yaml`` (resolved), ``metrics.csv`` (loss, learning rate of each part, the scale
  ``exp(logit_scale)`` and image–text pairs/s per logged step);
- ``data_rank{R}.json``: the chips each rank trained on;
- ``checkpoints/last.ckpt``: Lightning's training state for ``--resume``.

Only the training split's captions ever reach the model: the task is given the captions of
those chips alone. Each step draws one caption per chip from a generator seeded by
``(seed, step, chip index)``, and its other randomness (crops, drop-path) from
``(seed, step)``, so runs are reproducible and a resumed run takes the steps an uninterrupted one
would.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.parsing import AttributeDict
from torch import Tensor
from torch.utils.data import DataLoader

from geofm.card import Provenance, TextSpec
from geofm.data.dataset import ChipDataset
from geofm.data.mixed import MixedChips
from geofm.errors import GeofmError
from geofm.evaluation.aligned import (
    ZEROSHOT_TEMPLATES,
    captions_for,
    check_templates,
    load_templates,
)
from geofm.io.outputs import check_writable
from geofm.levels import store_levels
from geofm.loading import load_encoder, store_bands_for
from geofm.models.align import AlignModel, save_aligned
from geofm.models.text import TextTower
from geofm.objectives.contrastive import ContrastiveLoss
from geofm.published.release import (
    check_store_scale,
    has_release_contract,
    release_contract,
    release_normalize,
)
from geofm.training.cards import trained_contract
from geofm.training.config import ALIGN_DEFAULTS, check_config
from geofm.training.datamodule import ChipDataModule, sharded_loader
from geofm.training.quiet import quiet_lightning
from geofm.training.schedule import adamw, warmup_cosine
from geofm.training.trainer import fit_steps, gathered_state, resolve_precision


def training_captions(store: Any, captions: Sequence[Sequence[str]], split: str | None
                      ) -> dict[int, list[str]]:
    """Captions of the chips of ``split`` that have any, keyed by store index.

    This is the only caption source of training: chips of other splits are not in it.
    """
    idx = store.split_indices(split)
    return {int(i): list(captions[i]) for i in idx if len(captions[i])}


def pick_caption(captions: Sequence[str], seed: int, step: int, index: int) -> str:
    """The caption of a chip at a step, deterministic in ``(seed, step, index)``."""
    rng = np.random.default_rng([seed, step, index])
    return captions[int(rng.integers(len(captions)))]


def random_crop(images: Tensor, size: int | None, generator: torch.Generator) -> Tensor:
    """A random ``size`` × ``size`` window of each image (``None`` or the full size: no crop).

    Args:
        images: ``[B, C, H, W]``.
        size: Crop side in pixels.
        generator: Source of the window offsets.

    Returns:
        ``[B, C, size, size]``.
    """
    h, w = images.shape[-2:]
    if size is None or (size >= h and size >= w):
        return images
    ys = torch.randint(0, h - size + 1, (images.shape[0],), generator=generator).tolist()
    xs = torch.randint(0, w - size + 1, (images.shape[0],), generator=generator).tolist()
    return torch.stack([im[:, y:y + size, x:x + size]
                        for im, y, x in zip(images, ys, xs, strict=True)])  # [B, C, s, s]


class _CaptionedChips(ChipDataModule):
    """The datamodule, with its training split narrowed to the chips given to :meth:`keep`,
    batched and dealt to the ranks like pretraining's (:func:`sharded_loader`)."""

    captioned: np.ndarray = np.zeros(0, dtype=np.int64)
    shards_itself = True

    def keep(self, indices: Sequence[int]) -> None:
        """Train on these store indices only."""
        self.captioned = np.asarray(sorted(indices), dtype=np.int64)

    def dataset(self, split: str | None) -> ChipDataset:
        if split != self.train_split:
            return super().dataset(split)
        return ChipDataset(self.store, bands=self.band_names, transforms=self.normalize,
                           indices=self.captioned)

    def train_dataloader(self) -> DataLoader:
        # A contrastive batch needs two pairs: a one-chip tail batch is dropped.
        return sharded_loader(MixedChips([self.dataset(self.train_split)]), self.batch_size,
                              self.seed, self.num_workers, self.trainer, min_batch=2)


class AlignTask(L.LightningModule):
    """Contrastive image–text training of an :class:`~geofm.models.align.AlignModel`.

    AdamW with linear warm-up and cosine decay; the encoder trains at its own (lower) learning
    rate or is frozen, the projections and temperature at ``lr``, an unlocked text tower at
    ``text_lr``.

    Args:
        model: The model to train.
        captions: Training captions by store index (:func:`training_captions`).
        lr: Peak learning rate of the projections and temperature.
        encoder_lr: Peak learning rate of the image encoder.
        text_lr: Peak learning rate of an unlocked text tower.
        freeze_encoder: Keep the image encoder fixed.
        weight_decay: AdamW weight decay (not on norms, biases, embeddings, temperature).
        warmup_steps: Linear warm-up steps.
        max_steps: Total steps (cosine decay).
        crop: Side of the random training crop (None: whole chips).
        seed: Base seed of the per-step randomness.
    """

    if TYPE_CHECKING:  # Lightning annotates hparams as AttributeDict | MutableMapping
        @property
        def hparams(self) -> AttributeDict: ...

    def __init__(self, model: AlignModel, captions: dict[int, list[str]], lr: float = 1e-3,
                 encoder_lr: float = 1e-4, text_lr: float = 1e-5, freeze_encoder: bool = False,
                 weight_decay: float = 0.05, warmup_steps: int = 10, max_steps: int = 100,
                 crop: int | None = None, seed: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "captions"])
        self.model = model
        self.captions = captions
        self.loss = ContrastiveLoss()
        if freeze_encoder:
            self.model.encoder.requires_grad_(False).eval()
        self.strict_loading = not model.text.locked  # locked towers are not checkpointed
        self.seen: set[int] = set()
        self._t0: float | None = None


    def batch_captions(self, indices: Sequence[int]) -> list[str]:
        """One training caption per chip for this step.

        Raises:
            GeofmError: A chip outside the training captions (never expected).
        """
        out = []
        for i in indices:
            caps = self.captions.get(int(i))
            if not caps:
                raise GeofmError(f"chip {int(i)} has no training caption",
                                 hint="only training-split chips with captions may train")
            out.append(pick_caption(caps, self.hparams.seed, self.global_step, int(i)))
        return out

    def train(self, mode: bool = True) -> AlignTask:
        """Training mode; a frozen image encoder stays in eval mode (no dropout or drop path)."""
        super().train(mode)
        if self.hparams.freeze_encoder:
            self.model.encoder.eval()
        return self

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        seed = self.hparams.seed * 1_000_003 + self.global_step
        torch.manual_seed(seed)
        indices = [int(i) for i in batch["meta"]["index"]]
        self.seen.update(indices)
        texts = self.batch_captions(indices)
        gen = torch.Generator().manual_seed(seed)
        images = random_crop(batch["image"], self.hparams.crop, gen)  # [B, C, s, s]
        image, text, scale = self.model(images, batch["bands"], texts)  # [B, E], [B, E], []
        loss = self.loss(image, text, scale)
        if not torch.isfinite(loss):
            raise GeofmError(f"non-finite loss ({loss.item()}) at step {self.global_step}",
                             hint="lower the learning rate (--set optim.lr=...)")
        b = images.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        opt = cast(LightningOptimizer, self.optimizers())  # one optimizer
        rates = {g["name"]: g["lr"] for g in opt.param_groups}
        for name, lr in rates.items():  # projection, encoder, text (those that train)
            self.log(f"train/lr_{name}", lr, batch_size=b)
        self.log("train/scale", float(scale.detach()), batch_size=b)  # exp(logit_scale)
        now = time.perf_counter()
        if self._t0 is not None:
            self.log("train/pairs_per_s", b * self.trainer.world_size / max(now - self._t0, 1e-9),
                     batch_size=b)
        self._t0 = now
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        # CLIP bounds the parameter itself: a cap applied only in the forward pass would leave
        # it drifting upwards with zero gradient, unable to come back.
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, math.log(self.model.max_logit_scale))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.model.text.locked:  # rebuilt from its source on load
            state = checkpoint["state_dict"]
            for k in [k for k in state if k.startswith("model.text.")]:
                del state[k]

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups: list[dict[str, Any]] = []
        parts = [("encoder", "encoder.", hp.encoder_lr), ("text", "text.", hp.text_lr),
                 ("projection", "", hp.lr)]
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        for part, prefix, lr in parts:
            mine = [(n, p) for n, p in named if n.startswith(prefix)]
            named = [(n, p) for n, p in named if not n.startswith(prefix)]
            decay = [p for n, p in mine if p.ndim >= 2 and "embed" not in n and "token" not in n]
            rest = [p for n, p in mine if not (p.ndim >= 2 and "embed" not in n
                                               and "token" not in n)]
            groups += [{"params": ps, "lr": float(lr), "weight_decay": wd, "name": part}
                       for ps, wd in ((decay, hp.weight_decay), (rest, 0.0)) if ps]
        opt = adamw(groups, self._trainer, lr=float(hp.lr))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, warmup_cosine(hp.warmup_steps, hp.max_steps))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class _DataRecord(Callback):
    """Writes which chips each rank trained on (``data_rank{R}.json``), for auditing runs."""

    def __init__(self, out_dir: Path, split: str | None):
        self.out_dir, self.split = out_dir, split

    def on_train_end(self, trainer: L.Trainer, task: L.LightningModule) -> None:
        assert isinstance(task, AlignTask)  # attached to alignment runs only
        seen = sorted(task.seen)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size,
                  "split": self.split, "num_chips_seen": len(seen),
                  "chip_indices": seen[:100_000]}
        (self.out_dir / f"data_rank{trainer.global_rank}.json").write_text(json.dumps(record))


def _check_crop(crop: int | None, patch_size: int, chip: tuple[int, int]) -> int | None:
    if crop is None:
        return None
    crop = int(crop)
    if crop % patch_size or crop <= 0 or crop > min(chip):
        raise GeofmError(f"data.crop={crop} must be a positive multiple of the patch size "
                         f"{patch_size} and at most the chip size {min(chip)}")
    return crop


def run_align(cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Align a pretrained encoder with a text tower (see
    :data:`geofm.training.config.ALIGN_DEFAULTS`).

    Returns:
        ``{"output", "checkpoint", "steps", "final_loss", "num_chips", "captions"}``
        (``captions``: their provenance).
    """
    check_config(ALIGN_DEFAULTS, cfg)
    data, tr, opt, cap = cfg["data"], cfg["trainer"], cfg["optim"], cfg["captions"]
    quiet_lightning()
    # A locked text tower stays in eval mode (no dropout) on purpose.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of train")
    if not cfg.get("init"):
        raise GeofmError("no pretrained checkpoint given", hint="pass --init PRETRAINED")
    if not data.get("store"):
        raise GeofmError("no chip store given", hint="pass --data STORE")
    if data["batch_size"] < 2:
        raise GeofmError(f"data.batch_size is {data['batch_size']}: a contrastive batch needs "
                         "at least 2 image-text pairs", hint="use --batch-size 2 or more")
    out = Path(cfg["output"])
    given = cfg.get("templates")
    templates = (load_templates(given) if isinstance(given, (str, Path))
                 else check_templates(given or ZEROSHOT_TEMPLATES))
    # Seeded first: building the encoder draws from the generator the projections draw from.
    L.seed_everything(tr["seed"], workers=True, verbose=False)
    encoder, init_card = load_encoder(cfg["init"], cfg.get("weights"))
    released = has_release_contract(init_card)
    bands = data["bands"]  # a count of 0 is refused, not read as "unset"
    if bands is None:
        bands = store_bands_for(init_card, data["store"])
    dm = _CaptionedChips(data["store"], bands=bands,
                         batch_size=data["batch_size"], num_workers=data["num_workers"],
                         train_split=data["split"], seed=tr["seed"])
    store = dm.store
    if released:  # the release's units and statistics, not the store's
        check_store_scale(store, dm.band_names, data["split"])
        dm.normalize = release_normalize(init_card.contract, dm.band_names)
    captions, provenance = captions_for(store, seed=int(cap["seed"]),
                                        per_chip=int(cap["per_chip"]))
    train_caps = training_captions(store, captions, data["split"])
    if len(train_caps) < 2:
        raise GeofmError(f"{len(train_caps)} chip(s) of split {data['split']!r} have captions; "
                         "contrastive training needs at least 2", store.path,
                         "caption the store ('geofm caption') or choose another split")
    dm.keep(list(train_caps))
    check_writable(out)
    text = TextTower.from_source(cfg["text"]["model"], locked=bool(cfg["text"]["locked"]))
    model = AlignModel(encoder.train(), text, embed_dim=int(cfg["model"]["embed_dim"]),
                       init_temperature=float(cfg["model"]["init_temperature"]))
    crop = _check_crop(data["crop"], int(encoder.patch_size), store.chip_size)
    task = AlignTask(model, train_caps, lr=float(opt["lr"]), encoder_lr=float(opt["encoder_lr"]),
                     text_lr=float(opt["text_lr"]), freeze_encoder=bool(opt["freeze_encoder"]),
                     weight_decay=float(opt["weight_decay"]), warmup_steps=opt["warmup_steps"],
                     max_steps=tr["max_steps"], crop=crop, seed=tr["seed"])
    precision = resolve_precision(tr)
    resolved = {**cfg, "templates": templates, "data": {**data, "store": str(store.path)},
                "trainer": {**tr, "precision": precision}}
    (out / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    trainer = fit_steps(task, dm, tr, out, [_DataRecord(out, data["split"])], progress,
                        cfg.get("resume"), label="align")
    loss = trainer.callback_metrics.get("train/loss")
    result: dict[str, Any] = {"output": str(out), "steps": trainer.global_step,
                              "final_loss": float(loss) if loss is not None else float("nan"),
                              "num_chips": len(train_caps), "captions": provenance}
    weights = gathered_state(trainer, "model")  # every rank: FSDP gathers the shards
    if trainer.is_global_zero:
        settings = model.settings()
        card = init_card.with_(
            kind="align",
            contract=(release_contract(init_card.contract, dm.band_names,
                                       store_levels(store.attrs)) if released else
                      trained_contract(encoder, dm.band_names, dm.normalize, [store],
                                       {**init_card.contract.processing_levels,
                                        **store_levels(store.attrs)})),
            patch_size=int(encoder.patch_size),
            tile_size=tuple(store.chip_size),
            gsd_m=store.attrs.get("gsd_m"),
            classes=tuple(store.classes),
            class_colors=tuple(store.class_colors),
            task=None,
            text=TextSpec(embed_dim=int(settings["embed_dim"]), source=settings["text"],
                          init_temperature=float(settings["init_temperature"]),
                          max_logit_scale=float(settings["max_logit_scale"]),
                          templates=tuple(templates), captions=provenance),
            provenance=Provenance(
                data={"store": str(Path(store.path).resolve()), "split": data["split"],
                      "split_method": store.attrs["split"]["method"],
                      "num_chips": len(train_caps),
                      "fingerprint": store.attrs["provenance"].get("fingerprint")},
                training={"seed": tr["seed"], "steps": trainer.global_step,
                          "init": str(cfg["init"]), "init_kind": init_card.kind,
                          "freeze_encoder": bool(opt["freeze_encoder"]), "crop": crop,
                          "lr": float(opt["lr"]), "encoder_lr": float(opt["encoder_lr"]),
                          "final_loss": result["final_loss"], "precision": precision,
                          "world_size": trainer.world_size},
                encoder_source={"checkpoint": str(cfg["init"]), "kind": init_card.kind,
                                "data": dict(init_card.provenance.data)},
                release=init_card.provenance.release),
        )
        path = save_aligned(out / "align.safetensors", model, card, weights)
        result["checkpoint"] = str(path)
    return result
