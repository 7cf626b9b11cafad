"""What several published families share: Sentinel-2 band lists and statistics, spectral
lookups in geofm's band registry, and the state-dict steps their releases have in common."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from geofm.bands import BAND_SETS, get_band
from geofm.errors import BandError

S2_L1C: tuple[str, ...] = BAND_SETS["s2"]
"""The 13 Sentinel-2 L1C bands in band-number order (B01–B08, B8A, B09–B12)."""

S2_NO_B10: tuple[str, ...] = tuple(b for b in S2_L1C if b != "S2.B10")
"""The 12 Sentinel-2 bands without the cirrus band B10 (CROMA's optical input)."""

SSL4EO_S2_MEAN: tuple[float, ...] = (1612.9, 1397.6, 1322.3, 1373.1, 1561.0, 2108.4, 2390.7,
                                     2318.7, 2581.0, 837.7, 22.0, 2195.2, 1537.4)
"""SSL4EO-S12 L1C band means in DN (torchgeo ``models.resnet._mean_s2``), ``S2_L1C`` order."""

SSL4EO_S2_STD: tuple[float, ...] = (791.0, 854.3, 878.7, 1144.9, 1127.5, 1164.2, 1276.0,
                                    1249.5, 1345.9, 577.5, 47.5, 1340.0, 1142.9)
"""SSL4EO-S12 L1C band standard deviations in DN (torchgeo ``models.resnet._std_s2``)."""


def optical(bands: Sequence[str]) -> list[str]:
    """``bands`` as registry names, refusing a band that is not optical.

    Raises:
        BandError: A band is unknown or not an optical band (SAR, thermal).
    """
    names = [get_band(b).name for b in bands]
    bad = [b for b in names if get_band(b).kind != "optical"]
    if bad:
        raise BandError(f"this model embeds optical bands by wavelength; {', '.join(bad)} "
                        "is not one", hint="pass optical bands only")
    return names


def wavelengths_um(bands: Sequence[str]) -> list[float]:
    """Centre wavelengths in micrometres, from geofm's band registry."""
    return [get_band(b).wavelength_um for b in optical(bands)]


def bandwidths_um(bands: Sequence[str]) -> list[float]:
    """Bandwidths (FWHM) in micrometres, from geofm's band registry."""
    return [get_band(b).bandwidth_um for b in optical(bands)]


def with_unit_norm(state: dict[str, Tensor], prefix: str, dim: int) -> dict[str, Tensor]:
    """Add a LayerNorm ``prefix`` with unit weight and zero bias when the release has none.

    Releases saved without their (randomly initialised, never trained) pooling norm — DOFA's
    and Copernicus-FM's ``fc_norm`` — are used by their reference loaders with the layer at
    its initial value, which is exactly this.
    """
    if f"{prefix}.weight" not in state:
        state[f"{prefix}.weight"] = torch.ones(dim)
        state[f"{prefix}.bias"] = torch.zeros(dim)
    return state


def heads(state: Mapping[str, Tensor], *prefixes: str) -> list[str]:
    """The release's keys under ``prefixes`` (classification or projection heads geofm's
    encoder knowingly leaves out)."""
    return [k for k in state if k.startswith(prefixes)]
