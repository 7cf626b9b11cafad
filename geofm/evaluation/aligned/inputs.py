"""What evaluation and training read: zero-shot templates, captions, chips and embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from geofm.card import BandContract
from geofm.curation.captions import caption_name, caption_store
from geofm.data.dataset import ChipDataset, collate_samples
from geofm.data.transforms import Normalize
from geofm.errors import GeofmError
from geofm.io.store import ChipStore
from geofm.models.align import AlignModel

ZEROSHOT_TEMPLATES: tuple[str, ...] = (
    "a satellite image of {}",
    "an aerial view of {}",
    "a remote sensing image showing {}",
    "a satellite photo of {}",
    "a top-down view of {}",
)
"""Default zero-shot prompts; ``{}`` is replaced by the class name in caption form."""


def load_templates(path: str | Path) -> list[str]:
    """Zero-shot templates from a text file: one per line, each with one ``{}`` placeholder;
    blank lines and lines starting with ``#`` are skipped.

    Raises:
        GeofmError: Missing file, no templates, or a template without exactly one ``{}``.
    """
    p = Path(path)
    if not p.is_file():
        raise GeofmError("templates file not found", p)
    lines = [ln.strip() for ln in p.read_text().splitlines()]
    templates = [ln for ln in lines if ln and not ln.startswith("#")]
    if not templates:
        raise GeofmError("templates file has no templates", p,
                         "write one template per line, e.g. 'a satellite image of {}'")
    check_templates(templates, p)
    return templates


def check_templates(templates: Sequence[str], source: str | Path | None = None) -> list[str]:
    """The templates as a list, after checking each has exactly one ``{}`` placeholder."""
    out = [str(t) for t in templates]
    if not out:
        raise GeofmError("no zero-shot templates given", source)
    for t in out:
        rest = t.replace("{}", "", 1)
        if "{}" not in t or "{" in rest or "}" in rest:
            raise GeofmError(f"template {t!r} must hold exactly one '{{}}' placeholder", source)
    return out


def split_dataset(store: ChipStore, split: str | None, contract: BandContract
                  ) -> ChipDataset:
    """The chips of ``split`` with the model's bands and normalisation (the contract's, as
    prediction uses)."""
    bands = contract.match(store.bands, store.path)
    mean, std = contract.normalization(bands)
    ds = ChipDataset(store, split=split, bands=bands,
                     transforms=Normalize(bands, mean.tolist(), std.tolist()))
    if len(ds) == 0:
        raise GeofmError(f"split {split!r} has no chips", store.path)
    return ds


def store_captions(store: ChipStore) -> list[list[str]] | None:
    """The store's stored captions (one list per chip), or None without a ``captions`` column."""
    if "captions" not in store.chips.columns:
        return None
    return [[str(c) for c in caps] if caps is not None else [] for caps in store.chips["captions"]]


def captions_for(store: ChipStore, seed: int = 0, per_chip: int = 1
                 ) -> tuple[list[list[str]], dict[str, Any]]:
    """Captions of every chip and their provenance: the stored ones, else made from labels.

    Args:
        store: The chip store.
        seed: Seed of captions made from labels (stored captions keep their own).
        per_chip: Captions per chip made from labels.

    Returns:
        ``(captions, provenance)``; provenance is the store's ``captions`` attributes with
        ``source: "store"``, or the settings used with ``source: "labels"``.

    Raises:
        GeofmError: The store has neither captions nor labels.
    """
    stored = store_captions(store)
    if stored is not None:
        return stored, {**store.attrs.get("captions", {}), "source": "store"}
    if not store.classes or not ({"label", "mask"} & set(store.arrays)):
        raise GeofmError("the store has neither captions nor labels to make them from",
                         store.path, "caption a labelled store with 'geofm caption STORE'")
    from geofm.curation.captions import DEFAULT_TEMPLATES, TEMPLATE_SETS

    caps = caption_store(store, seed=seed, per_chip=per_chip)
    tset = TEMPLATE_SETS[DEFAULT_TEMPLATES]
    prov = {"source": "labels", "seed": int(seed), "per_chip": int(per_chip),
            "templates_id": DEFAULT_TEMPLATES,
            "templates": [*tset["labels"], *tset["areas"], *tset["boxes"]],
            "uncaptioned_chips": sum(1 for c in caps if not c)}
    return caps, prov






@torch.no_grad()
def image_embeddings(model: AlignModel, ds: ChipDataset, batch_size: int = 32) -> Tensor:
    """L2-normalised image embeddings ``[N, E]`` of a dataset, in its order."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate_samples)
    device = next(model.parameters()).device
    out = [model.encode_image(b["image"].to(device), b["bands"]).float().cpu() for b in loader]
    return torch.cat(out)  # [N, E]


@torch.no_grad()
def text_embeddings(model: AlignModel, texts: Sequence[str], batch_size: int = 256
                    ) -> Tensor:
    """L2-normalised text embeddings ``[T, E]``."""
    out = [model.encode_text(list(texts[i:i + batch_size])).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)  # [T, E]


@torch.no_grad()
def class_embeddings(model: AlignModel, classes: Sequence[str],
                     templates: Sequence[str]) -> Tensor:
    """One normalised embedding per class ``[K, E]``: the mean of its prompts' embeddings."""
    names = [caption_name(c) for c in classes]
    prompts = [t.format(n) for n in names for t in templates]
    emb = text_embeddings(model, prompts).reshape(len(names), len(templates), -1)  # [K, T, E]
    return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)  # [K, E]
