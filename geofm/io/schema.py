"""The chip-store schema: names, layout and the choices behind them.

A store is a Zarr v3 group ``<name>.zarr`` holding

- ``image`` ``(N, C, H, W)``: pixels in the sources' common dtype (``uint16`` for Sentinel-2 only,
  ``float32`` as soon as a float source such as Sentinel-1 dB joins, which holds every uint16
  exactly);
- ``label`` ``(N, K)`` ``uint8`` multi-hot scene labels (optional);
- ``mask`` ``(N, H, W)`` ``uint8`` class index per pixel, :data:`MASK_IGNORE` where unlabelled
  (optional);
- ``valid`` ``(N, C, H, W)`` ``bool``, False where a source flagged nodata (optional);
- ``target`` ``(N, T, H, W)`` ``float32`` pixel regression targets, NaN where unknown (optional);

and ``chips.parquet`` (GeoParquet, one row per chip). Group attribute ``geofm`` holds bands,
statistics, classes, split and provenance (see :class:`geofm.io.store.ChipStore`).

Layout: one chip per inner chunk, :data:`SHARD_CHIPS` chips per shard file. Reading a random
chip touches one file and one contiguous byte range, and a store of 10⁷ chips has about 39,000
shard files per array instead of BigEarthNet's 10⁷ × 15 GeoTIFFs.
"""

from __future__ import annotations

SCHEMA_VERSION = 1
ATTRS_KEY = "geofm"
CHIP_TABLE = "chips.parquet"
BUILD_DIR = "_build"
SHARD_CHIPS = 256
MASK_IGNORE = 255
DIMS: dict[str, tuple[str, ...]] = {
    "image": ("chip", "band", "y", "x"),
    "label": ("chip", "class"),
    "mask": ("chip", "y", "x"),
    "valid": ("chip", "band", "y", "x"),
    "target": ("chip", "target", "y", "x"),
}
ARRAYS = ("image", "label", "mask", "valid", "target")
REQUIRED_COLUMNS = (
    "chip_id", "geometry", "centroid_lon", "centroid_lat", "crs", "transform",
    "native_x", "native_y", "time", "source", "tile", "split",
)
SPLITS = ("train", "validation", "test")
