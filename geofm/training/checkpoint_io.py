"""Lightning checkpoints written whole or not at all.

Lightning's own writer leaves a truncated ``last.ckpt`` when the disk fills up part-way, which
a later ``--resume`` would then refuse. :class:`AtomicCheckpointIO` writes each checkpoint to a
temporary name beside it and renames it into place only once complete, so an interrupted write
keeps the previous ``last.ckpt`` intact and leaves no partial file.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """:class:`TorchCheckpointIO` whose local saves go through a temporary file and a rename."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote: Lightning's own way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        final = Path(path)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        buffer = io.BytesIO()  # serialised first, so a full disk is a plain OSError(ENOSPC)
        torch.save(checkpoint, buffer)
        try:
            write_bytes(tmp, buffer.getbuffer())
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def write_bytes(path: Path, data: memoryview) -> None:
    """Write ``data`` to ``path`` and flush it to the disk."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
