"""``zeroshot`` and ``retrieval``: JSON and Markdown reports of an aligned model on a split."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geofm.card import ModelCard
from geofm.data.dataset import ChipDataset
from geofm.errors import GeofmError
from geofm.evaluation.aligned.inputs import (
    ZEROSHOT_TEMPLATES,
    captions_for,
    check_templates,
    class_embeddings,
    image_embeddings,
    load_templates,
    split_dataset,
    text_embeddings,
)
from geofm.evaluation.aligned.leakage import DUPLICATE_RADIUS, duplicate_check
from geofm.evaluation.aligned.metrics import RECALL_KS, retrieval_metrics, zeroshot_metrics
from geofm.io.store import ChipStore, open_store
from geofm.models.align import AlignModel


def _load(model_path: str | Path) -> tuple[AlignModel, ModelCard]:
    from geofm.loading import load_aligned

    model, card = load_aligned(model_path)
    return model.eval(), card


def _common(model_path: str | Path, card: ModelCard, store: ChipStore,
            split: str | None, num_chips: int, duplicates: dict[str, Any]) -> dict[str, Any]:
    trained = duplicates.get("shared_chips") if duplicates.get("checked") else None
    text = card.text
    return {
        "model": str(model_path),
        "model_kind": card.kind,
        "store": str(store.path),
        "split": split,
        "num_chips": num_chips,
        "checkpoint": {"data": dict(card.provenance.data),
                       "train": dict(card.provenance.training),
                       "text": None if text is None else dict(text.source),
                       "captions": None if text is None else dict(text.captions),
                       "image_encoder": card.architecture.name},
        "split_method": store.attrs.get("split"),
        "seeds": {"training": card.provenance.training.get("seed"),
                  "training_captions": None if text is None else text.captions.get("seed")},
        "evaluated_chips_in_training": trained,
        "duplicate_check": duplicates,
    }


def _write(report: dict[str, Any], output: Path, markdown: str) -> dict[str, Any]:
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2, default=str))
    output.with_suffix(".md").write_text(markdown)
    return {**report, "output": str(output), "markdown": str(output.with_suffix(".md"))}


def _out_path(model_path: str | Path, output: str | Path | None, name: str) -> Path:
    if output is None:
        return Path(model_path).parent / f"{name}.json"
    from geofm.io.outputs import require_suffix

    return require_suffix(output, (".json",), "a JSON report (with a .md beside it)")


def zeroshot(model_path: str | Path, store_path: str | Path, split: str | None = "test",
             templates: Sequence[str] | str | Path | None = None,
             output: str | Path | None = None, batch_size: int = 32,
             radius: int = DUPLICATE_RADIUS) -> dict[str, Any]:
    """Zero-shot multi-label classification of a split; writes ``<output>.json`` and ``.md``.

    Args:
        model_path: An aligned checkpoint (``align.safetensors``).
        store_path: A store with labels.
        split: Split to evaluate (``None`` or ``"all"``: every chip).
        templates: Prompt templates, a templates file, or None for the checkpoint's recorded
            templates (else :data:`ZEROSHOT_TEMPLATES`).
        output: Report path (default ``zeroshot_<split>.json`` beside the model).
        batch_size: Images per forward pass.
        radius: pHash radius of the near-duplicate check.

    Returns:
        The report dict, with ``output`` and ``markdown`` paths.
    """
    out = _out_path(model_path, output, f"zeroshot_{split or 'all'}")
    if isinstance(templates, (str, Path)):
        templates, source = load_templates(templates), f"file {templates}"
    elif templates is not None:
        templates, source = check_templates(templates), "given"
    model, card = _load(model_path)
    recorded = card.text.templates if card.text is not None else ()
    if templates is None:
        source = "recorded in the checkpoint" if recorded else "geofm default"
        templates = check_templates(list(recorded) or ZEROSHOT_TEMPLATES)
    store = open_store(store_path)
    if "label" not in store.arrays or not store.classes:
        raise GeofmError("zero-shot evaluation needs scene labels but the store has none",
                         store.path)
    ds = split_dataset(store, split, card.contract)
    images = image_embeddings(model, ds, batch_size)  # [N, E]
    classes = class_embeddings(model, store.classes, templates)  # [K, E]
    labels = torch.from_numpy(store.read(ds.indices, arrays=["label"])["label"].astype(np.int64))
    metrics = zeroshot_metrics(images @ classes.t(), labels)
    report = {
        **_common(model_path, card, store, split, len(ds),
                  duplicate_check(store, split, card.provenance.data, radius)),
        "task": "zeroshot-multilabel",
        "templates": list(templates), "templates_source": source,
        "prompt": "class names in caption form; each class embedding is the mean of its "
                  "templates' normalised text embeddings",
        "classes": store.classes,
        "metrics": metrics,
    }
    return _write(report, out, _zeroshot_markdown(report))


def retrieval(model_path: str | Path, store_path: str | Path, split: str | None = "test",
              output: str | Path | None = None, seed: int | None = None,
              per_chip: int | None = None, batch_size: int = 32,
              radius: int = DUPLICATE_RADIUS) -> dict[str, Any]:
    """Image→text and text→image retrieval on a split; writes ``<output>.json`` and ``.md``.

    Captions are the store's; a store without them is captioned from its labels with ``seed``
    and ``per_chip`` (default: the checkpoint's recorded caption settings, else 0 and 1).
    Chips without a caption are left out.

    Args:
        model_path: An aligned checkpoint.
        store_path: A store with captions or labels.
        split: Split to evaluate (``None`` or ``"all"``: every chip).
        output: Report path (default ``retrieval_<split>.json`` beside the model).
        seed: Caption seed for stores without captions.
        per_chip: Captions per chip for stores without captions.
        batch_size: Images per forward pass.
        radius: pHash radius of the near-duplicate check.

    Returns:
        The report dict, with ``output`` and ``markdown`` paths.
    """
    out = _out_path(model_path, output, f"retrieval_{split or 'all'}")
    model, card = _load(model_path)
    store = open_store(store_path)
    recorded = card.text.captions if card.text is not None else {}
    seed = int(recorded.get("seed", 0) if seed is None else seed)
    per_chip = int(recorded.get("per_chip", 1) if per_chip is None else per_chip)
    all_caps, provenance = captions_for(store, seed=seed, per_chip=per_chip)
    ds = split_dataset(store, split, card.contract)
    keep = [j for j, i in enumerate(ds.indices) if all_caps[i]]
    if not keep:
        raise GeofmError(f"no chip of split {split!r} has a caption", store.path)
    ds = ChipDataset(store, bands=ds.bands, transforms=ds.transforms, indices=ds.indices[keep])
    texts, owner = [], []
    for j, i in enumerate(ds.indices):
        texts += all_caps[i]
        owner += [j] * len(all_caps[i])
    images = image_embeddings(model, ds, batch_size)  # [I, E]
    text = text_embeddings(model, texts)  # [T, E]
    metrics = retrieval_metrics(images @ text.t(), torch.tensor(owner))
    base = _common(model_path, card, store, split, len(ds),
                   duplicate_check(store, split, card.provenance.data, radius))
    report = {
        **base,
        "task": "retrieval",
        "protocol": "RemoteCLIP: image→text hit when any of the image's captions ranks in the "
                    "top k; text→image hit when the caption's image ranks in the top k; mean "
                    "recall averages the six recalls",
        "num_captions": len(texts),
        "captions": provenance,
        "seeds": {**base["seeds"], "evaluation_captions": provenance.get("seed")},
        "metrics": metrics,
    }
    return _write(report, out, _retrieval_markdown(report))


def _header_lines(r: dict[str, Any], title: str) -> list[str]:
    ck = r["checkpoint"]
    train = ck.get("train") or {}
    lines = [f"# {title}: {Path(r['model']).name} on {Path(r['store']).name} ({r['split']})", "",
             f"- model: {r['model']} ({r['model_kind']}; image encoder "
             f"{ck.get('image_encoder')}; text {json.dumps(ck.get('text'))})",
             f"- trained on: {json.dumps(train)}",
             f"- seeds: {json.dumps(r['seeds'])}",
             f"- training captions: {json.dumps(ck.get('captions'), ensure_ascii=False)}",
             f"- evaluated chips: {r['num_chips']} of split {r['split']!r}; split method "
             f"{json.dumps(r['split_method'])}"]
    if r["evaluated_chips_in_training"]:
        lines.append(f"- **{r['evaluated_chips_in_training']} of the evaluated chips were "
                     "training chips**: these numbers measure fit, not generalisation")
    return lines


def _duplicate_lines(d: dict[str, Any]) -> list[str]:
    ref = d["reference"]
    lines = ["", "## Near-duplicate check", "",
             f"- reference: {ref['store']}, "
             + (f"split {ref['split']!r}" if ref["split"] else "all chips") + f" ({ref['what']})",
             f"- method: {d['method']}"]
    if not d.get("checked"):
        return [*lines, "- not checked: no reference chips"]
    lines += [f"- evaluated chips {d['evaluated_chips']}, reference chips "
              f"{d['reference_chips']}",
              f"- chips in both sets: {d['shared_chips']}",
              f"- near-duplicate pairs: {d['near_duplicate_pairs']} "
              f"({d['evaluated_with_near_duplicate']} evaluated chips affected)"]
    if d["pairs"]:
        lines += ["", "| evaluated | reference | bits |", "|---|---|---:|"]
        lines += [f"| {p['evaluated']} | {p['reference']} | {p['distance']} |"
                  for p in d["pairs"]]
    return lines


def _zeroshot_markdown(r: dict[str, Any]) -> str:
    m = r["metrics"]
    lines = [*_header_lines(r, "Zero-shot classification"),
             f"- templates ({r['templates_source']}): "
             + "; ".join(f"`{t}`" for t in r["templates"]), "",
             "## Metrics", "", "| metric | value | chance |", "|---|---:|---:|",
             f"| top-1 (best class is a label) | {m['top1']:.4f} | {m['chance_top1']:.4f} |",
             f"| mAP (macro, {m['classes_evaluated']} classes) | {m['map_macro']:.4f} | "
             f"{m['chance_map']:.4f} |",
             f"| mAP (micro) | {m['map_micro']:.4f} | |", "",
             "## Per-class AP", "", "| class | AP |", "|---|---:|"]
    lines += [f"| {c} | {ap:.4f} |" for c, ap in zip(r["classes"], m["per_class_ap"],
                                                     strict=True) if ap == ap]
    lines += _duplicate_lines(r["duplicate_check"])
    return "\n".join(lines) + "\n"


def _retrieval_markdown(r: dict[str, Any]) -> str:
    m = r["metrics"]
    cap = r["captions"]
    lines = [*_header_lines(r, "Image–text retrieval"),
             f"- captions: {r['num_captions']} ({cap.get('source')}; seed {cap.get('seed')}; "
             f"per chip {cap.get('per_chip')}; templates {cap.get('templates_id')})",
             f"- protocol: {r['protocol']}", "",
             "## Metrics", "", "| direction | R@1 | R@5 | R@10 |", "|---|---:|---:|---:|"]
    for d, name in (("i2t", "image → text"), ("t2i", "text → image")):
        lines.append(f"| {name} | " + " | ".join(f"{m[f'{d}_R@{k}']:.4f}" for k in RECALL_KS)
                     + " |")
        lines.append(f"| {name}, random ranking | "
                     + " | ".join(f"{m[f'chance_{d}_R@{k}']:.4f}" for k in RECALL_KS) + " |")
    lines += ["", f"mean recall: {m['mean_recall']:.4f}"]
    if any(m[f"chance_{d}_R@{k}"] >= 1.0 for d in ("i2t", "t2i") for k in RECALL_KS):
        lines.append("- where a random ranking reaches 1.0, k covers the whole pool and the "
                     "recall says nothing")
    lines += _duplicate_lines(r["duplicate_check"])
    return "\n".join(lines) + "\n"
