"""Datasets over chip stores, the generic datamodule and sample-dict transforms."""

from geofm.data.dataset import ChipDataset, collate_samples

__all__ = ["ChipDataset", "collate_samples"]
