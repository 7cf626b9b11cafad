"""``query_raster``: a text in, a similarity heat map out (Cloud-Optimized GeoTIFF)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geofm.errors import GeofmError
from geofm.predict.model import Predictor
from geofm.predict.raster import predict_raster


def query_raster(
    model: str | Path | Predictor,
    inputs: str | Path | Sequence[str | Path],
    text: str | Sequence[str],
    output: str | Path,
    **kwargs: Any,
) -> dict[str, Any]:
    """Map where a raster looks like ``text``: the cosine similarity between each patch's
    projected embedding and the text's, streamed tile by tile like ``geofm predict --embed``.

    The output is a float32 Cloud-Optimized GeoTIFF at patch resolution: the input's CRS, its
    transform with pixels ``patch`` times larger, ``ceil(height / patch)`` ×
    ``ceil(width / patch)`` pixels, one band per text (band description = the text), values in
    ``[-1, 1]`` blended across overlapping tiles, NaN where the input is nodata. Beside it,
    ``<stem>.qml`` styles band 1 with a continuous colour ramp over its range, which QGIS
    applies when it opens the raster. Everything is written under temporary names and renamed
    when complete.

    Args:
        model: An aligned checkpoint (``geofm align``) or a :class:`Predictor` of one.
        inputs: A GeoTIFF or VRT, or several files stacked band after band.
        text: The query (``"flooded fields"``), or several (one band each).
        output: The output GeoTIFF.
        **kwargs: ``bands``, ``tile``, ``overlap`` (a multiple of the patch size),
            ``batch_size``, ``resample_to_model_gsd``, ``overwrite``, ``device``, ``progress``
            as for :func:`~geofm.predict.predict_raster`.

    Returns:
        :func:`~geofm.predict.predict_raster`'s report, with ``"task": "similarity"``,
        ``"qml"`` and ``"ranges"`` (the ``(min, max)`` similarity per text).

    Raises:
        GeofmError: An empty or blank text, a checkpoint without a text tower (pretrained or
            finetuned), and the input and output problems of
            :func:`~geofm.predict.predict_raster`.

    Example:
        >>> from geofm.predict import query_raster
        >>> info = query_raster("runs/align/align.safetensors",
        ...                     "datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif",
        ...                     "salt marsh", "marsh.tif")  # doctest: +SKIP
        >>> info["shape"], info["ranges"]  # doctest: +SKIP
        ((32, 32), [(-0.21, 0.47)])
    """
    return predict_raster(model, inputs, output, query=text, **kwargs)


RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".nc", ".hdf")
"""Names taken as input files by :func:`query_arguments` even when the file does not exist (so a
mistyped path is an error, not a query text)."""


def query_arguments(items: Sequence[str], texts: Sequence[str] = ()
                    ) -> tuple[list[str], list[str]]:
    """Split ``geofm query``'s positionals into input files and texts.

    The leading items that are existing files or end in a raster extension are inputs; the
    rest, then every ``texts``, are texts.

    Raises:
        GeofmError: No input file, or no text.
    """
    inputs: list[str] = []
    for item in items:
        if Path(item).is_file() or item.lower().endswith(RASTER_SUFFIXES):
            inputs.append(item)
        else:
            break
    rest = list(items[len(inputs):]) + list(texts)
    if not inputs:
        raise GeofmError(f"no input raster given ({items[0]!r} is not a file)",
                         hint="geofm query MODEL SCENE.tif [MORE.tif ...] \"TEXT\" [\"TEXT\" ...]")
    if not rest:
        raise GeofmError("no query text given",
                         hint='add texts after the input files, or --text "salt marsh"')
    return inputs, rest
