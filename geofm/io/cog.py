"""Cloud-Optimized GeoTIFF output that GDAL, QGIS and analysts read as intended.

A prediction is written in three steps:

1. :class:`TempRaster` fills a tiled, ZSTD-compressed GeoTIFF window by window as prediction
   finishes them (GDAL's block cache, capped by the caller, holds the partly written blocks of
   the current band of rows; blocks are compressed on every core).
2. :func:`write_cog` copies it through GDAL's COG driver (compression and overviews on every
   core): 256 × 256 tiles, DEFLATE, internal overviews (``mode`` for class rasters,
   ``average`` for scores and values) and the ghost header that marks ``LAYOUT=COG``. The
   colour table, band descriptions, scale/offset, tags and the per-dataset mask survive the
   copy.
3. Everything lives under hidden temporary names
   (``.out.tif.geofm-tmp-<host>-<pid>-<token>.part.tif``) in the output directory until
   :meth:`OutputTransaction.commit` renames the sidecars and then the raster into place, so
   the output path holds either nothing or a complete file.

Class names go where GDAL and QGIS look for them: GDAL category names and a thematic raster
attribute table in the PAM sidecar ``out.tif.aux.xml`` (the GeoTIFF format has no slot for
them, so GDAL itself keeps them there), and a QGIS style ``out.qml`` (paletted renderer with
names and colours) that QGIS loads with the raster. The colour table is inside the TIFF.
"""

from __future__ import annotations

import colorsys
import glob
import math
import os
import re
import socket
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from xml.etree import ElementTree as ET

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

from geofm.errors import GeofmError, first_line
from geofm.io.space import is_disk_full

BLOCK_SIZE = 256
"""Tile size of the COG, in pixels."""
BLOCK_BYTES = 16 * 2**20
"""Largest uncompressed block of the temporary raster: a block of every band must fit GDAL's
block cache, or each window written into a partly filled block decompresses and recompresses
all of it (256² px × 768 float32 embedding bands would be 201 MB)."""
MIN_OVERVIEW_SIZE = 64
"""Overviews halve the raster until its longer side would drop below this many pixels."""
CLASS_NODATA = {"uint8": 255, "uint16": 65535}
"""Nodata value of class rasters by dtype (the largest value; classes count from 0)."""


def class_dtype(num_classes: int) -> tuple[str, int]:
    """The dtype and nodata value of a class raster with ``num_classes`` classes.

    >>> class_dtype(19)
    ('uint8', 255)
    >>> class_dtype(300)
    ('uint16', 65535)
    """
    if num_classes <= 255:
        return "uint8", CLASS_NODATA["uint8"]
    if num_classes <= 65535:
        return "uint16", CLASS_NODATA["uint16"]
    raise GeofmError(f"{num_classes} classes do not fit a 16-bit class raster")


def class_rgb(colors: Sequence[str], num_classes: int) -> list[tuple[int, int, int]]:
    """``(r, g, b)`` per class from ``#rrggbb`` strings; classes without one get hues spread
    by the golden ratio (deterministic, so reruns give the same map)."""
    out: list[tuple[int, int, int]] = []
    for i in range(num_classes):
        text = colors[i].lstrip("#") if i < len(colors) and colors[i] else ""
        if len(text) == 6:
            out.append((int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)))
        else:
            r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.9)
            out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def overview_count(height: int, width: int, min_size: int = MIN_OVERVIEW_SIZE) -> int:
    """Number of 2× overview levels for a raster, down to ``min_size`` on the longer side.

    >>> overview_count(256, 256), overview_count(8192, 4096), overview_count(3, 3)
    (2, 7, 0)
    """
    side = max(height, width)
    return math.floor(math.log2(side / min_size)) if side >= 2 * min_size else 0


def temp_block_size(height: int, width: int, count: int, itemsize: int) -> int:
    """Block side of a temporary raster: :data:`BLOCK_SIZE`, halved while a pixel-interleaved
    block of ``count`` bands exceeds :data:`BLOCK_BYTES`, and no larger than the raster
    (rounded up to GDAL's multiple of 16).

    >>> temp_block_size(8000, 8000, 1, 1), temp_block_size(64, 64, 768, 4)
    (256, 64)
    >>> temp_block_size(4000, 4000, 768, 4)
    64
    """
    side = BLOCK_SIZE
    while side > 16 and side * side * count * itemsize > BLOCK_BYTES:
        side //= 2
    return min(side, max(16, -(-max(height, width) // 16) * 16))


class TempRaster:
    """A temporary tiled GeoTIFF written window by window.

    Args:
        path: File to create (a temporary name; see :class:`OutputTransaction`).
        height: Rows.
        width: Columns.
        count: Bands.
        dtype: ``uint8``, ``uint16`` or ``float32``.
        crs: Coordinate reference system (``None`` for an ungeoreferenced grid).
        transform: Pixel-to-map transform.
        nodata: Nodata value, or ``None``.
        mask: Write a per-dataset validity mask (for bands whose every value is meaningful,
            such as uint8 scores with scale 1/255).
        descriptions: Band descriptions.
        scales: Band scale factors (``None``: 1).
        tags: Dataset metadata.
        colormap: ``{value: (r, g, b, a)}`` for band 1 of a class raster.
        label: The path to name in error messages (the final output, not the temporary file).
    """

    def __init__(self, path: Path, *, height: int, width: int, count: int, dtype: str,
                 crs: CRS | None, transform: Affine, nodata: float | None = None,
                 mask: bool = False, descriptions: Sequence[str] = (),
                 scales: Sequence[float] | None = None, tags: dict[str, str] | None = None,
                 colormap: dict[int, tuple[int, int, int, int]] | None = None,
                 label: Path | None = None) -> None:
        self.path = path
        self.mask = mask
        block = temp_block_size(height, width, count, np.dtype(dtype).itemsize)
        profile: dict[str, Any] = {
            "driver": "GTiff", "height": height, "width": width, "count": count,
            "dtype": dtype, "crs": crs, "transform": transform, "nodata": nodata,
            "tiled": True, "blockxsize": block, "blockysize": block,
            "compress": "zstd", "zstd_level": 1, "num_threads": "all_cpus",
            "interleave": "pixel" if count > 1 else "band", "photometric": "minisblack",
            "bigtiff": "if_safer",
        }
        try:
            self.ds = rasterio.open(path, "w", **profile)
        except (rasterio.errors.RasterioError, OSError) as e:
            if is_disk_full(e):
                raise
            raise GeofmError(f"cannot create the output ({first_line(e)})", label or path,
                             "check the directory is writable and has space") from None
        for i, text in enumerate(descriptions, start=1):
            self.ds.set_band_description(i, text)
        if scales is not None:
            self.ds.scales = tuple(scales)
            self.ds.offsets = (0.0,) * count
        if tags:
            self.ds.update_tags(**tags)
        if colormap:
            self.ds.write_colormap(1, colormap)

    def write(self, row: int, col: int, data: np.ndarray, valid: np.ndarray | None = None
              ) -> None:
        """Write ``data [count, n, m]`` (and its mask) with its top-left pixel at
        ``(row, col)``."""
        window = Window(col, row, data.shape[2], data.shape[1])
        self.ds.write(data, window=window)
        if self.mask and valid is not None:
            self.ds.write_mask(np.where(valid, 255, 0).astype(np.uint8), window=window)

    def close(self) -> None:
        """Flush and close (idempotent)."""
        if not self.ds.closed:
            self.ds.close()


def write_cog(src: Path, dst: Path, *, resampling: str, predictor: bool = False,
              label: Path | None = None) -> None:
    """Copy a finished GeoTIFF to a Cloud-Optimized GeoTIFF with internal overviews.

    Args:
        src: The temporary GeoTIFF (any layout).
        dst: The COG to create (a temporary name that is renamed later).
        resampling: Overview resampling, ``"mode"`` (classes), ``"average"`` (scores, values)
            or ``"nearest"``.
        predictor: Use the floating-point/horizontal predictor (continuous values).
        label: The path to name in error messages (the final output, not the temporary file).

    Raises:
        GeofmError: GDAL could not write the file (disk full, permissions).
    """
    with rasterio.open(src) as ds:
        levels = overview_count(ds.height, ds.width)
        # no block larger than the raster (rounded up to GDAL's multiple of 16): a 16 × 16
        # embedding grid of 768 bands would otherwise compress 768 mostly empty 512² blocks
        block = min(BLOCK_SIZE, max(16, -(-max(ds.height, ds.width) // 16) * 16))
    options: dict[str, Any] = {
        "compress": "DEFLATE", "blocksize": block, "bigtiff": "IF_SAFER",
        "num_threads": "ALL_CPUS", "predictor": "YES" if predictor else "NO",
        "overview_resampling": resampling.upper(),
    }
    if levels:
        options["overview_count"] = levels
    else:
        options["overviews"] = "NONE"
    try:
        with rasterio.Env(GDAL_NUM_THREADS="ALL_CPUS"):  # overviews on every core too
            rasterio.shutil.copy(src, dst, driver="COG", **options)
    except (rasterio.errors.RasterioError, OSError) as e:
        if is_disk_full(e):
            raise  # the caller knows how much space the outputs need
        raise GeofmError(f"cannot write the Cloud-Optimized GeoTIFF ({first_line(e)})",
                         label or dst, "check the directory is writable and has space") from None


def write_category_sidecar(path: Path, classes: Sequence[str],
                           colors: Sequence[tuple[int, int, int]]) -> Path:
    """Write GDAL category names and a thematic raster attribute table for band 1.

    Written as a PAM document (GDAL's ``.aux.xml`` format) to ``path``; rename it to
    ``<raster>.aux.xml`` so GDAL (``gdalinfo``: ``categories``, ``rat``), QGIS (≥ 3.30 reads
    attribute tables) and ArcGIS find it.

    Returns:
        ``path``.
    """
    pam = ET.Element("PAMDataset")
    band = ET.SubElement(pam, "PAMRasterBand", band="1")
    names = ET.SubElement(band, "CategoryNames")
    for name in classes:
        ET.SubElement(names, "Category").text = name
    rat = ET.SubElement(band, "GDALRasterAttributeTable", tableType="thematic")
    # Types: 0 integer, 2 string. Usages: 5 min-max (the pixel value), 2 name, 6–8 red–blue.
    fields = (("value", 0, 5), ("class_name", 2, 2), ("red", 0, 6), ("green", 0, 7),
              ("blue", 0, 8))
    for index, (name, kind, usage) in enumerate(fields):
        defn = ET.SubElement(rat, "FieldDefn", index=str(index))
        ET.SubElement(defn, "Name").text = name
        ET.SubElement(defn, "Type").text = str(kind)
        ET.SubElement(defn, "Usage").text = str(usage)
    for i, (name, rgb) in enumerate(zip(classes, colors, strict=True)):
        row = ET.SubElement(rat, "Row", index=str(i))
        for value in (i, name, *rgb):
            ET.SubElement(row, "F").text = str(value)
    ET.indent(pam)
    ET.ElementTree(pam).write(path, encoding="utf-8", xml_declaration=False)
    return path


def _qml_pipe() -> tuple[ET.Element, ET.Element]:
    """The root of a QGIS layer style and its raster pipe."""
    qgis = ET.Element("qgis", version="3.28.0", styleCategories="AllStyleCategories")
    return qgis, ET.SubElement(qgis, "pipe")


def _write_qml(path: Path, qgis: ET.Element, pipe: ET.Element) -> Path:
    """Finish a style's pipe with QGIS's neutral stages and write it to ``path``."""
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0",
                  colorizeRed="255", colorizeGreen="128", colorizeBlue="128",
                  colorizeStrength="100", invertColors="0")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(pipe, "resamplingStage").text = "resamplingFilter"
    ET.SubElement(qgis, "blendMode").text = "0"
    ET.indent(qgis)
    body = ET.tostring(qgis, encoding="unicode")
    path.write_text("<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + body + "\n",
                    encoding="utf-8")
    return path


def write_qml(path: Path, classes: Sequence[str], colors: Sequence[tuple[int, int, int]]
              ) -> Path:
    """Write a QGIS layer style: paletted renderer on band 1 with class names and colours.

    QGIS applies ``<raster base name>.qml`` automatically when the raster is loaded, and its
    legend then lists every class by name.

    Returns:
        ``path``.
    """
    qgis, pipe = _qml_pipe()
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1",
                             alphaBand="-1", nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for i, (name, (r, g, b)) in enumerate(zip(classes, colors, strict=True)):
        ET.SubElement(palette, "paletteEntry", value=str(i), color=f"#{r:02x}{g:02x}{b:02x}",
                      alpha="255", label=name)
    return _write_qml(path, qgis, pipe)


RAMP = ("#440154", "#3b528b", "#21918c", "#5ec962", "#fde725")
"""Colour stops of continuous products, low to high (viridis: ordered and colour-blind safe)."""


def write_ramp_qml(path: Path, minimum: float, maximum: float) -> Path:
    """Write a QGIS layer style: a continuous colour ramp over band 1 from ``minimum`` to
    ``maximum`` (``-1`` to ``1`` when the range is unknown).

    QGIS applies ``<raster base name>.qml`` automatically when the raster is loaded.

    Returns:
        ``path``.
    """
    minimum, maximum = float(minimum), float(maximum)
    if not (math.isfinite(minimum) and math.isfinite(maximum)):
        minimum, maximum = -1.0, 1.0
    if maximum <= minimum:
        minimum, maximum = minimum - 1e-3, minimum + 1e-3
    qgis, pipe = _qml_pipe()
    renderer = ET.SubElement(pipe, "rasterrenderer", type="singlebandpseudocolor", band="1",
                             opacity="1", alphaBand="-1", classificationMin=repr(minimum),
                             classificationMax=repr(maximum), nodataColor="")
    ET.SubElement(renderer, "rasterTransparency")
    origin = ET.SubElement(renderer, "minMaxOrigin")
    for tag, text in (("limits", "MinMax"), ("extent", "WholeRaster"),
                      ("statAccuracy", "Exact"), ("cumulativeCutLower", "0.02"),
                      ("cumulativeCutUpper", "0.98"), ("stdDevFactor", "2")):
        ET.SubElement(origin, tag).text = text
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader",
                           colorRampType="INTERPOLATED", classificationMode="1", clip="0",
                           minimumValue=repr(minimum), maximumValue=repr(maximum),
                           labelPrecision="3")
    ramp = ET.SubElement(shader, "colorramp", type="gradient", name="[source]")
    options = ET.SubElement(ramp, "Option", type="Map")
    rgba = [",".join(str(int(c[i:i + 2], 16)) for i in (1, 3, 5)) + ",255" for c in RAMP]
    stops = ":".join(f"{k / (len(RAMP) - 1):g};{rgba[k]}" for k in range(1, len(RAMP) - 1))
    for name, value in (("color1", rgba[0]), ("color2", rgba[-1]), ("discrete", "0"),
                        ("rampType", "gradient"), ("stops", stops)):
        ET.SubElement(options, "Option", type="QString", name=name, value=value)
    for k, color in enumerate(RAMP):
        level = minimum + (maximum - minimum) * k / (len(RAMP) - 1)
        ET.SubElement(shader, "item", alpha="255", value=repr(level), color=color,
                      label=f"{level:.3f}")
    return _write_qml(path, qgis, pipe)


TEMP_TAG = "geofm-tmp"
"""Marks geofm's temporary files: ``.<name>.geofm-tmp-<host>-<pid>-<token>.<kind><suffix>``."""
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TEMP_NAME = re.compile(rf"\.{TEMP_TAG}-([A-Za-z0-9]+)-(\d+)-[0-9a-f]{{8}}\.")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove temporary files of ``final`` left by a run that was killed (``kill -9``, power
    loss): those named for this host whose process no longer exists.

    Files of a run still going, or written from another host (a shared filesystem), are kept.

    Returns:
        The files removed.
    """
    removed = []
    for path in final.parent.glob(f".{glob.escape(final.name)}.{TEMP_TAG}-*"):
        match = _TEMP_NAME.search(path.name[len(final.name) + 1:])
        if not match or match.group(1) != _HOST or _pid_alive(int(match.group(2))):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


class OutputTransaction:
    """Files written under hidden temporary names and renamed into place together.

    Temporary files sit in the directory of their final path, named with a leading ``.`` so
    they stay out of sight and with the host and process id so that a later run can tell a
    killed run's leftovers (:func:`remove_stale_temporaries`):
    ``.out.tif.geofm-tmp-<host>-<pid>-<token>.part.tif`` becomes ``out.tif``;
    ``...tmp.tif`` is an intermediate. They are removed if anything fails (including
    ``KeyboardInterrupt`` and :class:`geofm.signals.Interrupted`).
    Files staged for the output are renamed in the order staged by :meth:`commit`; stage the
    main raster last so it appears only when its sidecars are in place.

    >>> with OutputTransaction() as tx:  # doctest: +SKIP
    ...     tmp = tx.stage(Path("out.tif"), ".tif")
    ...     write(tmp)
    ...     tx.commit()
    """

    def __init__(self) -> None:
        self._token = uuid.uuid4().hex[:8]
        self._staged: list[tuple[Path, Path]] = []
        self._scratch: list[Path] = []
        self.committed = False
        self.checks: list[Callable[[], None]] = []
        """Called by :meth:`commit` before renaming anything; raise to abandon the outputs."""

    def _name(self, final: Path, kind: str, suffix: str) -> Path:
        return (final.parent
                / f".{final.name}.{TEMP_TAG}-{_HOST}-{os.getpid()}-{self._token}.{kind}{suffix}")

    def stage(self, final: Path, suffix: str = "") -> Path:
        """A temporary path that :meth:`commit` renames to ``final``."""
        tmp = self._name(final, "part", suffix)
        self._staged.append((tmp, final))
        self._scratch.append(Path(f"{tmp}.aux.xml"))
        return tmp

    def scratch(self, near: Path, suffix: str) -> Path:
        """A temporary path next to ``near``, always removed at the end."""
        tmp = self._name(near, "tmp", suffix)
        self._scratch += [tmp, Path(f"{tmp}.aux.xml")]
        return tmp

    def commit(self, remove: Sequence[Path] = ()) -> None:
        """Run :attr:`checks`, delete stale files of an earlier output (``remove``), then
        rename staged files."""
        for check in self.checks:
            check()
        for stale in remove:
            stale.unlink(missing_ok=True)
        for tmp, final in self._staged:
            os.replace(tmp, final)
        self.committed = True

    def cleanup(self) -> None:
        """Remove scratch files and, unless committed, every staged file."""
        paths = self._scratch + ([] if self.committed else [t for t, _ in self._staged])
        for p in paths:
            p.unlink(missing_ok=True)

    def __enter__(self) -> OutputTransaction:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.cleanup()
