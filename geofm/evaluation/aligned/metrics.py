"""Zero-shot and retrieval metrics, with the chance levels reports print beside them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geofm.errors import GeofmError
from geofm.metrics import multilabel_metrics

RECALL_KS: tuple[int, ...] = (1, 5, 10)

def expected_random_ap(positives: int, total: int) -> float:
    """Expected average precision of a uniformly random ranking of ``total`` items of which
    ``positives`` are relevant.

    A relevant item at rank r has precision ``(1 + (r - 1)(m - 1)/(n - 1)) / r`` on average;
    averaging over r gives ``(m - 1)/(n - 1) + (n - m) H_n / (n (n - 1))``. For large n this is
    the prevalence ``m / n``; for few items it is well above it (one relevant chip among six:
    0.41, not 0.17), so small evaluations are compared with the exact value.
    """
    m, n = int(positives), int(total)
    if m <= 0:
        return float("nan")
    if n <= 1 or m == n:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (m - 1) / (n - 1) + (n - m) * harmonic / (n * (n - 1))


def zeroshot_metrics(scores: Tensor, labels: Tensor) -> dict[str, Any]:
    """Zero-shot scene metrics of class scores against multi-hot labels, with chance levels.

    Args:
        scores: ``[N, K]`` image–class similarities.
        labels: ``[N, K]`` multi-hot labels.

    Returns:
        ``top1`` (the best-scored class is one of the chip's labels, over chips with a label),
        ``map_macro`` (over classes with a positive chip), ``map_micro``, ``per_class_ap``, and
        ``chance_top1`` (mean label fraction ``|labels| / K``) and ``chance_map`` (mean expected
        AP of a random ranking, :func:`expected_random_ap`).
    """
    y = labels.long()  # [N, K]
    has = y.sum(1) > 0
    if not has.any():
        raise GeofmError("no evaluated chip has a label", hint="choose a labelled split")
    n, k = y.shape
    top = scores.argmax(1)  # [N]
    hit = y[torch.arange(n), top].bool()
    with warnings.catch_warnings():  # classes without a positive chip are left out below
        warnings.filterwarnings("ignore", message=".*No positive samples found in target.*")
        ml = multilabel_metrics(scores.float(), y)
    pos = y.sum(0)  # [K]
    chance_ap = [expected_random_ap(int(p), n) for p in pos if p > 0]
    return {
        "top1": float(hit[has].float().mean()),
        "map_macro": ml["map_macro"],
        "map_micro": ml["map_micro"],
        "chance_top1": float((y[has].sum(1).float() / k).mean()),
        "chance_map": float(np.mean(chance_ap)),
        "classes_evaluated": int((pos > 0).sum()),
        "per_class_ap": ml["per_class_ap"],
    }


def retrieval_metrics(similarity: Tensor, text_image: Tensor,
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Image→text and text→image recall at k, their mean (the RemoteCLIP protocol), and the
    recall a random ranking would reach.

    Args:
        similarity: ``[I, T]`` image–text similarities.
        text_image: ``[T]`` index of each caption's image.
        ks: Cut-offs.

    Returns:
        ``i2t_R@k`` (an image is a hit when any of its captions ranks in the top k), ``t2i_R@k``
        (a caption is a hit when its image ranks in the top k), ``mean_recall`` over all, and
        ``chance_i2t_R@k`` / ``chance_t2i_R@k``: the expected recall of a random ranking
        (``1`` where ``k`` reaches the pool, so the recall says nothing there).
    """
    num_i, num_t = similarity.shape
    owner = text_image.long()  # [T]
    out: dict[str, float] = {}
    kmax = min(max(ks), num_t)
    i2t_top = similarity.topk(kmax, dim=1).indices  # [I, kmax]
    t2i_top = similarity.t().topk(min(max(ks), num_i), dim=1).indices  # [T, ≤ kmax]
    for k in ks:
        i2t = (owner[i2t_top[:, :k]] == torch.arange(num_i)[:, None]).any(1)  # [I]
        t2i = (t2i_top[:, :k] == owner[:, None]).any(1)  # [T]
        out[f"i2t_R@{k}"] = float(i2t.float().mean())
        out[f"t2i_R@{k}"] = float(t2i.float().mean())
    out["mean_recall"] = float(np.mean(list(out.values())))
    per_image = torch.bincount(owner, minlength=num_i).tolist()  # captions of each image
    for k in ks:
        out[f"chance_i2t_R@{k}"] = float(np.mean([random_hit(c, num_t, k) for c in per_image]))
        out[f"chance_t2i_R@{k}"] = min(k, num_i) / num_i
    return out


def random_hit(positives: int, total: int, k: int) -> float:
    """Probability that a random ranking of ``total`` items puts one of ``positives`` in its
    top ``k``: ``1 − C(total − positives, k) / C(total, k)``."""
    if k >= total:
        return 1.0 if positives else 0.0
    return 1.0 - math.comb(total - positives, k) / math.comb(total, k)
