"""What one prediction is, decided once for files and the API alike.

:func:`plan_job` turns a request (predict, embed or query) into a :class:`Job` before any
input is opened; :func:`lay_out` matches the input's bands, checks it against the model's
contract and builds the tile grid (a :class:`Layout`); :func:`run_job` streams the tiles
through the pipeline into a sink and refuses a run in which every input pixel was nodata.
:func:`~geofm.predict.predict_raster` (files) and :class:`geofm.api.Model` (arrays in memory)
differ only in their sink and in what they make of it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from geofm.errors import GeofmError
from geofm.predict.band_plan import BandPlan, plan_bands
from geofm.predict.checks import check_source
from geofm.predict.model import Predictor
from geofm.predict.pipeline import RunStats, run_pipeline
from geofm.predict.settings import MAX_TILE_TOKENS, SCENE_TASKS
from geofm.predict.sinks import Sink
from geofm.predict.sources import Source
from geofm.predict.tiling import TileGrid

log = logging.getLogger(__name__)

MODE_TASKS = {"embed": "embedding", "query": "similarity"}
"""The task reported by the modes that do not run the model's head (pixel and scene modes
report the model's task)."""


@dataclass(frozen=True)
class Job:
    """What a request asks of a model, before any input is read.

    Attributes:
        mode: ``"pixel"``, ``"scene"``, ``"embed"`` or ``"query"`` (see
            :meth:`Predictor.outputs`).
        task: The model's task, ``"embedding"`` or ``"similarity"``.
        product: What the output holds: ``"classes"`` (segmentation, classification),
            ``"scores"`` (multi-label), ``"similarity"`` or ``"values"`` (regression,
            embeddings).
    """

    mode: str
    task: str
    product: str


@dataclass(frozen=True)
class Layout:
    """How an input is fed to the model: its band plan, the tile grid and the output names."""

    plan: BandPlan
    grid: TileGrid
    names: list[str]

    @property
    def channels(self) -> int:
        """Output channels ``K``."""
        return len(self.names)


def plan_job(predictor: Predictor, *, embed: bool = False, query: bool = False,
             batch_size: int = 8) -> Job:
    """The :class:`Job` for a request.

    Raises:
        GeofmError: A request the model cannot serve (see :func:`resolve_mode`), or
            ``batch_size`` below 1.
    """
    mode = resolve_mode(predictor, embed, query)
    if batch_size < 1:
        raise GeofmError(f"batch_size must be at least 1, got {batch_size}")
    task = MODE_TASKS.get(mode, str(predictor.task))
    product = ("classes" if task in ("segmentation", "classification")
               else "scores" if task == "multilabel"
               else "similarity" if task == "similarity" else "values")
    return Job(mode, task, product)


def plan_input(predictor: Predictor, source: Source, *, strict: bool = False) -> BandPlan:
    """Match the input's bands to the model's and check the input against the model's
    resolution and processing level (a warning, or with ``strict`` an error; see
    :func:`~geofm.predict.checks.check_source`)."""
    plan = plan_bands(predictor, source.labels, source=source.name, sensor=source.sensor)
    check_source(predictor, source, plan, strict=strict)
    log.info("%s", plan.summary())
    return plan


def lay_out(predictor: Predictor, job: Job, source: Source, *,
            tile: int | Sequence[int] | None = None, overlap: int | None = None,
            strict: bool = False) -> Layout:
    """The band plan (:func:`plan_input`), tile grid (:func:`build_grid`) and output names
    of ``job`` on ``source``."""
    plan = plan_input(predictor, source, strict=strict)
    grid = build_grid(predictor, job.mode, source.height, source.width, tile, overlap,
                      len(plan.bands))
    return Layout(plan, grid, output_names(predictor, job.mode))


def run_job(predictors: Predictor | Sequence[Predictor], job: Job, layout: Layout,
            source: Source, sink: Sink, *, batch_size: int = 8,
            progress: bool = False) -> RunStats:
    """Stream ``source`` through the model(s) into ``sink`` (see
    :func:`~geofm.predict.pipeline.run_pipeline`).

    Raises:
        GeofmError: Every input pixel was nodata (nothing was predicted).
    """
    stats = run_pipeline(predictors, source, layout.plan, layout.grid, job.mode, sink,
                         channels=layout.channels, batch_size=batch_size, progress=progress)
    if stats.predicted == 0:
        raise GeofmError("every input pixel is nodata", source.name,
                         "check the nodata value and the bands")
    return stats


def resolve_mode(predictor: Predictor, embed: bool, query: bool = False) -> str:
    """``"query"``, ``"embed"``, ``"pixel"`` or ``"scene"`` for this model and request.

    Raises:
        GeofmError: Both ``embed`` and ``query``, a query to a model without a text tower, or
            a prediction from a model without a task head.
    """
    if query:
        if embed:
            raise GeofmError("embeddings and text queries are separate outputs",
                             hint="ask for one of them")
        predictor.require_text()
        return "query"
    if embed:
        return "embed"
    task = predictor.require_task()
    return "scene" if task in SCENE_TASKS else "pixel"


def build_grid(predictor: Predictor, mode: str, height: int, width: int,
               tile: int | Sequence[int] | None, overlap: int | None,
               channels: int | None = None) -> TileGrid:
    """The tile grid for ``mode`` (tile and overlap checked against the patch size).

    A requested tile larger than the raster is shrunk to the raster (rounded up to the patch
    size, never below the model's own tile), with a warning: one tile then covers the raster.
    A tile is refused when it would make more than :data:`MAX_TILE_TOKENS` tokens.

    Args:
        channels: Input bands fed to the model (band-token models make one token per band and
            patch); default the checkpoint's band count.

    Raises:
        GeofmError: The tile is not a multiple of the patch size, makes too many tokens, or
            the overlap is negative, too large, or (embeddings, queries) not a multiple of
            the patch size.
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
    if tile is not None:
        th, tw = _clamp_tile((th, tw), (height, width), predictor.tile_size, p)
    _check_tokens((th, tw), p, (channels or len(predictor.bands)) if predictor.flexible else 1)
    if overlap is not None and not 0 <= overlap < min(th, tw):
        raise GeofmError(f"overlap {overlap} must be at least 0 and less than the tile "
                         f"({th}×{tw})")
    if mode == "scene":
        return TileGrid.build(height, width, (th, tw), 0, (th, tw))
    patch_grid = mode in ("embed", "query")
    if overlap is None:
        overlap = min(th, tw) // 4
        if patch_grid:
            overlap = overlap // p * p
    if not 0 <= overlap < min(th, tw):
        raise GeofmError(f"overlap {overlap} must be at least 0 and less than the tile "
                         f"({th}×{tw})")
    if patch_grid and overlap % p:
        raise GeofmError(f"overlap {overlap} is not a multiple of the patch size {p}",
                         hint="embeddings and similarities sit on the patch grid")
    factor = (p, p) if patch_grid else (1, 1)
    return TileGrid.build(height, width, (th, tw), overlap, factor)


def _clamp_tile(tile: tuple[int, int], raster: tuple[int, int], model_tile: tuple[int, int],
                patch: int) -> tuple[int, int]:
    """``tile`` shrunk to the raster (rounded up to ``patch``, at least ``model_tile``)."""
    out = tuple(min(t, max(m, -(-r // patch) * patch))
                for t, r, m in zip(tile, raster, model_tile))
    if out != tile:
        log.warning("tile %d×%d is larger than the %d×%d raster; using %d×%d", *tile, *raster,
                    *out)
    return out[0], out[1]


def _check_tokens(tile: tuple[int, int], patch: int, per_patch: int) -> None:
    """Refuse a tile that makes more than :data:`MAX_TILE_TOKENS` tokens."""
    th, tw = tile
    tokens = per_patch * (th // patch) * (tw // patch)
    if tokens <= MAX_TILE_TOKENS:
        return
    side = int((MAX_TILE_TOKENS / per_patch) ** 0.5) * patch  # the largest square tile
    what = f"{per_patch} bands × " if per_patch > 1 else ""
    raise GeofmError(f"tile {th}×{tw} makes {tokens} tokens per tile ({what}"
                     f"{th // patch}×{tw // patch} patches), more than {MAX_TILE_TOKENS}",
                     hint=f"use a tile of at most {max(side, patch)} px")


def output_names(predictor: Predictor, mode: str) -> list[str]:
    """One name per output channel: class or target names, ``embedding_<i>`` for embeddings,
    the texts for queries (``output_<i>`` where the checkpoint names fewer outputs than its head
    has)."""
    if mode == "query":
        return list(predictor.texts)
    if mode == "embed":
        return [f"embedding_{i}" for i in range(predictor.embed_dim)]
    spec = predictor.card.task
    count = int(spec.num_outputs if spec is not None else len(predictor.classes) or 1)
    if len(predictor.classes) == count:
        return list(predictor.classes)
    return [f"output_{i}" for i in range(count)]
