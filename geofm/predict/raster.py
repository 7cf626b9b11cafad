"""``predict_raster``: files in, Cloud-Optimized GeoTIFF out."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geofm.errors import GeofmError
from geofm.io.cog import (
    OutputTransaction,
    TempRaster,
    check_output,
    class_dtype,
    class_rgb,
    remove_stale_temporaries,
    write_category_sidecar,
    write_cog,
    write_qml,
    write_ramp_qml,
)
from geofm.io.outputs import require_suffix
from geofm.io.space import DiskSpace
from geofm.predict.band_plan import plan_bands
from geofm.predict.checks import check_source
from geofm.predict.model import Predictor
from geofm.predict.pipeline import run_pipeline
from geofm.predict.settings import GDAL_CACHE_BYTES, MAX_TILE_TOKENS, SCENE_TASKS
from geofm.predict.similarity import query_texts, value_ranges
from geofm.predict.sinks import FileSink
from geofm.predict.sources import _input_paths, open_source
from geofm.predict.tiling import TileGrid

log = logging.getLogger(__name__)

GEOTIFF_SUFFIXES = (".tif", ".tiff")
"""Extensions accepted for the rasters ``predict_raster`` writes."""


def resolve_mode(predictor: Predictor, embed: bool, query: bool = False) -> str:
    """``"query"``, ``"embed"``, ``"pixel"`` or ``"scene"`` for this model and request.

    Raises:
        GeofmError: Both ``embed`` and ``query``, a query to a model without a text tower, or
            a prediction from a model without a task head.
    """
    if query:
        if embed:
            raise GeofmError("embeddings and text queries are separate outputs",
                             hint="ask for one of them")
        predictor.require_text()
        return "query"
    if embed:
        return "embed"
    task = predictor.require_task()
    return "scene" if task in SCENE_TASKS else "pixel"


def build_grid(predictor: Predictor, mode: str, height: int, width: int,
               tile: int | Sequence[int] | None, overlap: int | None,
               channels: int | None = None) -> TileGrid:
    """The tile grid for ``mode`` (tile and overlap checked against the patch size).

    A requested tile larger than the raster is shrunk to the raster (rounded up to the patch
    size, never below the model's own tile), with a warning: one tile then covers the raster.
    A tile is refused when it would make more than :data:`MAX_TILE_TOKENS` tokens.

    Args:
        channels: Input bands fed to the model (band-token models make one token per band and
            patch); default the checkpoint's band count.

    Raises:
        GeofmError: The tile is not a multiple of the patch size, makes too many tokens, or
            the overlap is negative, too large, or (embeddings, queries) not a multiple of
            the patch size.
    """
    p = predictor.patch_size
    if tile is None:
        th, tw = predictor.tile_size
    elif isinstance(tile, int):
        th = tw = int(tile)
    else:
        th, tw = (int(v) for v in tile)
    if th <= 0 or tw <= 0 or th % p or tw % p:
        raise GeofmError(f"tile {th}×{tw} is not a positive multiple of the model's patch "
                         f"size {p}", hint=f"use e.g. tile={max(p, th // p * p)}")
    if tile is not None:
        th, tw = _clamp_tile((th, tw), (height, width), predictor.tile_size, p)
    _check_tokens((th, tw), p, (channels or len(predictor.bands)) if predictor.flexible else 1)
    if overlap is not None and not 0 <= overlap < min(th, tw):
        raise GeofmError(f"overlap {overlap} must be at least 0 and less than the tile "
                         f"({th}×{tw})")
    if mode == "scene":
        return TileGrid.build(height, width, (th, tw), 0, (th, tw))
    patch_grid = mode in ("embed", "query")
    if overlap is None:
        overlap = min(th, tw) // 4
        if patch_grid:
            overlap = overlap // p * p
    if not 0 <= overlap < min(th, tw):
        raise GeofmError(f"overlap {overlap} must be at least 0 and less than the tile "
                         f"({th}×{tw})")
    if patch_grid and overlap % p:
        raise GeofmError(f"overlap {overlap} is not a multiple of the patch size {p}",
                         hint="embeddings and similarities sit on the patch grid")
    factor = (p, p) if patch_grid else (1, 1)
    return TileGrid.build(height, width, (th, tw), overlap, factor)


def _clamp_tile(tile: tuple[int, int], raster: tuple[int, int], model_tile: tuple[int, int],
                patch: int) -> tuple[int, int]:
    """``tile`` shrunk to the raster (rounded up to ``patch``, at least ``model_tile``)."""
    out = tuple(min(t, max(m, -(-r // patch) * patch))
                for t, r, m in zip(tile, raster, model_tile))
    if out != tile:
        log.warning("tile %d×%d is larger than the %d×%d raster; using %d×%d", *tile, *raster,
                    *out)
    return out[0], out[1]


def _check_tokens(tile: tuple[int, int], patch: int, per_patch: int) -> None:
    """Refuse a tile that makes more than :data:`MAX_TILE_TOKENS` tokens."""
    th, tw = tile
    tokens = per_patch * (th // patch) * (tw // patch)
    if tokens <= MAX_TILE_TOKENS:
        return
    side = int((MAX_TILE_TOKENS / per_patch) ** 0.5) * patch  # the largest square tile
    what = f"{per_patch} bands × " if per_patch > 1 else ""
    raise GeofmError(f"tile {th}×{tw} makes {tokens} tokens per tile ({what}"
                     f"{th // patch}×{tw // patch} patches), more than {MAX_TILE_TOKENS}",
                     hint=f"use a tile of at most {max(side, patch)} px")


def output_names(predictor: Predictor, mode: str) -> list[str]:
    """One name per output channel: class or target names, ``embedding_<i>`` for embeddings,
    the texts for queries (``output_<i>`` where the checkpoint names fewer outputs than its head
    has)."""
    if mode == "query":
        return list(predictor.texts)
    if mode == "embed":
        return [f"embedding_{i}" for i in range(predictor.embed_dim)]
    spec = predictor.card.task
    count = int(spec.num_outputs if spec is not None else len(predictor.classes) or 1)
    if len(predictor.classes) == count:
        return list(predictor.classes)
    return [f"output_{i}" for i in range(count)]


def probabilities_path(output: str | Path) -> Path:
    """Where ``probabilities=True`` writes per-class probabilities: ``<out>_probabilities.tif``."""
    out = Path(output)
    return out.with_name(f"{out.stem}_probabilities{out.suffix or '.tif'}")


def qml_path(output: str | Path) -> Path:
    """The QGIS style sidecar QGIS loads with ``output``: same base name, ``.qml``."""
    return Path(output).with_suffix(".qml")


def predict_raster(
    model: str | Path | Predictor,
    inputs: str | Path | Sequence[str | Path],
    output: str | Path,
    *,
    bands: str | Sequence[str] | None = None,
    probabilities: bool = False,
    embed: bool = False,
    query: str | Sequence[str] | None = None,
    vector: str | Path | None = None,
    min_area: float = 0.0,
    tile: int | Sequence[int] | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    resample_to_model_gsd: bool = False,
    strict: bool = False,
    overwrite: bool = False,
    device: str | Sequence[str] = "cpu",
    progress: bool = True,
    weights: str | Path | None = None,
    data_units: str | None = None,
) -> dict[str, Any]:
    """Predict over a raster of any size and write a Cloud-Optimized GeoTIFF.

    Files written (each under a hidden temporary name first, renamed when complete; the main
    raster last):

    * ``output``: segmentation/classification → class raster (uint8, nodata 255; uint16,
      nodata 65535, past 255 classes) with a colour table, GDAL category names and a raster
      attribute table (in ``output.aux.xml``) and a QGIS style ``<stem>.qml``; multi-label →
      one uint8 score band per class (scale 1/255, band descriptions = class names, invalid
      pixels masked by the internal mask); regression → float32 bands (nodata NaN);
      ``embed=True`` → float32 embedding bands at patch resolution (nodata NaN);
      ``query=`` → one float32 band per text at patch resolution: the cosine similarity in
      ``[-1, 1]`` of each patch's projected embedding with the text's (nodata NaN, band
      description = the text), with a QGIS style ``<stem>.qml`` (a continuous colour ramp
      over band 1's range).
    * ``<stem>_probabilities.tif`` (``probabilities=True``, class tasks): one uint8 band per
      class, scale 1/255, band descriptions = class names, internal mask, ``average``
      overviews. A separate file keeps the class raster single-band and paletted (QGIS styles
      it with the ``.qml``) and lets each file have the right overview resampling.
    * ``vector`` (``.gpkg``): one multipolygon per class, dissolved, parts smaller than
      ``min_area`` dropped.

    Every raster has the input's CRS (pixel tasks: also its transform, width and height;
    embeddings and queries: the input's transform with pixels ``patch`` times larger),
    256 × 256 DEFLATE tiles, overviews (``mode`` for classes, ``average`` otherwise), and tags
    ``GEOFM_MODEL``, ``GEOFM_CHECKPOINT``, ``GEOFM_VERSION``, ``GEOFM_TASK``, ``GEOFM_BANDS``
    (model band → input band), ``GEOFM_CLASSES`` (queries: the texts), ``GEOFM_TILE``,
    ``GEOFM_OVERLAP``.

    An input without a CRS is accepted with a warning: the output keeps its pixel grid,
    ungeoreferenced.

    Args:
        model: A geofm checkpoint (finetuned; pretrained or aligned with ``embed=True``;
            aligned with ``query=``) or a :class:`Predictor`.
        inputs: A GeoTIFF or VRT, or several files stacked band after band (on the finest of
            their grids; same CRS).
        output: The output GeoTIFF.
        bands: Names of the input bands in order (``"B02,B03,B04,B08"``, ``"s2"``), when the
            file's band descriptions are missing or wrong.
        probabilities: Also write per-class probabilities (class tasks).
        embed: Write patch embeddings of the encoder instead of predictions.
        query: Write the similarity of every patch to this text (or these texts, one band
            each) instead of predictions; needs an aligned checkpoint (``geofm align``).
        vector: Also write class polygons to this GeoPackage (class tasks).
        min_area: Drop polygon parts smaller than this, in square CRS units (m² in UTM).
        tile: Tile size in pixels (default: the checkpoint's training chip size).
        overlap: Pixels shared by neighbouring tiles (default: a quarter tile; scene tasks
            tile without overlap).
        batch_size: Tiles per model call.
        resample_to_model_gsd: Warp the input to the model's resolution first (when they
            differ by more than 5 %).
        strict: Refuse an input at another resolution or processing level than the model's
            (by default a :class:`~geofm.errors.GeofmWarning`; see
            :func:`~geofm.predict.checks.check_source`).
        overwrite: Replace an existing output.
        device: Torch device (``"cpu"``, ``"cuda"``), or several (``["cuda:0", "cuda:1"]`` or
            ``"cuda:0,cuda:1"``): one model replica per device, tiles shared among them.
        progress: Show a progress bar.
        weights: A published encoder's weights file, when ``model`` names the release
            (``"dofa_base"``; embeddings only, or finetune it first).
        data_units: What the input holds: ``"native"`` (the products' stored numbers, the
            default) or ``"physical"`` (reflectance 0–1, dB, K); the band contract converts
            either, and values that fit neither as declared are refused
            (:mod:`geofm.scale`). ``None``: the predictor's setting.

    Returns:
        ``{"output", "probabilities", "qml", "aux", "vector", "task", "bands",
        "bands_missing", "bands_ignored", "message", "shape", "crs", "tiles", "predicted",
        "seconds", "model_seconds", "pixels_per_second", "accumulator_bytes"}``; queries add
        ``"ranges"``, the ``(min, max)`` similarity per text.

    Raises:
        GeofmError: Output exists or is not writable, unreadable input, missing bands, all
            input pixels nodata, an empty query text, or a request the model cannot serve
            (a query to a checkpoint without a text tower).

    Example:
        >>> from geofm.predict import predict_raster
        >>> info = predict_raster("runs/finetune/finetune.safetensors",
        ...                       "datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif",
        ...                       "landcover.tif", probabilities=True)  # doctest: +SKIP
        >>> info["bands"]  # doctest: +SKIP
        {'S2.B01': 'band 1 (B01)', ...}
    """
    from geofm import __version__

    t_start = time.perf_counter()
    texts = None if query is None else query_texts(query)
    output = require_suffix(output, GEOTIFF_SUFFIXES, "a GeoTIFF")
    paths = _input_paths(inputs)
    check_output(output, overwrite, paths)
    predictor = model if isinstance(model, Predictor) else Predictor.from_checkpoint(model,
                                                                                       weights)
    if data_units is not None:
        predictor = predictor.with_data_units(data_units)
    mode = resolve_mode(predictor, embed, texts is not None)
    task = {"embed": "embedding", "query": "similarity"}.get(mode, str(predictor.task))
    product = ("classes" if task in ("segmentation", "classification")
               else "scores" if task == "multilabel"
               else "similarity" if task == "similarity" else "values")
    probabilities = probabilities and product == "classes"
    if probabilities:
        check_output(probabilities_path(output), overwrite, paths)
    if vector is not None:
        if product != "classes":
            raise GeofmError(f"vector output needs a class raster, but the {task} output has "
                             "none", hint="drop --vector or use a segmentation or "
                             "classification model")
        vector = require_suffix(vector, (".gpkg",), "a GeoPackage")
        check_output(vector, overwrite, paths)
    if batch_size < 1:
        raise GeofmError(f"batch_size must be at least 1, got {batch_size}")
    for path in (output, Path(f"{output}.aux.xml"), qml_path(output), probabilities_path(output),
                 Path(f"{probabilities_path(output)}.aux.xml"), vector):
        if path is not None:
            remove_stale_temporaries(path)
    devices = [d.strip() for d in device.split(",")] if isinstance(device, str) else list(device)
    if not devices or not all(devices):
        raise GeofmError(f"no device in {device!r}", hint="e.g. cpu, cuda, cuda:0,cuda:1")
    predictor.to(devices[0])
    if texts is not None:
        predictor = predictor.with_texts(texts)
    predictors = [predictor, *(predictor.replica(d) for d in devices[1:])]
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), \
            open_source(paths, bands=bands, gsd_m=predictor.gsd_m,
                        resample=resample_to_model_gsd) as source, \
            OutputTransaction() as tx, DiskSpace(output) as space:
        plan = plan_bands(predictor, source.labels, source=source.name, sensor=source.sensor)
        check_source(predictor, source, plan, strict=strict)
        log.info("%s", plan.summary())
        grid = build_grid(predictor, mode, source.height, source.width, tile, overlap,
                          len(plan.bands))
        names = output_names(predictor, mode)
        channels = len(names)
        space.needed = _needed_bytes(grid.out_shape, product, channels, probabilities)
        tx.checks.append(lambda: space.reserve(0))
        tags = {
            "GEOFM_MODEL": predictor.model_name, "GEOFM_CHECKPOINT": predictor.name,
            "GEOFM_VERSION": __version__, "GEOFM_TASK": task,
            "GEOFM_BANDS": json.dumps(plan.mapping()), "GEOFM_CLASSES": json.dumps(names),
            "GEOFM_TILE": f"{grid.tile[0]}x{grid.tile[1]}", "GEOFM_OVERLAP": str(grid.overlap),
        }
        rgb = class_rgb(predictor.class_colors, channels)
        nodata = class_dtype(channels)[1]
        spec = {"height": grid.out_shape[0], "width": grid.out_shape[1], "crs": source.crs,
                "transform": grid.out_transform(source.transform), "tags": tags}
        main_tmp = tx.scratch(output, ".tif")
        probs_tmp = tx.scratch(probabilities_path(output), ".tif")
        main = _temp_raster(main_tmp, product, names, rgb, {**spec, "label": output})
        probs = (_temp_raster(probs_tmp, "scores", names, rgb,
                              {**spec, "label": probabilities_path(output)})
                 if probabilities else None)
        try:
            stats = run_pipeline(predictors, source, plan, grid, mode,
                                 FileSink(product, main, probs, nodata,
                                          check=space.reserve), channels=channels,
                                 batch_size=batch_size, progress=progress)
        finally:
            main.close()
            if probs is not None:
                probs.close()
        if stats.predicted == 0:
            raise GeofmError("every input pixel is nodata", source.name,
                             "check the nodata value and the bands")
        shape = grid.out_shape
        if mode == "pixel" and source.native_grid is not None:
            shape = source.native_grid[2:]
            finer = abs(source.transform.a) < abs(source.native_grid[1].a)
            smooth = Resampling.average if finer else Resampling.bilinear
            main_tmp = _warp_back(main_tmp, tx.scratch(output, ".grid.tif"), source.native_grid,
                                  Resampling.mode if product == "classes" else smooth)
            if probs is not None:
                probs_tmp = _warp_back(probs_tmp, tx.scratch(probabilities_path(output),
                                                             ".grid.tif"),
                                       source.native_grid, smooth)
        space.reserve(int(1.5 * sum(p.stat().st_size for p in (main_tmp, probs_tmp)
                                    if p.exists())))  # the COG copies
        result = _publish(tx, output, main_tmp, probs_tmp if probs else None, product, names,
                          rgb, vector, min_area, overwrite)
    seconds = time.perf_counter() - t_start
    result.update(
        task=task, bands=plan.mapping(), bands_missing=plan.missing,
        bands_ignored=plan.ignored, message=plan.summary(), shape=tuple(shape),
        crs=str(source.crs) if source.crs else None, tiles=stats.tiles,
        predicted=stats.predicted, seconds=seconds, model_seconds=stats.model_seconds,
        pixels_per_second=grid.height * grid.width / max(seconds, 1e-9),
        accumulator_bytes=stats.accumulator_bytes)
    return result


def class_name_tags(names: Sequence[str]) -> dict[str, str]:
    """Band metadata naming each class value of a class raster: ``CLASS_<value>=<name>``."""
    return {f"CLASS_{i}": name for i, name in enumerate(names)}


def _needed_bytes(shape: tuple[int, int], product: str, channels: int, probabilities: bool
                  ) -> int:
    """The most disk space the rasters of a prediction take at once: the uncompressed
    temporary file and its COG copy with overviews (a third more) side by side."""
    per_pixel = {"classes": 1 if channels <= 255 else 2, "scores": channels}.get(
        product, 4 * channels) + (channels if probabilities else 0)
    return int(shape[0] * shape[1] * per_pixel * (1 + 4 / 3))


def _temp_raster(path: Path, product: str, names: list[str],
                 rgb: list[tuple[int, int, int]], spec: dict[str, Any]) -> TempRaster:
    """The temporary GeoTIFF of one product (see :func:`predict_raster` for the layouts)."""
    k = len(names)
    if product == "classes":
        dtype, nodata = class_dtype(k)
        raster = TempRaster(path, count=1, dtype=dtype, nodata=nodata, descriptions=["class"],
                            colormap={i: (*c, 255) for i, c in enumerate(rgb)}, **spec)
        # Inside the TIFF (GDAL_METADATA tag): the names travel with the file copied alone;
        # GDAL's category names and attribute table can only live in the .aux.xml sidecar.
        raster.ds.update_tags(1, **class_name_tags(names))
        return raster
    if product == "scores":
        return TempRaster(path, count=k, dtype="uint8", mask=True, descriptions=names,
                          scales=[1 / 255] * k, **spec)
    return TempRaster(path, count=k, dtype="float32", nodata=float("nan"), descriptions=names,
                      **spec)


def _publish(tx: OutputTransaction, output: Path, main: Path, probabilities: Path | None,
             product: str, names: list[str], rgb: list[tuple[int, int, int]],
             vector: Path | None, min_area: float, overwrite: bool) -> dict[str, Any]:
    """Write the COGs and sidecars under temporary names and rename them into place, the main
    raster last; with ``overwrite``, remove sidecars of an earlier output not rewritten."""
    result: dict[str, Any] = {"output": str(output), "probabilities": None, "qml": None,
                              "aux": None, "vector": None}
    if vector is not None:
        write_vector(main, tx.stage(vector, ".gpkg"), names, rgb, min_area, layer=vector.stem)
        result["vector"] = str(vector)
    if probabilities is not None:
        write_cog(probabilities, tx.stage(probabilities_path(output), ".tif"),
                  resampling="average", label=probabilities_path(output))
        result["probabilities"] = str(probabilities_path(output))
    if product == "classes":
        write_category_sidecar(tx.stage(Path(f"{output}.aux.xml"), ".xml"), names, rgb)
        write_qml(tx.stage(qml_path(output), ".qml"), names, rgb)
        result.update(aux=f"{output}.aux.xml", qml=str(qml_path(output)))
    if product == "similarity":
        result["ranges"] = value_ranges(main)
        write_ramp_qml(tx.stage(qml_path(output), ".qml"), *result["ranges"][0])
        result["qml"] = str(qml_path(output))
    write_cog(main, tx.stage(output, ".tif"),
              resampling="mode" if product == "classes" else "average",
              predictor=product in ("values", "similarity"), label=output)
    sidecars = [Path(f"{output}.aux.xml"), qml_path(output), probabilities_path(output),
                Path(f"{probabilities_path(output)}.aux.xml")]
    tx.commit(remove=[p for p in sidecars if overwrite and p.exists()
                      and str(p) not in result.values()])
    return result


def _warp_back(src: Path, dst: Path, target: tuple[CRS | None, Affine, int, int],
               resampling: Resampling) -> Path:
    """Warp a model-grid raster onto the input grid, keeping colours, tags and mask."""
    crs, transform, height, width = target
    with rasterio.open(src) as ds, WarpedVRT(ds, crs=crs, transform=transform, width=width,
                                             height=height, resampling=resampling) as vrt:
        profile = ds.profile
        profile.update(width=width, height=height, transform=transform)
        masked = MaskFlags.per_dataset in ds.mask_flag_enums[0]
        with rasterio.open(dst, "w", **profile) as out:
            out.update_tags(**ds.tags())
            for band in range(1, ds.count + 1):
                out.update_tags(band, **ds.tags(band))
            out.descriptions = ds.descriptions
            out.scales, out.offsets = ds.scales, ds.offsets
            if ds.colorinterp[0].name == "palette":
                out.write_colormap(1, ds.colormap(1))
            for row in range(0, height, 256):
                window = Window(0, row, width, min(256, height - row))
                out.write(vrt.read(window=window), window=window)
                if masked:
                    out.write_mask(vrt.dataset_mask(window=window), window=window)
    return dst


def write_vector(class_raster: Path, dst: Path, classes: Sequence[str],
                 colors: Sequence[tuple[int, int, int]], min_area: float = 0.0, *,
                 layer: str = "classes", rows: int = 512) -> Path:
    """Polygonise a class raster into one dissolved multipolygon per class (GeoPackage).

    The raster is read in bands of ``rows`` rows; polygons cut at band edges are merged by the
    per-class dissolve. Parts smaller than ``min_area`` (square CRS units) are dropped after
    dissolving.

    Returns:
        ``dst``, with columns ``class_id``, ``class_name``, ``color``, ``area`` and
        ``geometry``.
    """
    import geopandas as gpd
    import shapely
    from rasterio.features import shapes

    ids: list[int] = []
    geoms: list[Any] = []
    with rasterio.open(class_raster) as ds:
        nodata = ds.nodata
        crs = ds.crs
        for row in range(0, ds.height, rows):
            window = Window(0, row, ds.width, min(rows, ds.height - row))
            data = ds.read(1, window=window)
            for geom, value in shapes(data, mask=data != nodata,
                                      transform=ds.window_transform(window)):
                ids.append(int(value))
                geoms.append(shapely.geometry.shape(geom))
    frame = gpd.GeoDataFrame({"class_id": np.asarray(ids, dtype=np.int64)}, geometry=geoms,
                             crs=crs)
    if len(frame):
        frame = frame.dissolve(by="class_id", method="coverage", as_index=False)
        if min_area > 0:
            parts = frame.explode(index_parts=False)
            parts = parts[parts.geometry.area >= min_area]
            frame = parts.dissolve(by="class_id", method="coverage", as_index=False)
        frame["geometry"] = [shapely.multipolygons(shapely.get_parts(g))
                             for g in frame.geometry]
    frame["class_name"] = [classes[i] for i in frame["class_id"]]
    frame["color"] = ["#{:02x}{:02x}{:02x}".format(*colors[i]) for i in frame["class_id"]]
    frame["area"] = frame.geometry.area
    frame = frame[["class_id", "class_name", "color", "area", "geometry"]]
    frame.to_file(dst, driver="GPKG", layer=layer)
    return dst
