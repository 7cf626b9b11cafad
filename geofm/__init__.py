"""geofm: a remote-sensing foundation-model toolkit.

The analyst's API::

    import geofm
    model = geofm.load("runs/finetune/finetune.safetensors")
    classes = model.predict(rioxarray.open_rasterio("scene.tif"))   # xarray.DataArray, CRS kept
    classes.rio.to_raster("map.tif")

    store = geofm.open_store("outputs/reben_mini.zarr")
    store.bands          # ['S2.B01', ..., 'S1.VV', 'S1.VH']
    ds = store.to_xarray()
"""

from __future__ import annotations

from geofm._version import __version__
from geofm.bands import BAND_SETS, Band, get_band, resolve_bands
from geofm.errors import GeofmError
from geofm.io.store import ChipStore, open_store


def __getattr__(name: str) -> object:
    # The model API pulls in torch; load it only when asked for.
    if name in ("load", "Model"):
        from geofm import api

        return getattr(api, name)
    raise AttributeError(f"module 'geofm' has no attribute {name!r}")


__all__ = [
    "BAND_SETS",
    "Band",
    "ChipStore",
    "GeofmError",
    "Model",
    "__version__",
    "get_band",
    "load",
    "open_store",
    "resolve_bands",
]
