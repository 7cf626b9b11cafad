"""The scale guard: input values checked against the units their bands declare.

A band's values arrive either as the product's stored numbers (``data_units="native"``:
Sentinel-2 reflectance × 10,000, Landsat Collection-2 DN, dB, kelvin) or already in the band's
physical unit (``"physical"``: reflectance 0–1, dB, K). The band contract converts either into
what a model expects (:meth:`geofm.card.BandContract.normalization`), but only if the declared
units are the real ones: a chip of reflectance 0–1 read as Sentinel-2 DN is 10,000 times too
dark, and a model fed it returns confident nonsense. :func:`check_scale` looks at the values
themselves and refuses, in one line that names the band, what its values look like and the
option that declares them, any input whose declared units do not fit:

* reflectance (and 8-bit ``dn`` bands, physical 0–1): the brightest band's 99th percentile
  lies between :data:`REFLECTANCE_TOP`;
* ``dB`` backscatter: values spread below zero, median under 5 dB (linear power is ≥ 0);
* ``K`` brightness temperature: median between :data:`KELVIN_MEDIAN`.

Zeros (the usual nodata of optical products) and non-finite values are left out.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> dn = rng.uniform(500, 3000, (1, 1000)).astype(np.float32)  # S2 DN
>>> check_scale(["S2.B04"], dn)  # fits: nothing raised
>>> check_scale(["S2.B04"], dn / 10000)  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
geofm.errors.GeofmError: S2.B04 values look like physical reflectance ...
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from geofm.bands import Band, get_band
from geofm.card import DATA_UNITS
from geofm.errors import GeofmError

REFLECTANCE_TOP = (0.02, 1.6)
"""Plausible 99th percentile of the brightest reflectance band (a scene darker than 2 % in
every band, or brighter than 160 %, is in other units)."""

KELVIN_MEDIAN = (180.0, 340.0)
"""Plausible median brightness temperature, K."""

DB_MEDIAN_MAX = 5.0
"""Backscatter medians above this many dB are not backscatter in dB."""

UNIT_OPTION = "data_units='{units}' (--data-units {units})"


def _physical(band: Band, values: np.ndarray, data_units: str) -> np.ndarray:
    if data_units == "physical":
        return values
    return values * band.scale + band.offset


def _describe(band: Band, data_units: str) -> str:
    unit = "reflectance 0–1" if band.unit == "dn" else band.unit
    if data_units == "physical" or (band.scale == 1.0 and band.offset == 0.0):
        return f"physical {unit}" if band.unit != "K" else "brightness temperature in K"
    if band.offset == 0.0:
        return f"the product's stored numbers ({unit} × {1 / band.scale:,.6g})"
    return f"the product's stored numbers ({unit} = DN × {band.scale:g} {band.offset:+g})"


def _fits(bands: Sequence[Band], values: Sequence[np.ndarray], data_units: str
          ) -> tuple[str, str] | None:
    """``None`` when the values fit their units as declared, else ``(unit, what is wrong)``
    for the first unit that does not."""
    by_unit: dict[str, list[np.ndarray]] = {}
    for band, v in zip(bands, values, strict=True):
        if v.size:
            by_unit.setdefault(band.unit, []).append(_physical(band, v, data_units))
    for unit, phys in by_unit.items():
        if unit in ("reflectance", "dn"):
            top = max(float(np.percentile(p, 99)) for p in phys)
            if not REFLECTANCE_TOP[0] <= top <= REFLECTANCE_TOP[1]:
                return unit, f"the brightest band's 99th percentile is {top:.4g} as reflectance"
        elif unit == "dB":
            allv = np.concatenate(phys)
            median = float(np.median(allv))
            if median > DB_MEDIAN_MAX or float(allv.min()) >= 0.0:
                return unit, (f"the median is {median:.4g} dB with no value below 0 dB "
                              "(linear power, not dB?)" if float(allv.min()) >= 0.0
                              else f"the median is {median:.4g} dB")
        elif unit == "K":
            median = float(np.median(np.concatenate(phys)))
            if not KELVIN_MEDIAN[0] <= median <= KELVIN_MEDIAN[1]:
                return unit, f"the median is {median:.4g} K"
    return None


def check_scale(bands: Sequence[str], sample: np.ndarray, data_units: str = "native",
                source: str | Path | None = None) -> None:
    """Refuse values that do not fit the units they are declared in.

    Args:
        bands: Registry names of the sample's channels.
        sample: ``[C, ...]`` values of those bands (a window of a scene, some chips).
        data_units: ``"native"`` (the product's stored numbers) or ``"physical"``.
        source: The input, for the message.

    Raises:
        GeofmError: The values fit the other units (the line names the option that declares
            them) or none (the line says what they look like).
    """
    if data_units not in DATA_UNITS:
        raise GeofmError(f"data units must be one of {', '.join(DATA_UNITS)}, got "
                         f"{data_units!r}")
    infos = [get_band(b) for b in bands]
    values = []
    for row in np.asarray(sample).reshape(len(bands), -1):
        row = row[np.isfinite(row)].astype(np.float64)
        values.append(row[row != 0.0])
    found = _fits(infos, values, data_units)
    if found is None:
        return
    unit, problem = found
    other = "physical" if data_units == "native" else "native"
    first = next(b for b, v in zip(infos, values, strict=True) if v.size and b.unit == unit)
    if _fits(infos, values, other) is None and not (
            first.scale == 1.0 and first.offset == 0.0):
        raise GeofmError(
            f"{first.name} values look like {_describe(first, other)}, not "
            f"{_describe(first, data_units)} as declared ({problem})", source,
            f"declare {UNIT_OPTION.format(units=other)} so geofm converts them")
    if unit == "dB" and "linear" in problem:
        raise GeofmError(f"{first.name} values do not look like backscatter in dB ({problem})",
                         source, "convert linear backscatter to dB first: 10·log10(value)")
    raise GeofmError(
        f"{first.name} values do not look like {_describe(first, data_units)} ({problem})",
        source, f"give the bands in their product's units ({UNIT_OPTION.format(units='native')}"
        f") or in physical units ({UNIT_OPTION.format(units='physical')})")
