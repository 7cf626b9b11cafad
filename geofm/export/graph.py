"""The export's graphs: a model as one function of raw pixel values, traced to ONNX by torch's
dynamo exporter, lowered to an older opset, and checked against torch with onnxruntime.

Two functions of raw pixels ``image [N, C, T, T]`` are exported: :class:`ExportModule` (a
finetuned model → ``scores``) and :class:`EmbedModule` (any encoder → ``embeddings``, its
patch-feature grid). Both normalise inside the graph (:class:`RawPixels`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from geofm.errors import GeofmError
from geofm.extras import require
from geofm.models.encoder import FeatureEncoder
from geofm.models.finetuner import task_scores

INPUT_NAME = "image"
OUTPUT_NAME = "scores"
"""Output of a finetuned model's graph."""
EMBED_OUTPUT_NAME = "embeddings"
"""Output of an encoder's graph."""
MIN_OPSET = 17
"""Oldest supported ONNX opset (``LayerNormalization`` arrived in opset 17)."""
EXPORT_OPSET = 18
"""Opset torch's exporter writes natively; older targets are converted from it."""
VERIFY_TOLERANCE = 1e-3
"""Largest difference between onnxruntime and torch accepted by the export's own check."""
MAX_PROTO_BYTES = 2**31
"""Protobuf's size limit for one serialised ONNX model."""


class RawPixels(nn.Module):
    """The input side of an exported graph: raw pixel values, the model's channels picked
    among them and normalised with fixed statistics.

    Args:
        bands: The band names of the model's channels, in order (fixed for the export).
        mean: Normalisation mean per band.
        std: Normalisation standard deviation per band.
        select: Input channel feeding each of ``bands`` (default: channel ``i`` feeds band
            ``i``); the other input channels are ignored.
    """

    pixel_mean: Tensor
    pixel_std: Tensor

    def __init__(self, bands: Sequence[str], mean: Sequence[float], std: Sequence[float],
                 select: Sequence[int] | None = None) -> None:
        super().__init__()
        self.bands = list(bands)
        self.select = None if select is None else [int(i) for i in select]
        c = len(self.bands)
        # named apart from the model's own values: the exporter names initializers after
        # buffers and folded results alike ("mean" clashes with a folded torch.mean)
        self.register_buffer("pixel_mean",
                             torch.tensor(mean, dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("pixel_std",
                             torch.tensor(std, dtype=torch.float32).view(1, c, 1, 1))

    def normalized(self, image: Tensor) -> Tensor:
        """``[N, C, H, W]`` raw values → ``[N, C_model, H, W]`` the model's normalised input."""
        if self.select is not None and self.select != list(range(image.shape[1])):
            image = image[:, self.select]  # [N, C_model, H, W]
        return (image - self.pixel_mean) / self.pixel_std


class ExportModule(RawPixels):
    """A finetuned model as one tensor-in, tensor-out function of raw pixel values.

    Args:
        model: A finetuned model, ``model(images, bands)`` → logits ``[B, K]`` or
            ``[B, K, H, W]``.
        bands: The band names of the model's channels, in order (fixed for the export).
        mean: Normalisation mean per band.
        std: Normalisation standard deviation per band.
        task: The finetuned task (decides the final activation).
        tile: Tile size ``(H, W)``; scene scores are repeated over it.
        select: Input channel feeding each of ``bands`` (default: channel ``i`` feeds band
            ``i``); the other input channels are ignored.
    """

    def __init__(self, model: nn.Module, bands: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], task: str, tile: tuple[int, int],
                 select: Sequence[int] | None = None) -> None:
        super().__init__(bands, mean, std, select)
        self.model = model
        self.task = task
        self.tile = tile

    def forward(self, image: Tensor) -> Tensor:
        """``[N, C, H, W]`` raw values → ``[N, K, H, W]`` scores."""
        logits = self.model(self.normalized(image), self.bands)
        scores = task_scores(self.task, logits)
        if scores.ndim == 2:  # scene task: [N, K] → [N, K, H, W]
            scores = scores[:, :, None, None].expand(-1, -1, *self.tile)
        return scores


class EmbedModule(RawPixels):
    """An encoder as one function of raw pixel values: the patch-feature grid that ``geofm
    predict --embed`` writes.

    Args:
        encoder: An encoder with ``forward_patch_features(images, bands)`` → ``[B, L, D]``.
        bands: The band names of the model's channels, in order (fixed for the export).
        mean: Normalisation mean per band.
        std: Normalisation standard deviation per band.
        patch: The side in pixels of one grid cell (the model's patch, or its stride).
        select: Input channel feeding each of ``bands`` (default: channel ``i`` feeds band
            ``i``); the other input channels are ignored.
    """

    encoder: FeatureEncoder

    def __init__(self, encoder: nn.Module, bands: Sequence[str], mean: Sequence[float],
                 std: Sequence[float], patch: int, select: Sequence[int] | None = None
                 ) -> None:
        super().__init__(bands, mean, std, select)
        self.encoder = cast("FeatureEncoder", encoder)
        self.patch = int(patch)

    def forward(self, image: Tensor) -> Tensor:
        """``[N, C, T, T]`` raw values → ``[N, D, T/p, T/p]`` patch embeddings."""
        from geofm.predict.model import patch_grid

        feats = self.encoder.forward_patch_features(self.normalized(image), self.bands)
        return patch_grid(feats, image.shape[2], image.shape[3], self.patch)  # [N, D, T/p, T/p]


def _trace(module: RawPixels, example: Tensor, output: str = OUTPUT_NAME) -> Any:
    """The ONNX model proto of ``module`` at opset :data:`EXPORT_OPSET`, dynamic batch, its
    input named :data:`INPUT_NAME` and its output ``output``."""
    batch = torch.export.Dim("batch", min=1)
    sink = io.StringIO()
    # torch.export and the ONNX optimiser log guards, fallbacks and skipped folds (and, on a
    # failure, the whole traced graph) and print to stdout and stderr; the failure reaches
    # the caller as one error
    muted = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), \
                contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=EXPORT_OPSET, optimize=True,
                input_names=[INPUT_NAME], output_names=[output], verbose=False,
                dynamic_shapes={"image": {0: batch}})
    finally:
        logging.disable(muted)
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


def _verify(data: bytes, module: RawPixels, mean: np.ndarray, std: np.ndarray,
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
