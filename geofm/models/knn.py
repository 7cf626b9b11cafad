"""k-nearest-neighbour evaluation of frozen embeddings.

The weighted kNN classifier of DINO (Caron et al., 2021): features are L2-normalised, the ``k``
training samples with the highest cosine similarity to a query vote with weight
``exp(similarity / T)``. Here the weights are normalised to sum to one (a softmax over the
neighbours), which leaves DINO's arg-max unchanged and makes the scores comparable across
queries: class probabilities for single-label classification and, for multi-label targets, the
weighted mean of the neighbours' multi-hot vectors (a per-class score in ``[0, 1]``).

>>> train_feats, train_labels = extract_features(encoder, train_loader)
>>> query_feats, _ = extract_features(encoder, test_loader)
>>> scores = knn_predict(train_feats, train_labels, query_feats, k=20)  # [M, K]
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from geofm.errors import GeofmError
from geofm.models.encoder import FeatureEncoder

KNN_TASKS = ("multilabel", "classification")


def extract_features(
    encoder: FeatureEncoder,
    batches: Iterable[Mapping[str, Any]],
    *,
    target_key: str | None = "label",
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Pooled encoder features of every batch, in order.

    The encoder runs in eval mode without gradients; its previous mode is restored.

    Args:
        encoder: Maps ``(images [B, C, H, W], bands)`` to ``[B, D]`` when called.
        batches: Batch dicts as collated by :func:`geofm.data.dataset.collate_samples`
            (``"image"``, ``"bands"`` and, optionally, ``target_key``).
        target_key: Batch key of the targets to collect; ``None`` collects none.
        device: Where to run the encoder; default the device of its first parameter.

    Returns:
        ``features [N, D]`` (float32, on the CPU) and the concatenated targets (on the CPU),
        or ``None`` when the batches carry no targets.

    Raises:
        GeofmError: ``batches`` is empty.
    """
    if device is None:
        first = next(encoder.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = encoder.training
    encoder.eval()
    feats: list[Tensor] = []
    targets: list[Tensor] = []
    try:
        with torch.no_grad():
            for batch in batches:
                images = batch["image"].to(device)  # [B, C, H, W]
                patch = int(getattr(encoder, "patch_size", 1))
                if images.shape[-2] % patch or images.shape[-1] % patch:
                    # whole patches: zero (the band mean after normalisation) on the far edges
                    images = F.pad(images, (0, -images.shape[-1] % patch,
                                            0, -images.shape[-2] % patch))
                feats.append(encoder(images, batch["bands"]).float().cpu())  # [B, D]
                if target_key is not None and target_key in batch:
                    targets.append(batch[target_key].cpu())
    finally:
        encoder.train(was_training)
    if not feats:
        raise GeofmError("no batches to extract features from (empty split?)")
    return torch.cat(feats), (torch.cat(targets) if targets else None)


def _vote_targets(targets: Tensor, task: str, num_classes: int | None) -> Tensor:
    """Targets as float vote vectors ``[N, K]``."""
    if task == "classification" and targets.ndim == 1:
        k = num_classes if num_classes is not None else int(targets.max()) + 1
        if int(targets.min()) < 0 or int(targets.max()) >= k:
            raise GeofmError(f"class indices must lie in 0..{k - 1}")
        return F.one_hot(targets.long(), k).float()  # [N, K]
    if targets.ndim != 2:
        raise GeofmError(
            f"{task} kNN needs targets [N, K]"
            + (" or class indices [N]" if task == "classification" else "")
            + f", got shape {tuple(targets.shape)}"
        )
    return targets.float()


def _topk_cosine(
    query: Tensor, train: Tensor, k: int, train_chunk: int
) -> tuple[Tensor, Tensor]:
    """Top-``k`` similarities and indices of ``query [m, D]`` among ``train [N, D]``.

    The training set is scanned in chunks with a running top-``k``, so memory is
    ``m · (train_chunk + k)``.
    """
    m = query.shape[0]
    best_sim = query.new_empty(m, 0)  # [m, 0]
    best_idx = torch.empty(m, 0, dtype=torch.long, device=query.device)
    for start in range(0, train.shape[0], train_chunk):
        sim = query @ train[start : start + train_chunk].T  # [m, n]
        idx = torch.arange(start, start + sim.shape[1], device=query.device).expand(m, -1)
        sim = torch.cat([best_sim, sim], dim=1)  # [m, k + n]
        idx = torch.cat([best_idx, idx], dim=1)
        best_sim, order = sim.topk(min(k, sim.shape[1]), dim=1)  # [m, k]
        best_idx = idx.gather(1, order)
    return best_sim, best_idx


def knn_predict(
    train_feats: Tensor,
    train_targets: Tensor,
    query_feats: Tensor,
    k: int = 20,
    temperature: float = 0.07,
    task: str = "multilabel",
    *,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    train_chunk_size: int = 65536,
) -> Tensor:
    """Weighted kNN scores of the queries.

    Args:
        train_feats: ``[N, D]`` reference embeddings.
        train_targets: ``[N, K]`` multi-hot (multilabel) or one-hot / soft targets, or ``[N]``
            class indices (classification).
        query_feats: ``[M, D]`` embeddings to score.
        k: Number of neighbours (at most ``N`` are used).
        temperature: ``T`` in the vote weight ``exp(cos / T)``.
        task: ``"multilabel"`` or ``"classification"``.
        num_classes: ``K`` for ``[N]`` class indices; default ``max + 1``.
        chunk_size: Queries scored at a time.
        train_chunk_size: Reference rows compared at a time; memory stays at about
            ``chunk_size · (train_chunk_size + k)`` similarities.

    Returns:
        ``[M, K]`` scores: the normalised weighted vote, each row a convex combination of
        neighbour target vectors (class probabilities for classification).

    Raises:
        GeofmError: Empty reference set, mismatched shapes, or bad ``k``, ``temperature`` or
            ``task``.
    """
    if task not in KNN_TASKS:
        raise GeofmError(f"unknown kNN task {task!r}; known: {', '.join(KNN_TASKS)}")
    if train_feats.ndim != 2 or query_feats.ndim != 2:
        raise GeofmError("kNN features must be 2-D [N, D]")
    if train_feats.shape[0] == 0:
        raise GeofmError("kNN needs at least one reference sample (empty split?)")
    if train_feats.shape[1] != query_feats.shape[1]:
        raise GeofmError(
            f"reference features are {train_feats.shape[1]}-D but queries are "
            f"{query_feats.shape[1]}-D"
        )
    if train_targets.shape[0] != train_feats.shape[0]:
        raise GeofmError(
            f"{train_feats.shape[0]} reference features but {train_targets.shape[0]} targets"
        )
    if k < 1 or temperature <= 0 or chunk_size < 1 or train_chunk_size < 1:
        raise GeofmError(
            f"kNN needs k ≥ 1, temperature > 0 and positive chunk sizes, got k={k}, "
            f"temperature={temperature}, chunk_size={chunk_size}, "
            f"train_chunk_size={train_chunk_size}"
        )
    device = train_feats.device
    votes = _vote_targets(train_targets.to(device), task, num_classes)  # [N, K]
    train = F.normalize(train_feats.float(), dim=1)  # [N, D]
    query = F.normalize(query_feats.to(device).float(), dim=1)  # [M, D]
    k = min(k, train.shape[0])
    out = []
    for chunk in query.split(chunk_size):
        sim, idx = _topk_cosine(chunk, train, k, train_chunk_size)  # [m, k]
        weights = (sim / temperature).softmax(dim=1)  # [m, k], = exp(sim/T) / Σ exp(sim/T)
        out.append(torch.einsum("mk,mkc->mc", weights, votes[idx]))  # [m, K]
    if not out:
        return votes.new_zeros(0, votes.shape[1])
    return torch.cat(out)
