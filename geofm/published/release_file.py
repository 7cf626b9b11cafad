"""Reading a published release's weights file without executing its pickle.

Releases ship as ``torch.save`` files (a bare state dict, or wrapped as ``{"model": ...}`` /
``{"state_dict": ...}``, keys sometimes prefixed ``module.`` by DDP) or as safetensors.
:func:`read_release` reads either with torch's weights-only unpickler or safetensors, unwraps
the wrapper and returns the tensors under the release's own key names; the family's
:data:`~geofm.published.base.StateConverter` then maps those names onto geofm's module.
A file whose pickle needs more than tensors and containers (an ``argparse.Namespace`` saved
beside the weights, an optimiser object) is refused in one line; nothing in it is run.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from torch import Tensor

from geofm.errors import GeofmError
from geofm.safeload import describe_failure, torch_load

WRAPPERS = ("state_dict", "model")
"""Keys under which training scripts nest the weights (MAE's ``{"model": ...}``,
Lightning's ``{"state_dict": ...}``), unwrapped in this order."""


def read_release(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a release's weights file, wrappers and ``module.`` prefixes removed.

    Args:
        path: ``.pth`` / ``.pt`` / ``.bin`` (``torch.save``) or ``.safetensors``.

    Raises:
        GeofmError: Missing or unreadable file, a pickle that needs more than tensors, or
            content that is not a dict of tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise GeofmError("weights file not found", p,
                         hint="download it from the URL on the model card")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch_load(p)
    except Exception as e:  # torch.load raises many kinds for foreign or pickled files
        raise GeofmError(f"cannot read weights ({describe_failure(e)})", p,
                         hint="pass the release's state dict saved as tensors only "
                         "(torch.save of a dict of tensors, or safetensors)") from None
    for wrapper in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
    if not isinstance(obj, dict) or not obj:
        raise GeofmError("is not a state dict", p, hint="pass the release's weights file")
    state = {re.sub(r"^(module\.)+", "", str(k)): v for k, v in obj.items()}
    if not all(isinstance(v, Tensor) for v in state.values()):
        raise GeofmError("holds values that are not tensors", p,
                         hint="pass the release's weights, not a training checkpoint")
    return state
