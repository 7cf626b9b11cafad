"""The model card: one typed contract for every model geofm loads, trained here or published.

A card says what a model is (architecture), what it eats (:class:`BandContract`: bands, units,
normalisation, processing level), what it does (:class:`TaskSpec` for a task head,
:class:`TextSpec` for a text tower), at which geometry (tile, patch, GSD) and where it came from
(:class:`Provenance`). Training returns a card, a checkpoint stores one, and loading, evaluation,
prediction, the kNN probe, alignment and export read its typed fields; nothing outside this
module reads a checkpoint's JSON header.

The band contract decides band matching and normalisation for every consumer, so evaluation on
a chip store and prediction on a raster feed a model the same values for the same band:

>>> c = BandContract(bands=("S2.B04", "S2.B08"), mean=(1000.0, 2500.0), std=(500.0, 800.0))
>>> c.match(["S2.B08", "S2.B04", "S2.B02"])
['S2.B04', 'S2.B08']
>>> mean, std = c.normalization(["S2.B04", "S2.B08"])
>>> mean.tolist(), std.tolist()
([1000.0, 2500.0], [500.0, 800.0])

Header formats. Version 1 (geofm ≤ 0.1) wrote a flat dict (``model``, ``bands``,
``normalization``, ``task``, ``head``, ``align``, ``text``, ``train``/``data``, ...);
:meth:`ModelCard.from_header` reads it, so older checkpoints keep loading. Version 2 (written
now) nests the same facts under ``architecture``, ``contract``, ``task``, ``text`` and
``provenance``, and records whether the encoder is channel-flexible (version 1 did not; it is
inferred from the architecture, the one band-token family then being ChannelViT).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from geofm.bands import get_band, match_by_wavelength
from geofm.errors import BandError, GeofmError

FORMAT = "geofm-checkpoint"
CARD_VERSION = 2
"""Header version this geofm writes; it reads this and every earlier one."""

KINDS = ("pretrain", "finetune", "align", "open_clip", "published")
"""``pretrain``: a self-supervised encoder; ``finetune``: encoder + task head; ``align``: encoder
+ text tower; ``open_clip``: published open_clip / RemoteCLIP weights; ``published``: a
published foundation-model encoder (:mod:`geofm.published`)."""

NATIVE_UNITS = "native"
"""Input units of a model trained by geofm: the values chip stores hold (the band registry's
stored numbers, e.g. Sentinel-2 reflectance × 10,000)."""

DN_UNITS = ("native", "dn")
"""Units that are the stored numbers of the model's own bands."""

DATA_UNITS = ("native", "physical")
"""What an input holds: ``native`` (the product's stored numbers, as chip stores and
distributed rasters hold them) or ``physical`` (already scaled to the band's physical unit:
reflectance 0–1, dB, K)."""

FlexibleFamilies = ("channelvit",)
"""Architecture name prefixes that version-1 headers mark as channel-flexible."""


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _strings(values: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in values or ())


def _frozen(value: Any) -> Any:
    """JSON-like data with lists as tuples (hashable, immutable); dicts stay dicts."""
    if isinstance(value, Mapping):
        return {str(k): _frozen(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _json(value: Any) -> Any:
    """The inverse of :func:`_frozen`, for writing."""
    if isinstance(value, Mapping):
        return {str(k): _json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


# ---------------------------------------------------------------------------------------------
# Band contract


@dataclass(frozen=True)
class BandContract:
    """Which bands a model takes, in which units, and how they are normalised.

    Attributes:
        bands: Registry names in the model's order.
        mean: Normalisation mean per band, in :attr:`input_units`.
        std: Normalisation std per band, in :attr:`input_units`.
        flexible: The encoder takes any subset of :attr:`bands` (one token per band).
        input_units: ``"native"`` / ``"dn"`` (the bands' stored numbers) or a physical unit
            (``"reflectance"``, ``"dB"``, ``"K"``, ...: the stored numbers scaled with the
            registry's scale and offset).
        info: Physical description per band (name, wavelength, bandwidth, GSD, unit, ...).
        processing_levels: Product level per sensor the model was trained on (``{"S2": "L1C"}``).
    """

    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flexible: bool = False
    input_units: str = NATIVE_UNITS
    info: tuple[Mapping[str, Any], ...] = ()
    processing_levels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not (len(self.bands) == len(self.mean) == len(self.std)):
            raise GeofmError(f"band contract has {len(self.bands)} bands but "
                             f"{len(self.mean)} means and {len(self.std)} stds")

    def match(self, available: Sequence[str], source: str | Path | None = None) -> list[str]:
        """The available bands to feed, in the model's order.

        A channel-flexible model takes every model band present (by name, else the available
        bands nearest in wavelength) and needs at least one; any other model needs all of them.

        Raises:
            BandError: Bands are missing (listed in the message).
        """
        avail = list(available)
        direct = [b for b in self.bands if b in avail]
        if len(direct) == len(self.bands):
            return list(self.bands)
        if not self.flexible:
            missing = [b for b in self.bands if b not in avail]
            raise BandError(f"the model needs bands {', '.join(missing)} that the data lacks "
                            f"(data has {', '.join(avail)})", source,
                            "use data with those bands or a channel-flexible model")
        if direct:
            return direct
        by_wl = match_by_wavelength(list(self.bands), avail)
        matched = [v for v in by_wl.values() if v is not None]
        if not matched:
            raise BandError(f"none of the data's bands ({', '.join(avail)}) match the model's "
                            f"({', '.join(self.bands)}) by name or wavelength", source)
        return list(dict.fromkeys(matched))

    def stands_for(self, used: Sequence[str]) -> dict[str, str]:
        """``{data band: model band}`` for bands from :meth:`match` (a wavelength match stands
        for the model band nearest to it)."""
        out = {b: b for b in used if b in self.bands}
        if len(out) < len(used):
            by_wl = match_by_wavelength(list(self.bands), [b for b in used if b not in out])
            for model_band, data_band in by_wl.items():
                if data_band is not None and data_band not in out:
                    out[data_band] = model_band
        return out

    def conversion(self, data_band: str, model_band: str,
                   data_units: str = "native") -> tuple[float, float]:
        """``(a, b)`` with ``model input = a · data value + b``.

        The data value is first brought to the band's physical unit (the registry's scale and
        offset, unless ``data_units`` is ``"physical"``), then to the model's input units: the
        model band's stored numbers for ``native``/``dn`` models, the physical value otherwise.
        Bands whose physical units differ are passed through unchanged.

        >>> BandContract(("S2.B04",), (0.0,), (1.0,)).conversion("L8.B4", "S2.B04")
        (0.275, -2000.0)
        """
        if data_units not in DATA_UNITS:
            raise GeofmError(f"data units must be one of {', '.join(DATA_UNITS)}, "
                             f"got {data_units!r}")
        d, m = get_band(data_band), get_band(model_band)
        if d.unit != m.unit or not d.scale or not m.scale:
            return 1.0, 0.0
        # physical = da · x + db
        da, db = (1.0, 0.0) if data_units == "physical" else (d.scale, d.offset)
        if self.input_units in DN_UNITS:  # model input = (physical − m.offset) / m.scale
            a, b = da / m.scale, (db - m.offset) / m.scale
        else:
            a, b = da, db
        return round(a, 12), round(b, 9)

    def normalization(self, used: Sequence[str], data_units: str = "native"
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Mean and std ``[C]`` that normalise the data bands ``used`` (from :meth:`match`) as
        the model expects, unit conversion folded in: ``(x − mean) / std`` equals the model's
        ``(a·x + b − m) / s``.

        Every consumer (evaluation, the kNN probe, zero-shot, prediction, export) normalises
        with this, so one band is never fed two ways.
        """
        index = {b: i for i, b in enumerate(self.bands)}
        stands = self.stands_for(used)
        mean, std = [], []
        for u in used:
            i = index[stands[u]]
            a, b = self.conversion(u, stands[u], data_units)
            mean.append((self.mean[i] - b) / a)
            std.append(self.std[i] / a)
        return np.asarray(mean, np.float32), np.asarray(std, np.float32)

    def to_dict(self) -> dict[str, Any]:
        """The contract as JSON (header version 2)."""
        return {"names": list(self.bands), "mean": list(self.mean), "std": list(self.std),
                "flexible": self.flexible, "input_units": self.input_units,
                "info": _json(self.info), "processing_levels": dict(self.processing_levels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BandContract:
        """Read :meth:`to_dict`'s output."""
        return cls(bands=_strings(d["names"]), mean=_floats(d["mean"]), std=_floats(d["std"]),
                   flexible=bool(d.get("flexible", False)),
                   input_units=str(d.get("input_units", NATIVE_UNITS)),
                   info=tuple(_frozen(x) for x in d.get("info") or ()),
                   processing_levels={str(k): str(v)
                                      for k, v in (d.get("processing_levels") or {}).items()})


# ---------------------------------------------------------------------------------------------
# Parts of a card


@dataclass(frozen=True)
class Architecture:
    """The registered model name and its constructor arguments (``create_model(name,
    **config)`` rebuilds the module)."""

    name: str
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TaskSpec:
    """A finetuned model's task and head.

    Attributes:
        task: ``"multilabel"``, ``"classification"``, ``"segmentation"`` or ``"regression"``.
        head: Head kind (``"linear"``, ``"attentive"``, ``"segmentation"``, ...).
        num_outputs: Classes or regression targets.
        freeze: How the encoder was trained (``"frozen"``, ``"partial"``, ``"full"``).
        unfreeze_last: Blocks trained with ``freeze="partial"``.
        hcs: Finetuned with Hierarchical Channel Sampling.
        selection: How the saved weights were selected (split, metric, checkpoint).
        val_metrics: Validation metrics of the saved weights.
    """

    task: str
    head: str
    num_outputs: int
    freeze: str = "full"
    unfreeze_last: int = 0
    hcs: bool = False
    selection: Mapping[str, Any] = field(default_factory=dict)
    val_metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TextSpec:
    """An image–text model's text tower and projection.

    Attributes:
        embed_dim: Joint embedding width.
        init_temperature: Initial softmax temperature.
        max_logit_scale: Clamp of the learned logit scale.
        source: Where the text tower comes from (``kind``, ``name``, ``locked``, ...).
        templates: Zero-shot prompt templates recorded at training.
        captions: Provenance of the training captions.
    """

    embed_dim: int
    source: Mapping[str, Any]
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    templates: tuple[str, ...] = ()
    captions: Mapping[str, Any] = field(default_factory=dict)

    @property
    def locked(self) -> bool:
        """Whether the text tower was frozen (its weights are then not in the checkpoint)."""
        return bool(self.source.get("locked", True))


@dataclass(frozen=True)
class Provenance:
    """Where a model came from.

    Attributes:
        data: The training data: one record (``store``, ``split``, ``split_method``,
            ``fingerprint``, ...) or ``{"stores": [records]}`` for several stores.
        training: Training settings and outcome (steps, loss, lr, precision, seed, ...).
        objective: The pretraining objective (``name``, ``config``).
        encoder_source: For a finetuned or aligned model, the checkpoint it started from.
        release: For a published model: ``title``, ``licence``, ``source``, ``weights_url``.
    """

    data: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    objective: Mapping[str, Any] = field(default_factory=dict)
    encoder_source: Mapping[str, Any] = field(default_factory=dict)
    release: Mapping[str, Any] = field(default_factory=dict)

    def data_records(self) -> list[Mapping[str, Any]]:
        """The training store records, one per store."""
        if "stores" in self.data:
            return list(self.data["stores"])
        return [self.data] if self.data else []


# ---------------------------------------------------------------------------------------------
# The card


@dataclass(frozen=True)
class ModelCard:
    """Everything geofm knows about a model besides its weights.

    Attributes:
        kind: One of :data:`KINDS`.
        architecture: What builds the encoder.
        contract: The band contract.
        tile_size: Tile ``(rows, cols)`` the model was trained at (``None``: unknown).
        patch_size: Patch side in pixels (``None``: read from the encoder).
        gsd_m: Ground sampling distance of the training data, metres.
        classes: Class (or regression target) names of the training data.
        class_colors: ``#rrggbb`` per class.
        task: The task head (finetuned models).
        text: The text tower (image–text models).
        provenance: Training data, settings and release.
        geofm_version: The geofm that wrote it.
    """

    kind: str
    architecture: Architecture
    contract: BandContract
    tile_size: tuple[int, int] | None = None
    patch_size: int | None = None
    gsd_m: float | None = None
    classes: tuple[str, ...] = ()
    class_colors: tuple[str, ...] = ()
    task: TaskSpec | None = None
    text: TextSpec | None = None
    provenance: Provenance = field(default_factory=Provenance)
    geofm_version: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise GeofmError(f"unknown model kind {self.kind!r} (known: {', '.join(KINDS)})")

    @property
    def bands(self) -> tuple[str, ...]:
        """The contract's band names."""
        return self.contract.bands

    @property
    def flexible(self) -> bool:
        """Whether the encoder takes any subset of its bands."""
        return self.contract.flexible

    def with_(self, **changes: Any) -> ModelCard:
        """A copy with ``changes`` (a card is immutable)."""
        return replace(self, **changes)

    def require(self, kind: str, path: str | Path | None, hint: str) -> None:
        """Raise a one-line error unless the card is of ``kind``.

        Raises:
            GeofmError: ``"is a pretrain checkpoint, not a finetune one"``.
        """
        if self.kind != kind:
            what = {"finetune": "a finetuned model", "align": "an image–text model"}.get(
                kind, f"a {kind} model")
            raise GeofmError(f"is a {self.kind} checkpoint, not {what}", path, hint)

    # --- header I/O ---------------------------------------------------------------------------

    def to_header(self) -> dict[str, Any]:
        """The card as a version-2 JSON header (without ``format``/``geofm_version``, which
        the checkpoint writer adds)."""
        return {
            "kind": self.kind,
            "architecture": {"name": self.architecture.name,
                             "config": _json(self.architecture.config)},
            "contract": self.contract.to_dict(),
            "tile_size": None if self.tile_size is None else list(self.tile_size),
            "patch_size": self.patch_size,
            "gsd_m": self.gsd_m,
            "classes": list(self.classes),
            "class_colors": list(self.class_colors),
            "task": None if self.task is None else _json(vars(self.task)),
            "text": None if self.text is None else _json(vars(self.text)),
            "provenance": _json(vars(self.provenance)),
        }

    @classmethod
    def from_header(cls, header: Any, path: str | Path | None = None,
                    stored: bool = False) -> ModelCard:
        """Read a checkpoint header of any version this geofm knows.

        Args:
            header: The JSON header (a dict).
            path: The checkpoint, for messages.
            stored: The header comes from a file, so it must name geofm's format (a dict built
                in Python may leave ``format`` out).

        Raises:
            GeofmError: Not a geofm header, a newer version, or a malformed one.
        """
        if not isinstance(header, Mapping) or header.get("format") not in (
                (FORMAT,) if stored else (None, FORMAT)):
            raise GeofmError("is not a geofm checkpoint", path)
        version = int(header.get("format_version", 1) or 1)
        if version > CARD_VERSION:
            raise GeofmError(f"checkpoint format {version} is newer than this geofm reads "
                             f"({CARD_VERSION})", path, "upgrade geofm")
        try:
            card = _from_v2(header) if version >= 2 else _from_v1(header)
        except (KeyError, TypeError, ValueError) as e:
            raise GeofmError(f"the checkpoint's header is malformed ({type(e).__name__}: {e})",
                             path, "the file is damaged; copy it again") from None
        return card


def _from_v2(h: Mapping[str, Any]) -> ModelCard:
    arch, task, text = h["architecture"], h.get("task"), h.get("text")
    size = h.get("tile_size")
    return ModelCard(
        kind=str(h["kind"]),
        architecture=Architecture(str(arch["name"]), dict(arch.get("config") or {})),
        contract=BandContract.from_dict(h["contract"]),
        tile_size=None if not size else (int(size[0]), int(size[-1])),
        patch_size=None if h.get("patch_size") is None else int(h["patch_size"]),
        gsd_m=None if h.get("gsd_m") is None else float(h["gsd_m"]),
        classes=_strings(h.get("classes")),
        class_colors=_strings(h.get("class_colors")),
        task=None if not task else TaskSpec(**{**task, "selection": task.get("selection") or {},
                                               "val_metrics": task.get("val_metrics") or {}}),
        text=None if not text else TextSpec(**{**text, "templates": _strings(
            text.get("templates"))}),
        provenance=Provenance(**{k: v or {} for k, v in (h.get("provenance") or {}).items()}),
        geofm_version=h.get("geofm_version"),
    )


def _from_v1(h: Mapping[str, Any]) -> ModelCard:
    """Version 1: the flat header geofm 0.1 wrote (and ``load_open_clip`` still builds)."""
    kind = str(h.get("kind") or "pretrain")
    model = h.get("model") or {}
    bands = _strings(h["bands"])
    norm = h.get("normalization") or {}
    name = str(model.get("name", ""))
    contract = BandContract(
        bands=bands,
        mean=_floats(norm.get("mean", [0.0] * len(bands))),
        std=_floats(norm.get("std", [1.0] * len(bands))),
        flexible=name.startswith(FlexibleFamilies),
        info=tuple(_frozen(x) for x in h.get("band_info") or ()),
        processing_levels=_v1_levels(h),
    )
    head = h.get("head") or {}
    task = None
    if kind == "finetune":
        task = TaskSpec(task=str(h["task"]), head=str(head["kind"]),
                        num_outputs=int(head["num_outputs"]),
                        freeze=str(head.get("freeze", "full")),
                        unfreeze_last=int(head.get("unfreeze_last") or 0),
                        hcs=bool(head.get("hcs", False)),
                        selection=dict(h.get("selection") or {}),
                        val_metrics=dict(h.get("val_metrics") or {}))
    text = None
    if kind in ("align", "open_clip"):
        settings = h.get("align") or {}
        source = h.get("text") or settings.get("text") or {}
        text = TextSpec(embed_dim=int(settings["embed_dim"]), source=dict(source),
                        init_temperature=float(settings.get("init_temperature", 0.07)),
                        max_logit_scale=float(settings.get("max_logit_scale", 100.0)),
                        templates=_strings(h.get("templates")),
                        captions=dict(h.get("captions") or {}))
    train = dict(h.get("train") or {})
    data = dict(h.get("data") or {})
    if kind == "align" and not data and train:  # align recorded its data under ``train``
        data = {k: train[k] for k in ("store", "split", "split_method", "num_chips",
                                       "fingerprint") if k in train}
    size = h.get("tile_size")
    objective = h.get("objective") or {}
    return ModelCard(
        kind=kind,
        architecture=Architecture(name, dict(model.get("config") or {})),
        contract=contract,
        tile_size=None if not size else (int(size[0]), int(size[-1])),
        patch_size=None if h.get("patch_size") is None else int(h["patch_size"]),
        gsd_m=None if h.get("gsd_m") is None else float(h["gsd_m"]),
        classes=_strings(h.get("classes")),
        class_colors=_strings(h.get("class_colors")),
        task=task,
        text=text,
        provenance=Provenance(data=data, training=train, objective=dict(objective),
                              encoder_source=dict(h.get("encoder_source") or {})),
        geofm_version=h.get("geofm_version"),
    )


def _v1_levels(h: Mapping[str, Any]) -> dict[str, str]:
    """Processing levels of a version-1 header; headers written before levels were recorded
    are recognised by a reBEN training store."""
    from geofm.levels import BUILDER_LEVELS

    levels = h.get("processing_levels")
    if isinstance(levels, Mapping):
        return {str(k): str(v) for k, v in levels.items()}
    for data in (h.get("data"), (h.get("encoder_source") or {}).get("data")):
        records = (data.get("stores") if isinstance(data, Mapping) and "stores" in data
                   else [data])
        for record in records or []:
            if isinstance(record, Mapping) and "reben" in " ".join(
                    str(record.get(k, "")) for k in ("store", "split_method")).lower():
                return dict(BUILDER_LEVELS["reben"])
    return {}
