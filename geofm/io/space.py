"""Free space on the output's file system: checked before a build or a prediction writes,
reported when it runs out.

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
from types import TracebackType

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
        text = str(cur)
        if any(t in text for t in ("No space left on device", "Disk quota exceeded",
                                   "database or disk is full")):  # the last: SQLite, GeoPackage
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


MARGIN_BYTES = 2**20
"""Free space a prediction keeps in reserve: a write is refused when it could leave less."""


def prediction_full_error(path: str | Path, needed: int) -> DiskFullError:
    """The one line for a full disk while a prediction writes ``path`` (``needed``: the most
    its files take at once)."""
    directory = Path(os.path.abspath(path)).parent
    free = free_bytes(directory)
    have = f"{human_bytes(free)} free" if free is not None else "free space unknown"
    return DiskFullError(f"the disk is full ({have} in {directory}; the output needs up to "
                         f"{human_bytes(needed)})", path,
                         "free some space or write elsewhere; nothing was written")


class DiskSpace:
    """Watches a prediction's writes for a full disk and reports it as one line.

    GDAL's GeoTIFF writer reports a failed write only on stderr and carries on, so writes are
    checked beforehand with :meth:`reserve`; a full-disk error raised inside the block (or any
    error while the disk has less than :data:`MARGIN_BYTES` free) becomes
    :func:`prediction_full_error`. Set :attr:`needed` once the size of the output is known.

    Args:
        path: The output being written.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.needed = 0
        self._free: int | None = None  # free bytes when last measured
        self._since = 0  # bytes reserved since

    def reserve(self, nbytes: int) -> None:
        """Raise :func:`prediction_full_error` unless ``nbytes`` more (plus the margin) fit.

        The free space is measured again only once the writes since the last measurement
        could have used half of it (or at once with ``nbytes=0``).
        """
        self._since += nbytes
        if nbytes and self._free is not None and 2 * (self._since + MARGIN_BYTES) < self._free:
            return
        free = free_bytes(self.path.parent)
        self._free, self._since = free, 0
        if free is not None and free < nbytes + MARGIN_BYTES:
            raise prediction_full_error(self.path, max(self.needed, nbytes + MARGIN_BYTES))

    def __enter__(self) -> DiskSpace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, (KeyboardInterrupt, SystemExit, DiskFullError)):
            return
        free = free_bytes(self.path.parent)
        if is_disk_full(exc) or (free is not None and free < MARGIN_BYTES):
            raise prediction_full_error(self.path, self.needed) from None
