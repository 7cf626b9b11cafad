"""How users reach a published encoder: by geofm name or torchgeo weight enum, with a weights
file, into an encoder and its :class:`~geofm.card.ModelCard`.

``--init dofa_base --weights dofa_base_patch16_224-a0275954.pth`` names a release in
:data:`~geofm.published.PUBLISHED` and the file it was published as; ``--init
torchgeo:DOFABase16_Weights.DOFA_MAE`` names torchgeo's weight enum member instead, whose URL
torchgeo's weight API gives: the file is looked for in torch hub's cache
(``$TORCH_HOME/hub/checkpoints``, where torchgeo's own loader keeps it) and downloaded there
when online. Either way the file is read by the release's converter without running pickle,
and the card (:func:`card_for`) carries the release's band contract and provenance into every
checkpoint a run writes.

>>> card_for(PUBLISHED["dofa_base"]).contract.input_units  # doctest: +SKIP
'dn'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geofm.bands import get_band
from geofm.card import Architecture, BandContract, ModelCard, Provenance
from geofm.errors import GeofmError
from geofm.published.base import PUBLISHED, PublishedEncoder, PublishedSpec

TORCHGEO_PREFIX = "torchgeo:"
OFFLINE_ENV = "GEOFM_OFFLINE"
"""Set to ``1`` to never download weights (tests and CI set it)."""


def ensure_catalogue() -> None:
    """Import every family so :data:`PUBLISHED` and the model registry know them all."""
    from geofm.published import catalogue  # noqa: F401


def published_specs() -> list[PublishedSpec]:
    """Every supported release, by name."""
    ensure_catalogue()
    return [PUBLISHED[n] for n in sorted(PUBLISHED)]


def is_published_ref(ref: str | Path | None) -> bool:
    """Whether ``ref`` names a release (``dofa_base``) or a torchgeo enum
    (``torchgeo:DOFABase16_Weights.DOFA_MAE``) rather than a checkpoint path."""
    if ref is None:
        return False
    text = str(ref)
    if text.startswith(TORCHGEO_PREFIX):
        return True
    if Path(text).exists() or "/" in text or "." in Path(text).name:
        return False
    ensure_catalogue()
    return text in PUBLISHED


def spec_for(ref: str) -> PublishedSpec:
    """The release ``ref`` names.

    Raises:
        GeofmError: No release of that name, or no release with that torchgeo enum member.
    """
    ensure_catalogue()
    if ref.startswith(TORCHGEO_PREFIX):
        member = ref[len(TORCHGEO_PREFIX):]
        for spec in PUBLISHED.values():
            if spec.torchgeo_weights == member:
                return spec
        known = sorted(s.torchgeo_weights for s in PUBLISHED.values() if s.torchgeo_weights)
        raise GeofmError(f"torchgeo weights {member!r} are not among geofm's published "
                         "encoders", hint=f"use one of {', '.join(known)} ('geofm models')")
    if ref not in PUBLISHED:
        raise GeofmError(f"unknown published model {ref!r}",
                         hint="'geofm models' lists them, or pass a geofm checkpoint path")
    return PUBLISHED[ref]


def card_for(spec: PublishedSpec) -> ModelCard:
    """The model card of a release: its architecture, band contract (bands, units,
    normalisation, processing level, channel flexibility), geometry and provenance."""
    sensors = dict.fromkeys(get_band(b).sensor for b in spec.bands)
    contract = BandContract(
        bands=tuple(spec.bands), mean=tuple(float(v) for v in spec.mean),
        std=tuple(float(v) for v in spec.std), flexible=spec.flexible,
        input_units=spec.input_units,
        info=tuple(get_band(b).to_dict() for b in spec.bands),
        processing_levels={s: spec.processing_level for s in sensors})
    release = {"name": spec.name, "title": spec.title, "licence": spec.licence,
               "source": spec.source, "weights_url": spec.weights_url,
               "weights_file": spec.weights_file, "input_units": spec.input_units,
               "processing_level": spec.processing_level}
    if spec.torchgeo_weights:
        release["torchgeo_weights"] = spec.torchgeo_weights
    return ModelCard(
        kind="published", architecture=Architecture(spec.architecture, dict(spec.config)),
        contract=contract, tile_size=(spec.image_size, spec.image_size),
        patch_size=spec.patch_size, gsd_m=spec.gsd_m or None,
        provenance=Provenance(release=release))


def _offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").lower() in ("1", "true", "yes")


def torchgeo_file(spec: PublishedSpec) -> Path:
    """The release file of a torchgeo enum member, from torch hub's cache or downloaded there.

    The URL comes from torchgeo's weight API (``torchgeo.models.get_weight``); the file goes
    where torchgeo's own loader keeps it, so one download serves both.

    Raises:
        GeofmError: Offline (or the download fails) and the file is not in the cache: one line
            naming the file, its URL and where to put it.
    """
    import torch
    from torchgeo.models import get_weight

    weights: Any = get_weight(str(spec.torchgeo_weights))
    url = str(weights.url)
    path = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if path.is_file():
        return path
    where = f"download {url} and save it as {path}"
    if _offline():
        raise GeofmError(f"weights file {path.name} for {spec.name} is not in the cache and "
                         f"{OFFLINE_ENV} is set", path, where)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(path), progress=False)
    except Exception as e:  # no network, proxy, HTTP error: all end the same way
        path.unlink(missing_ok=True)
        raise GeofmError(f"cannot download {path.name} for {spec.name} "
                         f"({type(e).__name__})", path, where) from None
    return path


def weights_file(spec: PublishedSpec, ref: str, weights: str | Path | None) -> Path:
    """The release file to read: ``weights`` when given, else the torchgeo cache for a
    ``torchgeo:`` reference.

    Raises:
        GeofmError: No file given for a geofm name, or the file is missing (one line naming
            the file, its URL and where to put it).
    """
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise GeofmError(f"weights file {spec.weights_file} for {spec.name} not found",
                             path, f"download {spec.weights_url} and save it as {path}")
        return path
    if ref.startswith(TORCHGEO_PREFIX):
        return torchgeo_file(spec)
    via = (f", or use --init {TORCHGEO_PREFIX}{spec.torchgeo_weights}"
           if spec.torchgeo_weights else "")
    raise GeofmError(f"{spec.name} needs its weights file {spec.weights_file}",
                     hint=f"download {spec.weights_url} and pass --weights PATH "
                          f"(weights=PATH){via}")


def load_published(ref: str, weights: str | Path | None = None
                   ) -> tuple[PublishedEncoder, ModelCard]:
    """A release's encoder (eval mode, every key of the file consumed) and its card.

    Args:
        ref: A name in :data:`PUBLISHED` or ``torchgeo:Enum.MEMBER``.
        weights: The release file (as published); optional for ``torchgeo:`` references.

    Raises:
        GeofmError: Unknown name, missing or foreign file.
    """
    from geofm.published.load import load_release

    spec = spec_for(str(ref))
    path = weights_file(spec, str(ref), weights)
    return load_release(spec, path), card_for(spec)


def refuse_weights_without_release(init: str | Path | None, weights: str | Path | None) -> None:
    """``--weights`` only goes with a published ``--init``.

    Raises:
        GeofmError: ``weights`` given with a geofm checkpoint.
    """
    if weights is not None and not is_published_ref(init):
        raise GeofmError(f"--weights goes with a published model name, not {init}",
                         hint="pass --init NAME --weights FILE ('geofm models' lists the "
                              "names), or a geofm checkpoint as --init alone")


def models_table(specs: Sequence[PublishedSpec] | None = None) -> list[dict[str, str]]:
    """One row per release: name, bands, units, licence, source, how to get the weights and
    what geofm checks (``geofm models`` and the README table)."""
    rows = []
    for s in specs if specs is not None else published_specs():
        bands = ",".join(b.split(".", 1)[-1] for b in s.bands)
        sensors = ",".join(dict.fromkeys(b.split(".", 1)[0] for b in s.bands))
        get = (f"--init {TORCHGEO_PREFIX}{s.torchgeo_weights}" if s.torchgeo_weights
               else f"--weights {s.weights_file}")
        rows.append({"name": s.name, "title": s.title,
                     "bands": f"{sensors} {bands}" + (" (any subset)" if s.flexible else ""),
                     "units": f"{s.input_units} ({s.processing_level})", "licence": s.licence,
                     "source": s.source, "weights": s.weights_url, "get": get,
                     "checks": s.notes})
    return rows


def refuse_headless(ref: str | Path, command: str, *, encoder_use: str = "") -> None:
    """Commands that need a task head (``eval`` without ``--knn``, ``export`` without
    ``--embed``) refuse a published encoder in one line; with ``encoder_use`` (the option that
    runs the command on an encoder alone: ``"--knn"``, ``"--embed"``), ``ref`` was named as an
    encoder (``--init``) and is refused whatever it is.

    Raises:
        GeofmError: ``ref`` names a published encoder, or ``encoder_use`` is given.
    """
    published = is_published_ref(ref)
    if not (published or encoder_use):
        return
    verb = command.split()[0]
    alone = f", or add {encoder_use} to use the encoder alone" if encoder_use else ""
    if published:
        raise GeofmError(f"{command} needs a model with a task head, and {ref} is a published "
                         "encoder without one", hint=f"finetune it first (geofm finetune "
                         f"--init {ref} --weights FILE) and {verb} that checkpoint{alone}")
    raise GeofmError(f"{command} needs a model with a task head, and --init names an encoder "
                     f"({ref})", hint=f"give a finetuned checkpoint as MODEL, or finetune it "
                     f"first (geofm finetune --init {ref}) and {verb} that checkpoint{alone}")


README_BEGIN = "<!-- published-models: begin (geofm.published.resolve.markdown_table) -->"
README_END = "<!-- published-models: end -->"


def markdown_table(specs: Sequence[PublishedSpec] | None = None) -> str:
    """The README's table of supported published models, from :data:`PUBLISHED`."""
    lines = ["| model | source | bands | input units (level) | licence | weights | "
             "geofm checks |", "|---|---|---|---|---|---|---|"]
    for r in models_table(specs):
        source = f"{r['title']}: {r['source']}"
        get = f"`{r['get']}`, or [the file]({r['weights']})" if r["get"].startswith(
            "--init") else f"[{r['get'].removeprefix('--weights ')}]({r['weights']})"
        cells = [f"`{r['name']}`", source, r["bands"], r["units"], r["licence"], get,
                 r["checks"].replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def models_text(verbose: bool = False) -> str:
    """The table ``geofm models`` prints: one line per release (name, bands, units, licence,
    how to get the weights); ``verbose`` adds each one's title, source, URL and checks."""
    rows = models_table()
    cols = ("name", "bands", "units", "licence")
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    lines = ["  ".join(f"{c:<{width[c]}}" for c in cols) + "  weights"]
    for r in rows:
        lines.append("  ".join(f"{r[c]:<{width[c]}}" for c in cols) + f"  {r['get']}")
        if verbose:
            lines.append(f"    {r['title']}; {r['source']}\n    {r['weights']}\n    {r['checks']}")
    lines.append("\nuse one: geofm finetune --init NAME --weights FILE --data STORE "
                 "(geofm models -v: sources and URLs)")
    return "\n".join(lines)
