"""Task metrics from torchmetrics, one function per task, shared by training and evaluation.

:func:`batch_targets` picks what a task is scored against in a batch. Every metric function
takes the model's raw outputs and the targets of a whole split and returns a flat dict of Python
floats (averages) plus per-class lists, ready for JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    multiclass_accuracy,
    multiclass_f1_score,
    multiclass_jaccard_index,
    multilabel_average_precision,
    multilabel_f1_score,
)

from geofm.io.schema import MASK_IGNORE

PRIMARY = {"multilabel": "map_macro", "classification": "accuracy",
           "segmentation": "miou", "regression": "rmse"}
HIGHER_IS_BETTER = {"multilabel": True, "classification": True, "segmentation": True,
                    "regression": False}


def _floats(t: Tensor) -> list[float]:
    return [float(x) for x in t.flatten()]


def multilabel_metrics(logits: Tensor, labels: Tensor) -> dict[str, object]:
    """mAP and F1 (macro, micro) of ``logits [N, K]`` against multi-hot ``labels [N, K]``.

    Classes without a positive sample are left out of macro averages (their AP is undefined).
    """
    k = labels.shape[1]
    y = labels.long()
    probs = logits.float().sigmoid()
    present = y.sum(0) > 0
    ap = multilabel_average_precision(probs, y, num_labels=k, average="none")
    ap = torch.where(present, ap, torch.full_like(ap, float("nan")))
    return {
        "map_macro": float(ap[present].mean()) if present.any() else float("nan"),
        "map_micro": float(multilabel_average_precision(probs, y, num_labels=k,
                                                        average="micro")),
        "f1_macro": float(multilabel_f1_score(probs, y, num_labels=k, average="macro")),
        "f1_micro": float(multilabel_f1_score(probs, y, num_labels=k, average="micro")),
        "per_class_ap": _floats(ap),
    }


def classification_metrics(logits: Tensor, labels: Tensor) -> dict[str, object]:
    """Overall accuracy, macro accuracy and macro F1 of ``logits [N, K]`` for ``labels [N]``."""
    k = logits.shape[1]
    y = labels.long()
    return {
        "accuracy": float(multiclass_accuracy(logits, y, num_classes=k, average="micro")),
        "accuracy_macro": float(multiclass_accuracy(logits, y, num_classes=k, average="macro")),
        "f1_macro": float(multiclass_f1_score(logits, y, num_classes=k, average="macro")),
        "per_class_accuracy": _floats(multiclass_accuracy(logits, y, num_classes=k,
                                                          average="none")),
    }


def segmentation_metrics(logits: Tensor, mask: Tensor) -> dict[str, object]:
    """mIoU, per-class IoU and pixel accuracy of ``logits [N, K, H, W]`` for ``mask [N, H, W]``
    (pixels equal to :data:`MASK_IGNORE` are ignored; absent classes are left out of mIoU)."""
    k = logits.shape[1]
    pred = logits.argmax(1)
    y = mask.long()
    iou = multiclass_jaccard_index(pred, y, num_classes=k, average="none",
                                   ignore_index=MASK_IGNORE)
    keep = y != MASK_IGNORE
    present = torch.bincount(y[keep], minlength=k)[:k] > 0
    predicted = torch.bincount(pred[keep], minlength=k)[:k] > 0
    seen = present | predicted
    iou = torch.where(seen, iou, torch.full_like(iou, float("nan")))
    return {
        "miou": float(iou[seen].mean()) if seen.any() else float("nan"),
        "pixel_accuracy": float((pred[keep] == y[keep]).float().mean()) if keep.any() else
        float("nan"),
        "per_class_iou": _floats(iou),
    }


def regression_metrics(pred: Tensor, target: Tensor) -> dict[str, object]:
    """RMSE and MAE over finite target pixels, overall and per target."""
    ok = torch.isfinite(target)
    diff = torch.where(ok, pred.float() - target.nan_to_num(), torch.zeros(()))
    n = ok.sum((0, 2, 3)).clamp(min=1)
    rmse_t = (diff.square().sum((0, 2, 3)) / n).sqrt()
    return {
        "rmse": float((diff.square().sum() / ok.sum().clamp(min=1)).sqrt()),
        "mae": float(diff.abs().sum() / ok.sum().clamp(min=1)),
        "per_target_rmse": _floats(rmse_t),
    }


def batch_targets(task: str, batch: dict[str, Any]) -> Tensor:
    """The supervision of ``task`` in a batch of sample dicts (see :mod:`geofm.data.dataset`)."""
    if task == "multilabel":
        return batch["label"].float()  # [B, K]
    if task == "classification":
        return batch["label"].argmax(1)  # [B]
    if task == "segmentation":
        return batch["mask"]  # [B, H, W]
    return batch["target"]  # [B, T, H, W]


def task_metrics(task: str, outputs: Tensor, targets: Tensor) -> dict[str, object]:
    """Dispatch to the metric function of ``task``."""
    fn = {"multilabel": multilabel_metrics, "classification": classification_metrics,
          "segmentation": segmentation_metrics, "regression": regression_metrics}[task]
    return fn(outputs, targets)


def per_class_table(names: Sequence[str], values: Sequence[float], header: str) -> str:
    """A Markdown table of one per-class metric."""
    rows = [f"| class | {header} |", "|---|---:|"]
    rows += [f"| {n} | {'—' if v != v else f'{v:.4f}'} |" for n, v in zip(names, values)]
    return "\n".join(rows)
