"""Tuning constants of the prediction engine."""

from __future__ import annotations

GDAL_CACHE_BYTES = 64 * 2**20
"""GDAL block cache while predicting (reads of overlapping windows, partly written blocks)."""
QUEUE_BATCHES = 2
"""Batches each queue may hold: the reader and the writer run at most this far ahead/behind."""
READ_THREADS = 8
"""Most threads reading and normalising input windows at once (fewer on fewer CPUs)."""
PANEL_PIXELS = 4096
"""Rasters wider than this many input pixels are blended in vertical panels of this width."""
FINISH_COLUMNS = 1024
"""Finished rows are normalised and handed to the sink this many output columns at a time."""
SCENE_TASKS = ("multilabel", "classification")
_SENSOR_HINTS = (("sentinel-2", "S2"), ("sentinel2", "S2"), ("sentinel-1", "S1"),
                 ("sentinel1", "S1"), ("landsat 9", "L9"), ("landsat-9", "L9"),
                 ("landsat_9", "L9"), ("landsat 8", "L8"), ("landsat-8", "L8"),
                 ("landsat_8", "L8"), ("landsat 7", "L7"), ("landsat-7", "L7"),
                 ("landsat_7", "L7"), ("lc09_", "L9"), ("lc08_", "L8"), ("le07_", "L7"),
                 ("modis", "MODIS"))
_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
               "float64": "Float64"}


MAX_TILE_TOKENS = 16384
"""Most tokens one tile may make: ``(tile/patch)²`` patches, times the bands for band-token
models (ChannelViT). Attention costs grow with the square of the tokens; a tile past this is
refused with the largest tile that fits."""
