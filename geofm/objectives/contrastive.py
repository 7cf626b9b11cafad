"""Symmetric image–text contrastive loss (InfoNCE, as in CLIP), gathered across ranks.

With ``B`` pairs per rank and ``W`` ranks, every rank scores its own ``B`` images against all
``W·B`` texts and its ``B`` texts against all ``W·B`` images; row ``i`` of rank ``r`` is
positive at column ``r·B + i``. The embeddings are gathered with
``torch.distributed.nn.functional.all_gather``, whose backward sends each rank's share of the
gradient home, so the negatives from other ranks train the local towers too. Averaged over
ranks (as DDP averages gradients), the loss and its gradients equal those of one process holding
the whole ``W·B`` batch. Every rank must pass the same ``B`` (drop the last partial batch).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def _world() -> tuple[int, int]:
    """``(rank, world_size)``; ``(0, 1)`` outside an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_with_grad(x: Tensor) -> Tensor:
    """All ranks' ``x [B, E]`` concatenated in rank order, ``[W·B, E]``, differentiable."""
    _, world = _world()
    if world == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


class ContrastiveLoss(nn.Module):
    """CLIP's symmetric cross-entropy over image–text similarities."""

    def forward(self, image: Tensor, text: Tensor, logit_scale: Tensor) -> Tensor:
        """Mean of the image→text and text→image cross-entropies.

        Args:
            image: ``[B, E]`` L2-normalised image embeddings (pair ``i`` with ``text[i]``).
            text: ``[B, E]`` L2-normalised text embeddings.
            logit_scale: Multiplier of the cosine similarities, ``exp(log-scale)`` (scalar),
                as :meth:`geofm.models.align.AlignModel.scale` returns it.

        Returns:
            Scalar loss (this rank's rows; see the module docstring under DDP).
        """
        if image.shape != text.shape:
            raise ValueError(f"image {tuple(image.shape)} and text {tuple(text.shape)} "
                             "embeddings must pair up row by row")
        rank, _ = _world()
        all_image = gather_with_grad(image)  # [W·B, E]
        all_text = gather_with_grad(text)  # [W·B, E]
        logits_image = logit_scale * image @ all_text.T  # [B, W·B]
        logits_text = logit_scale * text @ all_image.T  # [B, W·B]
        b = image.shape[0]
        labels = torch.arange(b, device=image.device) + rank * b  # [B]
        return (F.cross_entropy(logits_image, labels) + F.cross_entropy(logits_text, labels)) / 2
