"""The input against the model's contract beyond band names: pixel size and processing level.

One function, :func:`check_source`, serves the command line, :func:`~geofm.predict.predict_raster`
and the Python API alike, so a raster or a DataArray gets the same answer everywhere: a
:class:`~geofm.errors.GeofmWarning` (one line), or with ``strict`` a
:class:`~geofm.errors.GeofmError`.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from types import FrameType
from typing import Any, cast

from geofm.bands import get_band
from geofm.errors import GeofmError, GeofmWarning
from geofm.levels import checkpoint_levels, describe, level_mismatches
from geofm.predict.band_plan import BandPlan
from geofm.predict.model import Predictor

GSD_TOLERANCE = 0.05
"""Relative pixel-size difference tolerated before an input counts as another resolution."""

SENSOR_NAMES = {"S2": "Sentinel-2", "S1": "Sentinel-1", "MODIS": "MODIS", "L8": "Landsat 8",
                "L9": "Landsat 9", "L7": "Landsat 7"}


def contract_problems(predictor: Predictor, source: Any, plan: BandPlan) -> list[str]:
    """Where ``source`` (a raster or DataArray source) departs from the model's resolution or
    processing level, one message each (empty when it fits or nothing is known).

    The source may carry ``res_m`` (its pixel size in metres, ``None`` when not projected),
    ``resampled`` (already warped to the model's pixel size) and ``levels`` (processing level
    per sensor, from its metadata).
    """
    problems = []
    gsd = predictor.gsd_m
    res = getattr(source, "res_m", None)
    if gsd and res and abs(res / gsd - 1) > GSD_TOLERANCE and not getattr(
            source, "resampled", False):
        problems.append(
            f"{source.name}: the input's pixels are {res:g} m but the model was trained at "
            f"{gsd:g} m; warp it first (--resample-to-model-gsd, resample_to_model_gsd=True, "
            f"or DataArray.rio.reproject(resolution={gsd:g}))")
    sensors = [get_band(b).sensor for b in plan.bands]
    for sensor, trained, given in level_mismatches(checkpoint_levels(predictor.header),
                                                   getattr(source, "levels", None) or {},
                                                   sensors):
        name = SENSOR_NAMES.get(sensor, sensor)
        problems.append(
            f"{source.name}: the model was trained on {name} {describe(trained)} but the "
            f"input is {describe(given)}; predictions may be off — use {trained} input")
    return problems


def check_source(predictor: Predictor, source: Any, plan: BandPlan, *,
                 strict: bool = False) -> None:
    """Warn (one :class:`~geofm.errors.GeofmWarning` per problem) where the input's resolution
    or processing level differs from the model's.

    Raises:
        GeofmError: With ``strict``, the first problem.
    """
    problems = contract_problems(predictor, source, plan)
    if strict and problems:
        raise GeofmError(problems[0], hint="or drop --strict (strict=False) to predict anyway")
    for message in problems:
        warnings.warn(message, GeofmWarning, stacklevel=_caller_level())


_PACKAGE = str(Path(__file__).resolve().parents[1])


def _caller_level() -> int:
    """The ``stacklevel`` of the first frame outside geofm, so a warning names the user's line
    (``model.predict(...)``), however deep the call came in."""
    level, frame = 1, cast(FrameType | None, sys._getframe(1))
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE):
        frame = frame.f_back
        level += 1
    return level
