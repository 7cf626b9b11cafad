"""The Lightning trainer of step-based runs (pretraining, alignment), built one way.

Both runs train for ``max_steps`` without validation, checkpoint every
``checkpoint_every_n_steps`` into ``<output>/checkpoints`` (``last.ckpt`` for ``--resume``), log
to ``<output>/metrics.csv`` (and TensorBoard with ``trainer.logger: tensorboard``), show
their progress as global step / max steps on stderr (:class:`~geofm.training.progress.StepProgress`)
and default to bf16-mixed precision on a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from geofm.diskspace import full_disk_reported
from geofm.errors import GeofmError
from geofm.safeload import (
    RESUME_EXTRA_GLOBALS,
    describe_failure,
    read_sharded_index,
    refused_global,
    torch_load,
)
from geofm.training.checkpoint_io import AtomicCheckpointIO
from geofm.training.loggers import run_loggers
from geofm.training.metrics_log import ResumingCSVLogger
from geofm.training.progress import StepProgress


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
        resume: Lightning checkpoint to resume from. It is read without running any of its
            pickle (:func:`check_resume`) before Lightning sees it, and Lightning loads it
            weights-only too.
        label: The run's name in the progress lines.

    Raises:
        GeofmError: The resume checkpoint is missing, unreadable, refused or from another
            model; Lightning rejects the trainer settings; or the disk fills up.
    """
    start = check_resume(task, resume) if resume else None
    # Resuming the run in its own directory continues its metrics.csv; elsewhere it starts one.
    own = resume is not None and Path(resume).resolve().parent == (output / "checkpoints").resolve()
    tr = trainer_cfg
    ckpt = ModelCheckpoint(dirpath=output / "checkpoints", save_last=True, save_top_k=-1,
                           every_n_train_steps=tr["checkpoint_every_n_steps"])
    extra: list[Callback] = [StepProgress(label)] if progress else []
    loggers = run_loggers(output, tr.get("logger"),
                          ResumingCSVLogger(output, keep_before=start if own else None))
    try:
        trainer = L.Trainer(
            max_steps=tr["max_steps"], accelerator=tr["accelerator"], devices=tr["devices"],
            num_nodes=tr["num_nodes"], strategy=tr["strategy"],
            precision=cast(Any, resolve_precision(tr)),  # a precision name Lightning checks
            gradient_clip_val=tr["gradient_clip_val"], log_every_n_steps=tr["log_every_n_steps"],
            logger=loggers, callbacks=[ckpt, *callbacks, *extra], plugins=[AtomicCheckpointIO()],
            enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
            limit_val_batches=0, deterministic=False,
            # A datamodule that deals its batches to the ranks itself keeps its own sampler.
            use_distributed_sampler=not getattr(datamodule, "shards_itself", False))
    except (TypeError, ValueError, MisconfigurationException) as err:  # rejected settings
        raise GeofmError(
            f"trainer settings rejected: {' '.join(str(err).split())}",
            hint="check --devices, --strategy and --precision (FSDP needs GPUs; on CPUs use "
            "--strategy ddp)") from None
    kept = 1 + tr["max_steps"] // max(1, tr["checkpoint_every_n_steps"])  # save_top_k=-1
    with full_disk_reported(output, kept * checkpoint_bytes(task),
                            f"the run's checkpoints and logs ({kept} checkpoints kept)"), \
            torch.serialization.safe_globals(RESUME_EXTRA_GLOBALS):
        trainer.fit(task, datamodule=datamodule, ckpt_path=resume, weights_only=True)
    return trainer


def checkpoint_bytes(task: L.LightningModule) -> int:
    """About the size of one Lightning checkpoint of ``task``: its weights and buffers, and
    AdamW's two moments of every trained weight (fp32)."""
    state = sum(t.numel() * t.element_size() for t in task.state_dict().values())
    moments = sum(2 * 4 * p.numel() for p in task.parameters() if p.requires_grad)
    return state + moments


def check_resume(task: L.LightningModule, path: str) -> int | None:
    """The resume checkpoint must be a readable Lightning checkpoint whose weights fit ``task``.

    The file is read with the weights-only unpickler (:func:`geofm.safeload.torch_load`): a
    pickle that names any code is refused before anything in it runs, and before Lightning
    opens it. A sharded checkpoint folder's index and metadata are read the same way.

    Returns:
        The global step the checkpoint was written at (``None`` where it does not say).

    Raises:
        GeofmError: Naming the file: missing, unreadable, refused, or, for a mismatch, the
            first weight that differs.
    """
    p = Path(path)
    if not p.exists():
        raise GeofmError("resume checkpoint not found", path)
    if p.is_dir():  # a sharded (distributed) checkpoint: Lightning checks the weights
        return _check_sharded(p)
    ckpt = _read(p, p)
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
    return _global_step(ckpt)


def _read(file: Path, shown: Path, index: bool = False) -> Any:
    """One file of a resume checkpoint, read without running its pickle.

    Raises:
        GeofmError: The file is refused (naming what it asked for) or unreadable.
    """
    try:
        # Memory-mapped: only the shapes are compared, so the weights are not read twice.
        return read_sharded_index(file) if index else torch_load(file, mmap=True)
    except Exception as err:  # any failure means the file is not a checkpoint geofm resumes
        hint = "resume from <run>/checkpoints/last.ckpt of a geofm run"
        if refused_global(err) is not None:
            raise GeofmError(f"refused the resume checkpoint: {describe_failure(err)}", shown,
                             hint=hint) from None
        raise GeofmError(f"cannot read the resume checkpoint ({type(err).__name__})", shown,
                         hint=hint) from None


def _check_sharded(folder: Path) -> int | None:
    """A sharded checkpoint folder: its ``.metadata`` index and ``meta.pt`` (the loop and
    callback states) must read under the allow-lists."""
    index, meta = folder / ".metadata", folder / "meta.pt"
    if not index.is_file() or not meta.is_file():
        raise GeofmError("folder is not a sharded Lightning checkpoint (no .metadata and "
                         "meta.pt)", folder, hint="resume from <run>/checkpoints/last.ckpt")
    _read(index, index, index=True)
    return _global_step(_read(meta, meta))


def _global_step(ckpt: Any) -> int | None:
    step = ckpt.get("global_step") if isinstance(ckpt, dict) else None
    return int(step) if isinstance(step, int) and not isinstance(step, bool) else None


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
