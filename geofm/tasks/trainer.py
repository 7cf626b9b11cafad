"""The Lightning trainer of step-based runs (pretraining, alignment), built one way.

Both runs train for ``max_steps`` without validation, checkpoint every
``checkpoint_every_n_steps`` into ``<output>/checkpoints`` (``last.ckpt`` for ``--resume``), log
to ``<output>/metrics.csv`` (and TensorBoard with ``trainer.logger: tensorboard``), show
their progress as global step / max steps on stderr (:class:`~geofm.tasks.progress.StepProgress`)
and default to bf16-mixed precision on a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from geofm.errors import GeofmError
from geofm.tasks.loggers import run_loggers
from geofm.tasks.progress import StepProgress


def resolve_precision(trainer_cfg: dict[str, Any]) -> str:
    """The configured precision, or ``bf16-mixed`` on a GPU and ``32-true`` elsewhere."""
    on_gpu = torch.cuda.is_available() and trainer_cfg["accelerator"] in ("auto", "gpu", "cuda")
    return str(trainer_cfg["precision"] or ("bf16-mixed" if on_gpu else "32-true"))


def fit_steps(task: L.LightningModule, datamodule: L.LightningDataModule,
              trainer_cfg: dict[str, Any], output: Path, callbacks: list[Callback],
              progress: bool, resume: str | None, label: str = "train") -> L.Trainer:
    """Train ``task`` for ``trainer_cfg["max_steps"]`` steps and return the trainer.

    Args:
        task: The LightningModule.
        datamodule: Its data.
        trainer_cfg: The config's ``trainer`` section (``max_steps``, ``accelerator``,
            ``devices``, ``num_nodes``, ``strategy``, ``precision``, ``gradient_clip_val``,
            ``log_every_n_steps``, ``checkpoint_every_n_steps``, ``logger``).
        output: Run directory.
        callbacks: Run-specific callbacks (checkpointing and the progress bar are added).
        progress: Show the run's progress on stderr.
        resume: Lightning checkpoint to resume from.
        label: The run's name in the progress lines.

    Raises:
        GeofmError: The resume checkpoint is missing, unreadable or from another model, or
            Lightning rejects the trainer settings.
    """
    if resume:
        check_resume(task, resume)
    tr = trainer_cfg
    ckpt = ModelCheckpoint(dirpath=output / "checkpoints", save_last=True, save_top_k=-1,
                           every_n_train_steps=tr["checkpoint_every_n_steps"])
    extra: list[Callback] = [StepProgress(label)] if progress else []
    loggers = run_loggers(output, tr.get("logger"))
    try:
        trainer = L.Trainer(
            max_steps=tr["max_steps"], accelerator=tr["accelerator"], devices=tr["devices"],
            num_nodes=tr["num_nodes"], strategy=tr["strategy"], precision=resolve_precision(tr),
            gradient_clip_val=tr["gradient_clip_val"], log_every_n_steps=tr["log_every_n_steps"],
            logger=loggers, callbacks=[ckpt, *callbacks, *extra],
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, deterministic=False,
            # A datamodule that deals its batches to the ranks itself keeps its own sampler.
            use_distributed_sampler=not getattr(datamodule, "shards_itself", False))
    except (TypeError, ValueError, MisconfigurationException) as err:  # rejected settings
        raise GeofmError(
            f"trainer settings rejected: {' '.join(str(err).split())}",
            hint="check --devices, --strategy and --precision (FSDP needs GPUs; on CPUs use "
            "--strategy ddp)") from None
    trainer.fit(task, datamodule=datamodule, ckpt_path=resume)
    return trainer


def check_resume(task: L.LightningModule, path: str) -> None:
    """The resume checkpoint must be a readable Lightning checkpoint whose weights fit ``task``.

    Raises:
        GeofmError: Naming the file and, for a mismatch, the first weight that differs.
    """
    if not Path(path).exists():
        raise GeofmError("resume checkpoint not found", path)
    if Path(path).is_dir():  # a sharded (distributed) checkpoint: Lightning checks it
        return
    try:  # the run's own checkpoint: Lightning itself loads it the same way
        # Memory-mapped: only the shapes are compared, so the weights are not read twice.
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception as err:  # any unpickling failure means the file is not a checkpoint
        raise GeofmError(f"cannot read the resume checkpoint ({type(err).__name__})", path,
                         hint="resume from <run>/checkpoints/last.ckpt") from None
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise GeofmError("not a Lightning training checkpoint (no state_dict)", path,
                         hint="resume from <run>/checkpoints/last.ckpt")
    own = task.state_dict()
    # A task that leaves weights out of its checkpoints (a locked text tower) loads non-strictly.
    strict = getattr(task, "strict_loading", True)
    for key in sorted(own.keys() | state.keys()):
        theirs, mine = state.get(key), own.get(key)
        if theirs is None and not strict:
            continue
        if theirs is None or mine is None or tuple(theirs.shape) != tuple(mine.shape):
            found = "missing" if theirs is None else tuple(theirs.shape)
            wanted = "absent" if mine is None else tuple(mine.shape)
            raise GeofmError(
                f"resume checkpoint was written for another model or settings ({key}: "
                f"{found} in the checkpoint, {wanted} here)", path,
                hint="resume with the run's own config")


def gathered_state(trainer: L.Trainer, prefix: str) -> dict[str, torch.Tensor]:
    """The full weights of the task's submodule ``prefix`` (``"objective"``, ``"model"``),
    keys relative to it.

    Under a sharded strategy (FSDP) each rank holds a shard of every weight, so the strategy
    gathers them; this is collective, so every rank must call it (ranks other than 0 may get
    an empty dict). Under DDP or one device it is the module's own state dict.
    """
    state = trainer.strategy.lightning_module_state_dict()
    start = len(prefix) + 1
    return {k[start:]: v for k, v in state.items() if k.startswith(prefix + ".")}


BLOCK_LISTS = ("blocks", "decoder_blocks")
"""Names of the ``nn.ModuleList`` attributes holding an encoder's or decoder's transformer
blocks."""


def compile_blocks(module: torch.nn.Module) -> int:
    """Compile every transformer block under ``module`` in place, and return how many.

    Regional compilation: each block's forward goes through :func:`torch.compile` (fusing
    normalisation, activation and residual kernels around the matrix products), while token
    scoring, selection and the loss stay eager, so data-dependent token counts (Hierarchical
    Channel Sampling) cost one recompile with dynamic shapes, not one per count. Parameter
    names, and so checkpoints, are unchanged.

    Blocks that differ in a constant (each block's drop-path rate under stochastic depth) get
    a compiled graph each, so the recompile limit is raised to cover every block twice (static
    and dynamic shapes); at the default limit the later blocks would silently run eagerly.
    """
    blocks = [
        block
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.ModuleList) and name.rsplit(".", 1)[-1] in BLOCK_LISTS
        for block in child
    ]
    for block in blocks:
        block.compile()
    dynamo = torch._dynamo.config
    dynamo.recompile_limit = max(dynamo.recompile_limit, 2 * len(blocks) + 8)
    return len(blocks)
