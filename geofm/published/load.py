"""Read a published release's weights file and build its geofm encoder.

The file is read without running its pickle (``torch.load(weights_only=True)`` or
safetensors). Nested dicts (a release that stores one state dict per sub-network, such as
CROMA's ``{"s2_encoder": {...}, ...}``) are flattened to dotted keys, so a release's
:attr:`~geofm.published.base.PublishedSpec.convert` sees every tensor under one name and must
consume it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geofm.errors import GeofmError
from geofm.published.base import PublishedEncoder, PublishedSpec
from geofm.safeload import describe_failure


def _flatten(obj: Mapping[Any, Any], prefix: str, out: dict[str, Any]) -> None:
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _flatten(value, f"{name}.", out)
        else:
            out[name] = value


def read_weights(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a weights file, nested dicts flattened to ``"outer.inner"`` keys.

    Raises:
        GeofmError: The file is missing, unreadable, holds pickled objects other than tensors,
            or holds values that are not tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise GeofmError("weights file not found", p)
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch.load raises many kinds for foreign or pickled files
        raise GeofmError(f"cannot read weights ({describe_failure(e)})", p,
                         hint="pass the release's state dict (torch.save or safetensors)") \
            from None
    if not isinstance(obj, Mapping) or not obj:
        raise GeofmError("is not a state dict", p, hint="pass the release's weights file")
    state: dict[str, Any] = {}
    _flatten(obj, "", state)
    odd = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if odd:
        raise GeofmError(f"holds values that are not tensors ({', '.join(odd[:3])})", p,
                         hint="pass the release's state dict")
    return state


def load_release(spec: PublishedSpec, path: str | Path) -> PublishedEncoder:
    """The encoder ``spec`` describes, with the weights in ``path`` (the release's own file).

    Args:
        spec: The release (``geofm.published.PUBLISHED["dofa_base"]``).
        path: Its weights file, exactly as published at ``spec.weights_url``.

    Returns:
        The encoder in eval mode, every tensor of the file consumed (``strict`` loading).

    Raises:
        GeofmError: The file is missing (the line names the file, its URL and where to put
            it), unreadable, or holds keys or shapes that are not this release's.
    """
    from geofm.models.registry import create_model
    from geofm.published import catalogue  # noqa: F401  (registers the architectures)

    p = Path(path)
    if not p.is_file():
        raise GeofmError(f"weights file {spec.weights_file} for {spec.name} not found", p,
                         hint=f"download {spec.weights_url} and save it as {p}")
    converted = spec.convert(read_weights(p))
    model = create_model(spec.architecture, **dict(spec.config))
    assert isinstance(model, PublishedEncoder)  # every release's architecture is one
    try:
        model.load_state_dict(converted, strict=True)
    except RuntimeError as e:
        first = str(e).replace("\n", " ").replace("\t", "")[:300]
        raise GeofmError(f"the weights do not fit {spec.name} ({first})", p,
                         hint="check that the file is the release the model card names") \
            from None
    model.published_name = spec.name
    return model.eval()
