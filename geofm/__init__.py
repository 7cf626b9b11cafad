"""geofm: a remote-sensing foundation-model toolkit.

The analyst's API::

    import geofm
    store = geofm.open_store("datasets/reben_mini/reben_mini.zarr")
    store.bands          # ['S2.B01', ..., 'S1.VV', 'S1.VH']
    ds = store.to_xarray()
"""

from __future__ import annotations

from geofm.bands import BAND_SETS, Band, get_band, resolve_bands
from geofm.errors import GeofmError
from geofm.io.store import ChipStore, open_store

__version__ = "0.1.0"

__all__ = [
    "BAND_SETS",
    "Band",
    "ChipStore",
    "GeofmError",
    "__version__",
    "get_band",
    "open_store",
    "resolve_bands",
]
