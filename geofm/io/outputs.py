"""Output paths, checked before anything is computed: one place for every writer's checks.

- :func:`require_suffix`: the extension must name the format written;
- :func:`check_output`: an output file may not exist (unless overwritten), be an input, or sit
  in a missing or read-only directory;
- :func:`check_writable`: an output directory is created and must be writable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from geofm.errors import GeofmError


def require_suffix(path: str | Path, suffixes: Sequence[str], kind: str) -> Path:
    """Refuse an output whose extension does not name the format written.

    Args:
        path: The output path.
        suffixes: Accepted extensions, lower case with the dot (``(".tif", ".tiff")``); the
            first is suggested.
        kind: The format written, for the message (``"a GeoTIFF"``).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        GeofmError: The extension is missing or another one.

    >>> require_suffix("map.png", (".tif", ".tiff"), "a GeoTIFF")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    geofm.errors.GeofmError: map.png: is written as a GeoTIFF, but its extension is ...
    """
    out = Path(path)
    suffix = out.suffix.lower()
    if suffix in suffixes:
        return out
    shown = f"'{out.suffix}'" if out.suffix else "missing"
    raise GeofmError(f"is written as {kind}, but its extension is {shown}", out,
                     f"name it {out.with_suffix(suffixes[0]).name}")


def check_output(path: Path, overwrite: bool, inputs: Sequence[Path] = ()) -> None:
    """Refuse an output path that exists (unless ``overwrite``) or cannot be written.

    Raises:
        GeofmError: The path exists, is a directory, is one of the inputs, or its directory is
            missing or not writable.
    """
    if path.is_dir():
        raise GeofmError("output is a directory", path, "give a file name such as out.tif")
    if any(path.resolve() == p.resolve() for p in inputs):
        raise GeofmError("output would overwrite the input", path, "choose another output path")
    if path.exists() and not overwrite:
        raise GeofmError("output already exists", path, "choose a new path or pass --overwrite")
    parent = path.parent
    if not parent.is_dir():
        raise GeofmError("output directory does not exist", parent, "create it first")
    require_writable(parent, "choose a writable location")


def check_writable(out: Path) -> None:
    """Create the output directory ``out`` of a run (and its parents) and check it is writable.

    Raises:
        GeofmError: The directory cannot be created or is not writable.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GeofmError(f"cannot create the output directory ({e.strerror})", out,
                         "choose a writable --output") from None
    require_writable(out, "choose a writable --output")


def require_writable(folder: Path, hint: str, error: type[GeofmError] = GeofmError) -> None:
    """Refuse an existing output directory that this process cannot write into.

    Args:
        folder: The directory.
        hint: What to do instead, for the message.
        error: The error class raised (e.g. :class:`~geofm.errors.StoreError` for a store).

    Raises:
        GeofmError: ``folder`` is not writable.
    """
    if not os.access(folder, os.W_OK):
        raise error("output directory is not writable", folder, hint)
