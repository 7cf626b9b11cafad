"""ONNX export of finetuned geofm models, ready for QGIS's Deepness plugin and onnxruntime.

``geofm export MODEL --onnx OUT.onnx`` writes one self-contained graph::

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

Metadata (``ModelProto.metadata_props``; every value is JSON text, as Deepness parses it):

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
``geofm_checkpoint``        file name of the exported checkpoint
==========================  ======================================================================

Deepness feeds the raster's bands by position: the raster's band ``i`` goes to input channel
``i``. Give the raster its bands in ``geofm_bands`` order (``gdal_translate -b``, a virtual
raster), or export with ``--bands`` naming the raster's bands as they are.

The file has the oldest ONNX IR version of its opset (IR 8 for the default opset 17), so that
onnxruntime 1.13 and newer loads it; Deepness installs onnxruntime 1.17 or older.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from geofm.card import ModelCard
from geofm.checkpoint import read_card
from geofm.errors import GeofmError, first_line
from geofm.extras import require
from geofm.models.finetuner import SCENE_TASKS, task_scores

if TYPE_CHECKING:
    from geofm.predict.band_plan import BandPlan

INPUT_NAME = "image"
OUTPUT_NAME = "scores"
MIN_OPSET = 17
"""Oldest supported ONNX opset (``LayerNormalization`` arrived in opset 17)."""
EXPORT_OPSET = 18
"""Opset torch's exporter writes natively; older targets are converted from it."""
VERIFY_TOLERANCE = 1e-3
"""Largest difference between onnxruntime and torch accepted by the export's own check."""
MAX_PROTO_BYTES = 2**31
"""Protobuf's size limit for one serialised ONNX model."""
PIXEL_OVERLAP_PERCENT = 25
SEGMENTOR_TASKS = ("segmentation", "classification")

log = logging.getLogger(__name__)


class ExportModule(nn.Module):
    """A finetuned model as one tensor-in, tensor-out function of raw pixel values.

    Args:
        model: A finetuned model, ``model(images, bands)`` → logits ``[B, K]`` or
            ``[B, K, H, W]``.
        bands: The band names of the input channels, in order (fixed for the export).
        mean: Normalisation mean per band.
        std: Normalisation standard deviation per band.
        task: The finetuned task (decides the final activation).
        tile: Tile size ``(H, W)``; scene scores are repeated over it.
        select: Input channel feeding each of ``bands`` (default: channel ``i`` feeds band
            ``i``); the other input channels are ignored.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model: nn.Module, bands: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], task: str, tile: tuple[int, int],
                 select: Sequence[int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.bands = list(bands)
        self.task = task
        self.tile = tile
        self.select = None if select is None else [int(i) for i in select]
        c = len(self.bands)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def forward(self, image: Tensor) -> Tensor:
        """``[N, C, H, W]`` raw values → ``[N, K, H, W]`` scores."""
        if self.select is not None and self.select != list(range(image.shape[1])):
            image = image[:, self.select]  # [N, C_model, H, W]
        logits = self.model((image - self.mean) / self.std, self.bands)
        scores = task_scores(self.task, logits)
        if scores.ndim == 2:  # scene task: [N, K] → [N, K, H, W]
            scores = scores[:, :, None, None].expand(-1, -1, *self.tile)
        return scores


def export_tile_size(card: ModelCard, tile_size: int | None = None) -> int:
    """The square tile size of the export.

    Args:
        card: The model's card (tile and patch size).
        tile_size: Requested size; default the checkpoint's training tile (its shorter side)
            rounded to the nearest multiple of the patch size.

    Raises:
        GeofmError: ``tile_size`` is not a positive multiple of the patch size.
    """
    patch = int(card.patch_size or card.architecture.config.get("patch_size", 1))
    if tile_size is None:
        size = card.tile_size or (16 * patch,)
        side = min(int(v) for v in size)
        return max(patch, round(side / patch) * patch)
    if tile_size <= 0 or tile_size % patch:
        nearest = max(patch, round(tile_size / patch) * patch)
        raise GeofmError(f"tile size {tile_size} is not a positive multiple of the model's "
                         f"patch size {patch}", hint=f"use e.g. --tile-size {nearest}")
    return int(tile_size)


def deepness_metadata(card: ModelCard, tile: int, checkpoint: str = "",
                      plan: BandPlan | None = None) -> dict[str, str]:
    """The ONNX metadata of an export: Deepness's keys and geofm's own, values as JSON.

    Args:
        card: The card of a finetuned model.
        tile: Tile size of the exported input.
        checkpoint: Name of the checkpoint file, recorded as ``geofm_checkpoint``.
        plan: The raster bands the export takes (``bands=``), matched to the model's; default
            the checkpoint's bands in order.

    Returns:
        ``{key: json_text}`` (see the module documentation for the keys).
    """
    from geofm._version import __version__

    assert card.task is not None  # the caller checked the card is a finetuned model's
    task = card.task.task
    bands = list(card.bands)
    num_outputs = card.task.num_outputs
    names = list(card.classes)
    if len(names) != num_outputs:
        names = [f"{'target' if task == 'regression' else 'class'}_{i}"
                 for i in range(num_outputs)]
    mean, std = (v.tolist() for v in card.contract.normalization(bands))
    used = {b: f"band {i + 1} ({b})" for i, b in enumerate(bands)}
    missing: list[str] = []
    if plan is not None:
        bands = input_band_names(plan)
        mean, std = [float(v) for v in plan.mean], [float(v) for v in plan.std]
        used = plan.mapping()
        missing = list(plan.missing)
    meta: dict[str, Any] = {
        "model_type": "Segmentor" if task in SEGMENTOR_TASKS else "Regressor",
        "class_names": {str(i): name for i, name in enumerate(names)},
        "tile_size": tile,
        "tiles_size": tile,
        "tiles_overlap": 0 if task in SCENE_TASKS else PIXEL_OVERLAP_PERCENT,
        "standardization_mean": [0.0] * len(bands),
        "standardization_std": [1.0 / 255.0] * len(bands),
    }
    if card.gsd_m:
        meta["resolution"] = float(card.gsd_m) * 100.0
    if meta["model_type"] == "Segmentor":
        meta.update(seg_thresh=0.0, seg_small_segment=0)
    else:
        meta["reg_output_scaling"] = 1.0
    meta.update(
        geofm_bands=bands, geofm_bands_used=used, geofm_version=__version__, geofm_task=task,
        geofm_model=card.architecture.name,
        geofm_normalization={"mean": mean, "std": std}, geofm_checkpoint=checkpoint)
    if missing:
        meta["geofm_bands_missing"] = missing
    if card.class_colors:
        meta["geofm_class_colors"] = list(card.class_colors)
    return {k: json.dumps(v) for k, v in meta.items()}


def input_band_names(plan: BandPlan) -> list[str]:
    """The raster bands of an export in input order: registry names where the label is a known
    band (``S2.B10``), else the label."""
    from geofm.predict.band_plan import canonical_band

    names = []
    for label in plan.labels:
        names.append(canonical_band(label, plan.bands) or label)
    return names


def export_bands(model: nn.Module, card: ModelCard, bands: str | Sequence[str],
                 source: str | Path | None = None) -> BandPlan:
    """Match the raster bands ``bands`` (names in the raster's order, or a set name such as
    ``"s2"``) to a finetuned model's bands, as ``geofm predict --bands`` does.

    Raises:
        BandError: A name is unknown, or a fixed-band model's bands are missing.
    """
    from geofm.bands import is_count, parse_bands
    from geofm.predict.band_plan import band_labels, plan_bands
    from geofm.predict.model import Predictor

    if isinstance(bands, str) and is_count(bands):
        band_labels(bands, 0)  # a count, not names: refused as for predict
    labels = parse_bands(bands) if isinstance(bands, str) else [str(b) for b in bands]
    return plan_bands(Predictor(model, card), labels, source=source)


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an exported ONNX model, values parsed from JSON."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    out: dict[str, Any] = {}
    for prop in proto.metadata_props:
        try:
            out[prop.key] = json.loads(prop.value)
        except ValueError:
            out[prop.key] = prop.value
    return out


def raster_band_order(meta: dict[str, Any]) -> str:
    """The bands the rasters must hold, in order, from an export's metadata
    (:func:`read_metadata`): ``"1 B01 (unused), 2 B02, ..."``, unused = not fed to the model."""
    used = {int(v.split()[1]) for v in meta["geofm_bands_used"].values()}  # "band 3 (B03)"
    return ", ".join(f"{i} {b}" + ("" if i in used else " (unused)")
                     for i, b in enumerate(meta["geofm_bands"], start=1))


def _trace(module: ExportModule, example: Tensor) -> Any:
    """The ONNX model proto of ``module`` at opset :data:`EXPORT_OPSET`, dynamic batch."""
    batch = torch.export.Dim("batch", min=1)
    sink = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=EXPORT_OPSET, optimize=True,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
            dynamic_shapes={"image": {0: batch}})
    if program is None:
        raise GeofmError("the ONNX exporter returned no program",
                         hint="check the torch and onnxscript versions")
    return program.model_proto


def _downgrade(proto: Any, opset: int) -> Any:
    """Convert an opset-18 graph to an older ``opset``.

    ``ReduceMean`` and friends gained the ``noop_with_empty_axes`` attribute in opset 18; the
    converter moves their axes back into an attribute but keeps it, so it is dropped here
    (every reduction of the export names its axes, so the attribute has no effect).
    """
    onnx = require("onnx", "onnx")

    # onnx's converter has no Split adapter from opset 18 (which added ``num_outputs``); opset
    # 13's Split without a ``split`` input splits equally into its outputs, which is what
    # ``num_outputs`` says, so Split nodes sit out the conversion in a private domain and come
    # back without the attribute (the export's onnxruntime check then compares with torch)
    hidden = "geofm.split"
    splits = [n for n in proto.graph.node if n.op_type == "Split" and n.domain in ("", "ai.onnx")]
    for node in splits:
        node.domain = hidden
    if splits:
        proto.opset_import.append(onnx.helper.make_opsetid(hidden, 1))
    converted = onnx.version_converter.convert_version(proto, opset)
    for node in converted.graph.node:
        if node.domain == hidden:
            node.domain = ""
            kept = [a for a in node.attribute if a.name != "num_outputs"]
            del node.attribute[:]
            node.attribute.extend(kept)
    for entry in [o for o in converted.opset_import if o.domain == hidden]:
        converted.opset_import.remove(entry)
    for node in converted.graph.node:
        if node.op_type.startswith("Reduce"):
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return converted


def _verify(data: bytes, module: ExportModule, mean: np.ndarray, std: np.ndarray,
            channels: int, tile: int) -> float:
    """Largest |onnxruntime − torch| on a random raw batch of two tiles."""
    ort = require("onnxruntime", "onnx")

    rng = np.random.default_rng(0)
    raw = (mean[None, :, None, None] + std[None, :, None, None]
           * rng.standard_normal((2, channels, tile, tile))).astype(np.float32)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    got = session.run(None, {INPUT_NAME: raw})[0]
    with torch.inference_mode():
        want = module(torch.from_numpy(raw)).numpy()
    if got.shape != want.shape:
        raise GeofmError(f"the exported graph gives shape {got.shape}, torch {want.shape}")
    return float(np.abs(got - want).max())


def export_onnx(model_path: str | Path, out_path: str | Path, *, tile_size: int | None = None,
                opset: int = 17, overwrite: bool = False, verify: bool = True,
                bands: str | Sequence[str] | None = None) -> Path:
    """Export a finetuned geofm model to ONNX for Deepness (QGIS) and onnxruntime.

    The graph takes raw pixel values ``[N, C, T, T]`` (float32, bands in the checkpoint's
    order, dynamic ``N``) and returns per-class probabilities ``[N, K, T, T]``: softmax for
    segmentation and classification, sigmoid for multi-label, the values themselves for
    regression. Normalisation is baked into the graph; the Deepness metadata
    ``standardization_mean = 0`` and ``standardization_std = 1/255`` cancel the plugin's fixed
    division by 255 so that it feeds raw values too (details and all metadata keys in the
    module documentation).

    The file is written under a hidden temporary name in the output directory, checked with
    ``onnx.checker`` and (``verify``) run once with onnxruntime against torch, then renamed into
    place: ``out_path`` holds either nothing or a complete, checked model.

    Args:
        model_path: A finetuned geofm checkpoint (``*.safetensors``).
        out_path: The ``.onnx`` file to write.
        tile_size: Side of the square input tile in pixels, a multiple of the patch size;
            default the checkpoint's training tile rounded to the patch size.
        opset: ONNX opset, 17 (read by onnxruntime 1.13 and newer) or later.
        overwrite: Replace an existing ``out_path``.
        verify: Compare onnxruntime's output with torch's on a random batch before writing.
        bands: The bands of the rasters the model will be run on, in the rasters' order
            (``"B01,B02,..."``, a set such as ``"s2"``, or a list). The graph then takes
            exactly those bands, by position, as Deepness feeds them: bands the model does not
            use are ignored inside the graph, and a band-token model (ChannelViT) predicts
            without the model bands the rasters lack (a fixed-band model needs them all).
            Default: the checkpoint's bands in its order. Either way the order is written to
            the metadata ``geofm_bands``.

    Returns:
        ``out_path``.

    Raises:
        GeofmError: ``out_path`` exists (without ``overwrite``) or cannot be written, the
            checkpoint is missing or not a finetuned geofm model, a bad tile size or opset,
            ``bands`` that do not fit the model, the model cannot be traced, or the exported
            graph disagrees with torch.

    Example:
        >>> from geofm.export import export_onnx
        >>> export_onnx("runs/finetune/finetune.safetensors", "landcover.onnx")  # doctest: +SKIP
        PosixPath('landcover.onnx')
    """
    onnx = require("onnx", "onnx")
    require("onnxscript", "onnx")  # torch.onnx's exporter builds the graph with it
    if verify:
        require("onnxruntime", "onnx")

    from geofm.io.cog import OutputTransaction, remove_stale_temporaries
    from geofm.io.outputs import check_output, require_suffix
    from geofm.loading import load_finetuned
    from geofm.published.resolve import refuse_headless

    refuse_headless(model_path, "export")
    bands_in = bands
    out = require_suffix(out_path, (".onnx",), "an ONNX model")
    check_output(out, overwrite, [Path(model_path)])
    remove_stale_temporaries(out)
    card = read_card(model_path)
    card.require("finetune", model_path, "finetune it first with 'geofm finetune'")
    newest = onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise GeofmError(f"opset {opset} is not supported; use {MIN_OPSET} to {newest}")
    tile = export_tile_size(card, tile_size)
    model, card = load_finetuned(model_path)
    assert card.task is not None
    task = card.task.task
    bands = list(card.bands)
    # the raster holds the products' stored numbers: the contract converts them to the units
    # the model was trained in (an identity for statistics geofm computed from a store)
    mean, std = card.contract.normalization(bands)
    plan = None
    if bands_in is not None:
        plan = export_bands(model, card, bands_in, source="--bands (bands=)")
        channels = len(plan.labels)
        module = ExportModule(model, plan.bands, plan.mean.tolist(), plan.std.tolist(),
                              task, (tile, tile), select=plan.sources).eval()
        # Typical raw values per input channel (for the trace and the check); unused: 0 ± 1.
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
        mean[plan.sources], std[plan.sources] = plan.mean, plan.std
    else:
        module = ExportModule(model, bands, mean.tolist(), std.tolist(), task,
                              (tile, tile)).eval()
    example = torch.from_numpy(np.broadcast_to(mean[None, :, None, None],
                                               (2, len(mean), tile, tile)).copy())
    try:
        proto = _trace(module, example)
    except GeofmError:
        raise
    except Exception as e:
        raise GeofmError(f"cannot export the model to ONNX ({first_line(e)})",
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
    for key, value in deepness_metadata(card, tile, Path(model_path).name, plan).items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = (f"geofm {task} model {card.architecture.name}: raw "
                        f"{len(mean)}-band tiles {tile}×{tile} → {OUTPUT_NAME}")
    if proto.ByteSize() >= MAX_PROTO_BYTES:
        raise GeofmError(f"the model is too large for a single ONNX file "
                         f"({proto.ByteSize() / 2**30:.1f} GiB, protobuf's limit is 2 GiB)",
                         model_path)
    try:
        onnx.checker.check_model(proto, full_check=True)
        data = proto.SerializeToString()
    except (onnx.checker.ValidationError, ValueError) as e:
        raise GeofmError(f"the exported graph is invalid ({first_line(e)})",
                         model_path) from None
    if verify:
        diff = _verify(data, module, mean, std, len(mean), tile)
        log.info("onnxruntime vs torch: max difference %.2e", diff)
        if not diff <= VERIFY_TOLERANCE:
            raise GeofmError(f"the exported graph disagrees with torch (max difference "
                             f"{diff:.2e} > {VERIFY_TOLERANCE:g})", model_path)
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
