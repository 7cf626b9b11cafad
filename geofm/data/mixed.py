"""Several chip stores behind one index, served in batches that each come from one store.

A band-token encoder (ChannelViT) can pretrain on several sensors at once (Sentinel-1 + 2,
MODIS, Landsat ...): each batch holds the chips of one store, with that store's bands and chip
size, and batches of all stores are interleaved at random. :class:`StoreBatchSampler` deals the
batches to the ranks of a distributed run itself, so every rank reads only its own chips.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from geofm.data.dataset import ChipDataset, Sample


class MixedChips(Dataset):
    """The chips of several :class:`~geofm.data.dataset.ChipDataset`, end to end.

    Index ``offsets[s] + i`` is chip ``i`` of dataset ``s``. Indexing with a list of indices
    (all from one dataset, as :class:`StoreBatchSampler` yields them) reads them in one store
    call and returns the list of samples. A sample's ``meta["index"]`` becomes
    ``store_offsets[s]`` plus its index in its store, so chips of different stores never share
    an index in run records; ``meta["store"]`` is ``s``.

    Args:
        datasets: One dataset per store.
    """

    def __init__(self, datasets: Sequence[ChipDataset]):
        if not datasets:
            raise ValueError("no datasets to mix")
        self.datasets = list(datasets)
        self.sizes = [len(d) for d in self.datasets]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        store_sizes = [len(d.store) for d in self.datasets]
        self.store_offsets = np.concatenate([[0], np.cumsum(store_sizes)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(dataset, index within it)`` of a mixed index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        s = int(np.searchsorted(self.offsets, index, side="right")) - 1
        return s, int(index - self.offsets[s])

    def __getitem__(self, index: int | Sequence[int]) -> Sample | list[Sample]:
        if isinstance(index, (int, np.integer)):
            return self.__getitems__([int(index)])[0]
        return self.__getitems__(index)

    def __getitems__(self, indices: Sequence[int]) -> list[Sample]:
        """Samples of ``indices``, which must all belong to one dataset."""
        located = [self.locate(int(i)) for i in indices]
        stores = {s for s, _ in located}
        if len(stores) != 1:
            raise ValueError("a batch must come from one store")
        s = stores.pop()
        samples = self.datasets[s].__getitems__([i for _, i in located])
        for sample in samples:
            sample["meta"]["index"] += int(self.store_offsets[s])
            sample["meta"]["store"] = s
        return samples


class StoreBatchSampler(Sampler[list[int]]):
    """Batches of mixed indices, each from one store, shuffled by ``(seed, epoch)``.

    The sampler deals *global* batches of ``batch_size × world_size`` chips of one store; rank
    ``r`` takes its ``batch_size`` slice of each, so on every step all ranks train on the same
    store, with equal batch sizes (which a contrastive loss gathered over the ranks needs) and
    disjoint chips.

    An epoch has as many global batches as one pass over every chip takes. Without ``weights``
    each epoch is that pass: each store's chips are shuffled and cut into global batches. On
    one rank a store's last batch may be short (one shorter than ``min_batch`` is dropped);
    across several ranks it is filled up from the start of the store's shuffle, so a store
    smaller than a global batch repeats chips. A store's share of the steps is its share of the
    chips. With ``weights``, store ``s`` gets the share ``weights[s] / sum(weights)`` of the
    epoch's batches (all full): its chips come from an endless sequence of fresh shuffles of the
    store, read on from where the previous epoch stopped, so a small store is repeated and a
    large one is covered over several epochs, every chip once before any twice (so a batch that
    spans two shuffles, or any batch of a store smaller than a batch, can hold a chip twice).
    With several stores the batches of all stores are then shuffled together.

    Lightning calls :meth:`set_epoch` through the data loader's ``sampler`` attribute (the data
    loader is built with this sampler, ``batch_size=None``); :meth:`resume_after`, called when
    the loader is built, sets the epoch and skips the batches that a resumed epoch already
    trained on.

    Args:
        sizes: Chips of each store (as in :class:`MixedChips`).
        batch_size: Chips per batch and rank.
        seed: Seed of the order.
        rank: This process's rank.
        world_size: Number of ranks.
        weights: Relative share of batches per store (default: by chip count).
        min_batch: Smallest batch kept (one rank): a contrastive loss needs 2.
    """

    def __init__(self, sizes: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, weights: Sequence[float] | None = None,
                 min_batch: int = 1):
        if batch_size < max(1, min_batch):
            raise ValueError(f"batch_size must be at least {max(1, min_batch)}, got "
                             f"{batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside 0..{world_size - 1}")
        if sum(sizes) == 0:
            raise ValueError("the stores hold no chips")
        self.sizes = [int(n) for n in sizes]
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.min_batch = min_batch
        self.global_size = batch_size * world_size
        self.num_batches = sum(self._store_batches(n) for n in self.sizes)
        if self.num_batches == 0:
            raise ValueError(f"no store fills a batch of {min_batch}")
        self.quotas = None if weights is None else self._quotas(weights)
        self.epoch = 0
        self.skip = 0

    def _store_batches(self, n: int) -> int:
        """Global batches one pass over a store of ``n`` chips gives."""
        full, tail = divmod(n, self.global_size)
        keep_tail = tail > 0 and (self.world_size > 1 or tail >= self.min_batch)
        return full + int(keep_tail)

    def _quotas(self, weights: Sequence[float]) -> list[int]:
        """Batches per store and epoch: ``num_batches`` split by ``weights`` (largest
        remainders)."""
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(self.sizes),) or not np.all(np.isfinite(w)) or np.any(w < 0) \
                or w.max() <= 0:
            raise ValueError(f"weights must be {len(self.sizes)} non-negative numbers, not all "
                             f"zero; got {list(weights)}")
        empty = [s for s, (n, x) in enumerate(zip(self.sizes, w, strict=True)) if x > 0 and n == 0]
        if empty:
            raise ValueError(f"store {empty[0]} has no chips but a positive weight")
        w = w / w.max()  # huge weights would overflow the sum
        raw = w / w.sum() * self.num_batches
        quotas = np.floor(raw).astype(np.int64)
        order = np.argsort(-(raw - quotas), kind="stable")
        quotas[order[:self.num_batches - int(quotas.sum())]] += 1
        return quotas.tolist()

    def set_epoch(self, epoch: int) -> None:
        """Order of ``epoch``."""
        self.epoch = epoch

    def resume_after(self, epoch: int, batches_done: int) -> None:
        """Continue ``epoch`` after this rank's first ``batches_done`` batches (at its start
        for 0)."""
        self.epoch, self.skip = epoch, batches_done

    def _stream(self, store: int, start: int, count: int) -> Tensor:
        """Positions ``start .. start + count`` of store ``store``'s endless chip sequence, a
        shuffle of the store per pass (as store-local indices, ``[count]`` int64)."""
        n = self.sizes[store]
        if count == 0:
            return torch.zeros(0, dtype=torch.int64)
        passes = []
        for k in range(start // n, (start + count - 1) // n + 1):
            key = np.random.SeedSequence([self.seed, store, k]).generate_state(1, np.uint64)
            g = torch.Generator().manual_seed(int(key[0] >> np.uint64(1)))
            passes.append(torch.randperm(n, generator=g))
        first = start - (start // n) * n
        return torch.cat(passes)[first:first + count]

    def epoch_batches(self) -> tuple[Tensor, Tensor, Tensor]:
        """The current epoch's global batches, as index ranges into one tensor.

        Returns:
            ``(order [M], starts [K], ends [K])``: global batch ``k`` is
            ``order[starts[k]:ends[k]]``, in the epoch's batch order. Kept as tensors, not
            lists of lists: at 10⁷ chips Python lists cost every rank most of a gigabyte.
        """
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        size = self.global_size
        orders, starts, ends = [], [], []
        offset = position = 0
        for s, n in enumerate(self.sizes):
            if self.quotas is None:
                order = torch.randperm(n, generator=g)
                count = self._store_batches(n) * size
                if self.world_size > 1 and count > n:  # fill the last batch from the start
                    order = order[torch.arange(count) % n]
                order = order[:count]
            else:
                count = self.quotas[s] * size
                order = self._stream(s, self.epoch * count, count)
            begin = torch.arange(0, len(order), size) + position
            orders.append(order + offset)
            starts.append(begin)
            ends.append((begin + size).clamp(max=position + len(order)))
            offset += n
            position += len(order)
        num = sum(len(b) for b in starts)
        # One store's batches are already in random order: one store runs as a plain shuffle.
        shuffle = torch.randperm(num, generator=g) if len(self.sizes) > 1 else torch.arange(num)
        return torch.cat(orders), torch.cat(starts)[shuffle], torch.cat(ends)[shuffle]

    def all_batches(self) -> list[list[int]]:
        """The current epoch's global batches, as lists (small runs and tests)."""
        order, starts, ends = self.epoch_batches()
        return [order[a:b].tolist() for a, b in zip(starts.tolist(), ends.tolist(), strict=True)]

    def __iter__(self) -> Iterator[list[int]]:
        order, starts, ends = self.epoch_batches()
        skip, self.skip = self.skip, 0
        first = self.rank * self.batch_size
        for k, (a, b) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            if k >= skip:
                yield order[a + first:min(a + first + self.batch_size, b)].tolist()

    def __len__(self) -> int:
        """This rank's batches in a whole epoch (Lightning counts a resumed one from its
        start)."""
        return self.num_batches
