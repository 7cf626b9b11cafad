"""``predict_raster``: files in, Cloud-Optimized GeoTIFF out."""

from __future__ import annotations

import json
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

from geofm._version import __version__
from geofm.errors import GeofmError
from geofm.io.cog import (
    OutputTransaction,
    TempRaster,
    class_dtype,
    class_rgb,
    remove_stale_temporaries,
    write_category_sidecar,
    write_cog,
    write_qml,
    write_ramp_qml,
)
from geofm.io.outputs import check_output, require_suffix
from geofm.io.space import DiskSpace
from geofm.predict.devices import device_list
from geofm.predict.job import lay_out, plan_job, run_job
from geofm.predict.model import Predictor
from geofm.predict.settings import GDAL_CACHE_BYTES
from geofm.predict.similarity import query_texts, value_ranges
from geofm.predict.sinks import FileSink
from geofm.predict.sources import _input_paths, open_source

GEOTIFF_SUFFIXES = (".tif", ".tiff")
"""Extensions accepted for the rasters ``predict_raster`` writes."""


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
    gpus: int | None = None,
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
        gpus: Use the first ``gpus`` GPUs instead of ``device`` (one replica each).
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
    t_start = time.perf_counter()
    texts = None if query is None else query_texts(query)
    output = require_suffix(output, GEOTIFF_SUFFIXES, "a GeoTIFF")
    paths = _input_paths(inputs)
    check_output(output, overwrite, paths)
    devices = device_list(device, gpus)
    predictor = model if isinstance(model, Predictor) else Predictor.from_checkpoint(model,
                                                                                       weights)
    if data_units is not None:
        predictor = predictor.with_data_units(data_units)
    job = plan_job(predictor, embed=embed, query=texts is not None, batch_size=batch_size)
    product, task = job.product, job.task
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
    for path in (output, Path(f"{output}.aux.xml"), qml_path(output), probabilities_path(output),
                 Path(f"{probabilities_path(output)}.aux.xml"), vector):
        if path is not None:
            remove_stale_temporaries(path)
    predictor.to(devices[0])
    if texts is not None:
        predictor = predictor.with_texts(texts)
    predictors = [predictor, *(predictor.replica(d) for d in devices[1:])]
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), \
            open_source(paths, bands=bands, gsd_m=predictor.gsd_m,
                        resample=resample_to_model_gsd) as source, \
            OutputTransaction() as tx, DiskSpace(output) as space:
        layout = lay_out(predictor, job, source, tile=tile, overlap=overlap, strict=strict)
        plan, grid, names, channels = layout.plan, layout.grid, layout.names, layout.channels
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
            stats = run_job(predictors, job, layout, source,
                            FileSink(product, main, probs, nodata, check=space.reserve),
                            batch_size=batch_size, progress=progress)
        finally:
            main.close()
            if probs is not None:
                probs.close()
        shape = grid.out_shape
        if job.mode == "pixel" and source.native_grid is not None:
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
