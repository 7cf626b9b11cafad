"""A full disk reported as one line: which path, how much is free, how much is needed."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path
from types import TracebackType

from geofm.errors import GeofmError

_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_FULL_TEXTS = ("no space left on device", "disk quota exceeded", "free disk space available",
               "file too large", "database or disk is full")


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (an ``OSError``, or GDAL's or another library's error carrying its
    text) means the disk or the user's quota is full."""
    if isinstance(error, OSError) and error.errno in _FULL_ERRNOS:
        return True
    text = str(error).lower()
    return any(t in text for t in _FULL_TEXTS)


def _size(nbytes: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:,.0f} {unit}" if unit == "bytes" else f"{nbytes:,.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:,.1f} TiB"  # pragma: no cover


def disk_full_error(path: str | Path, needed: int) -> GeofmError:
    """The one-line error for a full disk while writing ``path``.

    Args:
        path: The output being written.
        needed: Bytes the output needs at most (an estimate from its uncompressed size).
    """
    directory = Path(path).parent
    try:
        free = _size(shutil.disk_usage(directory).free) + " free"
    except OSError:
        free = "free space unknown"
    return GeofmError(f"the disk is full ({free} in {directory}; the output needs up to "
                      f"{_size(needed)})", path, "free some space or write elsewhere; "
                      "nothing was written")


MARGIN_BYTES = 2**20
"""Free space kept in reserve: a write is refused when it could leave less than this."""


def free_bytes(directory: Path) -> int | None:
    """Free bytes for the user in ``directory`` (``None`` if unknown)."""
    try:
        return int(shutil.disk_usage(directory).free)
    except OSError:
        return None


class DiskSpace:
    """Watches for a full disk while the block runs and reports it as one line.

    GDAL's GeoTIFF writer reports a failed write only on stderr and carries on, so writes are
    checked beforehand with :meth:`reserve`; a full-disk error raised inside the block (or any
    error while the disk has less than :data:`MARGIN_BYTES` free) becomes
    :func:`disk_full_error`. Set :attr:`needed` once the size of the output is known.

    Args:
        path: The output being written.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.needed = 0
        self._free: int | None = None  # free bytes when last measured
        self._since = 0  # bytes reserved since

    def reserve(self, nbytes: int) -> None:
        """Raise :func:`disk_full_error` unless ``nbytes`` more (plus the margin) fit.

        The free space is measured again only once the writes since the last measurement
        could have used half of it (or at once with ``nbytes=0``).
        """
        self._since += nbytes
        if nbytes and self._free is not None and 2 * (self._since + MARGIN_BYTES) < self._free:
            return
        free = free_bytes(self.path.parent)
        self._free, self._since = free, 0
        if free is not None and free < nbytes + MARGIN_BYTES:
            raise disk_full_error(self.path, max(self.needed, nbytes + MARGIN_BYTES))

    def __enter__(self) -> DiskSpace:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc is None or isinstance(exc, (KeyboardInterrupt, SystemExit)):
            return
        if isinstance(exc, GeofmError) and "the disk is full" in str(exc):
            return
        free = free_bytes(self.path.parent)
        if is_disk_full(exc) or (free is not None and free < MARGIN_BYTES):
            raise disk_full_error(self.path, self.needed) from None
