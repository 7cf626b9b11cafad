"""Output file names: the extension must name the format written."""

from __future__ import annotations

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
