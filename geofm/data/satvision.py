"""SatVision-TOA's input scaling, as a per-band ``(mean, std)`` pair geofm's ``Normalize`` applies.

SatVision-TOA (pytorch-caney, ``transforms/modis_toa_scale.py``, ``MinMaxEmissiveScaleReflectance``)
does not z-score its 14 MODIS bands. Reflective bands (1, 2, 3, 6, 7, 26) stay TOA reflectance in
0–1 (its files hold percent, scaled by 0.01; geofm's MODIS stores hold 0–1 already). Emissive
bands (21, 27–33) are brightness temperatures min–max scaled with fixed per-band constants,
``(T − min) / (max − min)``. Both are an affine map per band, so they are expressed as
``(x − mean) / std`` with ``mean = 0, std = 1`` for reflectance and ``mean = min,
std = max − min`` for brightness temperature, and travel in checkpoints like any statistics.

Two differences from SatVision-TOA's data remain: geofm chips MODIS L1B swaths, while SatVision-TOA
trains on daily global 1 km gridded composites of them; and geofm's builder calibrates each
granule with its own coefficients (Terra's MOD021KM and Aqua's MYD021KM differ), while the
min–max constants below were fitted by SatVision-TOA to its own (Terra) composites.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from geofm.bands import get_band
from geofm.errors import BandError

SATVISION_BT_RANGE: dict[str, tuple[float, float]] = {
    "MODIS.B21": (223.1222, 352.7182),
    "MODIS.B27": (178.9174, 261.2920),
    "MODIS.B28": (204.3739, 282.5529),
    "MODIS.B29": (204.7677, 319.0373),
    "MODIS.B30": (194.8686, 295.0209),
    "MODIS.B31": (202.1759, 324.0677),
    "MODIS.B32": (201.3823, 321.5254),
    "MODIS.B33": (203.3537, 285.9848),
}
"""Brightness-temperature range (K) per emissive band, from pytorch-caney."""

SATVISION_REFLECTIVE = ("MODIS.B01", "MODIS.B02", "MODIS.B03", "MODIS.B06", "MODIS.B07",
                        "MODIS.B26")
"""Reflective bands, kept as reflectance (0–1)."""

NORMALIZATIONS = ("stats", "satvision")
"""``data.normalization`` values: the store's z-score statistics, or SatVision-TOA's scaling."""


def satvision_stats(bands: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` per band that make ``Normalize`` apply SatVision-TOA's scaling.

    Args:
        bands: Band names, each one of SatVision-TOA's 14 MODIS bands.

    Returns:
        Two ``float32`` arrays, one value per band.

    Raises:
        BandError: A band is not one of the 14.
    """
    mean, std = [], []
    for name in bands:
        canon = get_band(name).name
        if canon in SATVISION_BT_RANGE:
            lo, hi = SATVISION_BT_RANGE[canon]
            mean.append(lo)
            std.append(hi - lo)
        elif canon in SATVISION_REFLECTIVE:
            mean.append(0.0)
            std.append(1.0)
        else:
            raise BandError(
                f"SatVision-TOA's normalisation has no constants for band {name}",
                hint="select the modis14 bands (--bands modis14) or use normalization: stats",
            )
    return np.asarray(mean, dtype=np.float32), np.asarray(std, dtype=np.float32)
