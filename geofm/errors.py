"""User-facing errors.

Every problem a user can fix (a missing file, a corrupt raster, a band the store does not have)
is raised as :class:`GeofmError` with one line that says what is wrong, which file, and what to
do. The CLI prints that line and exits non-zero without a traceback; library users catch it.

Errors cross process boundaries intact: a :class:`GeofmError` raised in a Dask worker or a
DataLoader worker pickles as its class, its line and its attributes only (never the exception it
replaced, which may not unpickle), so the caller receives the same class and the same line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _restore(cls: type[GeofmError], args: tuple[Any, ...], state: dict[str, Any]) -> GeofmError:
    """Rebuild a pickled error without calling ``__init__`` (subclasses may change it)."""
    err = cls.__new__(cls, *args)
    err.args = args
    err.__dict__.update(state)
    return err


class GeofmError(Exception):
    """A problem with the user's input, reported as one clear line."""

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        self.hint = hint
        parts = [f"{self.path}: {message}" if self.path else message]
        if hint:
            parts.append(hint)
        super().__init__(" — ".join(parts))

    def __reduce__(self) -> tuple[Any, ...]:
        # The class, the line and the attributes; no traceback, cause or context.
        return _restore, (type(self), tuple(self.args), dict(self.__dict__))


def first_line(err: BaseException) -> str:
    r"""A library's exception as one clause for a :class:`GeofmError` (its first line, or its
    class name when it has no message).

    >>> first_line(OSError("disk full\nwhile writing block 7"))
    'disk full'
    >>> first_line(ValueError())
    'ValueError'
    """
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class StoreError(GeofmError):
    """A chip store is missing, incomplete, corrupt or does not fit the request."""


class BuildError(GeofmError):
    """A builder's source data is missing, corrupt or inconsistent."""


class BandError(GeofmError):
    """A band name, band set or band count cannot be resolved."""


class DiskFullError(GeofmError):
    """The output's file system has too little free space for what is to be written."""


class GeofmWarning(UserWarning):
    """Something the user should know but that does not stop the run (an input at another
    resolution or processing level than the model's). The CLI prints it as one
    ``geofm: warning:`` line; ``--strict`` (``strict=True``) makes it a :class:`GeofmError`."""
