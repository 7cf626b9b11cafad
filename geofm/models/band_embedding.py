"""Channel embeddings derived from a band's physical description.

ChannelViT (arXiv 2309.16108) learns one vector per channel, so a model only knows the channels
it was trained on. Here the vector is computed from what the band *is* — centre wavelength,
bandwidth, kind (optical / thermal / SAR) and SAR polarisation — through a small learned MLP,
plus an optional learned offset for each band seen in training. A model pretrained on
Sentinel-2 therefore embeds Landsat-8's bands next to the Sentinel-2 bands of similar wavelength.

Features per band (``NUM_FEATURES`` values):

- ``log λ / 4`` and ``log Δλ / 4`` (micrometres; SAR sits near ``log 55,000 µm``);
- ``sin(2^k log λ)`` and ``cos(2^k log λ)`` for ``k = 0 .. NUM_FREQUENCIES - 1``. The highest
  frequency (``2^5``) has a period of about 20 % in wavelength, so bands 5 % apart (the red
  edge, 705 / 740 / 783 nm) start well apart, while the same band of two sensors within 2 %
  (Landsat-8 blue at 482 nm, Sentinel-2 B02 at 490 nm) starts nearly equal; with ``2^7`` the
  latter pair already looked unrelated;
- kind one-hot (optical, thermal, sar) and polarisation one-hot (VV, VH, HH, HV).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from geofm.bands import Band, get_band
from geofm.errors import BandError

KINDS = ("optical", "thermal", "sar")
POLARIZATIONS = ("VV", "VH", "HH", "HV")
NUM_FREQUENCIES = 6
NUM_FEATURES = 2 + 2 * NUM_FREQUENCIES + len(KINDS) + len(POLARIZATIONS)


def band_features(band: Band) -> list[float]:
    """Physical feature vector of one band (``NUM_FEATURES`` floats)."""
    if band.kind not in KINDS:
        raise BandError(f"band {band.name} has kind {band.kind!r}; expected one of {KINDS}")
    log_wl = math.log(band.wavelength_um)
    feats = [log_wl / 4.0, math.log(max(band.bandwidth_um, 1e-6)) / 4.0]
    for k in range(NUM_FREQUENCIES):
        feats += [math.sin(2**k * log_wl), math.cos(2**k * log_wl)]
    feats += [float(band.kind == kind) for kind in KINDS]
    feats += [float(band.polarization == pol) for pol in POLARIZATIONS]
    return feats


class BandEmbedding(nn.Module):
    """Map band names to embedding vectors ``[C, D]``.

    Args:
        dim: Output width ``D``.
        known_bands: Bands that get a learned per-band offset (usually the pretraining bands).
            Other bands are embedded from their physics alone.
        hidden_dim: MLP hidden width; default ``dim``.
    """

    def __init__(
        self, dim: int, known_bands: Sequence[str] = (), hidden_dim: int | None = None
    ) -> None:
        super().__init__()
        hidden = hidden_dim or dim
        self.mlp = nn.Sequential(
            nn.Linear(NUM_FEATURES, hidden), nn.GELU(), nn.Linear(hidden, dim)
        )
        self.known_bands = tuple(get_band(b).name for b in known_bands)
        self._known_index = {name: i for i, name in enumerate(self.known_bands)}
        # Row len(known_bands) is the fixed zero offset used for every unknown band.
        num_known = len(self.known_bands)
        self.offsets = nn.Embedding(num_known + 1, dim, padding_idx=num_known)
        nn.init.zeros_(self.offsets.weight)
        self._cache: dict[tuple[str, ...], tuple[Tensor, Tensor]] = {}

    def _lookup(self, bands: Sequence[str]) -> tuple[Tensor, Tensor]:
        key = tuple(bands)
        if key not in self._cache:
            resolved = [get_band(b) for b in key]
            if len({b.name for b in resolved}) != len(resolved):
                raise BandError(f"a band is given twice in {list(key)}")
            feats = torch.tensor([band_features(b) for b in resolved], dtype=torch.float32)
            unknown = len(self.known_bands)
            index = torch.tensor([self._known_index.get(b.name, unknown) for b in resolved])
            self._cache[key] = (feats, index)
        return self._cache[key]

    def forward(self, bands: Sequence[str]) -> Tensor:
        """Embeddings ``[C, D]`` for ``bands`` (canonical names or aliases)."""
        feats, index = self._lookup(bands)
        device = self.offsets.weight.device
        dtype = cast(nn.Linear, self.mlp[0]).weight.dtype
        feats = feats.to(device=device, dtype=dtype)  # [C, F]
        return self.mlp(feats) + self.offsets(index.to(device))  # [C, D]
