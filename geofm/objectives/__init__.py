"""Self-supervised objectives: plain ``nn.Module``s that own their decoder and loss.

>>> encoder = create_model("channelvit_tiny", bands=bands)
>>> objective = create_objective("selective_mae", encoder)
>>> out = objective(images, bands, valid=valid, progress=step / max_steps)
>>> out.loss.backward()
"""

from __future__ import annotations

from typing import Any

from geofm.errors import GeofmError
from geofm.models.encoder import Encoder
from geofm.models.vit import TokenEncoder
from geofm.objectives.common import MaskedImageObjective, ObjectiveOutput
from geofm.objectives.mae import MAE
from geofm.objectives.selective_mae import SelectiveMAE, psts_schedule, released_psts_schedule
from geofm.objectives.simmim import SimMIM

_OBJECTIVES: dict[str, type[MaskedImageObjective]] = {
    "mae": MAE,
    "selective_mae": SelectiveMAE,
    "simmim": SimMIM,
}


def list_objectives() -> list[str]:
    """Names accepted by :func:`create_objective`, sorted."""
    return sorted(_OBJECTIVES)


def create_objective(name: str, encoder: Encoder, **cfg: Any) -> MaskedImageObjective:
    """Build an objective around ``encoder``.

    Args:
        name: ``"mae"``, ``"selective_mae"`` or ``"simmim"``.
        encoder: A ``vit_*`` or ``channelvit_*`` model from :func:`geofm.models.create_model`.
        **cfg: The objective's keyword arguments (``mask_ratio``, ``decoder_dim``, ``hcs``, ...).

    Raises:
        GeofmError: ``name`` is unknown, ``encoder`` is not a geofm ViT or ChannelViT (the
            objectives patchify and tokenize through it), or ``cfg`` has an argument the
            objective lacks or a value it cannot use (a ratio outside ``(0, 1)``, heads that do
            not divide a width).
    """
    if name not in _OBJECTIVES:
        raise GeofmError(
            f"unknown objective {name!r}; known objectives: {', '.join(list_objectives())}"
        )
    if not isinstance(encoder, TokenEncoder):
        raise GeofmError(f"objective {name!r} pretrains a geofm ViT or ChannelViT, not "
                         f"{type(encoder).__name__}",
                         hint="pick a vit_* or channelvit_* model")
    try:
        return _OBJECTIVES[name](encoder, **cfg)
    except (TypeError, ValueError, AssertionError) as err:
        raise GeofmError(f"bad settings for objective {name!r}: {err}") from None


__all__ = [
    "MAE",
    "MaskedImageObjective",
    "ObjectiveOutput",
    "SelectiveMAE",
    "SimMIM",
    "create_objective",
    "list_objectives",
    "psts_schedule",
    "released_psts_schedule",
]
