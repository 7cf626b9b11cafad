"""The one generic datamodule: any chip store, any bands, any split, normalised by its stats.

Under DDP, Lightning wraps the samplers in ``DistributedSampler``, so each rank reads only its
own share of random chips, straight from the store's shards (no rank loads the dataset).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from geofm.data.dataset import ChipDataset, collate_samples
from geofm.data.transforms import Normalize
from geofm.errors import StoreError
from geofm.io.store import ChipStore, open_store, validate_store


class EpochSeededSampler(RandomSampler):
    """A random order that depends only on ``(seed, epoch)``, so resumed runs see the same
    batches. Lightning calls :meth:`set_epoch`; under DDP it swaps in a seeded
    ``DistributedSampler`` instead."""

    def __init__(self, data: Dataset, seed: int = 0):
        super().__init__(data, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        """Order of ``epoch``."""
        self.epoch = epoch

    def resume_after(self, epoch: int, samples_done: int) -> None:
        """Continue ``epoch`` after its first ``samples_done`` samples (mid-epoch resume)."""
        self.epoch, self.skip = epoch, samples_done

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        order = torch.randperm(len(self.data_source), generator=g).tolist()
        skip, self.skip = self.skip, 0
        yield from order[skip:]

    def __len__(self) -> int:
        return len(self.data_source) - self.skip


class ChipDataModule(L.LightningDataModule):
    """Batches of sample dicts from a chip store.

    Args:
        store: Store path.
        bands: Bands to serve (names, a named set or a count).
        batch_size: Samples per batch (per rank).
        num_workers: DataLoader worker processes.
        train_split: Split to train on (None: all chips).
        val_split: Split to validate on (None: no validation loop).
        seed: Seed of the training order.
        arrays: Store arrays the task needs (default: all); pretraining needs
            ``["image", "valid"]`` only.
    """

    def __init__(
        self,
        store: str | Path,
        bands: Sequence[str] | str | int | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        train_split: str | None = "train",
        val_split: str | None = None,
        seed: int = 0,
        arrays: Sequence[str] | None = None,
    ):
        super().__init__()
        problems = validate_store(store)
        if problems:
            raise StoreError(f"store fails validation: {problems[0]}", hint="rebuild it")
        self.store: ChipStore = open_store(store)
        self.bands = self.store.band_indices(bands)  # raises BandError if unsatisfiable
        self.band_names = [self.store.bands[i] for i in self.bands]
        mean, std = self.store.band_stats(self.band_names)
        self.normalize = Normalize(self.band_names, mean, std)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_split = train_split
        self.val_split = val_split
        self.seed = seed
        self.arrays = arrays

    def dataset(self, split: str | None) -> ChipDataset:
        """The normalised dataset of ``split``."""
        return ChipDataset(self.store, split=split, bands=self.band_names,
                           transforms=self.normalize, arrays=self.arrays)

    def _loader(self, split: str | None, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        return DataLoader(ds, batch_size=self.batch_size,
                          sampler=EpochSeededSampler(ds, self.seed) if shuffle else None,
                          num_workers=self.num_workers, collate_fn=collate_samples,
                          drop_last=False, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        """Random batches of the training split."""
        return self._loader(self.train_split, shuffle=True)

    def val_dataloader(self) -> DataLoader | list:
        """Batches of the validation split in store order (none without one)."""
        return self._loader(self.val_split, shuffle=False) if self.val_split else []
