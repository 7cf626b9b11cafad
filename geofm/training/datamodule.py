"""The generic datamodule (any chip store, any bands, any split, normalised by its stats) and
the pretraining one over one or several stores (sensors).

Under DDP, Lightning wraps :class:`ChipDataModule`'s samplers in ``DistributedSampler``, and
the step runs' loader (:func:`sharded_loader`: pretraining, alignment) deals its batches to the
ranks itself, so each rank reads only its own share of random chips, straight from the stores'
shards (no rank loads the dataset), and a resumed run picks up mid-epoch in place.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized
from pathlib import Path
from typing import TYPE_CHECKING, cast

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from geofm.bands import BAND_SETS
from geofm.data.dataset import ChipDataset, collate_samples
from geofm.data.mixed import MixedChips, StoreBatchSampler
from geofm.data.satvision import NORMALIZATIONS, satvision_stats
from geofm.data.transforms import Normalize
from geofm.errors import BandError, GeofmError, StoreError
from geofm.io.stats import pooled_stats
from geofm.io.store import ChipStore, open_valid_store

if TYPE_CHECKING:
    from lightning.pytorch.loops.progress import _ProcessedTracker

BandSpec = Sequence[str] | str | int | None
"""Bands to serve from a store: names, a named set (``s2``), a count, or None for all."""


def _per_store(spec: object) -> bool:
    """True for what can only be a whole band selection, never one band's name."""
    if spec is None or isinstance(spec, (int, list, tuple)):
        return True
    return isinstance(spec, str) and (spec.isdigit() or spec.lower() in BAND_SETS)


def band_specs(bands: BandSpec | Sequence[BandSpec], num_stores: int) -> list[BandSpec]:
    """One band selection per store.

    ``bands`` is either one selection for every store, or a list of one selection per store.
    A list counts as per-store when some entry is a named set, a count, a list or None (write
    one store's band names as a list: ``[[S2.B02], [MODIS.B01]]``); a list of band names alone
    is one selection for every store.

    Raises:
        GeofmError: A per-store list whose length is not the number of stores.

    Examples:
        >>> band_specs("s2", 2)
        ['s2', 's2']
        >>> band_specs(["s1s2", "modis14"], 2)
        ['s1s2', 'modis14']
        >>> band_specs(["S2.B04", "S2.B08"], 2)
        [['S2.B04', 'S2.B08'], ['S2.B04', 'S2.B08']]
    """
    if isinstance(bands, (list, tuple)) and any(_per_store(b) for b in bands):
        if len(bands) != num_stores:
            raise GeofmError(f"{len(bands)} band selections for {num_stores} store(s)",
                             hint="give one --bands for every store, or one per --data")
        return list(bands)
    return [cast(BandSpec, bands)] * num_stores


def restored_position(trainer: L.Trainer | None, batches_per_epoch: int) -> tuple[int, int]:
    """``(epoch, batches of it already trained)`` where a resumed run picks up; ``(0, 0)`` for
    a fresh run (or no trainer).

    Call it where the training data loader is built: Lightning restores its loops before that,
    and creates the loader's first iterator, whose worker processes start drawing from the
    sampler at once, before any hook of the task runs, so the sampler must know its place by
    then. A run saved on an epoch's last batch picks up at the next epoch's start; one saved
    when training ended (its epoch closed) at the start of the epoch Lightning opens next.
    """
    if trainer is None:
        return 0, 0
    epoch = trainer.current_epoch
    # An epoch tracker counts processed batches too; Lightning annotates the base tracker.
    progress = cast("_ProcessedTracker", trainer.fit_loop.epoch_progress.current)
    if progress.processed >= progress.started:  # no epoch in progress (e.g. saved at train end)
        return epoch, 0
    done = trainer.fit_loop.epoch_loop.batch_progress.current.ready
    if done >= batches_per_epoch:
        return epoch + 1, 0
    return epoch, done


class EpochSeededSampler(RandomSampler):
    """A random order that depends only on ``(seed, epoch)``. Lightning calls
    :meth:`set_epoch`; under DDP it swaps in a seeded ``DistributedSampler`` instead."""

    def __init__(self, data: Sized, seed: int = 0):
        super().__init__(data, generator=torch.Generator())
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Order of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=g).tolist()

    def __len__(self) -> int:
        return len(self.data_source)


def sharded_loader(data: MixedChips, batch_size: int, seed: int, num_workers: int,
                   trainer: L.Trainer | None, weights: Sequence[float] | None = None,
                   min_batch: int = 1) -> DataLoader:
    """The training loader of a step run: this rank's slices of global batches of ``data``
    (each from one store), dealt by :class:`StoreBatchSampler` and picking up where a resumed
    run stopped, also under DDP and with worker processes. Its datamodule must set
    ``shards_itself`` so that the trainer adds no distributed sampler."""
    rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
    sampler = StoreBatchSampler(data.sizes, batch_size, seed, rank, world, weights, min_batch)
    sampler.resume_after(*restored_position(trainer, len(sampler)))
    return DataLoader(data, batch_size=None, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_samples, persistent_workers=num_workers > 0)


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
        self.store: ChipStore = open_valid_store(store)
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


class MixedChipDataModule(L.LightningDataModule):
    """Training batches from one or several chip stores, each batch from one store
    (pretraining).

    Every store is validated and serves its own bands; all are normalised with statistics
    pooled by band name over the stores (:func:`~geofm.io.stats.pooled_stats`), so a band that
    two stores share is scaled one way, and the union of bands with those statistics is the
    run's band contract. Batches are dealt to ranks by :class:`StoreBatchSampler` itself, so
    the trainer must not add a distributed sampler (``shards_itself``).

    Args:
        stores: Store paths.
        bands: One band spec per store (names, a named set, a count or None for all).
        batch_size: Chips per batch (per rank).
        num_workers: DataLoader worker processes.
        split: Split to train on (None: all chips).
        seed: Seed of the batch order.
        arrays: Store arrays to read (pretraining: ``["image", "valid"]``).
        weights: Relative share of batches per store (default: by chip count; see
            :class:`StoreBatchSampler`).
        normalization: ``"stats"`` (z-score with the stores' pooled statistics) or
            ``"satvision"`` (SatVision-TOA's fixed scaling, :mod:`geofm.data.satvision`).
    """

    shards_itself = True

    def __init__(
        self,
        stores: Sequence[str | Path],
        bands: Sequence[BandSpec],
        batch_size: int = 8,
        num_workers: int = 0,
        split: str | None = "train",
        seed: int = 0,
        arrays: Sequence[str] | None = None,
        weights: Sequence[float] | None = None,
        normalization: str = "stats",
    ):
        super().__init__()
        if normalization not in NORMALIZATIONS:
            raise GeofmError(f"unknown data.normalization {normalization!r}",
                             hint=f"use one of {', '.join(NORMALIZATIONS)}")
        if len(bands) != len(stores):
            raise StoreError(f"{len(bands)} band selections for {len(stores)} stores",
                             hint="give one --bands for all stores or one per --data")
        self.stores: list[ChipStore] = []
        self.store_bands: list[list[str]] = []
        for path, spec in zip(stores, bands, strict=True):
            store = open_valid_store(path)
            try:
                index = store.band_indices(spec)
            except BandError as err:  # name the store: each has its own bands
                raise BandError(str(err), path) from None
            self.stores.append(store)
            self.store_bands.append([store.bands[i] for i in index])
        self.band_names = list(dict.fromkeys(b for names in self.store_bands for b in names))
        if normalization == "satvision":
            self.normalize = Normalize(self.band_names, *satvision_stats(self.band_names))
        else:
            pooled = pooled_stats([(s.stats, s.bands) for s in self.stores], self.band_names)
            self.normalize = Normalize(self.band_names, pooled.mean.astype(np.float32),
                                       pooled.std.astype(np.float32))
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.split = split
        self.seed = seed
        self.arrays = arrays
        try:  # check the weights against the stores now, not when training starts
            self.weights = None if weights is None else [float(w) for w in weights]
            StoreBatchSampler(self.dataset(split).sizes, batch_size, seed, weights=self.weights)
        except (TypeError, ValueError) as err:
            raise GeofmError(f"data.weights: {err}",
                             hint="give one positive weight per store") from None
        if self.weights is not None and min(self.weights) <= 0:
            raise GeofmError(f"data.weights: {self.weights} gives a store no batches",
                             hint="leave that store out of data.store instead")

    def dataset(self, split: str | None = None) -> MixedChips:
        """The normalised chips of ``split`` of every store."""
        return MixedChips([
            ChipDataset(store, split=split, bands=names, transforms=self.normalize,
                        arrays=self.arrays)
            for store, names in zip(self.stores, self.store_bands, strict=True)])

    def train_dataloader(self) -> DataLoader:
        """This rank's batches (:func:`sharded_loader`)."""
        return sharded_loader(self.dataset(self.split), self.batch_size, self.seed,
                              self.num_workers, self.trainer, self.weights)
