"""The analyst's Python API: load a geofm model, then predict, embed or query rasters and xarray
data.

>>> import geofm
>>> model = geofm.load("runs/finetune/finetune.safetensors")  # doctest: +SKIP
>>> model.task, model.bands[:2], model.classes[:2]  # doctest: +SKIP
('segmentation', ['S2.B01', 'S2.B02'], ['Urban fabric', 'Industrial or commercial units'])
>>> scene = "datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif"
>>> landcover = model.predict(scene)  # doctest: +SKIP
>>> landcover.rio.crs, landcover.shape  # doctest: +SKIP
(CRS.from_epsg(32618), (256, 256))
>>> landcover.rio.to_raster("landcover.tif")  # doctest: +SKIP

An aligned image–text checkpoint (``geofm align``) also embeds texts and images in one space and
maps where a scene looks like a text:

>>> clip = geofm.load("runs/align/align.safetensors")  # doctest: +SKIP
>>> marsh = clip.query(scene, "salt marsh")  # doctest: +SKIP
>>> clip.encode_text(["salt marsh", "forest"]).shape  # doctest: +SKIP
(2, 256)

The examples need a checkpoint from ``geofm finetune``; docs/analyst_walkthrough.md walks
through them end to end (the test suite runs its cells).

Inputs are a raster path or an :class:`xarray.DataArray` as ``rioxarray.open_rasterio`` returns
it (``(band, y, x)``, numpy- or dask-backed; a dask array is read tile by tile, never all at
once). Bands are matched by name: the band descriptions rioxarray keeps in ``long_name``, string
``band`` coordinates, or ``bands=``. Results are DataArrays on the output grid with CRS,
transform and nodata set, ready for ``.rio.to_raster``; they are held in memory, so for rasters
larger than memory write a Cloud-Optimized GeoTIFF with :meth:`Model.predict_raster` instead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rioxarray  # noqa: F401  (registers the .rio accessor the results use)
import torch
import xarray as xr
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from torch import nn

from geofm.card import ModelCard
from geofm.errors import GeofmError
from geofm.io.cog import class_dtype
from geofm.predict import Predictor, predict_raster, query_raster
from geofm.predict.band_plan import band_labels, plan_bands
from geofm.predict.job import Layout, lay_out, plan_input, plan_job, run_job
from geofm.predict.similarity import query_texts
from geofm.predict.sinks import ArraySink
from geofm.predict.sources import open_input


def load(path: str | Path, device: str = "cpu", weights: str | Path | None = None,
         data_units: str = "native") -> Model:
    """Load a geofm checkpoint for prediction (finetuned), embeddings (any), or text queries and
    image–text embeddings (aligned).

    Args:
        path: A ``*.safetensors`` checkpoint written by ``geofm finetune``, ``geofm pretrain``
            or ``geofm align``; or a published encoder's name (``"dofa_base"``, ``geofm
            models`` lists them) or ``"torchgeo:DOFABase16_Weights.DOFA_MAE"``.
        device: Torch device (``"cpu"``, ``"cuda"``).
        weights: A published encoder's weights file, as released.
        data_units: What the inputs hold: ``"native"`` (the products' stored numbers:
            Sentinel-2 reflectance × 10,000, Landsat Collection-2 DN) or ``"physical"``
            (reflectance 0–1, dB, K). The band contract converts either into the model's
            units; values that do not fit the declared units are refused (:mod:`geofm.scale`).

    Returns:
        The model, in eval mode.

    Raises:
        GeofmError: Missing file or not a geofm checkpoint.

    Example:
        >>> import geofm
        >>> model = geofm.load("runs/finetune/finetune.safetensors")  # doctest: +SKIP
        >>> model  # doctest: +SKIP
        Model(channelvit_test, segmentation, 14 bands, 19 classes)
    """
    return Model(Predictor.from_checkpoint(path, weights).with_data_units(data_units)).to(device)


def _image_batch(x: Any) -> tuple[np.ndarray, bool]:
    """``[B, C, H, W]`` float32 from a numpy or torch array of one image or a batch, and
    whether it was one image."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise GeofmError(f"cannot encode a {type(x).__name__}", hint="pass a raster path, an "
                         "xarray.DataArray or an array [C, H, W] / [B, C, H, W]")
    if x.ndim not in (3, 4):
        raise GeofmError(f"expected an image array [C, H, W] or [B, C, H, W], got shape "
                         f"{x.shape}")
    return (x[None] if x.ndim == 3 else x).astype(np.float32, copy=False), x.ndim == 3


class Model:
    """A geofm model for analysts: ``predict``, ``embed`` and (aligned image–text models)
    ``query`` rasters or DataArrays; ``encode_text`` and ``encode_image`` into the shared space.

    Args:
        predictor: The loaded model (see :func:`load`); or build one from a module and its
            model card with :meth:`from_module`.

    Attributes:
        task: ``"segmentation"``, ``"regression"``, ``"multilabel"``, ``"classification"``, or
            ``None`` for a pretrained encoder (embeddings only) or an aligned image–text model.
        bands: The model's bands (canonical names, e.g. ``"S2.B04"``).
        classes: Class names (regression: target names).
        class_colors: ``#rrggbb`` per class.
        tile_size: Input tile size ``(rows, cols)`` it was trained on.
        gsd_m: Ground sampling distance it was trained at, in metres.
        card: The model card (:class:`~geofm.card.ModelCard`).
    """

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor

    @classmethod
    def from_module(cls, module: nn.Module, card: ModelCard, name: str = "") -> Model:
        """Wrap a model built in Python and the card describing it (band contract, task,
        classes), as a checkpoint's card would.

        Example (runs as is from the repository root, with an untrained network):
            >>> from geofm.models import create_model
            >>> from geofm.models.finetuner import Finetuner
            >>> bands = ["S2.B02", "S2.B03", "S2.B04", "S2.B08"]
            >>> net = Finetuner(create_model("channelvit_test", bands=bands), "segmentation", 3)
            >>> from geofm.card import Architecture, BandContract, ModelCard, TaskSpec
            >>> card = ModelCard(
            ...     kind="finetune", architecture=Architecture("channelvit_test"),
            ...     contract=BandContract(tuple(bands), (1000.0,) * 4, (500.0,) * 4,
            ...                           flexible=True),
            ...     tile_size=(128, 128), classes=("water", "marsh", "land"),
            ...     task=TaskSpec(task="segmentation", head="segmentation", num_outputs=3))
            >>> model = Model.from_module(net, card)
            >>> model
            Model(channelvit_test, segmentation, 4 bands, 3 classes)
            >>> out = model.predict("datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif")
            >>> out.shape, out.rio.crs.to_epsg(), out.rio.transform() == Affine(
            ...     10.0, 0.0, 442730.0, 0.0, -10.0, 4174460.0)
            ((256, 256), 32618, True)
            >>> sorted(set(out.values.ravel().tolist())) <= [0, 1, 2]
            True
        """
        return cls(Predictor(module, card, name))

    @property
    def task(self) -> str | None:
        return self.predictor.task

    @property
    def bands(self) -> list[str]:
        return list(self.predictor.bands)

    @property
    def classes(self) -> list[str]:
        return list(self.predictor.classes)

    @property
    def class_colors(self) -> list[str]:
        return list(self.predictor.class_colors)

    @property
    def tile_size(self) -> tuple[int, int]:
        return self.predictor.tile_size

    @property
    def gsd_m(self) -> float | None:
        return self.predictor.gsd_m

    @property
    def card(self) -> ModelCard:
        """The model card: band contract, task, classes, geometry and provenance."""
        return self.predictor.card

    def to(self, device: str) -> Model:
        """Move to ``device`` (``"cpu"``, ``"cuda"``) and return ``self``."""
        self.predictor.to(device)
        return self

    def __repr__(self) -> str:
        kind = self.task or ("align" if self.predictor.has_text else "encoder")
        return (f"Model({self.predictor.model_name}, {kind}, {len(self.bands)} bands"
                + (f", {len(self.classes)} classes)" if self.classes else ")"))

    def predict(self, x: str | Path | xr.DataArray, *, bands: str | Sequence[str] | None = None,
                probabilities: bool = False, tile: int | Sequence[int] | None = None,
                overlap: int | None = None, batch_size: int = 8,
                progress: bool = False, strict: bool = False) -> xr.DataArray:
        """Predict over a raster or DataArray, tile by tile with blended overlaps.

        Args:
            x: A raster path or a ``(band, y, x)`` DataArray with CRS and transform.
            bands: Names of the input bands in order, when ``x`` does not carry them.
            probabilities: Return per-class probabilities instead of the class map
                (segmentation, classification).
            tile: Tile size (default: the training chip size).
            overlap: Pixels shared by neighbouring tiles (default: a quarter tile).
            batch_size: Tiles per model call.
            progress: Show a progress bar.
            strict: Refuse an input at another resolution or processing level than the
                model's (otherwise a :class:`~geofm.errors.GeofmWarning`, as on the command
                line).

        Returns:
            Segmentation/classification: class indices ``(y, x)`` (uint8, nodata 255) named
            ``"class"``, with ``attrs["classes"]`` and ``attrs["class_colors"]``; with
            ``probabilities=True``, float32 ``(band, y, x)`` with one band per class. Multi-label:
            float32 scores ``(band, y, x)``. Regression: float32 ``(band, y, x)``. Invalid
            input pixels are nodata (255 or NaN). Scene tasks return one value per tile, on a
            grid whose pixels are tiles.

        Raises:
            GeofmError: Missing bands, no task head (use :meth:`embed`), unreadable input.

        Example:
            >>> import geofm, rioxarray
            >>> model = geofm.load("runs/finetune/finetune.safetensors")  # doctest: +SKIP
            >>> da = rioxarray.open_rasterio(
            ...     "datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif", chunks={"x": 128})
            >>> classes = model.predict(da)  # doctest: +SKIP
            >>> [model.classes[i] for i in np.unique(classes) if i != 255]  # doctest: +SKIP
            ['Arable land', 'Coastal wetlands', 'Marine waters']
        """
        return self._run(x, bands=bands, embed=False, probabilities=probabilities, tile=tile,
                         overlap=overlap, batch_size=batch_size, progress=progress,
                         strict=strict)

    def embed(self, x: str | Path | xr.DataArray, *, bands: str | Sequence[str] | None = None,
              tile: int | Sequence[int] | None = None, overlap: int | None = None,
              batch_size: int = 8, progress: bool = False,
              strict: bool = False) -> xr.DataArray:
        """Patch embeddings of the encoder: one ``D``-vector per ``patch × patch`` pixels.

        Args:
            x: A raster path or a ``(band, y, x)`` DataArray with CRS and transform.
            bands: Names of the input bands in order, when ``x`` does not carry them.
            tile: Tile size (a multiple of the patch size).
            overlap: Pixels shared by neighbouring tiles (a multiple of the patch size).
            batch_size: Tiles per model call.
            progress: Show a progress bar.
            strict: Refuse an input at another resolution or processing level than the
                model's (otherwise a :class:`~geofm.errors.GeofmWarning`).

        Returns:
            float32 ``(band, y, x)`` with ``D`` bands on the patch grid (its transform is the
            input's scaled by the patch size); NaN where the input was all nodata.

        Example:
            >>> import geofm
            >>> encoder = geofm.load("runs/pretrain/pretrain.safetensors")  # doctest: +SKIP
            >>> emb = encoder.embed("datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif")
            ...     # doctest: +SKIP
            >>> features = emb.stack(pixel=("y", "x")).T.values  # [pixels, D]  # doctest: +SKIP
        """
        return self._run(x, bands=bands, embed=True, probabilities=False, tile=tile,
                         overlap=overlap, batch_size=batch_size, progress=progress,
                         strict=strict)

    def encode_text(self, texts: str | Sequence[str]) -> np.ndarray:
        """Embed texts in the image–text space (aligned models).

        Args:
            texts: One text, or several.

        Returns:
            float32 L2-normalised ``[E]`` for one text, ``[T, E]`` for a sequence; the dot
            product with :meth:`encode_image`'s output is the cosine similarity.

        Raises:
            GeofmError: An empty or blank text, or a model without a text tower.

        Example:
            >>> clip = geofm.load("runs/align/align.safetensors")  # doctest: +SKIP
            >>> clip.encode_text(["salt marsh", "forest"]).shape  # doctest: +SKIP
            (2, 256)
        """
        emb = self.predictor.encode_text(query_texts(texts)).cpu().numpy()  # [T, E]
        return emb[0] if isinstance(texts, str) else emb

    def encode_image(self, x: str | Path | xr.DataArray | np.ndarray | torch.Tensor, *,
                     bands: str | Sequence[str] | None = None,
                     batch_size: int = 32, strict: bool = False) -> np.ndarray:
        """Embed whole images in the image–text space (aligned models).

        Each image is normalised with the checkpoint's statistics (its bands matched by name),
        encoded whole and mean-pooled: pass chip-sized images (a raster is read into memory).
        Nodata and NaN pixels are set to the band mean, and sides that are not a multiple of
        the patch size are padded with it, as prediction does at raster edges.

        Args:
            x: A raster path or a ``(band, y, x)`` DataArray (one image), or an array of raw
                values ``[C, H, W]`` (one image) or ``[B, C, H, W]`` (numpy or torch).
            bands: Names of the bands in order (required for arrays).
            batch_size: Images per model call.
            strict: Refuse a raster or DataArray at another resolution or processing level
                than the model's (otherwise a :class:`~geofm.errors.GeofmWarning`).

        Returns:
            float32 L2-normalised ``[E]`` for one image, ``[B, E]`` for a batch.

        Raises:
            GeofmError: A model without a text tower, unnamed or missing bands, or an image
                whose every pixel is nodata.

        Example:
            >>> chip = clip.encode_image("datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif")
            ...     # doctest: +SKIP
            >>> float(chip @ clip.encode_text("salt marsh"))  # doctest: +SKIP
            0.23
        """
        pred = self.predictor
        pred.require_text()
        if isinstance(x, str | Path | xr.DataArray | xr.Dataset):
            with open_input(x, bands=bands, gsd_m=self.gsd_m) as source:
                plan = plan_input(pred, source, strict=strict)
                window = Window(0, 0, source.width, source.height)
                raw = source.read(plan.sources, window)[None]  # [1, C, H, W]
                bad = source.invalid(raw[0], plan.sources, window)[None]  # [1, H, W]
            single = True
        else:
            raw, single = _image_batch(x)  # [B, C, H, W]
            if bands is None:
                raise GeofmError(f"the array's {raw.shape[1]} bands have no names",
                                 hint="name them in order with bands=, e.g. "
                                 "bands=['B02', 'B03', 'B04', 'B08']")
            plan = plan_bands(pred, band_labels(bands, raw.shape[1]), source="array")
            raw = raw[:, plan.sources]  # [B, C', H, W]
            bad = np.isnan(raw).any(axis=1)  # [B, H, W]
        if bad.reshape(len(bad), -1).all(axis=1).any():
            raise GeofmError("every pixel of an image is nodata", hint="check the nodata "
                             "value and the bands")
        norm = (raw - plan.mean[:, None, None]) / plan.std[:, None, None]
        images = np.where(bad[:, None], np.float32(0), norm).astype(np.float32)
        p = pred.patch_size
        pad = ((0, 0), (0, 0), (0, -images.shape[2] % p), (0, -images.shape[3] % p))
        images = np.pad(images, pad)  # [B, C', H', W'], sides multiples of p
        out = [pred.encode_image(torch.from_numpy(images[i:i + batch_size]), plan.bands)
               for i in range(0, len(images), max(1, batch_size))]
        emb = torch.cat(out).cpu().numpy()  # [B, E]
        return emb[0] if single else emb

    def query(self, x: str | Path | xr.DataArray, text: str | Sequence[str], *,
              bands: str | Sequence[str] | None = None, tile: int | Sequence[int] | None = None,
              overlap: int | None = None, batch_size: int = 8,
              progress: bool = False, strict: bool = False) -> xr.DataArray:
        """Where a raster looks like ``text``: the cosine similarity of every patch with it.

        Tiles are encoded with the image tower (one projected embedding per patch), compared
        with the text's embedding, and blended across overlapping tiles, as :meth:`embed`
        does; :meth:`query_raster` writes the same map to a Cloud-Optimized GeoTIFF.

        Args:
            x: A raster path or a ``(band, y, x)`` DataArray with CRS and transform.
            text: The query (``"flooded fields"``), or several.
            bands: Names of the input bands in order, when ``x`` does not carry them.
            tile: Tile size (a multiple of the patch size).
            overlap: Pixels shared by neighbouring tiles (a multiple of the patch size).
            batch_size: Tiles per model call.
            progress: Show a progress bar.
            strict: Refuse an input at another resolution or processing level than the
                model's (otherwise a :class:`~geofm.errors.GeofmWarning`).

        Returns:
            float32 similarity in ``[-1, 1]`` on the patch grid (the input's CRS, its
            transform with pixels ``patch`` times larger), NaN where the input was nodata:
            ``(y, x)`` named ``"similarity"`` with ``long_name`` = the text for one text,
            ``(band, y, x)`` with the texts as ``band`` coordinates for several.

        Raises:
            GeofmError: An empty or blank text, a model without a text tower (pretrained or
                finetuned), missing bands, unreadable input.

        Example:
            >>> clip = geofm.load("runs/align/align.safetensors")  # doctest: +SKIP
            >>> marsh = clip.query("datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif",
            ...                    "salt marsh")  # doctest: +SKIP
            >>> marsh.dims, marsh.rio.resolution()  # doctest: +SKIP
            (('y', 'x'), (80.0, -80.0))
        """
        texts = query_texts(text)
        da = self._run(x, bands=bands, embed=False, probabilities=False, tile=tile,
                       overlap=overlap, batch_size=batch_size, progress=progress, texts=texts,
                       strict=strict)
        if isinstance(text, str):
            da = da.isel(band=0, drop=True)
            da.attrs["long_name"] = texts[0]
        return da

    def query_raster(self, inputs: str | Path | Sequence[str | Path], text: str | Sequence[str],
                     output: str | Path, **kwargs: Any) -> dict[str, Any]:
        """Write :meth:`query`'s map to a Cloud-Optimized GeoTIFF with a QGIS colour ramp;
        see :func:`geofm.predict.query_raster` for the options and files."""
        kwargs.setdefault("device", str(self.predictor.device))
        return query_raster(self.predictor, inputs, text, output, **kwargs)

    def predict_raster(self, inputs: str | Path | Sequence[str | Path], output: str | Path,
                       **kwargs: Any) -> dict[str, Any]:
        """Write a Cloud-Optimized GeoTIFF with this model; see
        :func:`geofm.predict.predict_raster` for the options and files.

        Example:
            >>> model.predict_raster("scene.tif", "landcover.tif", vector="landcover.gpkg")
            ...     # doctest: +SKIP
        """
        kwargs.setdefault("device", str(self.predictor.device))
        return predict_raster(self.predictor, inputs, output, **kwargs)

    def _run(self, x: str | Path | xr.DataArray, *, bands: str | Sequence[str] | None,
             embed: bool, probabilities: bool, tile: int | Sequence[int] | None,
             overlap: int | None, batch_size: int, progress: bool,
             texts: list[str] | None = None, strict: bool = False) -> xr.DataArray:
        """The pipeline of :func:`~geofm.predict.predict_raster` into an in-memory sink."""
        pred = self.predictor
        job = plan_job(pred, embed=embed, query=texts is not None, batch_size=batch_size)
        if texts is not None:
            pred = pred.with_texts(texts)
        as_classes = job.product == "classes" and not probabilities
        with open_input(x, bands=bands, gsd_m=self.gsd_m) as source:
            layout = lay_out(pred, job, source, tile=tile, overlap=overlap, strict=strict)
            nodata = class_dtype(layout.channels)[1]
            sink = ArraySink(layout.channels, layout.grid.out_shape, as_classes, nodata)
            run_job(pred, job, layout, source, sink, batch_size=batch_size, progress=progress)
            transform = layout.grid.out_transform(source.transform)
            return self._to_dataarray(sink.array, transform, source.crs, layout, as_classes,
                                      nodata, job.task)

    def _to_dataarray(self, array: np.ndarray, transform: Affine, crs: CRS | None,
                      layout: Layout, as_classes: bool, nodata: int,
                      task: str | None) -> xr.DataArray:
        names, plan = layout.names, layout.plan
        height, width = array.shape[-2:]
        xs = transform.c + transform.a * (np.arange(width) + 0.5)
        ys = transform.f + transform.e * (np.arange(height) + 0.5)
        attrs = {"geofm_model": self.predictor.model_name,
                 "geofm_task": task,
                 "geofm_bands": json.dumps(plan.mapping())}
        if as_classes:
            da = xr.DataArray(array, dims=("y", "x"), coords={"y": ys, "x": xs}, name="class",
                              attrs={**attrs, "long_name": "class", "classes": self.classes,
                                     "class_colors": self.class_colors})
        else:
            da = xr.DataArray(array, dims=("band", "y", "x"),
                              coords={"band": names, "y": ys, "x": xs},
                              name=task, attrs=attrs)
        da = da.rio.write_transform(transform)
        if crs is not None:
            da = da.rio.write_crs(crs)
        out: xr.DataArray = da.rio.write_nodata(nodata if as_classes else np.nan, encoded=False)
        return out
