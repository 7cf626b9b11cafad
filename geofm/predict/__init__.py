"""Streaming tiled prediction over rasters: the engine behind ``geofm predict`` and the API.

The raster is cut into overlapping tiles of the model's input size on a fixed grid. A reader
thread reads tile windows with rasterio on a pool of up to :data:`READ_THREADS` threads (one
dataset handle each), checks nodata and normalises them with the checkpoint's statistics; the
calling thread runs the model on batches; a writer thread blends the tile outputs with a 2-D
Hann window on the model's device (torch: on a GPU the outputs never leave it, only finished
class maps or 8-bit scores do) and writes finished rows, GDAL compressing them on every core.
Bounded queues link the three, so reading and writing overlap with inference and nothing waits
on the whole raster. The blend is the same float32 multiply, add and divide on every device,
so maps are bit-identical to a plain numpy blend.

Memory. The blender keeps one band of output rows the height of a tile (``K × tile_h × W``
float32 for ``K`` output channels over a width ``W`` of at most :data:`PANEL_PIXELS`; wider
rasters are processed in vertical panels, see :class:`TileGrid`); rows are written as soon as
no later tile can touch them. Queues hold at most four batches, the reader pool at most one tile
per thread (plus one), and GDAL's block cache is capped at :data:`GDAL_CACHE_BYTES` while
predicting. Peak memory therefore depends on tile size, batch size, reader threads and the
panel width, not on the raster's size.

Output grids. Pixel tasks (segmentation, regression) predict every input pixel: the output has
the input's CRS, transform, width and height. Scene tasks (multi-label, classification) give one
value per tile, on a coarse grid whose pixels are tiles (no overlap). Embeddings come at patch
resolution (one ``D``-vector per ``patch × patch`` pixels), and so do text queries (one
similarity per text and patch). With ``resample_to_model_gsd`` the
input is warped to the model's ground sampling distance; pixel outputs are warped back onto the
input grid, coarse outputs stay on the model-resolution grid.

What users need is exported here: :func:`predict_raster` and :func:`query_raster` (files in,
COG out), :class:`Predictor` (a checkpoint ready for tiles), :func:`open_input` (a raster,
a stack of files or a DataArray as a source), :func:`plan_bands` and :class:`BandPlan` (band
matching and normalisation), :func:`build_grid` and :class:`TileGrid` (the tiles). The
stages live in submodules: ``job`` (what one prediction is), ``pipeline`` (the threads),
``sources``, ``sinks``, ``tiling``, ``checks``, ``settings``. :class:`geofm.api.Model` runs
the same stages for arrays in memory.

Products (see :func:`predict_raster` for the files):

* ``classes``: argmax of the blended class probabilities (segmentation, classification).
* ``scores``: per-class probabilities in ``[0, 1]`` (softmax; sigmoid for multi-label).
* ``values``: regression targets or embedding features, float32.
* ``similarity``: cosine similarity in ``[-1, 1]`` of each patch with each query text (aligned
  image–text checkpoints; :func:`query_raster`), float32.
"""

from __future__ import annotations

from geofm.predict.band_plan import BandPlan, plan_bands
from geofm.predict.job import build_grid
from geofm.predict.model import Predictor
from geofm.predict.query import query_raster
from geofm.predict.raster import predict_raster
from geofm.predict.sources import open_input
from geofm.predict.tiling import TileGrid

__all__ = [
    "BandPlan",
    "Predictor",
    "TileGrid",
    "build_grid",
    "open_input",
    "plan_bands",
    "predict_raster",
    "query_raster",
]
