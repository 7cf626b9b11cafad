"""Prediction inputs: rasters, stacks of files, warped views and xarray DataArrays.

:func:`open_input` opens any of them as a :class:`Source`, the one interface the pipeline
reads from: :func:`~geofm.predict.predict_raster` and :class:`geofm.api.Model` both go
through it.
"""

from __future__ import annotations

import math
import queue
import threading
import warnings
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from xml.etree import ElementTree as ET

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from geofm.errors import GeofmError, GeofmWarning, first_line
from geofm.levels import detect_levels
from geofm.predict.band_plan import band_labels, sensor_hint
from geofm.predict.checks import caller_level
from geofm.predict.settings import _GDAL_TYPES

if TYPE_CHECKING:
    import xarray as xr


class Source(Protocol):
    """Input bands read window by window."""

    height: int
    width: int
    count: int
    crs: CRS | None
    transform: Affine
    labels: list[str | None]
    sensor: str | None
    name: str
    res_m: float | None  # pixel size in metres (None: unknown or not projected)
    resampled: bool  # already warped to the model's pixel size
    levels: dict[str, str]  # processing level per sensor from the metadata

    def read(self, indexes: Sequence[int], window: Window) -> np.ndarray:
        """``[C, h, w]`` float32 of 0-based bands ``indexes`` in ``window`` (inside bounds)."""
        ...

    def invalid(self, data: np.ndarray, indexes: Sequence[int], window: Window) -> np.ndarray:
        """``[h, w]`` bool: pixels where any of the read bands is nodata or NaN."""
        ...


class RasterSource:
    """Bands of a rasterio dataset (GeoTIFF, VRT, band stack or warped view).

    A rasterio dataset must not be used from two threads at once; given ``reopen``, every
    thread other than the one that made the source reads through its own handle (opened on
    first use, closed by :meth:`close`), so windows can be read in parallel.

    Args:
        ds: An open dataset.
        name: The input's name for messages.
        labels: One name per band (descriptions, file names or ``bands=``).
        sensor: Sensor key from the metadata.
        native: The dataset ``ds`` was warped from, if any.
        res_m: The input's pixel size in metres (``None``: not in a projected CRS).
        levels: Processing level per sensor named by its metadata (``{"S2": "L1C"}``).
        reopen: Opens another handle on the same view, registering what it opened on the
            given stack (``None``: reads stay in one thread at a time).

    Attributes:
        native_grid: ``(crs, transform, height, width)`` of the unwarped input when ``ds`` is
            a warped view, else ``None``.
        concurrent_reads: Whether :meth:`read` and :meth:`invalid` may run in several threads
            at once.
        owned_reads: :meth:`read` returns a new array each time (the caller may modify it).
    """

    owned_reads = True

    def __init__(self, ds: Any, name: str, labels: list[str | None], sensor: str | None,
                 native: Any = None, res_m: float | None = None,
                 levels: dict[str, str] | None = None,
                 reopen: Callable[[ExitStack], Any] | None = None) -> None:
        self.ds = ds
        self.res_m = res_m
        self.resampled = native is not None
        self.levels = levels or {}
        self.concurrent_reads = reopen is not None
        self._reopen = reopen
        self._owner = threading.get_ident()
        self._local = threading.local()
        self._handles = ExitStack()
        self._spare: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.native_grid: tuple[CRS | None, Affine, int, int] | None = (
            None if native is None
            else (native.crs, native.transform, native.height, native.width))
        self.name = name
        self.height, self.width, self.count = ds.height, ds.width, ds.count
        self.crs: CRS | None = ds.crs
        self.transform: Affine = ds.transform
        self.labels = labels
        self.sensor = sensor
        self.nodata = [v for v in ds.nodatavals]
        flags = ds.mask_flag_enums[0] if ds.count else []
        self._dataset_mask = any(f in (MaskFlags.per_dataset, MaskFlags.alpha) for f in flags)

    def reserve(self, count: int) -> None:
        """Have ``count`` spare handles ready for the next threads that read.

        A thread's first open sets up its GDAL environment and PROJ context (tens of
        milliseconds); in a thread that has them (the one that opened the source) a handle
        takes a millisecond.
        """
        if self._reopen is None:
            return
        while self._spare.qsize() < count:
            self._spare.put(self._open_handle())

    def _open_handle(self) -> Any:
        # Warning filters are process-wide, hence the lock. Opening inside an Env keeps the
        # handle from holding one of its own, which only the opening thread could close.
        assert self._reopen is not None
        with self._lock, warnings.catch_warnings(), rasterio.Env():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            try:
                return self._reopen(self._handles)
            except RasterioError as e:
                raise GeofmError(f"cannot read the raster ({first_line(e)})", self.name,
                                 "the file was moved or changed while predicting") from None

    def _dataset(self) -> Any:
        """This thread's handle."""
        if self._reopen is None or threading.get_ident() == self._owner:
            return self.ds
        ds = getattr(self._local, "ds", None)
        if ds is None:
            try:
                ds = self._spare.get_nowait()
            except queue.Empty:
                ds = self._open_handle()
            self._local.ds = ds
        return ds

    def close(self) -> None:
        """Close the handles opened for other threads (the main dataset is the caller's)."""
        with self._lock:
            self._handles.close()

    def read(self, indexes: Sequence[int], window: Window) -> np.ndarray:
        try:
            data: np.ndarray = self._dataset().read([i + 1 for i in indexes], window=window,
                                                    out_dtype="float32")
            return data
        except RasterioError as e:
            raise GeofmError(f"cannot read the raster ({first_line(e)})", self.name,
                             "the file is corrupt or truncated") from None

    def invalid(self, data: np.ndarray, indexes: Sequence[int], window: Window) -> np.ndarray:
        bad: np.ndarray = np.isnan(data).any(axis=0)
        for k, i in enumerate(indexes):
            nd = self.nodata[i]
            if nd is not None and not math.isnan(nd):
                bad |= data[k] == np.float32(nd)
        if self._dataset_mask:
            bad |= self._dataset().read_masks(indexes[0] + 1, window=window) == 0
        return bad


class DataArraySource:
    """Bands of an xarray DataArray ``(band, y, x)`` read window by window.

    Args:
        da: A georeferenced DataArray (``rioxarray.open_rasterio``); 2-D arrays are one band.
        bands: Names of the bands in order, if ``long_name`` / the band coordinate lack them.

    Raises:
        GeofmError: The array has no x/y dimensions or more than three dimensions.
    """

    def __init__(self, da: xr.DataArray, bands: str | Sequence[str] | None = None) -> None:
        import rioxarray  # noqa: F401  (registers the .rio accessor)

        try:
            y_dim, x_dim = da.rio.y_dim, da.rio.x_dim
        except Exception:
            raise GeofmError("the DataArray has no x/y dimensions",
                             hint="open rasters with rioxarray.open_rasterio") from None
        if da.ndim == 2:
            da = da.expand_dims("band")
        if da.ndim != 3:
            raise GeofmError(f"expected a (band, y, x) DataArray, got dims {da.dims}")
        band_dim = next(d for d in da.dims if d not in (y_dim, x_dim))
        self.da = da.transpose(band_dim, y_dim, x_dim)
        self.dims = (band_dim, y_dim, x_dim)
        self.count, self.height, self.width = self.da.shape
        self.crs: CRS | None = da.rio.crs
        self.transform: Affine = da.rio.transform()
        self.name = str(da.name or "DataArray")
        if self.crs is None:
            warnings.warn(f"{self.name}: the input has no CRS; the output keeps its pixel grid "
                          "without georeferencing", GeofmWarning, stacklevel=caller_level())
        texts = {k: v for k, v in da.attrs.items() if isinstance(v, str)}
        self.sensor = sensor_hint(texts)
        self.levels = detect_levels([*texts.values(), str(da.encoding.get("source", ""))])
        self.res_m = _array_res_m(da, self.crs)
        self.resampled = False
        nodata = da.rio.nodata
        self.nodata = None if nodata is None or np.isnan(nodata) else float(nodata)
        self.labels: list[str | None] = (list(band_labels(bands, self.count))
                                         if bands is not None
                                         else _array_labels(self.da, band_dim))

    def read(self, indexes: Sequence[int], window: Window) -> np.ndarray:
        rows = slice(int(window.row_off), int(window.row_off + window.height))
        cols = slice(int(window.col_off), int(window.col_off + window.width))
        sub = self.da.isel({self.dims[0]: list(indexes), self.dims[1]: rows, self.dims[2]: cols})
        return np.asarray(sub.values, dtype=np.float32)

    def invalid(self, data: np.ndarray, indexes: Sequence[int], window: Window) -> np.ndarray:
        bad: np.ndarray = np.isnan(data).any(axis=0)  # [H, W]
        if self.nodata is not None:
            bad |= (data == np.float32(self.nodata)).any(axis=0)
        return bad


def _array_res_m(da: xr.DataArray, crs: CRS | None) -> float | None:
    """A DataArray's pixel size in metres, ``None`` when its CRS is not projected."""
    if crs is None or not crs.is_projected:
        return None
    try:
        res_x = abs(float(da.rio.resolution()[0]))
    except Exception:  # one row or column: rioxarray cannot tell the spacing
        return None
    return res_x * float(crs.linear_units_factor[1])


def _array_labels(da: xr.DataArray, band_dim: Hashable) -> list[str | None]:
    long_name = da.attrs.get("long_name")
    if isinstance(long_name, str) and da.shape[0] == 1:
        return [long_name]
    if isinstance(long_name, list | tuple) and len(long_name) == da.shape[0]:
        return [str(v) if v else None for v in long_name]
    if band_dim in da.coords:
        values = da.coords[band_dim].values
        if values.dtype.kind in "UO":
            return [str(v) for v in values]
    return [None] * da.shape[0]


@contextmanager
def open_input(x: str | Path | Sequence[str | Path] | xr.DataArray | xr.Dataset, *,
               bands: str | Sequence[str] | None = None, gsd_m: float | None = None,
               resample: bool = False) -> Iterator[Source]:
    """Open a raster path, several stacked files, or an xarray DataArray / Dataset as a source.

    Args:
        x: A GeoTIFF or VRT, several files (stacked as :func:`open_source` does), a
            ``(band, y, x)`` DataArray, or a Dataset with one variable per band.
        bands: Names of the input bands in order (overrides what the input says).
        gsd_m: The model's ground sampling distance in metres (``None``: unknown).
        resample: Warp a raster to ``gsd_m`` first (files only; see :func:`open_source`).

    Raises:
        GeofmError: A missing file, an object that is neither a path nor xarray, or the
            problems of :func:`open_source` and :class:`DataArraySource`.
    """
    xarray = _xarray_if_loaded()
    if xarray is not None and isinstance(x, xarray.Dataset):
        x = x.to_array("band")
    if xarray is not None and isinstance(x, xarray.DataArray):
        yield DataArraySource(x, bands)
        return
    if not isinstance(x, str | Path | list | tuple):
        raise GeofmError(f"cannot predict on a {type(x).__name__}",
                         hint="pass a raster path or an xarray.DataArray")
    with open_source(_input_paths(x), bands=bands, gsd_m=gsd_m, resample=resample) as source:
        yield source


def _xarray_if_loaded() -> Any:
    """The xarray module if something imported it (no DataArray can exist otherwise)."""
    import sys

    return sys.modules.get("xarray")


def _input_paths(inputs: str | Path | Sequence[str | Path]) -> list[Path]:
    items = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not items:
        raise GeofmError("no input raster given")
    paths = [Path(p) for p in items]
    for p in paths:
        if not p.exists():
            raise GeofmError("input not found", p)
    return paths


def _open(path: Path) -> Any:
    try:
        return rasterio.open(path)
    except RasterioError as e:
        raise GeofmError(f"cannot read the raster ({first_line(e)})", path,
                         "the file is corrupt, truncated or not a raster") from None


def _stack_vrt(paths: Sequence[Path]) -> tuple[str, list[str | None], dict[str, str]]:
    """A VRT stacking every band of ``paths`` on the finest grid among them.

    Returns:
        The VRT document, one label per band (description, else the file name for
        single-band files) and the first file's tags.

    Raises:
        GeofmError: The files are in different CRSs or rotated.
    """
    infos = []
    for p in paths:
        with _open(p) as ds:
            infos.append((p, ds.profile, ds.bounds, ds.res, ds.descriptions, ds.nodatavals,
                          ds.dtypes, ds.tags(), ds.crs))
    crs = infos[0][8]
    for p, *_, c in infos[1:]:
        if c != crs:
            raise GeofmError(f"is in {c}, not {crs} like {paths[0].name}", p,
                             "warp the files to one CRS (gdalwarp) or build a VRT")
    ref = min(infos, key=lambda info: info[3][0])
    res_x, res_y = ref[3]
    left, top = ref[2].left, ref[2].top
    width, height = ref[1]["width"], ref[1]["height"]
    root = ET.Element("VRTDataset", rasterXSize=str(width), rasterYSize=str(height))
    if crs is not None:
        ET.SubElement(root, "SRS").text = crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(
        repr(v) for v in (left, res_x, 0.0, top, 0.0, -res_y))
    labels: list[str | None] = []
    band = 0
    for p, profile, bounds, res, descriptions, nodatavals, dtypes, _, _ in infos:
        if profile["transform"].b or profile["transform"].d:
            raise GeofmError("rotated rasters cannot be stacked", p, "warp it north-up first")
        for i in range(profile["count"]):
            band += 1
            node = ET.SubElement(root, "VRTRasterBand", dataType=_GDAL_TYPES[dtypes[i]],
                                 band=str(band))
            label = descriptions[i] or (p.stem if profile["count"] == 1 else None)
            labels.append(label)
            if label:
                ET.SubElement(node, "Description").text = label
            if nodatavals[i] is not None:
                ET.SubElement(node, "NoDataValue").text = repr(nodatavals[i])
            src = ET.SubElement(node, "ComplexSource", resampling="bilinear")
            ET.SubElement(src, "SourceFilename", relativeToVRT="0").text = str(p.resolve())
            ET.SubElement(src, "SourceBand").text = str(i + 1)
            ET.SubElement(src, "SrcRect", xOff="0", yOff="0", xSize=str(profile["width"]),
                          ySize=str(profile["height"]))
            ET.SubElement(src, "DstRect", xOff=repr((bounds.left - left) / res_x),
                          yOff=repr((top - bounds.top) / res_y),
                          xSize=repr(profile["width"] * res[0] / res_x),
                          ySize=repr(profile["height"] * res[1] / res_y))
            if nodatavals[i] is not None:
                ET.SubElement(src, "NODATA").text = repr(nodatavals[i])
    return ET.tostring(root, encoding="unicode"), labels, infos[0][7]


def _model_grid(ds: Any, gsd: float, name: str) -> tuple[Affine, int, int]:
    """Transform and size of ``ds`` resampled to ``gsd`` metres."""
    t = ds.transform
    if ds.crs is None or not ds.crs.is_projected:
        raise GeofmError("resampling to the model's resolution needs a projected CRS in "
                         "metres", name, "warp the input to a UTM zone first (gdalwarp)")
    if t.b or t.d:
        raise GeofmError("rotated rasters cannot be resampled", name, "warp it north-up first")
    unit = ds.crs.linear_units_factor[1]
    step = gsd / unit
    width = max(1, round(ds.width * abs(t.a) / step))
    height = max(1, round(ds.height * abs(t.e) / step))
    return Affine(math.copysign(step, t.a), 0.0, t.c, 0.0, math.copysign(step, t.e), t.f), \
        width, height


def _input_res_m(ds: Any) -> float | None:
    if ds.crs is None or not ds.crs.is_projected:
        return None
    return float(abs(ds.transform.a)) * float(ds.crs.linear_units_factor[1])


@contextmanager
def open_source(paths: Sequence[Path], *, bands: str | Sequence[str] | None = None,
                gsd_m: float | None = None, resample: bool = False) -> Iterator[RasterSource]:
    """Open one raster (GeoTIFF, VRT) or stack several, optionally warped to ``gsd_m``.

    Args:
        paths: Input files; several are stacked band after band on the finest grid.
        bands: Names of the input bands in order (overrides the band descriptions).
        gsd_m: The model's ground sampling distance in metres (``None``: unknown).
        resample: Warp the input to ``gsd_m`` (bilinear up, average down) when it differs.

    Raises:
        GeofmError: Unreadable input, different CRSs, or resampling without a projected CRS.
    """
    name = str(paths[0]) if len(paths) == 1 else f"{paths[0]} (+{len(paths) - 1} files)"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        if len(paths) == 1:
            ds = _open(paths[0])
            labels: list[str | None] = list(ds.descriptions)
            tags = ds.tags()
        else:
            doc, labels, tags = _stack_vrt(paths)
            ds = _open_vrt(doc, name)
    target: Path | str = paths[0] if len(paths) == 1 else doc
    view = ds
    warp: dict[str, Any] = {}
    try:
        if bands is not None:
            labels = list(band_labels(bands, ds.count))
        if ds.crs is None:
            warnings.warn(f"{name}: the input has no CRS; the output keeps its pixel grid "
                          "without georeferencing", GeofmWarning, stacklevel=3)
        # The resolution is checked against the model with the bands (predict.checks).
        res = _input_res_m(ds)
        if gsd_m and res and abs(res / gsd_m - 1) > 0.05 and resample:
            transform, width, height = _model_grid(ds, gsd_m, name)
            warp = {"crs": ds.crs, "transform": transform, "width": width,
                    "height": height, "resampling": Resampling.average if res < gsd_m
                    else Resampling.bilinear}
            view = WarpedVRT(ds, **warp)
        elif resample and gsd_m is None:
            warnings.warn("the checkpoint records no ground sampling distance; predicting at "
                          "the input's resolution", GeofmWarning, stacklevel=3)
        levels = detect_levels([*(str(v) for v in tags.values()), *(p.name for p in paths)])

        def reopen(stack: ExitStack) -> Any:
            handle = stack.enter_context(rasterio.open(target))
            return stack.enter_context(WarpedVRT(handle, **warp)) if warp else handle

        source = RasterSource(view, name, labels, sensor_hint(tags),
                              native=ds if view is not ds else None, res_m=res, levels=levels,
                              reopen=reopen)
        try:
            yield source
        finally:
            source.close()
    finally:
        if view is not ds:
            view.close()
        ds.close()


def _open_vrt(doc: str, name: str) -> Any:
    try:
        return rasterio.open(doc)
    except RasterioError as e:
        raise GeofmError(f"cannot stack the input files ({first_line(e)})", name) from None
