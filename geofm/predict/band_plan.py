"""Matching a raster's bands to a model's band contract."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geofm.bands import get_band, is_count, parse_bands, resolve_bands
from geofm.errors import BandError
from geofm.predict.model import Predictor
from geofm.predict.settings import _SENSOR_HINTS


@dataclass(frozen=True)
class BandPlan:
    """Which input band feeds which model band, and how it is normalised.

    Attributes:
        bands: Band names given to the model, in the model's order.
        sources: 0-based input band index per model band.
        mean: Normalisation mean per model band ``[C]``.
        std: Normalisation std per model band ``[C]``.
        labels: The input's band names as read (descriptions, ``bands=``, file names).
        missing: Model bands the input lacks (channel-flexible models predict without them).
        ignored: Input bands the model does not use.
    """

    bands: list[str]
    sources: list[int]
    mean: np.ndarray
    std: np.ndarray
    labels: list[str]
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def mapping(self) -> dict[str, str]:
        """``{model band: "band 2 (B02)"}``, for reports and output tags."""
        return {b: f"band {i + 1} ({self.labels[i]})" for b, i in zip(self.bands, self.sources)}

    def summary(self) -> str:
        """One line naming the bands used, missing and ignored."""
        text = f"using {len(self.bands)} bands: " + ", ".join(
            f"{b}←{self.labels[i]}" for b, i in zip(self.bands, self.sources))
        if self.missing:
            text += f"; model bands not in the input: {', '.join(self.missing)}"
        if self.ignored:
            text += f"; input bands not used: {', '.join(self.ignored)}"
        return text


def sensor_hint(tags: dict[str, str]) -> str | None:
    """The registry sensor key (``"S2"``) named by a raster's metadata, if any."""
    text = " ".join(str(v) for v in tags.values()).lower()
    for needle, sensor in _SENSOR_HINTS:
        if needle in text:
            return sensor
    return None


def canonical_band(label: str, model_bands: Sequence[str], sensor: str | None = None
                   ) -> str | None:
    """The registry name an input band label stands for, or ``None`` if unknown.

    The model's own bands are tried first (``"B02"``, ``"blue"`` → ``S2.B02`` for a Sentinel-2
    model), then unambiguous registry names and aliases, then the label qualified with the
    sensor the file's metadata names.
    """
    text = label.strip()
    if not text:
        return None
    for attempt in (lambda: resolve_bands([text], list(model_bands))[0],
                    lambda: get_band(text).name,
                    lambda: get_band(f"{sensor}.{text}").name if sensor else None):
        try:
            name = attempt()
        except BandError:
            continue
        if name:
            return name
    return None


def band_labels(names: str | Sequence[str], count: int) -> list[str]:
    """Expand a user's ``bands=`` (a set name, ``"B02,B03"`` or a list) to one name per band.

    Raises:
        BandError: The number of names differs from the input's band count.
    """
    if isinstance(names, str) and is_count(names):  # a count, not names
        k = int(names)
        least = f"the band count must be at least 1, got {k}; " if k < 1 else ""
        raise BandError(f"{least}bands= takes the input's band names in order, not a count",
                        hint="name every input band in order, e.g. bands='B02,B03,B04,B08'")
    labels = parse_bands(names) if isinstance(names, str) else [str(n) for n in names]
    if len(labels) != count:
        raise BandError(f"bands= names {len(labels)} bands but the input has {count}",
                        hint="name every input band in order, e.g. bands='B02,B03,B04,B08'")
    return labels


def plan_bands(predictor: Predictor, labels: Sequence[str | None], *,
               source: str | Path | None = None, sensor: str | None = None) -> BandPlan:
    """Match the input's named bands to the model's band contract.

    Bands are matched by name (descriptions such as ``B02``, Sentinel-2 common names such as
    ``blue``, registry names such as ``S2.B02``), never by position. A channel-flexible model
    uses the model bands present (or, if none is present by name, the input bands nearest in
    wavelength); any other model needs all of its bands.

    Args:
        predictor: The model.
        labels: One name per input band (``None`` where a band has none).
        source: The input, for error messages.
        sensor: Sensor key for short names that are ambiguous across sensors (``"B10"``).

    Raises:
        BandError: The bands have no names, none is recognised, or a fixed-band model's bands
            are missing (listed).
    """
    if not any(labels):
        raise BandError("the input's bands have no names (no band descriptions)", source,
                        "name them in order with --bands (bands=), e.g. B02,B03,B04,B08 or "
                        "s2")
    text = [lab or f"band {i + 1}" for i, lab in enumerate(labels)]
    available: dict[str, int] = {}
    for i, lab in enumerate(labels):
        name = canonical_band(lab, predictor.bands, sensor) if lab else None
        if name and name not in available:
            available[name] = i
    if not available:
        raise BandError(f"none of the input's bands ({', '.join(text)}) is a known band",
                        source, "name them with --bands (bands=) using names such as B02, red "
                        "or S2.B04")
    contract = predictor.card.contract
    used = contract.match(list(available), source)
    stands_for = contract.stands_for(used)
    mean, std = contract.normalization(used, getattr(predictor, "data_units", "native"))
    read = {available[u] for u in used}
    return BandPlan(
        bands=list(used), sources=[available[u] for u in used],
        mean=mean, std=std, labels=text,
        missing=[b for b in predictor.bands if b not in set(stands_for.values())],
        ignored=[text[i] for i in range(len(text)) if i not in read])
