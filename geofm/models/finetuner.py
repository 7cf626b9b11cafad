"""An encoder plus a task head, with freezing and layer-wise learning-rate decay.

>>> encoder = create_model("channelvit_tiny")
>>> model = Finetuner(encoder, "multilabel", 19, head="attentive", freeze="frozen")
>>> logits = model(images, bands)  # [B, 19]
>>> loss = task_loss("multilabel", logits, batch["label"])
>>> optimizer = torch.optim.AdamW(model.param_groups(lr=1e-3, layer_decay=0.75))

Scene tasks (``"multilabel"``, ``"classification"``) give ``[B, K]`` logits; pixel tasks
(``"segmentation"``, ``"regression"``) give ``[B, K, H, W]`` at the input resolution. The head
kind decides which encoder output it reads (see :mod:`geofm.models.heads`): pooled features for
``linear``/``mlp``, every output token for ``attentive``, per-location patch features for
``segmentation`` (ChannelViT averages each location's band tokens first).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geofm.errors import GeofmError
from geofm.models.encoder import Encoder
from geofm.models.hcs import hierarchical_channel_sampling
from geofm.models.heads import Head, InputKind, LayerNorm2d, create_head, head_input_kind
from geofm.models.vit import TokenEncoder

SCENE_TASKS = ("multilabel", "classification")
PIXEL_TASKS = ("segmentation", "regression")
TASKS = SCENE_TASKS + PIXEL_TASKS
FREEZE_MODES = ("frozen", "partial", "full")
IGNORE_INDEX = 255
"""Mask value of pixels without a label (the store's convention)."""

_NO_DECAY_MODULES = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
    nn.Embedding,
    LayerNorm2d,
)
_TOKEN_NAMES = frozenset({"pos_embed", "pos_embed_table", "cls_pos_embed", "cls_token",
                          "mask_token", "queries"})


class Finetuner(nn.Module):
    """Encoder + head for one downstream task.

    Freeze modes:

    * ``"frozen"``: no encoder parameter requires grad, the encoder runs under
      :func:`torch.no_grad` and stays in eval mode even after ``.train()`` (no dropout or drop
      path), so its weights and outputs are unchanged by training.
    * ``"partial"``: the last ``unfreeze_last`` blocks and the final norm train; the rest is
      frozen and kept in eval mode.
    * ``"full"``: everything trains.

    Args:
        encoder: An :class:`~geofm.models.encoder.Encoder`: a ViT, a ChannelViT or a
            :class:`~geofm.published.PublishedEncoder` (its token grid feeds the attentive and
            segmentation heads; its ``blocks`` get the layer-wise decay and partial freezing).
        task: One of :data:`TASKS`.
        num_outputs: Classes (``multilabel``, ``classification``, ``segmentation``) or
            regression targets ``K``.
        head: Head kind; default ``"linear"`` for scene tasks and ``"segmentation"`` for pixel
            tasks.
        head_kwargs: Extra head arguments (``{"num_queries": 8}``, ``{"hidden": 256}``).
        freeze: One of :data:`FREEZE_MODES`.
        unfreeze_last: Number of trailing blocks to train with ``freeze="partial"``.
        hcs: Hierarchical Channel Sampling on every training forward pass
            (:mod:`geofm.models.hcs`), as ChannelViT's supervised training does: a ChannelViT
            sees a random subset of the bands, a plain ViT gets the others zero-filled and the
            kept ones rescaled. Evaluation always sees every band.

    Attributes:
        config: JSON-serialisable arguments (all but the encoder) that rebuild this model.

    Raises:
        GeofmError: Unknown task, head or freeze mode, a head that does not fit the task or
            the encoder, or ``unfreeze_last`` outside ``1 .. depth`` for partial finetuning.
    """

    target_mean: Tensor  # regression only: the training targets' mean and std per target
    target_std: Tensor

    def __init__(
        self,
        encoder: Encoder,
        task: str,
        num_outputs: int,
        *,
        head: str | None = None,
        head_kwargs: Mapping[str, Any] | None = None,
        freeze: str = "full",
        unfreeze_last: int = 0,
        hcs: bool = False,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise GeofmError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
        if num_outputs < 1:
            raise GeofmError(f"a {task} head needs at least one output, got {num_outputs}")
        head = head or ("segmentation" if task in PIXEL_TASKS else "linear")
        kind = head_input_kind(head)
        if task in PIXEL_TASKS and kind != "patches":
            raise GeofmError(
                f"task {task!r} predicts pixels and needs the 'segmentation' head, not {head!r}"
            )
        if task in SCENE_TASKS and kind == "patches":
            raise GeofmError(
                f"task {task!r} predicts one output per chip; use a 'linear', 'attentive' or "
                f"'mlp' head, not {head!r}"
            )
        depth = len(encoder.blocks)
        if freeze not in FREEZE_MODES:
            raise GeofmError(
                f"unknown freeze mode {freeze!r}; known modes: {', '.join(FREEZE_MODES)}"
            )
        if freeze == "partial" and not 1 <= unfreeze_last <= depth:
            raise GeofmError(
                f"unfreeze_last={unfreeze_last} is outside 1..{depth}, the encoder's block count",
                hint="use freeze='frozen' for no trainable block or freeze='full' for all",
            )
        if freeze != "partial" and unfreeze_last:
            raise GeofmError(
                f"unfreeze_last={unfreeze_last} only applies to freeze='partial', not {freeze!r}"
            )
        self.encoder = encoder
        self.task = task
        self.freeze = freeze
        self.unfreeze_last = unfreeze_last
        self.head_kind = head
        self.input_kind: InputKind = kind
        self.head: Head = create_head(
            head,
            encoder.embed_dim,
            num_outputs,
            patch_size=encoder.patch_size if kind == "patches" else None,
            **dict(head_kwargs or {}),
        )
        self.config: dict[str, Any] = {
            "task": task,
            "num_outputs": num_outputs,
            "head": head,
            "head_kwargs": dict(head_kwargs or {}),
            "freeze": freeze,
            "unfreeze_last": unfreeze_last,
            "hcs": hcs,
        }
        self.hcs = hcs
        if task == "regression":
            # Outputs are standardised targets mapped back to target units, so the head starts
            # near the targets' mean instead of 0 (set from the training split's statistics).
            self.register_buffer("target_mean", torch.zeros(num_outputs))
            self.register_buffer("target_std", torch.ones(num_outputs))
        self._apply_freeze()
        self.train(self.training)

    def set_target_scale(self, mean: Sequence[float], std: Sequence[float]) -> None:
        """Per-target mean and standard deviation of a regression task's training targets."""
        if self.task != "regression":
            raise GeofmError("target scaling applies to regression only")
        self.target_mean.copy_(torch.as_tensor(list(mean), dtype=torch.float32))
        self.target_std.copy_(torch.as_tensor(list(std), dtype=torch.float32).clamp_min(1e-12))

    # --- freezing ----------------------------------------------------------------------------

    def _trainable_encoder_modules(self) -> list[nn.Module | Encoder]:
        if self.freeze == "full":
            return [self.encoder]
        if self.freeze == "partial":
            depth = len(self.encoder.blocks)
            return [*self.encoder.blocks[depth - self.unfreeze_last :], self.encoder.norm]
        return []

    def _apply_freeze(self) -> None:
        self.encoder.requires_grad_(False)
        for module in self._trainable_encoder_modules():
            module.requires_grad_(True)

    def train(self, mode: bool = True) -> Finetuner:
        """Set training mode; frozen encoder parts stay in eval mode."""
        super().train(mode)
        if mode and self.freeze != "full":
            self.encoder.eval()
            for module in self._trainable_encoder_modules():
                module.train()
        return self

    # --- forward -----------------------------------------------------------------------------

    def head_inputs(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """The encoder output the head reads.

        Args:
            images: ``[B, C, H, W]``.
            bands: Band names, length ``C``.

        Returns:
            ``[B, D]`` (pooled), ``[B, T, D]`` (all tokens) or ``[B, N, D]`` (patches).
        """
        kind = self.input_kind
        enc = self.encoder
        with torch.no_grad() if self.freeze == "frozen" else nullcontext():
            if kind == "pooled":
                return enc.forward_features(images, bands)  # [B, D]
            if kind == "tokens" and isinstance(enc, TokenEncoder):
                return enc.forward_tokens(enc.tokenize(images, bands))  # [B, T, D]
            # a published encoder runs its own tokenizer: the attentive probe reads its
            # token grid, as the segmentation head does
            return enc.forward_patch_features(images, bands)  # [B, N, D]

    def forward(self, images: Tensor, bands: Sequence[str]) -> Tensor:
        """Logits ``[B, K]`` (scene tasks) or ``[B, K, H, W]`` (pixel tasks).

        Args:
            images: ``[B, C, H, W]``, normalised as in pretraining.
            bands: Band names, length ``C``.
        """
        if self.hcs and self.training:
            images, bands, _ = hierarchical_channel_sampling(
                images, bands, drop=self.encoder.band_tokens)
        h, w = images.shape[-2:]
        p = int(self.encoder.patch_size)
        if h % p or w % p:
            # pad to whole patches (zero = the band mean after normalisation, as timm's
            # dynamic_img_pad does); pixel outputs are cropped back below
            images = F.pad(images, (0, -w % p, 0, -h % p))  # [B, C, H', W']
        features = self.head_inputs(images, bands)
        if self.input_kind == "patches":
            out = self.head(features, self.encoder.grid_size(images))  # [B, K, H', W']
            out = out[..., :h, :w]  # [B, K, H, W]
        else:
            out = self.head(features)  # [B, K]
        if self.task == "regression":
            shape = (1, -1) + (1,) * (out.ndim - 2)
            out = out * self.target_std.view(shape) + self.target_mean.view(shape)
        return out

    # --- optimisation ------------------------------------------------------------------------

    def layer_id(self, name: str) -> int:
        """Depth index of a parameter for layer-wise decay.

        ``0`` for the embeddings (everything in the encoder outside its blocks and final norm),
        ``i + 1`` for block ``i``, ``L + 1`` for the final norm and the head (``L`` blocks).
        Blocks are found by module, not by name, so a published encoder whose blocks live
        deeper (``encoder.dofa.blocks.3``) decays the same way.
        """
        depth = len(self.encoder.blocks)
        if not name.startswith("encoder."):
            return depth + 1
        table = self._layer_table()
        return table.get(name[len("encoder."):], 0)

    def _layer_table(self) -> dict[str, int]:
        """``{encoder parameter name: layer}`` for the parameters of the blocks and norm."""
        enc = self.encoder
        by_id: dict[int, int] = {}
        for i, block in enumerate(enc.blocks):
            for param in block.parameters():
                by_id[id(param)] = i + 1
        for param in enc.norm.parameters():
            by_id[id(param)] = len(enc.blocks) + 1
        return {n: by_id[id(p)] for n, p in enc.named_parameters(remove_duplicate=False)
                if id(p) in by_id}

    def _no_weight_decay(self) -> set[str]:
        names = set()
        for module_name, module in self.named_modules():
            for name, param in module.named_parameters(recurse=False):
                full = f"{module_name}.{name}" if module_name else name
                if isinstance(module, _NO_DECAY_MODULES) or param.ndim <= 1 or name in _TOKEN_NAMES:
                    names.add(full)
        return names

    def param_groups(
        self, lr: float, weight_decay: float = 0.05, layer_decay: float = 0.75
    ) -> list[dict[str, Any]]:
        """Optimizer parameter groups with layer-wise learning-rate decay (BEiT / MAE).

        With ``L`` encoder blocks, block ``i`` (0-based) gets ``lr · layer_decay^(L − i)``, the
        embeddings ``lr · layer_decay^(L + 1)``, the final norm and the head ``lr``. Norms,
        biases, embedding tables and learned tokens (position, class, mask tokens, probe
        queries) get no weight decay. Only parameters that require grad are included.

        Args:
            lr: Base learning rate (the head's).
            weight_decay: Weight decay of the decayed parameters.
            layer_decay: Per-block factor in ``(0, 1]``; ``1`` disables the decay.

        Returns:
            Groups for :class:`torch.optim.Optimizer`, each with ``params``, ``lr``,
            ``weight_decay``, ``lr_scale`` (the decay factor, for schedulers that reset
            ``lr``) and ``name``.
        """
        if not 0.0 < layer_decay <= 1.0:
            raise GeofmError(f"layer_decay must be in (0, 1], got {layer_decay}")
        depth = len(self.encoder.blocks)
        no_decay = self._no_weight_decay()
        groups: dict[tuple[str, bool], dict[str, Any]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            layer = self.layer_id(name)
            if name.startswith("head."):
                label = "head"
            elif layer == 0:
                label = "embed"
            elif layer == depth + 1:
                label = "norm"
            else:
                label = f"block{layer - 1}"
            decayed = name not in no_decay
            key = (label, decayed)
            if key not in groups:
                scale = layer_decay ** (depth + 1 - layer)
                groups[key] = {
                    "params": [],
                    "lr": lr * scale,
                    "lr_scale": scale,
                    "weight_decay": weight_decay if decayed else 0.0,
                    "name": f"{label}/{'decay' if decayed else 'no_decay'}",
                }
            groups[key]["params"].append(param)
        return list(groups.values())


def task_loss(
    task: str, outputs: Tensor, targets: Tensor, valid: Tensor | None = None
) -> Tensor:
    """The training loss of ``task``.

    * ``multilabel``: BCE with logits; ``outputs [B, K]``, ``targets [B, K]`` multi-hot.
    * ``classification``: cross-entropy; ``targets [B]`` class indices or ``[B, K]`` one-hot.
    * ``segmentation``: per-pixel cross-entropy; ``outputs [B, K, H, W]``, ``targets [B, H, W]``
      class indices, :data:`IGNORE_INDEX` ignored.
    * ``regression``: MSE over finite target pixels; ``targets [B, K, H, W]`` (or ``[B, H, W]``
      with ``K = 1``); ``valid`` (broadcastable to the targets) excludes more pixels.

    Pixel losses with no labelled pixel return a zero that still carries the graph.

    Raises:
        GeofmError: Unknown task, or classification targets without exactly one class per
            sample.
    """
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(outputs, targets.to(outputs.dtype))
    if task == "classification":
        if targets.ndim == 2:
            if not bool((targets.sum(dim=1) == 1).all()):
                raise GeofmError("single-label classification needs exactly one label per sample")
            targets = targets.argmax(dim=1)
        return F.cross_entropy(outputs, targets.long())
    if task == "segmentation":
        targets = targets.long()
        if not bool((targets != IGNORE_INDEX).any()):
            return outputs.sum() * 0.0
        return F.cross_entropy(outputs, targets, ignore_index=IGNORE_INDEX)
    if task == "regression":
        if targets.ndim == outputs.ndim - 1:
            targets = targets.unsqueeze(1)  # [B, 1, H, W]
        targets = targets.to(outputs.dtype)
        mask = torch.isfinite(targets).expand_as(outputs)
        if valid is not None:
            if valid.ndim == outputs.ndim - 1:
                valid = valid.unsqueeze(1)  # [B, 1, H, W]
            mask = mask & valid.bool().expand_as(outputs)
        if not bool(mask.any()):
            return outputs.sum() * 0.0
        return F.mse_loss(outputs[mask], targets.expand_as(outputs)[mask])
    raise GeofmError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")


def task_scores(task: str, outputs: Tensor) -> Tensor:
    """Logits to scores: sigmoid (multilabel), softmax over ``K`` (classification,
    segmentation), unchanged (regression)."""
    if task == "multilabel":
        return outputs.sigmoid()
    if task in ("classification", "segmentation"):
        return outputs.softmax(dim=1)
    if task == "regression":
        return outputs
    raise GeofmError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
