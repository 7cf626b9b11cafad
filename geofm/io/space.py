"""Free space on the output's file system: checked before a build, reported when it runs out.

A builder knows how many chips it will write and their uncompressed size. Compression (Blosc
lz4 with byte shuffle) shrinks imagery by a factor that depends on the content, so the up-front
check refuses a build only when even a well-compressing one (:data:`BEST_RATIO`) cannot fit; a
file system that fills up later is reported the same way, as one line naming the store and the
space it still needs, and the store stays unfinished (a rerun after freeing space resumes it).
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geofm.errors import DiskFullError

#: Largest compression ratio assumed by the up-front check (uncompressed / stored bytes).
BEST_RATIO = 4.0

_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def human_bytes(n: float) -> str:
    """``1234567`` → ``'1.2 MB'`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def free_bytes(path: str | Path) -> int | None:
    """Bytes free to this user on the file system that holds (or will hold) ``path``."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def is_disk_full(e: BaseException) -> bool:
    """Whether ``e`` (or what it wraps) says the disk or the user's quota is full."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in _FULL:
            return True
        if "No space left on device" in str(cur) or "Disk quota exceeded" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def disk_full_error(path: str | Path, needed: int | None = None) -> DiskFullError:
    """The one line for a full file system under ``path``, with the space still ``needed``."""
    free = free_bytes(path)
    have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    need = f"; the rest of the output needs up to {human_bytes(needed)}" if needed else ""
    return DiskFullError(f"no space left on device ({have}{need})", path,
                         "free space there or write to another disk, then rerun the same "
                         "command to resume")


def check_free_space(path: str | Path, needed: int, what: str) -> None:
    """Refuse up front when ``needed`` uncompressed bytes cannot fit even when well compressed.

    Raises:
        DiskFullError: Free space is below ``needed / BEST_RATIO``.
    """
    free = free_bytes(path)
    if free is None or needed <= 0 or free >= needed / BEST_RATIO:
        return
    raise DiskFullError(
        f"not enough free space: {human_bytes(free)} free, {what} needs about "
        f"{human_bytes(needed / BEST_RATIO)} to {human_bytes(needed)} (compressed to "
        "uncompressed)", path, "free space there or write to another disk")


@contextmanager
def reporting_full_disk(path: str | Path, needed: int | None = None) -> Iterator[None]:
    """Turn a full-disk ``OSError`` raised inside the block into :func:`disk_full_error`."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise disk_full_error(path, needed) from None
        raise
