"""A full disk while writing a model or a run's outputs, reported as one line: the path, the
free space needed and the space left (detection and sizes from :mod:`geofm.io.space`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from geofm.errors import DiskFullError, GeofmError
from geofm.io.space import free_bytes, human_bytes, is_disk_full


def disk_full_error(path: str | Path, needed: int | None, what: str) -> DiskFullError:
    """The one-line error of a full disk while writing ``what`` under ``path``."""
    need = f"needs about {human_bytes(needed)} free" if needed else "needs more free space"
    free = free_bytes(path)
    left = f"{human_bytes(free)} left" if free is not None else "free space unknown"
    return DiskFullError(f"disk full while writing {what}: it {need}, {left}", path,
                         hint="free some space or choose another output on a disk with room; "
                         "nothing written was completed")


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
