"""Reading pickled files without running their code.

A pickle can name any Python callable and have it called while loading (``os.system`` is the
classic example), so geofm never unpickles a file with an unrestricted unpickler:

- torch files (Lightning checkpoints, ``torch.save`` state dicts) go through torch's weights-only
  unpickler, which builds tensors, containers, numbers, strings and torch's own dtypes and sizes
  and refuses every other global (:func:`torch_load`);
- the one other pickle geofm meets, the ``.metadata`` index of a sharded (distributed)
  checkpoint folder, goes through :class:`AllowListUnpickler`, which resolves only the
  checkpoint-index classes of ``torch.distributed.checkpoint`` listed in
  :data:`SHARDED_INDEX_GLOBALS`.

A refused file is reported with :func:`describe_failure`: one clause naming what the file asked
for, never advice to load it unrestricted.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

RESUME_EXTRA_GLOBALS: list[Any] = []
"""Globals allowed beyond torch's weights-only defaults when reading a Lightning checkpoint.

Empty: the checkpoints geofm's runs write (weights, optimiser and scheduler states, loop and
callback states, hyperparameters) hold only tensors, containers, numbers and strings. Anything
added here must be a plain data class whose construction runs no user code."""

SHARDED_INDEX_GLOBALS: frozenset[tuple[str, str]] = frozenset({
    ("torch.distributed.checkpoint.metadata", "Metadata"),
    ("torch.distributed.checkpoint.metadata", "TensorStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "BytesStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "ChunkStorageMetadata"),
    ("torch.distributed.checkpoint.metadata", "TensorProperties"),
    ("torch.distributed.checkpoint.metadata", "MetadataIndex"),
    ("torch.distributed.checkpoint.metadata", "StorageMeta"),
    ("torch.distributed.checkpoint.metadata", "_MEM_FORMAT_ENCODING"),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch.serialization", "_get_layout"),
    ("torch", "Size"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("collections", "OrderedDict"),
})
"""``(module, name)`` globals of the index (``.metadata``) of a ``torch.distributed.checkpoint``
folder; torch dtypes (``torch.float32``, ...) are allowed too."""

_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


class RefusedPickle(pickle.UnpicklingError):
    """A pickle names a global outside the allow-list."""


class AllowListUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals in ``allowed`` (and torch dtypes).

    Args:
        file: The pickle stream.
        allowed: ``(module, name)`` pairs that may be resolved.
    """

    def __init__(self, file: Any, allowed: frozenset[tuple[str, str]]) -> None:
        super().__init__(file)
        self.allowed = allowed

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        raise RefusedPickle(f"GLOBAL {module}.{name} is not allowed")


def torch_load(path: str | Path, mmap: bool = False) -> Any:
    """``torch.load`` with the weights-only unpickler on the CPU (tensors memory-mapped with
    ``mmap``); only :data:`RESUME_EXTRA_GLOBALS` are allowed beyond torch's defaults.

    Raises:
        pickle.UnpicklingError: The file names a global outside the allow-list (nothing in it
            was run).
        Exception: Whatever torch raises for a file it cannot read.
    """
    with torch.serialization.safe_globals(RESUME_EXTRA_GLOBALS):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_sharded_index(path: str | Path) -> Any:
    """The ``.metadata`` index of a sharded checkpoint folder, read with the allow-list.

    Raises:
        RefusedPickle: The index names a global outside :data:`SHARDED_INDEX_GLOBALS`.
    """
    with open(path, "rb") as f:
        return AllowListUnpickler(f, SHARDED_INDEX_GLOBALS).load()


def refused_global(err: BaseException) -> str | None:
    """The global a refused pickle asked for (``"posix.system"``), ``"an object"`` when the
    refusal names none, or ``None`` when ``err`` is not a refused pickle."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    text = str(err)
    found = _GLOBAL.search(text)
    if found:
        return found.group(1)
    return "an object" if "weights only" in text.lower() or "weights_only" in text else None


def describe_failure(err: BaseException) -> str:
    """Why a file could not be read, as one clause that never advises unrestricted loading."""
    found = refused_global(err)
    if found is not None:
        return (f"it holds pickled code or objects geofm does not load ({found}); nothing in "
                "it was run")
    if isinstance(err, pickle.UnpicklingError):
        return "not a readable pickle (UnpicklingError)"
    lines = [line for line in str(err).splitlines() if line.strip()]
    first = lines[0][:200] if lines else ""
    if not first or "weights_only" in first:
        return type(err).__name__
    return f"{type(err).__name__}: {first}"
