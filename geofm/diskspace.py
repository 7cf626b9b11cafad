"""A full disk reported as one line: the path, the free space needed and the space left."""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geofm.errors import GeofmError

_FULL = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or an error it was raised from) is a full disk or an exceeded quota.

    Libraries that write through their own code report it in their message
    (safetensors: ``IoError(Os { code: 28, kind: StorageFull, ... })``).
    """
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _FULL:
            return True
        text = str(e)
        if "No space left on device" in text or "StorageFull" in text:
            return True
        e = e.__cause__ or e.__context__
    return False


def free_bytes(path: str | Path) -> int | None:
    """Free space on the filesystem holding ``path`` (its nearest existing parent)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def human(n: int | None) -> str:
    """``1.5 GB``-style size (decimal units)."""
    if n is None:
        return "unknown"
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def disk_full_error(path: str | Path, needed: int | None, what: str) -> GeofmError:
    """The one-line error of a full disk while writing ``what`` under ``path``."""
    need = f"needs about {human(needed)} free" if needed else "needs more free space"
    return GeofmError(f"disk full while writing {what}: it {need}, {human(free_bytes(path))} "
                      "left", path, hint="free some space or choose another output on a "
                      "disk with room; nothing written was completed")


@contextmanager
def full_disk_reported(path: str | Path, needed: int | None, what: str) -> Iterator[None]:
    """Turn a full disk inside the block into :func:`disk_full_error`; other errors pass."""
    try:
        yield
    except GeofmError:
        raise
    except Exception as err:
        if not is_disk_full(err):
            raise
        raise disk_full_error(path, needed, what) from None
