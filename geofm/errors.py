"""User-facing errors.

Every problem a user can fix (a missing file, a corrupt raster, a band the store does not have)
is raised as :class:`GeofmError` with one line that says what is wrong, which file, and what to
do. The CLI prints that line and exits non-zero without a traceback; library users catch it.
"""

from __future__ import annotations

from pathlib import Path


class GeofmError(Exception):
    """A problem with the user's input, reported as one clear line."""

    def __init__(self, message: str, path: str | Path | None = None, hint: str | None = None):
        self.path = str(path) if path is not None else None
        self.hint = hint
        parts = [f"{self.path}: {message}" if self.path else message]
        if hint:
            parts.append(hint)
        super().__init__(" — ".join(parts))


class StoreError(GeofmError):
    """A chip store is missing, incomplete, corrupt or does not fit the request."""


class BuildError(GeofmError):
    """A builder's source data is missing, corrupt or inconsistent."""


class BandError(GeofmError):
    """A band name, band set or band count cannot be resolved."""


class GeofmWarning(UserWarning):
    """Something the user should know but that does not stop the run (an input at another
    resolution or processing level than the model's). The CLI prints it as one
    ``geofm: warning:`` line; ``--strict`` (``strict=True``) makes it a :class:`GeofmError`."""
