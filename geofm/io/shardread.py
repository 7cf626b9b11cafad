"""Random chip reads straight from Zarr v3 shards.

zarr-python spends about a millisecond of Python machinery per ``array[i]``; a chip is one inner
chunk of a shard, so reading it needs one index lookup, one ``pread`` and one Blosc decode. This
module does exactly that for the layout the store writes (``sharding_indexed`` over
``[bytes(little), blosc]`` with the index ``[bytes(little), crc32c]`` at the end of the shard;
Zarr v3 specification, sharding codec), checks the array's metadata matches before using it, and
otherwise falls back to zarr. Every read is checked against zarr in the tests.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numcodecs import Blosc

_INDEX_ENTRY_BYTES = 16  # two little-endian uint64: offset, nbytes
_CRC_BYTES = 4
_EMPTY = np.iinfo(np.uint64).max


def _fast_layout(meta: dict[str, Any]) -> tuple[int, ...] | None:
    """The inner chunk shape if ``meta`` is the layout this reader understands, else None."""
    codecs = meta.get("codecs", [])
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    conf = codecs[0]["configuration"]
    inner = [c["name"] for c in conf["codecs"]]
    index = [c["name"] for c in conf["index_codecs"]]
    if inner != ["bytes", "blosc"] or index != ["bytes", "crc32c"]:
        return None
    if conf.get("index_location", "end") != "end":
        return None
    if conf["codecs"][0].get("configuration", {}).get("endian", "little") != "little":
        return None
    if meta.get("chunk_key_encoding", {}).get("configuration", {}).get("separator", "/") != "/":
        return None
    chunk = tuple(conf["chunk_shape"])
    shard = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    # One chip per inner chunk, whole chips per shard: the only layout read here.
    if chunk[0] != 1 or chunk[1:] != shard[1:] or chunk[1:] != tuple(meta["shape"][1:]):
        return None
    return shard


class ShardReader:
    """Reads whole chips (index along the first axis) of one sharded Zarr v3 array."""

    def __init__(self, array_path: str | Path):
        self.path = Path(array_path)
        self.array = zarr.open_array(str(self.path), mode="r")
        meta = self.array.metadata.to_dict()
        self.shape: tuple[int, ...] = tuple(self.array.shape)
        self.dtype = np.dtype(self.array.dtype)
        shard = _fast_layout(meta)
        self.fast = shard is not None and self.dtype.byteorder in ("=", "<", "|")
        self.shard_chips = shard[0] if shard else 0
        self._fill = self.array.fill_value
        self._index: dict[int, np.ndarray] = {}
        self._fds: dict[int, int] = {}
        self._codec = Blosc()
        self._pid = os.getpid()

    def __getstate__(self) -> dict[str, Any]:
        # File descriptors and caches stay with the process that opened them.
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def close(self) -> None:
        """Close every open shard file."""
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def _shard_fd(self, shard: int) -> int | None:
        if os.getpid() != self._pid:  # forked worker: never share offsets or caches
            self._fds, self._index, self._pid = {}, {}, os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            key = self.path / "c" / str(shard) / "/".join("0" * (len(self.shape) - 1))
            try:
                fd = os.open(key, os.O_RDONLY)
            except FileNotFoundError:
                return None  # shard never written: every chip is the fill value
            self._fds[shard] = fd
            size = os.fstat(fd).st_size
            n = self.shard_chips
            raw = os.pread(fd, n * _INDEX_ENTRY_BYTES, size - n * _INDEX_ENTRY_BYTES - _CRC_BYTES)
            self._index[shard] = np.frombuffer(raw, dtype="<u8").reshape(n, 2)
        return fd

    def read(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Chips at ``indices`` (any order, repeats allowed) as ``[len(indices), *chip_shape]``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.shape[0]):
            raise IndexError(f"chip index out of range 0..{self.shape[0] - 1}")
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        if not self.fast:
            for k, i in enumerate(idx):
                out[k] = self.array[int(i)]
            return out
        for k, i in enumerate(idx):
            shard, j = divmod(int(i), self.shard_chips)
            fd = self._shard_fd(shard)
            if fd is None:
                out[k] = self._fill
                continue
            offset, nbytes = self._index[shard][j]
            if offset == _EMPTY:
                out[k] = self._fill
                continue
            data = os.pread(fd, int(nbytes), int(offset))
            self._codec.decode(data, out=out[k])
        return out
