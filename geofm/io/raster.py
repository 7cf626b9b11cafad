"""Reading GeoTIFF bands with errors a user can act on."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioError

from geofm.errors import BuildError


@dataclass(frozen=True)
class BandRead:
    """One band's pixels and georeferencing."""

    data: np.ndarray  # [H, W]
    crs: CRS | None
    transform: Affine  # of the returned grid (rescaled when resampled)
    nodata: float | None
    tags: dict[str, str]


def read_band(
    path: str | Path,
    out_shape: tuple[int, int] | None = None,
    resampling: Resampling = Resampling.bilinear,
) -> BandRead:
    """Read band 1 of a raster, optionally resampled onto ``out_shape`` pixels.

    Resampling goes through GDAL's overview/decimation read (``DatasetReader.read`` with
    ``out_shape``), the same call torchgeo's loaders make, so values agree with theirs.

    Raises:
        BuildError: The file is missing, not a raster, or truncated.
    """
    p = Path(path)
    if not p.exists():
        raise BuildError("file missing", p, "check the dataset is complete")
    if p.is_file() and p.stat().st_size == 0:
        raise BuildError("cannot read raster (the file is empty: 0 bytes)", p,
                         "the download is incomplete; re-download it")
    try:
        with rasterio.open(p) as ds:
            data = ds.read(1, out_shape=out_shape, resampling=resampling)
            transform = ds.transform
            if out_shape is not None and out_shape != (ds.height, ds.width):
                transform = transform @ Affine.scale(ds.width / out_shape[1],
                                                     ds.height / out_shape[0])
            return BandRead(data, ds.crs, transform, ds.nodata, dict(ds.tags()))
    except RasterioError as e:
        cause = e.__cause__ or e  # rasterio's "Read failed" wraps GDAL's message
        msg = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        msg = msg.replace(f"'{p}' ", "").replace(f"{p}: ", "")  # the line names the file once
        raise BuildError(f"cannot read raster ({msg})", p,
                         "the file is corrupt or truncated; re-download it") from None
