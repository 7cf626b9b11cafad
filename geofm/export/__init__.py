"""ONNX export of geofm models: finetuned models ready for QGIS's Deepness plugin and
onnxruntime, and encoders (embeddings) for onnxruntime and other runtimes.

``geofm export MODEL --onnx OUT.onnx`` writes one self-contained graph of a finetuned model::

    image  [N, C, T, T] float32   raw pixel values, the raster's bands by position
    scores [N, K, T, T] float32   per-class probabilities (or regression values)

``N`` is dynamic; ``C`` is fixed to the band list (metadata ``geofm_bands``): the checkpoint's
bands in order, or with ``--bands`` the bands of the rasters it will run on, in their order
(the graph picks the model's bands among them and ignores the rest), ``T`` to the tile size.
The checkpoint's normalisation ``(x − mean) / std`` is part of the graph, and so is the last
activation: softmax over classes (segmentation, classification), sigmoid
(multi-label), none (regression). Scene models (multi-label, classification) give one score
vector per tile, repeated over the tile's pixels so that every model has the same output
layout. For ChannelViT the band list is fixed at export: the band embeddings are folded into
constants.

Deepness. The plugin reads the raster's bands with their own data type (uint16 reflectance,
float32 backscatter in dB, ...), always multiplies them by ``1/255`` and then standardises with
the metadata ``standardization_mean`` / ``standardization_std``. With the normalisation baked
into the graph, the metadata asks for mean ``0`` and std ``1/255`` on every band, which undoes
the fixed scaling exactly (``(x/255 − 0) / (1/255) = x``): the graph receives raw values in
Deepness just as from any other caller, and the normalisation exists in one place only. The
alternative, graph input normalised and metadata mean/std ``= mean/255``, ``std/255``, would
make the graph unusable on raw images outside Deepness.

Embeddings. ``geofm export --init ENCODER --onnx OUT.onnx`` (or ``geofm export CHECKPOINT
--embed``) writes an encoder's graph instead: any geofm checkpoint's encoder (pretrained,
finetuned, aligned) or a published encoder (``--init NAME --weights FILE``)::

    image      [N, C, T, T]        float32   raw pixel values, normalised inside as above
    embeddings [N, D, T/p, T/p]    float32   the patch features, as ``geofm predict --embed``

It carries geofm's metadata keys but no Deepness ``model_type``: Deepness's model types
(Segmentor, Regressor, Detector, and Recognition, which takes RGB uint8 images normalised
with ImageNet statistics) all read per-pixel classes, values, boxes or an RGB feature vector,
and none can consume a multispectral embedding grid at patch resolution. The embedding graph
is for onnxruntime and other ONNX runtimes.

Metadata (``ModelProto.metadata_props``; every value is JSON text, as Deepness parses it); the
Deepness keys (``model_type`` to ``reg_output_scaling``) and ``geofm_task`` are written for
finetuned models only:

==========================  ======================================================================
``model_type``              ``"Segmentor"`` (segmentation, classification) or ``"Regressor"``
                            (regression, multi-label: one score raster per class)
``class_names``             ``{"0": name, ...}``
``resolution``              ground sampling distance in cm/px (checkpoint ``gsd_m`` × 100)
``tile_size``, ``tiles_size``  the tile size ``T`` (Deepness's code reads the first, its
                            documentation names the second)
``tiles_overlap``           percent of the tile shared by neighbours: 25 for pixel tasks (the
                            overlap ``geofm predict`` uses), 0 for scene tasks
``standardization_mean``    ``[0.0] * C``
``standardization_std``     ``[1/255] * C``
``seg_thresh``              ``0.0`` (Segmentor: plain argmax, as ``geofm predict``)
``seg_small_segment``       ``0`` (Segmentor: no morphological clean-up)
``reg_output_scaling``      ``1.0`` (Regressor)
``geofm_bands``             band names of the ``C`` inputs, in order: raster band ``i`` must
                            be ``geofm_bands[i - 1]``
``geofm_bands_used``        ``{model band: "band i (name)"}``: the input feeding each model band
``geofm_bands_missing``     model bands the ``--bands`` rasters lack (band-token models only)
``geofm_version``           geofm version that exported the model
``geofm_task``              the finetuned task
``geofm_model``             architecture name (``vit_tiny``, ``channelvit_small``, ...)
``geofm_normalization``     ``{"mean": [...], "std": [...]}`` applied inside the graph, per
                            model band of ``geofm_bands_used``
``geofm_class_colors``      ``["#rrggbb", ...]`` per class (when the checkpoint has them)
``geofm_checkpoint``        file name of the exported checkpoint (a published encoder: its
                            release file)
``geofm_output``            ``"scores"`` or ``"embeddings"``: what the graph's output holds
``geofm_release``           a published encoder's release, also after finetuning: ``name``,
                            ``title``, ``licence``, ``source``, ``weights_url``
``geofm_patch_size``        embeddings: pixels per embedding cell ``p``
``geofm_embed_dim``         embeddings: ``D``
``geofm_kind``              embeddings: the card's kind (``pretrain``, ``finetune``, ``align``,
                            ``published``)
==========================  ======================================================================

Deepness feeds the raster's bands by position: the raster's band ``i`` goes to input channel
``i``. Give the raster its bands in ``geofm_bands`` order (``gdal_translate -b``, a virtual
raster), or export with ``--bands`` naming the raster's bands as they are.

The file has the oldest ONNX IR version of its opset (IR 8 for the default opset 17), so that
onnxruntime 1.13 and newer loads it; Deepness installs onnxruntime 1.17 or older.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from geofm.card import ModelCard
from geofm.checkpoint import read_card
from geofm.errors import GeofmError, first_line
from geofm.export.graph import (
    EMBED_OUTPUT_NAME,
    EXPORT_OPSET,
    INPUT_NAME,
    MAX_PROTO_BYTES,
    MIN_OPSET,
    OUTPUT_NAME,
    VERIFY_TOLERANCE,
    EmbedModule,
    ExportModule,
    RawPixels,
    _downgrade,
    _trace,
    _verify,
)
from geofm.export.metadata import (
    PIXEL_OVERLAP_PERCENT,
    SEGMENTOR_TASKS,
    deepness_metadata,
    embedding_metadata,
    export_bands,
    export_tile_size,
    input_band_names,
    raster_band_order,
    read_metadata,
)
from geofm.extras import require

if TYPE_CHECKING:
    from geofm.predict.band_plan import BandPlan

__all__ = [
    "EMBED_OUTPUT_NAME", "EXPORT_OPSET", "INPUT_NAME", "MAX_PROTO_BYTES", "MIN_OPSET",
    "OUTPUT_NAME", "PIXEL_OVERLAP_PERCENT", "SEGMENTOR_TASKS", "VERIFY_TOLERANCE",
    "EmbedModule", "ExportModule", "deepness_metadata", "embedding_metadata", "export_bands",
    "export_onnx", "export_tile_size", "input_band_names", "raster_band_order",
    "read_metadata",
]

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _exporter_reason(err: BaseException) -> str:
    """The exporter's reason for a failed trace, as one clause: torch.onnx wraps the error of
    the step that failed (torch.export, the translation to ONNX) in a message about its steps,
    so the innermost cause says what went wrong."""
    inner = err
    while inner.__cause__ is not None and inner.__cause__ is not inner:
        inner = inner.__cause__
    return _ANSI.sub("", first_line(inner))


class _Graph:
    """What one export traces and records: the module, typical raw values per input channel
    (for the trace and the check), the metadata and a one-line description."""

    def __init__(self, module: RawPixels, mean: np.ndarray, std: np.ndarray, tile: int,
                 output: str, metadata: dict[str, str], doc: str) -> None:
        self.module, self.mean, self.std, self.tile = module, mean, std, tile
        self.output, self.metadata, self.doc = output, metadata, doc


def _raw_statistics(plan: BandPlan | None, mean: np.ndarray, std: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Typical raw values per input channel: the model bands' statistics, and ``0 ± 1`` for
    the inputs a ``bands=`` plan leaves unused."""
    if plan is None:
        return mean, std
    channels = len(plan.labels)
    raw_mean, raw_std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    raw_mean[plan.sources], raw_std[plan.sources] = plan.mean, plan.std
    return raw_mean, raw_std


def _task_graph(model_path: str | Path, card: ModelCard, tile: int,
                bands: str | Sequence[str] | None) -> _Graph:
    """A finetuned model's graph: raw pixels → ``scores``."""
    from geofm.loading import load_finetuned

    model, card = load_finetuned(model_path)
    assert card.task is not None
    task = card.task.task
    model_bands = list(card.bands)
    # the raster holds the products' stored numbers: the contract converts them to the units
    # the model was trained in (an identity for statistics geofm computed from a store)
    mean, std = card.contract.normalization(model_bands)
    plan = None
    if bands is not None:
        plan = export_bands(model, card, bands, source="--bands (bands=)")
        module = ExportModule(model, plan.bands, plan.mean.tolist(), plan.std.tolist(),
                              task, (tile, tile), select=plan.sources).eval()
    else:
        module = ExportModule(model, model_bands, mean.tolist(), std.tolist(), task,
                              (tile, tile)).eval()
    mean, std = _raw_statistics(plan, mean, std)
    return _Graph(module, mean, std, tile, OUTPUT_NAME,
                  deepness_metadata(card, tile, Path(model_path).name, plan),
                  f"geofm {task} model {card.architecture.name}: raw {len(mean)}-band tiles "
                  f"{tile}×{tile} → {OUTPUT_NAME}")


def _embed_graph(model_path: str | Path, weights: str | Path | None,
                 tile_size: int | None, bands: str | Sequence[str] | None) -> _Graph:
    """An encoder's graph: raw pixels → ``embeddings`` (the patch-feature grid)."""
    from geofm.loading import load_encoder

    encoder, card = load_encoder(model_path, weights)
    assert isinstance(encoder, torch.nn.Module)  # every encoder geofm loads is a module
    release = card.provenance.release
    source = (Path(weights).name if weights is not None
              else str(release.get("weights_file", "")) if card.kind == "published"
              else Path(model_path).name)
    return _encoder_graph(encoder, card, tile_size, bands, source)


def _encoder_graph(encoder: torch.nn.Module, card: ModelCard, tile_size: int | None,
                   bands: str | Sequence[str] | None, source: str) -> _Graph:
    """The graph of a loaded encoder and its card (``source``: the file it came from)."""
    from geofm.models.encoder import FeatureEncoder

    tile = export_tile_size(card, tile_size)
    features = cast(FeatureEncoder, encoder)
    model_bands = list(card.bands)
    # the grid of the encoder's own patch features (SatVision's SwinV2 gives a stride-32 grid
    # from its patch-4 embedding): one embedding cell covers tile / rows pixels
    rows, _ = features.grid_size(torch.zeros(1, len(model_bands), tile, tile))
    patch, dim = tile // rows, int(features.embed_dim)
    mean, std = card.contract.normalization(model_bands)
    plan = None
    if bands is not None:
        plan = export_bands(encoder, card, bands, source="--bands (bands=)")
        module = EmbedModule(encoder, plan.bands, plan.mean.tolist(), plan.std.tolist(), patch,
                             select=plan.sources).eval()
    else:
        module = EmbedModule(encoder, model_bands, mean.tolist(), std.tolist(), patch).eval()
    mean, std = _raw_statistics(plan, mean, std)
    side = tile // patch
    return _Graph(module, mean, std, tile, EMBED_OUTPUT_NAME,
                  embedding_metadata(card, tile, patch, dim, source, plan),
                  f"geofm encoder {card.architecture.name}: raw {len(mean)}-band tiles "
                  f"{tile}×{tile} → {EMBED_OUTPUT_NAME} [N, {dim}, {side}, {side}]")


def export_onnx(model_path: str | Path, out_path: str | Path, *, tile_size: int | None = None,
                opset: int = 17, overwrite: bool = False, verify: bool = True,
                bands: str | Sequence[str] | None = None, embed: bool = False,
                weights: str | Path | None = None) -> Path:
    """Export a finetuned geofm model to ONNX for Deepness (QGIS) and onnxruntime, or (``embed``)
    an encoder's embeddings for onnxruntime.

    A finetuned model's graph takes raw pixel values ``[N, C, T, T]`` (float32, bands in the
    checkpoint's order, dynamic ``N``) and returns per-class probabilities ``[N, K, T, T]``:
    softmax for segmentation and classification, sigmoid for multi-label, the values
    themselves for regression. Normalisation is baked into the graph; the Deepness metadata
    ``standardization_mean = 0`` and ``standardization_std = 1/255`` cancel the plugin's fixed
    division by 255 so that it feeds raw values too (details and all metadata keys in the
    module documentation).

    With ``embed`` the graph is the encoder of ``model_path`` (any geofm checkpoint, or a
    published encoder: its name, or ``torchgeo:Enum.MEMBER``, with ``weights``): raw pixels
    ``[N, C, T, T]`` → ``embeddings [N, D, T/p, T/p]``, the patch-feature grid ``geofm predict
    --embed`` writes, normalised inside from the card's band contract. It has no Deepness
    model type: it is for onnxruntime and other runtimes.

    The file is written under a hidden temporary name in the output directory, checked with
    ``onnx.checker`` and (``verify``) run once with onnxruntime against torch, then renamed into
    place: ``out_path`` holds either nothing or a complete, checked model.

    Args:
        model_path: A finetuned geofm checkpoint (``*.safetensors``); with ``embed`` any geofm
            checkpoint, or a published encoder's name (``geofm models``).
        out_path: The ``.onnx`` file to write.
        tile_size: Side of the square input tile in pixels, a multiple of the patch size;
            default the checkpoint's training tile (a release's image size) rounded to the
            patch size.
        opset: ONNX opset, 17 (read by onnxruntime 1.13 and newer) or later.
        overwrite: Replace an existing ``out_path``.
        verify: Compare onnxruntime's output with torch's on a random batch before writing.
        bands: The bands of the rasters the model will be run on, in the rasters' order
            (``"B01,B02,..."``, a set such as ``"s2"``, or a list). The graph then takes
            exactly those bands, by position, as Deepness feeds them: bands the model does not
            use are ignored inside the graph, and a band-token or channel-flexible model
            (ChannelViT, DOFA) runs without the model bands the rasters lack (a fixed-band
            model needs them all). Default: the checkpoint's bands in its order. Either way
            the order is written to the metadata ``geofm_bands``.
        embed: Export the encoder's embeddings instead of a finetuned model's scores.
        weights: A published encoder's release file (with ``embed`` and a published name).

    Returns:
        ``out_path``.

    Raises:
        GeofmError: ``out_path`` exists (without ``overwrite``) or cannot be written, the
            checkpoint is missing or not a finetuned geofm model (without ``embed``), a
            published name without ``embed`` or without its weights, a bad tile size or opset,
            ``bands`` that do not fit the model, the model cannot be traced (one line with the
            exporter's reason), or the exported graph disagrees with torch.

    Example:
        >>> from geofm.export import export_onnx
        >>> export_onnx("runs/finetune/finetune.safetensors", "landcover.onnx")  # doctest: +SKIP
        PosixPath('landcover.onnx')
        >>> export_onnx("dofa_base", "dofa.onnx", embed=True,
        ...             weights="dofa_base_patch16_224-a0275954.pth")  # doctest: +SKIP
        PosixPath('dofa.onnx')
    """
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")  # torch.onnx's exporter builds the graph with it
    if verify:
        require("onnxruntime", "onnx")

    from geofm.io.cog import OutputTransaction, remove_stale_temporaries
    from geofm.io.outputs import check_output, require_suffix
    from geofm.published.resolve import (
        is_published_ref,
        refuse_headless,
        refuse_weights_without_release,
    )

    if not embed:
        refuse_headless(model_path, "export (without --embed)")
    refuse_weights_without_release(model_path, weights)
    out = require_suffix(out_path, (".onnx",), "an ONNX model")
    inputs = ([Path(weights)] if weights is not None
              else [] if is_published_ref(model_path) else [Path(model_path)])
    check_output(out, overwrite, inputs)
    remove_stale_temporaries(out)
    newest = onnx.defs.onnx_opset_version()
    if embed:
        if not MIN_OPSET <= opset <= newest:
            raise GeofmError(f"opset {opset} is not supported; use {MIN_OPSET} to {newest}")
        graph = _embed_graph(model_path, weights, tile_size, bands)
    else:
        card = read_card(model_path)
        card.require("finetune", model_path, "finetune it first with 'geofm finetune', or "
                     "export its encoder's embeddings with --embed (embed=True)")
        if not MIN_OPSET <= opset <= newest:
            raise GeofmError(f"opset {opset} is not supported; use {MIN_OPSET} to {newest}")
        graph = _task_graph(model_path, card, export_tile_size(card, tile_size), bands)
    data = _serialise(graph, model_path, opset, verify)
    with OutputTransaction() as tx:
        tmp = tx.stage(out, ".onnx")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            raise GeofmError(f"cannot write the ONNX model ({first_line(e)})", out,
                             "check the directory is writable and has space") from None
        tx.commit()
    return out


def _serialise(graph: _Graph, model_path: str | Path, opset: int, verify: bool) -> bytes:
    """Trace ``graph`` at ``opset``, attach its metadata, check it (and with ``verify`` run it
    against torch): the bytes of the ``.onnx`` file.

    Raises:
        GeofmError: The model cannot be traced or written at ``opset``, the graph is too large
            or invalid, or it disagrees with torch.
    """
    onnx = require("onnx", "onnx")

    tile, mean = graph.tile, graph.mean
    example = torch.from_numpy(np.broadcast_to(mean[None, :, None, None],
                                               (2, len(mean), tile, tile)).copy())
    try:
        proto = _trace(graph.module, example, graph.output)
    except GeofmError:
        raise
    except Exception as e:
        raise GeofmError(f"cannot export the model to ONNX ({_exporter_reason(e)})",
                         model_path) from None
    try:
        if opset != EXPORT_OPSET:
            proto = _downgrade(proto, opset)
    except Exception as e:  # an op opset 17 cannot express (an antialiased Resize, ...)
        raise GeofmError(f"cannot write the model in ONNX opset {opset} ({first_line(e)})",
                         model_path, f"export with --opset {EXPORT_OPSET} (opset="
                         f"{EXPORT_OPSET}), which onnxruntime ≥ 1.14 and QGIS Deepness read") \
            from None
    # The oldest IR version that has the opset: onnxruntime refuses files whose IR version is
    # newer than it knows (1.17, which QGIS Deepness installs, stops at IR 9), whatever the ops.
    proto.ir_version = onnx.helper.find_min_ir_version_for(list(proto.opset_import), True)
    for node in proto.graph.node:  # the exporter's per-node stack traces and source paths
        del node.metadata_props[:]
    del proto.metadata_props[:]
    for key, value in graph.metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = graph.doc
    if proto.ByteSize() >= MAX_PROTO_BYTES:
        raise GeofmError(f"the model is too large for a single ONNX file "
                         f"({proto.ByteSize() / 2**30:.1f} GiB, protobuf's limit is 2 GiB)",
                         model_path)
    try:
        onnx.checker.check_model(proto, full_check=True)
        data: bytes = proto.SerializeToString()
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, ValueError) as e:
        raise GeofmError(f"the exported graph is invalid ({first_line(e)})",
                         model_path) from None
    if verify:
        diff = _verify(data, graph.module, mean, graph.std, len(mean), tile)
        log.info("onnxruntime vs torch: max difference %.2e", diff)
        if not diff <= VERIFY_TOLERANCE:
            raise GeofmError(f"the exported graph disagrees with torch (max difference "
                             f"{diff:.2e} > {VERIFY_TOLERANCE:g})", model_path)
    return data
