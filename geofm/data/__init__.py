"""Datasets over chip stores and sample-dict transforms.

``ChipDataset`` is a torchgeo ``NonGeoDataset``; it is imported on first use, so modules that
only need this package's plain helpers (``satvision``, ``transforms``) do not import torchgeo.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geofm.data.dataset import ChipDataset, collate_samples

__all__ = ["ChipDataset", "collate_samples"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from geofm.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module 'geofm.data' has no attribute {name!r}")
