"""What an export takes and says: its tile size and bands, and the metadata written into the
file (Deepness's keys for a finetuned model, geofm's own for every graph; the keys are listed
in :mod:`geofm.export`).

Deepness's model types (``Segmentor``, ``Regressor``, ``Detector``, ``Recognition``) all map a
tile to per-pixel classes, values, boxes or an RGB ImageNet-normalised feature vector; none
consumes a multispectral ``[N, D, T/p, T/p]`` embedding grid, so an encoder's graph carries
no ``model_type`` and is meant for onnxruntime and other runtimes.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from geofm.card import ModelCard
from geofm.errors import GeofmError
from geofm.export.graph import EMBED_OUTPUT_NAME
from geofm.models.finetuner import SCENE_TASKS

if TYPE_CHECKING:
    from geofm.predict.band_plan import BandPlan

PIXEL_OVERLAP_PERCENT = 25
SEGMENTOR_TASKS = ("segmentation", "classification")


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


def _input_bands(card: ModelCard, plan: BandPlan | None
                 ) -> tuple[list[str], dict[str, str], list[float], list[float], list[str]]:
    """The input side of an export: band names of the inputs in order, the input feeding each
    model band, the normalisation per model band, and the model bands the inputs lack."""
    if plan is not None:
        return (input_band_names(plan), plan.mapping(), [float(v) for v in plan.mean],
                [float(v) for v in plan.std], list(plan.missing))
    bands = list(card.bands)
    mean, std = (v.tolist() for v in card.contract.normalization(bands))
    used = {b: f"band {i + 1} ({b})" for i, b in enumerate(bands)}
    return bands, used, mean, std, []


def _geofm_keys(card: ModelCard, tile: int, checkpoint: str, output: str,
                plan: BandPlan | None) -> dict[str, Any]:
    """The metadata every export carries: its input bands and normalisation, the model, where
    it came from, the tile and its ground size."""
    from geofm._version import __version__

    bands, used, mean, std, missing = _input_bands(card, plan)
    meta: dict[str, Any] = {"tile_size": tile}
    if card.gsd_m:
        meta["resolution"] = float(card.gsd_m) * 100.0
    meta.update(geofm_output=output, geofm_bands=bands, geofm_bands_used=used,
                geofm_version=__version__, geofm_model=card.architecture.name,
                geofm_normalization={"mean": mean, "std": std}, geofm_checkpoint=checkpoint)
    if missing:
        meta["geofm_bands_missing"] = missing
    release = card.provenance.release
    if release:
        meta["geofm_release"] = {k: release[k] for k in RELEASE_KEYS if release.get(k)}
    return meta


RELEASE_KEYS = ("name", "title", "licence", "source", "weights_url")
"""What ``geofm_release`` records of a published encoder's release (from its card)."""


def deepness_metadata(card: ModelCard, tile: int, checkpoint: str = "",
                      plan: BandPlan | None = None) -> dict[str, str]:
    """The ONNX metadata of a finetuned model's export: Deepness's keys and geofm's own,
    values as JSON.

    Args:
        card: The card of a finetuned model.
        tile: Tile size of the exported input.
        checkpoint: Name of the checkpoint file, recorded as ``geofm_checkpoint``.
        plan: The raster bands the export takes (``bands=``), matched to the model's; default
            the checkpoint's bands in order.

    Returns:
        ``{key: json_text}`` (see :mod:`geofm.export` for the keys).
    """
    from geofm.export.graph import OUTPUT_NAME

    assert card.task is not None  # the caller checked the card is a finetuned model's
    task = card.task.task
    num_outputs = card.task.num_outputs
    names = list(card.classes)
    if len(names) != num_outputs:
        names = [f"{'target' if task == 'regression' else 'class'}_{i}"
                 for i in range(num_outputs)]
    ours = _geofm_keys(card, tile, checkpoint, OUTPUT_NAME, plan)
    channels = len(ours["geofm_bands"])
    meta: dict[str, Any] = {
        "model_type": "Segmentor" if task in SEGMENTOR_TASKS else "Regressor",
        "class_names": {str(i): name for i, name in enumerate(names)},
        "tiles_size": tile,
        "tiles_overlap": 0 if task in SCENE_TASKS else PIXEL_OVERLAP_PERCENT,
        "standardization_mean": [0.0] * channels,
        "standardization_std": [1.0 / 255.0] * channels,
    }
    if meta["model_type"] == "Segmentor":
        meta.update(seg_thresh=0.0, seg_small_segment=0)
    else:
        meta["reg_output_scaling"] = 1.0
    meta.update(ours, geofm_task=task)
    if card.class_colors:
        meta["geofm_class_colors"] = list(card.class_colors)
    return {k: json.dumps(v) for k, v in meta.items()}


def embedding_metadata(card: ModelCard, tile: int, patch: int, embed_dim: int,
                       checkpoint: str = "", plan: BandPlan | None = None) -> dict[str, str]:
    """The ONNX metadata of an encoder's export (embeddings): geofm's keys only, no Deepness
    ``model_type`` (no Deepness model type reads an embedding grid), values as JSON.

    Args:
        card: The encoder's card (a geofm checkpoint's or a published release's).
        tile: Tile size ``T`` of the exported input.
        patch: Side in pixels of one embedding cell: the output is ``[N, D, T/patch,
            T/patch]``.
        embed_dim: ``D``.
        checkpoint: Name of the checkpoint or release file, recorded as ``geofm_checkpoint``.
        plan: The raster bands the export takes (``bands=``), matched to the model's; default
            the card's bands in order.

    Returns:
        ``{key: json_text}`` (see :mod:`geofm.export` for the keys).
    """
    meta = _geofm_keys(card, tile, checkpoint, EMBED_OUTPUT_NAME, plan)
    meta.update(geofm_patch_size=int(patch), geofm_embed_dim=int(embed_dim),
                geofm_kind=card.kind)
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
    ``"s2"``) to a model's bands (``model`` a finetuned model or an encoder), as ``geofm
    predict --bands`` does.

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
