"""``build_store``: one entry point for every builder, as ``geofm build SOURCE`` runs it.

It prepares the output (refused when it holds something else, cleared with ``overwrite``, an
unfinished build of the same inputs resumed), runs the source's builder and reports, as a
:class:`~geofm.errors.GeofmWarning`, the images a build had to leave out.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from geofm.errors import GeofmError, GeofmWarning, StoreError

SOURCES = ("reben", "modis", "opticalrs")
"""The sources :func:`build_store` builds from."""


def build_store(source: str, src: str | Path, out: str | Path, *, overwrite: bool = False,
                **options: Any) -> Path:
    """Build a chip store from a source dataset.

    Args:
        source: ``"reben"`` (:func:`~geofm.builders.reben.build_reben`), ``"modis"``
            (:func:`~geofm.builders.modis.build_modis`) or ``"opticalrs"``
            (:func:`~geofm.builders.opticalrs.build_opticalrs`, ``src`` being its manifest).
        src: The source dataset.
        out: The output store (``.zarr``).
        overwrite: Replace an existing output (and, for OpticalRS, its ``.scan`` folder).
        **options: The builder's own options (``scheduler``, ``workers``, ``progress``, ...).

    Returns:
        The finished store's path.

    Raises:
        GeofmError: An unknown source; the output exists and holds something else, or its
            directory is not writable; and the builder's own errors.
    """
    out = Path(out)
    if source not in SOURCES:
        raise GeofmError(f"unknown source {source!r}", hint=f"use one of {', '.join(SOURCES)}")
    if source == "opticalrs" and overwrite:
        scan = Path(f"{out}.scan")
        if scan.exists():
            shutil.rmtree(scan)
    prepare_output(out, overwrite)
    built = _builder(source)(src, out, **options)
    if source == "opticalrs":
        from geofm.builders.opticalrs_report import unreadable_note

        note = unreadable_note(json.loads((Path(built) / "report.json").read_text()))
        if note:
            warnings.warn(note, GeofmWarning, stacklevel=2)
    return Path(built)


def _builder(source: str) -> Callable[..., Path]:
    if source == "reben":
        from geofm.builders.reben import build_reben

        return build_reben
    if source == "modis":
        from geofm.builders.modis import build_modis

        return build_modis
    from geofm.builders.opticalrs import build_opticalrs

    return build_opticalrs


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse or clear an existing output; an unfinished build of the same inputs resumes.

    Raises:
        StoreError: The output exists and is not an unfinished build (without ``overwrite``),
            or its directory is not writable.
    """
    from geofm.io.outputs import require_writable
    from geofm.io.writer import check_store_output

    if out.exists() and overwrite:
        shutil.rmtree(out)
    else:
        check_store_output(out)
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists():
        require_writable(parent, "choose a writable location", StoreError)
