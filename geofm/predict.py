"""Streaming tiled prediction over rasters: the engine behind ``geofm predict`` and the API.

The raster is cut into overlapping tiles of the model's input size on a fixed grid. A reader
thread reads tile windows with rasterio, checks nodata and normalises them with the
checkpoint's statistics; the calling thread runs the model on batches; a writer thread blends
the tile outputs with a 2-D Hann window and writes finished rows. Bounded queues link the three,
so reading and writing overlap with inference and nothing waits on the whole raster.

Memory. The blender keeps one band of output rows the height of a tile (``K × tile_h × W``
float32 for ``K`` output channels over a width ``W`` of at most :data:`PANEL_PIXELS`; wider
rasters are processed in vertical panels, see :class:`TileGrid`); rows are written as soon as
no later tile can touch them. Queues hold at most four batches, and GDAL's block cache is capped
at :data:`GDAL_CACHE_BYTES` while predicting. Peak memory therefore depends on tile size, batch
size and the panel width, not on the raster's size.

Output grids. Pixel tasks (segmentation, regression) predict every input pixel: the output has
the input's CRS, transform, width and height. Scene tasks (multi-label, classification) give one
value per tile, on a coarse grid whose pixels are tiles (no overlap). Embeddings come at patch
resolution (one ``D``-vector per ``patch × patch`` pixels). With ``resample_to_model_gsd`` the
input is warped to the model's ground sampling distance; pixel outputs are warped back onto the
input grid, coarse outputs stay on the model-resolution grid.

Products (see :func:`predict_raster` for the files):

* ``classes``: argmax of the blended class probabilities (segmentation, classification).
* ``scores``: per-class probabilities in ``[0, 1]`` (softmax; sigmoid for multi-label).
* ``values``: regression targets or embedding features, float32.
"""

from __future__ import annotations

import json
import logging
import math
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from xml.etree import ElementTree as ET

import numpy as np
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from torch import Tensor, nn

from geofm.bands import BAND_SETS, get_band, match_by_wavelength, resolve_bands
from geofm.errors import BandError, GeofmError
from geofm.inference import is_channel_flexible, load_encoder, load_finetuned, match_bands
from geofm.io.cog import (
    OutputTransaction,
    TempRaster,
    check_output,
    class_dtype,
    class_rgb,
    write_category_sidecar,
    write_cog,
    write_qml,
)

log = logging.getLogger(__name__)

GDAL_CACHE_BYTES = 64 * 2**20
"""GDAL block cache while predicting (reads of overlapping windows, partly written blocks)."""
QUEUE_BATCHES = 2
"""Batches each queue may hold: the reader and the writer run at most this far ahead/behind."""
PANEL_PIXELS = 4096
"""Rasters wider than this many input pixels are blended in vertical panels of this width."""
FINISH_COLUMNS = 1024
"""Finished rows are normalised and handed to the sink this many output columns at a time."""
SCENE_TASKS = ("multilabel", "classification")
_SENSOR_HINTS = (("sentinel-2", "S2"), ("sentinel2", "S2"), ("sentinel-1", "S1"),
                 ("sentinel1", "S1"), ("landsat 9", "L9"), ("landsat-9", "L9"),
                 ("landsat_9", "L9"), ("landsat 8", "L8"), ("landsat-8", "L8"),
                 ("landsat_8", "L8"), ("landsat 7", "L7"), ("landsat-7", "L7"),
                 ("landsat_7", "L7"), ("modis", "MODIS"))
_GDAL_TYPES = {"uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16",
               "uint32": "UInt32", "int32": "Int32", "float32": "Float32",
               "float64": "Float64"}


# --- the model ------------------------------------------------------------------------------


class Predictor:
    """A geofm model ready for tiled inference, with what its checkpoint header says.

    Args:
        module: A finetuned model (``module(images, bands)`` → logits) or a bare encoder with
            ``forward_patch_features`` (embeddings only).
        header: The checkpoint header (``task``, ``bands``, ``normalization``, ``classes``,
            ``class_colors``, ``tile_size``, ``patch_size``, ``gsd_m``, ``model``).
        name: Where the model came from (the checkpoint file name), for output tags.

    Attributes:
        task: ``"segmentation"``, ``"regression"``, ``"multilabel"``, ``"classification"``, or
            ``None`` for a pretrained-only encoder.
        bands: The checkpoint's band contract (canonical names).
        classes: Class (or regression target) names.
    """

    def __init__(self, module: nn.Module, header: dict[str, Any], name: str = "") -> None:
        self.module = module.eval()
        self.header = header
        self.name = name
        self.task: str | None = header.get("task") if header.get("kind") == "finetune" else None
        self.bands: list[str] = list(header["bands"])
        self.classes: list[str] = list(header.get("classes") or [])
        self.class_colors: list[str] = list(header.get("class_colors") or [])
        norm = header.get("normalization") or {}
        self.mean = np.asarray(norm.get("mean", [0.0] * len(self.bands)), dtype=np.float32)
        self.std = np.asarray(norm.get("std", [1.0] * len(self.bands)), dtype=np.float32)
        self.flexible = is_channel_flexible(header)
        encoder = self.encoder
        self.patch_size = int(header.get("patch_size") or getattr(encoder, "patch_size", 1))
        self.embed_dim = int(getattr(encoder, "embed_dim", 0))
        self.gsd_m: float | None = header.get("gsd_m")
        size = header.get("tile_size") or [16 * self.patch_size] * 2
        self.tile_size: tuple[int, int] = (int(size[0]), int(size[1]))
        self.device = torch.device("cpu")

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> Predictor:
        """Load a finetuned checkpoint (or a pretrained one, for embeddings only)."""
        from geofm.checkpoint import read_header

        header = read_header(path)
        if header.get("kind") == "finetune":
            module, header = load_finetuned(path)
        else:
            module, header = load_encoder(path)
        return cls(module, header, Path(path).name)

    @property
    def encoder(self) -> nn.Module:
        """The token encoder (the finetuned model's, or the module itself)."""
        return getattr(self.module, "encoder", self.module)

    @property
    def model_name(self) -> str:
        """Registered architecture name (``channelvit_tiny``)."""
        return str((self.header.get("model") or {}).get("name", type(self.encoder).__name__))

    def to(self, device: str | torch.device) -> Predictor:
        """Move the model to ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``)."""
        try:
            self.device = torch.device(device)
            self.module.to(self.device)
        except (RuntimeError, AssertionError) as e:
            raise GeofmError(f"cannot use device {device!r} ({str(e).splitlines()[0]})",
                             hint="use device='cpu' or an available GPU") from None
        return self

    def require_task(self) -> str:
        """The finetuned task, or a clear error for a pretrained-only checkpoint."""
        if self.task is None:
            raise GeofmError(f"{self.name or 'the model'} is a pretrained encoder without a "
                             "task head", hint="use embed=True (--embed) for embeddings, or "
                             "finetune it first with 'geofm finetune'")
        return self.task

    @torch.inference_mode()
    def outputs(self, images: Tensor, bands: Sequence[str], mode: str) -> Tensor:
        """Per-tile outputs ready for blending.

        Args:
            images: ``[B, C, H, W]`` normalised tiles on :attr:`device`.
            bands: Band names of the ``C`` channels.
            mode: ``"pixel"``, ``"scene"`` or ``"embed"``.

        Returns:
            ``[B, K, H, W]`` scores or values (pixel), ``[B, K, 1, 1]`` scores (scene),
            ``[B, D, H/p, W/p]`` patch embeddings (embed).
        """
        if mode == "embed":
            feats = self.encoder.forward_patch_features(images, list(bands))  # [B, N, D]
            gh, gw = images.shape[2] // self.patch_size, images.shape[3] // self.patch_size
            return feats.transpose(1, 2).reshape(feats.shape[0], feats.shape[2], gh, gw)
        logits = self.module(images, list(bands))  # [B, K] or [B, K, H, W]
        if self.task == "multilabel":
            scores = logits.sigmoid()
        elif self.task in ("classification", "segmentation"):
            scores = logits.softmax(dim=1)
        else:
            scores = logits
        if scores.ndim == 2:
            scores = scores[:, :, None, None]  # [B, K, 1, 1]
        return scores.float()


# --- band matching --------------------------------------------------------------------------


@dataclass(frozen=True)
class BandPlan:
    """Which input band feeds which model band, and how it is normalised.

    Attributes:
        bands: Band names given to the model, in the model's order.
        sources: 0-based input band index per model band.
        mean: Normalisation mean per model band ``[C]``.
        std: Normalisation std per model band ``[C]``.
        labels: The input's band names as read (descriptions, ``bands=``, file names).
        missing: Model bands the input lacks (channel-flexible models predict without them).
        ignored: Input bands the model does not use.
    """

    bands: list[str]
    sources: list[int]
    mean: np.ndarray
    std: np.ndarray
    labels: list[str]
    missing: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def mapping(self) -> dict[str, str]:
        """``{model band: "band 2 (B02)"}``, for reports and output tags."""
        return {b: f"band {i + 1} ({self.labels[i]})" for b, i in zip(self.bands, self.sources)}

    def summary(self) -> str:
        """One line naming the bands used, missing and ignored."""
        text = f"using {len(self.bands)} bands: " + ", ".join(
            f"{b}←{self.labels[i]}" for b, i in zip(self.bands, self.sources))
        if self.missing:
            text += f"; model bands not in the input: {', '.join(self.missing)}"
        if self.ignored:
            text += f"; input bands not used: {', '.join(self.ignored)}"
        return text


def sensor_hint(tags: dict[str, str]) -> str | None:
    """The registry sensor key (``"S2"``) named by a raster's metadata, if any."""
    text = " ".join(str(v) for v in tags.values()).lower()
    for needle, sensor in _SENSOR_HINTS:
        if needle in text:
            return sensor
    return None


def canonical_band(label: str, model_bands: Sequence[str], sensor: str | None = None
                   ) -> str | None:
    """The registry name an input band label stands for, or ``None`` if unknown.

    The model's own bands are tried first (``"B02"``, ``"blue"`` → ``S2.B02`` for a Sentinel-2
    model), then unambiguous registry names and aliases, then the label qualified with the
    sensor the file's metadata names.
    """
    text = label.strip()
    if not text:
        return None
    for attempt in (lambda: resolve_bands([text], list(model_bands))[0],
                    lambda: get_band(text).name,
                    lambda: get_band(f"{sensor}.{text}").name if sensor else None):
        try:
            name = attempt()
        except BandError:
            continue
        if name:
            return name
    return None


def band_labels(names: str | Sequence[str], count: int) -> list[str]:
    """Expand a user's ``bands=`` (a set name, ``"B02,B03"`` or a list) to one name per band.

    Raises:
        BandError: The number of names differs from the input's band count.
    """
    if isinstance(names, str):
        labels = (list(BAND_SETS[names.lower()]) if names.lower() in BAND_SETS
                  else [s.strip() for s in names.split(",") if s.strip()])
    else:
        labels = [str(n) for n in names]
    if len(labels) != count:
        raise BandError(f"bands= names {len(labels)} bands but the input has {count}",
                        hint="name every input band in order, e.g. bands='B02,B03,B04,B08'")
    return labels


def plan_bands(predictor: Predictor, labels: Sequence[str | None], *,
               source: str | Path | None = None, sensor: str | None = None) -> BandPlan:
    """Match the input's named bands to the model's band contract.

    Bands are matched by name (descriptions such as ``B02``, Sentinel-2 common names such as
    ``blue``, registry names such as ``S2.B02``), never by position. A channel-flexible model
    uses the model bands present (or, if none is present by name, the input bands nearest in
    wavelength); any other model needs all of its bands.

    Args:
        predictor: The model.
        labels: One name per input band (``None`` where a band has none).
        source: The input, for error messages.
        sensor: Sensor key for short names that are ambiguous across sensors (``"B10"``).

    Raises:
        BandError: The bands have no names, none is recognised, or a fixed-band model's bands
            are missing (listed).
    """
    if not any(labels):
        raise BandError("the input's bands have no names (no band descriptions)", source,
                        "name them in order with --bands (bands=), e.g. B02,B03,B04,B08 or "
                        "s2")
    text = [lab or f"band {i + 1}" for i, lab in enumerate(labels)]
    available: dict[str, int] = {}
    for i, lab in enumerate(labels):
        name = canonical_band(lab, predictor.bands, sensor) if lab else None
        if name and name not in available:
            available[name] = i
    if not available:
        raise BandError(f"none of the input's bands ({', '.join(text)}) is a known band",
                        source, "name them with --bands (bands=) using names such as B02, red "
                        "or S2.B04")
    used = match_bands(predictor.bands, list(available), predictor.flexible, source)
    stands_for = {b: b for b in predictor.bands}
    if any(u not in stands_for for u in used):
        by_wl = match_by_wavelength(predictor.bands, list(available))
        for model_band, data_band in by_wl.items():
            if data_band is not None and data_band not in stands_for:
                stands_for[data_band] = model_band
    mean, std = [], []
    for u in used:
        i = predictor.bands.index(stands_for[u])
        a, b = unit_conversion(u, stands_for[u])
        # Normalising a·x + b with the model band's statistics, folded into one (x − m) / s.
        mean.append((predictor.mean[i] - b) / a)
        std.append(predictor.std[i] / a)
    read = {available[u] for u in used}
    return BandPlan(
        bands=list(used), sources=[available[u] for u in used],
        mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32), labels=text,
        missing=[b for b in predictor.bands if b not in {stands_for[u] for u in used}],
        ignored=[text[i] for i in range(len(text)) if i not in read])


def unit_conversion(data_band: str, model_band: str) -> tuple[float, float]:
    """``(a, b)`` with ``model value = a · data value + b`` for a band standing in for another.

    Both are brought to their common physical unit with the registry's scale and offset
    (Landsat Collection-2 digital numbers to reflectance, then to Sentinel-2's reflectance ×
    10,000); bands of different units, or the same band, are passed through (``(1, 0)``).

    >>> a, b = unit_conversion("L8.B4", "S2.B04")
    >>> round(a, 3), round(b, 1)
    (0.275, -2000.0)
    """
    d, m = get_band(data_band), get_band(model_band)
    if d.name == m.name or d.unit != m.unit or not d.scale or not m.scale:
        return 1.0, 0.0
    return d.scale / m.scale, (d.offset - m.offset) / m.scale


# --- inputs ---------------------------------------------------------------------------------


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

    def read(self, indexes: Sequence[int], window: Window) -> np.ndarray:
        """``[C, h, w]`` float32 of 0-based bands ``indexes`` in ``window`` (inside bounds)."""
        ...

    def invalid(self, data: np.ndarray, indexes: Sequence[int], window: Window) -> np.ndarray:
        """``[h, w]`` bool: pixels where any of the read bands is nodata or NaN."""
        ...


class RasterSource:
    """Bands of a rasterio dataset (GeoTIFF, VRT, band stack or warped view).

    Args:
        ds: An open dataset.
        name: The input's name for messages.
        labels: One name per band (descriptions, file names or ``bands=``).
        sensor: Sensor key from the metadata.
        native: The dataset ``ds`` was warped from, if any.

    Attributes:
        native_grid: ``(crs, transform, height, width)`` of the unwarped input when ``ds`` is
            a warped view, else ``None``.
    """

    def __init__(self, ds: Any, name: str, labels: list[str | None], sensor: str | None,
                 native: Any = None) -> None:
        self.ds = ds
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

    def read(self, indexes: Sequence[int], window: Window) -> np.ndarray:
        try:
            return self.ds.read([i + 1 for i in indexes], window=window, out_dtype="float32")
        except RasterioError as e:
            raise GeofmError(f"cannot read the raster ({_first_line(e)})", self.name,
                             "the file is corrupt or truncated") from None

    def invalid(self, data: np.ndarray, indexes: Sequence[int], window: Window) -> np.ndarray:
        bad = np.isnan(data).any(axis=0)
        for k, i in enumerate(indexes):
            nd = self.nodata[i]
            if nd is not None and not math.isnan(nd):
                bad |= data[k] == np.float32(nd)
        if self._dataset_mask:
            bad |= self.ds.read_masks(indexes[0] + 1, window=window) == 0
        return bad


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
        raise GeofmError(f"cannot read the raster ({_first_line(e)})", path,
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
    view = ds
    try:
        if bands is not None:
            labels = list(band_labels(bands, ds.count))
        if ds.crs is None:
            warnings.warn(f"{name}: the input has no CRS; the output keeps its pixel grid "
                          "without georeferencing", UserWarning, stacklevel=3)
        res = _input_res_m(ds)
        if gsd_m and res and abs(res / gsd_m - 1) > 0.05:
            if resample:
                transform, width, height = _model_grid(ds, gsd_m, name)
                view = WarpedVRT(ds, crs=ds.crs, transform=transform, width=width,
                                 height=height, resampling=Resampling.average if res < gsd_m
                                 else Resampling.bilinear)
            else:
                warnings.warn(f"{name}: the input's pixels are {res:g} m but the model was "
                              f"trained at {gsd_m:g} m; pass --resample-to-model-gsd "
                              "(resample_to_model_gsd=True) to warp it first", UserWarning,
                              stacklevel=3)
        elif resample and gsd_m is None:
            warnings.warn("the checkpoint records no ground sampling distance; predicting at "
                          "the input's resolution", UserWarning, stacklevel=3)
        yield RasterSource(view, name, labels, sensor_hint(tags),
                           native=ds if view is not ds else None)
    finally:
        if view is not ds:
            view.close()
        ds.close()


def _open_vrt(doc: str, name: str) -> Any:
    try:
        return rasterio.open(doc)
    except RasterioError as e:
        raise GeofmError(f"cannot stack the input files ({_first_line(e)})", name) from None


# --- tiling and blending --------------------------------------------------------------------


def tile_offsets(size: int, tile: int, stride: int, step: int = 1) -> list[int]:
    """Tile start offsets along one axis covering ``size`` pixels.

    Offsets are ``0, stride, 2·stride, …``; the last tile is moved back to end at the raster
    edge (rounded up to a multiple of ``step``, so patch grids stay aligned), which gives it
    full context instead of padding. A raster smaller than a tile gets one padded tile.

    >>> tile_offsets(256, 120, 90)
    [0, 90, 136]
    >>> tile_offsets(256, 120, 120, step=120)
    [0, 120, 240]
    """
    if size <= tile:
        return [0]
    offsets = list(range(0, size - tile, stride))
    last = -(-(size - tile) // step) * step
    if last > offsets[-1]:
        offsets.append(last)
    return offsets


def hann_window(height: int, width: int) -> np.ndarray:
    """A 2-D Hann blending weight ``[height, width]``, positive everywhere.

    Sampled at pixel centres (``sin²(π (i + ½) / n)``), so edge pixels get a small but
    non-zero weight and a pixel seen by one tile only keeps that tile's value.
    """
    def axis(n: int) -> np.ndarray:
        return (np.sin(np.pi * (np.arange(n) + 0.5) / n) ** 2).astype(np.float32)

    return np.outer(axis(height), axis(width))


@dataclass(frozen=True)
class Panel:
    """A vertical band of the output processed on its own.

    Attributes:
        core: Output columns ``[start, stop)`` this panel writes.
        span: Output columns ``[start, stop)`` its tiles cover (the core plus the parts of the
            tiles straddling its edges, which the neighbouring panel also computes).
        cols: Indexes into :attr:`TileGrid.cols` of the tiles touching the core.
    """

    core: tuple[int, int]
    span: tuple[int, int]
    cols: tuple[int, ...]


@dataclass(frozen=True)
class TileGrid:
    """Where tiles sit on the input and how their outputs map onto the output grid.

    Rasters wider than :data:`PANEL_PIXELS` are processed in vertical panels so the blending
    accumulator never spans more than a panel: each panel runs every tile of the global grid
    that touches its columns, so the blend is the same as one pass over the whole raster; the
    tiles straddling a panel edge are computed twice.

    Attributes:
        height: Input rows.
        width: Input columns.
        tile: Tile size ``(rows, cols)`` in input pixels.
        overlap: Pixels shared by neighbouring tiles (the last tile of a row or column may
            share more, as it is moved back to end at the raster edge).
        factor: Input pixels per output pixel ``(rows, cols)``: 1 for pixel tasks, the patch
            size for embeddings, the tile size for scene tasks.
        rows: Tile row offsets (input pixels).
        cols: Tile column offsets (input pixels).
        panels: The vertical panels, left to right.
    """

    height: int
    width: int
    tile: tuple[int, int]
    overlap: int
    factor: tuple[int, int]
    rows: tuple[int, ...]
    cols: tuple[int, ...]
    panels: tuple[Panel, ...]

    @classmethod
    def build(cls, height: int, width: int, tile: tuple[int, int], overlap: int,
              factor: tuple[int, int], panel_pixels: int | None = None) -> TileGrid:
        """Grid with ``overlap`` pixels shared by neighbouring tiles.

        Args:
            height: Input rows.
            width: Input columns.
            tile: Tile size ``(rows, cols)``.
            overlap: Pixels shared by neighbouring tiles.
            factor: Input pixels per output pixel ``(rows, cols)``.
            panel_pixels: Widest panel in input pixels (default :data:`PANEL_PIXELS`, at least
                eight tiles); rounded to whole 256-pixel output blocks.
        """
        th, tw = tile
        fx = factor[1]
        rows = tile_offsets(height, th, th - overlap, factor[0])
        cols = tile_offsets(width, tw, tw - overlap, fx)
        out_w, out_tw = -(-width // fx), tw // fx
        block = 256
        core_w = max(panel_pixels or PANEL_PIXELS, 8 * tw) // fx
        core_w = max(block, core_w // block * block)
        panels = []
        for start in range(0, out_w, core_w):
            stop = min(out_w, start + core_w)
            touching = tuple(j for j, x in enumerate(cols)
                             if x // fx < stop and x // fx + out_tw > start)
            span = (cols[touching[0]] // fx, min(out_w, cols[touching[-1]] // fx + out_tw))
            panels.append(Panel((start, stop), span, touching))
        return cls(height, width, tile, overlap, factor, tuple(rows), tuple(cols),
                   tuple(panels))

    @property
    def out_shape(self) -> tuple[int, int]:
        """Output ``(rows, cols)``."""
        return -(-self.height // self.factor[0]), -(-self.width // self.factor[1])

    @property
    def out_tile(self) -> tuple[int, int]:
        """One tile's output size."""
        return self.tile[0] // self.factor[0], self.tile[1] // self.factor[1]

    @property
    def num_tiles(self) -> int:
        """Tile evaluations (tiles on a panel edge count once per panel)."""
        return len(self.rows) * sum(len(p.cols) for p in self.panels)

    def out_transform(self, transform: Affine) -> Affine:
        """The output grid's transform, given the input's."""
        return transform @ Affine.scale(self.factor[1], self.factor[0])


@dataclass
class Batch:
    """Tiles on their way through the pipeline.

    Attributes:
        images: ``[B, C, th, tw]`` normalised float32.
        valid: ``[B, oh, ow]`` output cells with at least one valid input pixel.
        where: ``(panel index, tile row index, row offset, column offset)`` per tile.
        outputs: ``[B, K, oh, ow]`` model outputs, filled by the model stage.
    """

    images: np.ndarray
    valid: np.ndarray
    where: list[tuple[int, int, int, int]]
    outputs: np.ndarray | None = None


Rows = tuple[int, int, np.ndarray, np.ndarray]
"""Finished output: ``(first row, first column, values [K, n, m], valid [n, m])``."""


class Blender:
    """Weighted average of overlapping tile outputs over a band of output rows of one panel.

    Tiles must arrive in raster order (row by row, left to right). Rows above the current tile
    row's top can no longer change, so they are released as soon as a tile of a later tile
    row arrives; the accumulator spans one tile's height of output rows and the panel's
    columns.

    Args:
        grid: The tile grid.
        panel: The panel blended.
        channels: Output channels ``K``.
        weight: Per-tile weight ``[oh, ow]``.
    """

    def __init__(self, grid: TileGrid, panel: Panel, channels: int, weight: np.ndarray
                 ) -> None:
        self.grid = grid
        self.panel = panel
        self.weight = weight
        height, width = grid.out_tile[0], panel.span[1] - panel.span[0]
        self.acc = np.zeros((channels, height, width), np.float32)  # [K, A, span]
        self.wsum = np.zeros((height, width), np.float32)  # [A, span]
        self.valid = np.zeros((height, width), bool)  # [A, span]
        self.top = 0
        self.current = 0

    @property
    def nbytes(self) -> int:
        """Bytes held by the accumulator (fixed by tile size and panel width)."""
        return self.acc.nbytes + self.wsum.nbytes + self.valid.nbytes

    def add(self, tile_row: int, row: int, col: int, out: np.ndarray, valid: np.ndarray
            ) -> Iterator[Rows]:
        """Add one tile's output ``[K, oh, ow]`` at input offset ``(row, col)``.

        Yields:
            The output this tile's arrival finished (iterate to the end: the tile is added
            after the last item).
        """
        yield from self._advance(tile_row)
        fy, fx = self.grid.factor
        out_h = self.grid.out_shape[0]
        r0, c0 = row // fy - self.top, col // fx - self.panel.span[0]
        n = min(out.shape[1], out_h - self.top - r0)
        m = min(out.shape[2], self.acc.shape[2] - c0)
        w = self.weight[:n, :m]
        weighted = np.multiply(out[:, :n, :m], w, out=out[:, :n, :m])  # the tile is done with
        self.acc[:, r0:r0 + n, c0:c0 + m] += weighted
        self.wsum[r0:r0 + n, c0:c0 + m] += w
        self.valid[r0:r0 + n, c0:c0 + m] |= valid[:n, :m]

    def finish(self) -> Iterator[Rows]:
        """Release every remaining row."""
        yield from self._advance(len(self.grid.rows))

    def _advance(self, tile_row: int) -> Iterator[Rows]:
        a, b = (c - self.panel.span[0] for c in self.panel.core)
        while self.current < tile_row:
            self.current += 1
            end = (self.grid.rows[self.current] // self.grid.factor[0]
                   if self.current < len(self.grid.rows) else self.grid.out_shape[0])
            n = end - self.top
            if n <= 0:
                continue
            # In column chunks, so the finished values never take more than a chunk's memory.
            for c in range(a, b, FINISH_COLUMNS):
                d = min(b, c + FINISH_COLUMNS)
                wsum = self.wsum[:n, c:d]
                values = self.acc[:, :n, c:d] / np.maximum(wsum, np.float32(1e-12))  # [K, n, m]
                yield self.top, self.panel.span[0] + c, values, self.valid[:n, c:d] & (wsum > 0)
            self.acc[:, :-n] = self.acc[:, n:]
            self.acc[:, -n:] = 0
            self.wsum[:-n] = self.wsum[n:]
            self.wsum[-n:] = 0
            self.valid[:-n] = self.valid[n:]
            self.valid[-n:] = False
            self.top = end


# --- products and sinks ---------------------------------------------------------------------


class Sink(Protocol):
    """Where finished output goes."""

    def write(self, row: int, col: int, values: np.ndarray, valid: np.ndarray) -> None:
        """Blended ``values [K, n, m]`` and ``valid [n, m]`` at output ``(row, col)``."""
        ...


def classes_of(values: np.ndarray, valid: np.ndarray, dtype: str, nodata: int) -> np.ndarray:
    """Argmax class ``[n, m]`` of scores ``[K, n, m]``, ``nodata`` where invalid."""
    out = values.argmax(axis=0).astype(dtype)
    out[~valid] = nodata
    return out


def quantize(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Scores in ``[0, 1]`` as uint8 ``0–255`` (scale 1/255), 0 where invalid."""
    out = np.rint(np.clip(scores, 0.0, 1.0) * 255.0).astype(np.uint8)
    out[:, ~valid] = 0
    return out


class FileSink:
    """Writes finished output to temporary GeoTIFFs (main product and probabilities).

    Args:
        product: ``"classes"``, ``"scores"`` or ``"values"`` for the main file.
        main: Writer of the main file.
        probabilities: Writer of the per-class probability file (class products only).
        class_nodata: Nodata value of the class raster.
    """

    def __init__(self, product: str, main: TempRaster, probabilities: TempRaster | None,
                 class_nodata: int = 255) -> None:
        self.product = product
        self.main = main
        self.probabilities = probabilities
        self.class_nodata = class_nodata

    def write(self, row: int, col: int, values: np.ndarray, valid: np.ndarray) -> None:
        if self.product == "classes":
            dtype = self.main.ds.dtypes[0]
            self.main.write(row, col, classes_of(values, valid, dtype, self.class_nodata)[None])
            if self.probabilities is not None:
                self.probabilities.write(row, col, quantize(values, valid), valid)
        elif self.product == "scores":
            self.main.write(row, col, quantize(values, valid), valid)
        else:
            out = values.astype(np.float32, copy=True)
            out[:, ~valid] = np.nan
            self.main.write(row, col, out)


class ArraySink:
    """Keeps the whole output in memory (the API): float values with NaN where invalid, or
    class indices with ``class_nodata``.

    Args:
        channels: Output channels ``K``.
        shape: Output ``(rows, cols)``.
        classes: Store argmax classes instead of the ``K`` values.
        class_nodata: Nodata value of the classes.
    """

    def __init__(self, channels: int, shape: tuple[int, int], classes: bool,
                 class_nodata: int = 255) -> None:
        self.classes = classes
        self.class_nodata = class_nodata
        self.dtype = class_dtype(channels)[0]
        self.array = (np.full(shape, class_nodata, self.dtype) if classes
                      else np.full((channels, *shape), np.nan, np.float32))

    def write(self, row: int, col: int, values: np.ndarray, valid: np.ndarray) -> None:
        n, m = values.shape[1:]
        if self.classes:
            self.array[row:row + n, col:col + m] = classes_of(values, valid, self.dtype,
                                                              self.class_nodata)
        else:
            out = values.copy()
            out[:, ~valid] = np.nan
            self.array[:, row:row + n, col:col + m] = out


# --- the pipeline ---------------------------------------------------------------------------


@dataclass
class RunStats:
    """What a pipeline run did.

    Attributes:
        tiles: Tile evaluations in the grid.
        predicted: Tiles run through the model (the others were all nodata).
        model_seconds: Time inside the model (including host/device copies).
        seconds: Wall time of the pipeline.
        accumulator_bytes: Size of the largest blending accumulator.
    """

    tiles: int = 0
    predicted: int = 0
    model_seconds: float = 0.0
    seconds: float = 0.0
    accumulator_bytes: int = 0


def _put(q: queue.Queue[Any], item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue[Any], stop: threading.Event) -> Any:
    while not stop.is_set():
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            continue
    return None


_END = object()


def read_batches(source: Source, plan: BandPlan, grid: TileGrid, batch_size: int
                 ) -> Iterator[Batch]:
    """Normalised tiles in panel and raster order, batched; all-nodata tiles are skipped.

    Pixels that are nodata or NaN in any used band, and padding beyond the raster edge, are
    set to 0 (the band mean after normalisation) and marked invalid.
    """
    th, tw = grid.tile
    fy, fx = grid.factor
    oh, ow = grid.out_tile
    mean = plan.mean[:, None, None]
    std = plan.std[:, None, None]
    images: list[np.ndarray] = []
    valids: list[np.ndarray] = []
    where: list[tuple[int, int, int, int]] = []
    for p, panel in enumerate(grid.panels):
        for r, y in enumerate(grid.rows):
            for x in (grid.cols[j] for j in panel.cols):
                h, w = min(th, grid.height - y), min(tw, grid.width - x)
                window = Window(x, y, w, h)
                raw = source.read(plan.sources, window)  # [C, h, w]
                bad = source.invalid(raw, plan.sources, window)  # [h, w]
                if bad.all():
                    continue
                tile = np.zeros((len(plan.sources), th, tw), np.float32)  # [C, th, tw]
                tile[:, :h, :w] = np.where(bad, np.float32(0), (raw - mean) / std)
                ok = np.zeros((th, tw), bool)
                ok[:h, :w] = ~bad
                images.append(tile)
                valids.append(ok.reshape(oh, fy, ow, fx).any(axis=(1, 3)))
                where.append((p, r, y, x))
                if len(images) == batch_size:
                    yield Batch(np.stack(images), np.stack(valids), where)
                    images, valids, where = [], [], []
    if images:
        yield Batch(np.stack(images), np.stack(valids), where)


def run_pipeline(predictor: Predictor, source: Source, plan: BandPlan, grid: TileGrid,
                 mode: str, sink: Sink, *, channels: int, batch_size: int = 8,
                 progress: bool = False) -> RunStats:
    """Read, infer, blend and write with three overlapping stages.

    Args:
        predictor: The model (already on its device).
        source: The input.
        plan: Band matching and normalisation.
        grid: The tile grid.
        mode: ``"pixel"``, ``"scene"`` or ``"embed"`` (see :meth:`Predictor.outputs`).
        sink: Receives finished output.
        channels: Output channels ``K`` of the model in this mode.
        batch_size: Tiles per model call.
        progress: Show a progress bar.

    Returns:
        Counts and timings.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    stats = RunStats(tiles=grid.num_tiles)
    weight = (np.ones(grid.out_tile, np.float32) if mode == "scene"
              else hann_window(*grid.out_tile))
    stop = threading.Event()
    errors: list[BaseException] = []
    to_model: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
    to_writer: queue.Queue[Any] = queue.Queue(maxsize=QUEUE_BATCHES)
    bar = tqdm(total=grid.num_tiles, unit="tile", desc="predict", disable=not progress,
               leave=False)

    def guarded(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                fn()
            except BaseException as e:
                errors.append(e)
                stop.set()
        return run

    def reader() -> None:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES):
            for batch in read_batches(source, plan, grid, batch_size):
                if not _put(to_model, batch, stop):
                    return
        _put(to_model, _END, stop)

    def writer() -> None:
        blender: Blender | None = None
        while True:
            item = _get(to_writer, stop)
            if item is None:
                return
            if item is _END:
                break
            for (p, r, y, x), out, valid in zip(item.where, item.outputs, item.valid):
                if blender is None or blender.panel is not grid.panels[p]:
                    for row, col, values, ok in blender.finish() if blender else ():
                        sink.write(row, col, values, ok)
                    blender = None  # free one panel's accumulator before making the next
                    blender = Blender(grid, grid.panels[p], channels, weight)
                    stats.accumulator_bytes = max(stats.accumulator_bytes, blender.nbytes)
                for row, col, values, ok in blender.add(r, y, x, out, valid):
                    sink.write(row, col, values, ok)
            bar.update(len(item.where))
        for row, col, values, ok in blender.finish() if blender else ():
            sink.write(row, col, values, ok)

    threads = [threading.Thread(target=guarded(reader), name="geofm-read", daemon=True),
               threading.Thread(target=guarded(writer), name="geofm-write", daemon=True)]
    for t in threads:
        t.start()
    try:
        while True:
            batch = _get(to_model, stop)
            if batch is None or batch is _END:
                break
            t0 = time.perf_counter()
            images = torch.from_numpy(batch.images).to(predictor.device)
            batch.outputs = predictor.outputs(images, plan.bands, mode).cpu().numpy()
            batch.images = np.empty(0, np.float32)  # the writer needs outputs only
            del images
            stats.model_seconds += time.perf_counter() - t0
            stats.predicted += len(batch.where)
            if not _put(to_writer, batch, stop):
                break
        _put(to_writer, _END, stop)
    except BaseException:
        stop.set()
        raise
    finally:
        for t in threads:
            t.join()
        bar.close()
    if errors:
        raise errors[0]
    stats.seconds = time.perf_counter() - start
    return stats


# --- predict_raster -------------------------------------------------------------------------


def resolve_mode(predictor: Predictor, embed: bool) -> str:
    """``"embed"``, ``"pixel"`` or ``"scene"`` for this model and request."""
    if embed:
        return "embed"
    task = predictor.require_task()
    return "scene" if task in SCENE_TASKS else "pixel"


def build_grid(predictor: Predictor, mode: str, height: int, width: int,
               tile: int | Sequence[int] | None, overlap: int | None) -> TileGrid:
    """The tile grid for ``mode`` (tile and overlap checked against the patch size).

    Raises:
        GeofmError: The tile is not a multiple of the patch size, or the overlap is negative,
            too large, or (embeddings) not a multiple of the patch size.
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
    if mode == "scene":
        return TileGrid.build(height, width, (th, tw), 0, (th, tw))
    if overlap is None:
        overlap = min(th, tw) // 4
        if mode == "embed":
            overlap = overlap // p * p
    if not 0 <= overlap < min(th, tw):
        raise GeofmError(f"overlap {overlap} must be at least 0 and less than the tile "
                         f"({th}×{tw})")
    if mode == "embed" and overlap % p:
        raise GeofmError(f"overlap {overlap} is not a multiple of the patch size {p}",
                         hint="embeddings sit on the patch grid")
    factor = (p, p) if mode == "embed" else (1, 1)
    return TileGrid.build(height, width, (th, tw), overlap, factor)


def output_names(predictor: Predictor, mode: str) -> list[str]:
    """One name per output channel: class or target names, ``embedding_<i>`` for embeddings
    (``output_<i>`` where the checkpoint names fewer outputs than its head has)."""
    if mode == "embed":
        return [f"embedding_{i}" for i in range(predictor.embed_dim)]
    count = int((predictor.header.get("head") or {}).get("num_outputs")
                or len(predictor.classes) or 1)
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
    vector: str | Path | None = None,
    min_area: float = 0.0,
    tile: int | Sequence[int] | None = None,
    overlap: int | None = None,
    batch_size: int = 8,
    resample_to_model_gsd: bool = False,
    overwrite: bool = False,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Predict over a raster of any size and write a Cloud-Optimized GeoTIFF.

    Files written (each under a hidden temporary name first, renamed when complete; the main
    raster last):

    * ``output``: segmentation/classification → class raster (uint8, nodata 255; uint16,
      nodata 65535, past 255 classes) with a colour table, GDAL category names and a raster
      attribute table (in ``output.aux.xml``) and a QGIS style ``<stem>.qml``; multi-label →
      one uint8 score band per class (scale 1/255, band descriptions = class names, invalid
      pixels masked by the internal mask); regression → float32 bands (nodata NaN);
      ``embed=True`` → float32 embedding bands at patch resolution (nodata NaN).
    * ``<stem>_probabilities.tif`` (``probabilities=True``, class tasks): one uint8 band per
      class, scale 1/255, band descriptions = class names, internal mask, ``average``
      overviews. A separate file keeps the class raster single-band and paletted (QGIS styles
      it with the ``.qml``) and lets each file have the right overview resampling.
    * ``vector`` (``.gpkg``): one multipolygon per class, dissolved, parts smaller than
      ``min_area`` dropped.

    Every raster has the input's CRS (pixel tasks: also its transform, width and height),
    256 × 256 DEFLATE tiles, overviews (``mode`` for classes, ``average`` otherwise), and tags
    ``GEOFM_MODEL``, ``GEOFM_CHECKPOINT``, ``GEOFM_VERSION``, ``GEOFM_TASK``, ``GEOFM_BANDS``
    (model band → input band), ``GEOFM_CLASSES``, ``GEOFM_TILE``, ``GEOFM_OVERLAP``.

    An input without a CRS is accepted with a warning: the output keeps its pixel grid,
    ungeoreferenced.

    Args:
        model: A geofm checkpoint (finetuned; pretrained with ``embed=True``) or a
            :class:`Predictor`.
        inputs: A GeoTIFF or VRT, or several files stacked band after band (on the finest of
            their grids; same CRS).
        output: The output GeoTIFF.
        bands: Names of the input bands in order (``"B02,B03,B04,B08"``, ``"s2"``), when the
            file's band descriptions are missing or wrong.
        probabilities: Also write per-class probabilities (class tasks).
        embed: Write patch embeddings of the encoder instead of predictions.
        vector: Also write class polygons to this GeoPackage (class tasks).
        min_area: Drop polygon parts smaller than this, in square CRS units (m² in UTM).
        tile: Tile size in pixels (default: the checkpoint's training chip size).
        overlap: Pixels shared by neighbouring tiles (default: a quarter tile; scene tasks
            tile without overlap).
        batch_size: Tiles per model call.
        resample_to_model_gsd: Warp the input to the model's resolution first (when they
            differ by more than 5 %).
        overwrite: Replace an existing output.
        device: Torch device (``"cpu"``, ``"cuda"``).
        progress: Show a progress bar.

    Returns:
        ``{"output", "probabilities", "qml", "aux", "vector", "task", "bands",
        "bands_missing", "bands_ignored", "message", "shape", "crs", "tiles", "predicted",
        "seconds", "model_seconds", "pixels_per_second", "accumulator_bytes"}``.

    Raises:
        GeofmError: Output exists or is not writable, unreadable input, missing bands, all
            input pixels nodata, or a request the model cannot serve.

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
    output = Path(output)
    paths = _input_paths(inputs)
    check_output(output, overwrite, paths)
    predictor = model if isinstance(model, Predictor) else Predictor.from_checkpoint(model)
    mode = resolve_mode(predictor, embed)
    task = "embedding" if mode == "embed" else str(predictor.task)
    product = ("classes" if task in ("segmentation", "classification")
               else "scores" if task == "multilabel" else "values")
    probabilities = probabilities and product == "classes"
    if probabilities:
        check_output(probabilities_path(output), overwrite, paths)
    if vector is not None:
        if product != "classes":
            raise GeofmError(f"vector output needs a class raster, but the {task} output has "
                             "none", hint="drop --vector or use a segmentation or "
                             "classification model")
        vector = Path(vector)
        check_output(vector, overwrite, paths)
    if batch_size < 1:
        raise GeofmError(f"batch_size must be at least 1, got {batch_size}")
    predictor.to(device)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), \
            open_source(paths, bands=bands, gsd_m=predictor.gsd_m,
                        resample=resample_to_model_gsd) as source, \
            OutputTransaction() as tx:
        plan = plan_bands(predictor, source.labels, source=source.name, sensor=source.sensor)
        log.info("%s", plan.summary())
        grid = build_grid(predictor, mode, source.height, source.width, tile, overlap)
        names = output_names(predictor, mode)
        channels = len(names)
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
            stats = run_pipeline(predictor, source, plan, grid, mode,
                                 FileSink(product, main, probs, nodata), channels=channels,
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


def _temp_raster(path: Path, product: str, names: list[str],
                 rgb: list[tuple[int, int, int]], spec: dict[str, Any]) -> TempRaster:
    """The temporary GeoTIFF of one product (see :func:`predict_raster` for the layouts)."""
    k = len(names)
    if product == "classes":
        dtype, nodata = class_dtype(k)
        return TempRaster(path, count=1, dtype=dtype, nodata=nodata, descriptions=["class"],
                          colormap={i: (*c, 255) for i, c in enumerate(rgb)}, **spec)
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
    write_cog(main, tx.stage(output, ".tif"),
              resampling="mode" if product == "classes" else "average",
              predictor=product == "values", label=output)
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


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
