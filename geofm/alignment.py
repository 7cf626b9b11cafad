"""Evaluating image–text aligned models: zero-shot classification, retrieval, leakage check.

``zeroshot`` scores every class of a store with prompts made from templates (``"a satellite
image of {}"``, the class name in caption form) and reports top-1 accuracy and mAP against their
chance levels. ``retrieval`` ranks a split's captions for each image and its images for each
caption and reports recall at 1, 5 and 10 by the RemoteCLIP protocol: an image has several
captions; image→text is a hit when any of its captions is among the top k, text→image when its
image is. Both reports (JSON and Markdown) record the templates, seeds, split, checkpoint and
caption provenance, and a perceptual-hash check for near-duplicate images between the evaluated
chips and the chips the model was trained on (RemoteCLIP's retrieval benchmarks leaked test
images into training in exactly this way).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geofm.build.captions import caption_name, caption_store
from geofm.build.dedup import hamming, near_duplicate_pairs, phash64
from geofm.data.dataset import ChipDataset, collate_samples
from geofm.data.transforms import Normalize
from geofm.errors import GeofmError
from geofm.inference import is_channel_flexible, match_bands
from geofm.io.store import ChipStore, open_store
from geofm.metrics import multilabel_metrics
from geofm.viz import composite_bands, stretch

ZEROSHOT_TEMPLATES: tuple[str, ...] = (
    "a satellite image of {}",
    "an aerial view of {}",
    "a remote sensing image showing {}",
    "a satellite photo of {}",
    "a top-down view of {}",
)
"""Default zero-shot prompts; ``{}`` is replaced by the class name in caption form."""

RECALL_KS: tuple[int, ...] = (1, 5, 10)
DUPLICATE_RADIUS = 4
"""Largest Hamming distance (of 64 bits) between the pHashes of near-duplicate chips."""

MAX_LISTED = 50
"""Pairs and chip ids listed in a report (all are counted)."""


# --- inputs -----------------------------------------------------------------------------------


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


def split_dataset(store: ChipStore, split: str | None, header: dict[str, Any]) -> ChipDataset:
    """The chips of ``split`` with the model's bands and normalisation.

    Bands the model was not trained on (wavelength matches) use the store's statistics.
    """
    bands = match_bands(header["bands"], store.bands, is_channel_flexible(header), store.path)
    mean = dict(zip(header["bands"], header["normalization"]["mean"], strict=True))
    std = dict(zip(header["bands"], header["normalization"]["std"], strict=True))
    s_mean, s_std = store.band_stats(bands)
    m = [mean.get(b, float(s_mean[i])) for i, b in enumerate(bands)]
    s = [std.get(b, float(s_std[i])) for i, b in enumerate(bands)]
    ds = ChipDataset(store, split=split, bands=bands, transforms=Normalize(bands, m, s))
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
    from geofm.build.captions import DEFAULT_TEMPLATES, TEMPLATE_SETS

    caps = caption_store(store, seed=seed, per_chip=per_chip)
    tset = TEMPLATE_SETS[DEFAULT_TEMPLATES]
    prov = {"source": "labels", "seed": int(seed), "per_chip": int(per_chip),
            "templates_id": DEFAULT_TEMPLATES,
            "templates": [*tset["labels"], *tset["areas"], *tset["boxes"]],
            "uncaptioned_chips": sum(1 for c in caps if not c)}
    return caps, prov


# --- embeddings -------------------------------------------------------------------------------


@torch.no_grad()
def image_embeddings(model: torch.nn.Module, ds: ChipDataset, batch_size: int = 32) -> Tensor:
    """L2-normalised image embeddings ``[N, E]`` of a dataset, in its order."""
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate_samples)
    device = next(model.parameters()).device
    out = [model.encode_image(b["image"].to(device), b["bands"]).float().cpu() for b in loader]
    return torch.cat(out)  # [N, E]


@torch.no_grad()
def text_embeddings(model: torch.nn.Module, texts: Sequence[str], batch_size: int = 256
                    ) -> Tensor:
    """L2-normalised text embeddings ``[T, E]``."""
    out = [model.encode_text(list(texts[i:i + batch_size])).float().cpu()
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)  # [T, E]


@torch.no_grad()
def class_embeddings(model: torch.nn.Module, classes: Sequence[str],
                     templates: Sequence[str]) -> Tensor:
    """One normalised embedding per class ``[K, E]``: the mean of its prompts' embeddings."""
    names = [caption_name(c) for c in classes]
    prompts = [t.format(n) for n in names for t in templates]
    emb = text_embeddings(model, prompts).reshape(len(names), len(templates), -1)  # [K, T, E]
    return torch.nn.functional.normalize(emb.mean(dim=1), dim=-1)  # [K, E]


# --- metrics ----------------------------------------------------------------------------------


def expected_random_ap(positives: int, total: int) -> float:
    """Expected average precision of a uniformly random ranking of ``total`` items of which
    ``positives`` are relevant.

    A relevant item at rank r has precision ``(1 + (r - 1)(m - 1)/(n - 1)) / r`` on average;
    averaging over r gives ``(m - 1)/(n - 1) + (n - m) H_n / (n (n - 1))``. For large n this is
    the prevalence ``m / n``; for few items it is well above it (one relevant chip among six:
    0.41, not 0.17), so small evaluations are compared with the exact value.
    """
    m, n = int(positives), int(total)
    if m <= 0:
        return float("nan")
    if n <= 1 or m == n:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (m - 1) / (n - 1) + (n - m) * harmonic / (n * (n - 1))


def zeroshot_metrics(scores: Tensor, labels: Tensor) -> dict[str, Any]:
    """Zero-shot scene metrics of class scores against multi-hot labels, with chance levels.

    Args:
        scores: ``[N, K]`` image–class similarities.
        labels: ``[N, K]`` multi-hot labels.

    Returns:
        ``top1`` (the best-scored class is one of the chip's labels, over chips with a label),
        ``map_macro`` (over classes with a positive chip), ``map_micro``, ``per_class_ap``, and
        ``chance_top1`` (mean label fraction ``|labels| / K``) and ``chance_map`` (mean expected
        AP of a random ranking, :func:`expected_random_ap`).
    """
    y = labels.long()  # [N, K]
    has = y.sum(1) > 0
    if not has.any():
        raise GeofmError("no evaluated chip has a label", hint="choose a labelled split")
    n, k = y.shape
    top = scores.argmax(1)  # [N]
    hit = y[torch.arange(n), top].bool()
    with warnings.catch_warnings():  # classes without a positive chip are left out below
        warnings.filterwarnings("ignore", message=".*No positive samples found in target.*")
        ml = multilabel_metrics(scores.float(), y)
    pos = y.sum(0)  # [K]
    chance_ap = [expected_random_ap(int(p), n) for p in pos if p > 0]
    return {
        "top1": float(hit[has].float().mean()),
        "map_macro": ml["map_macro"],
        "map_micro": ml["map_micro"],
        "chance_top1": float((y[has].sum(1).float() / k).mean()),
        "chance_map": float(np.mean(chance_ap)),
        "classes_evaluated": int((pos > 0).sum()),
        "per_class_ap": ml["per_class_ap"],
    }


def retrieval_metrics(similarity: Tensor, text_image: Tensor,
                      ks: Sequence[int] = RECALL_KS) -> dict[str, float]:
    """Image→text and text→image recall at k, and their mean (the RemoteCLIP protocol).

    Args:
        similarity: ``[I, T]`` image–text similarities.
        text_image: ``[T]`` index of each caption's image.
        ks: Cut-offs.

    Returns:
        ``i2t_R@k`` (an image is a hit when any of its captions ranks in the top k), ``t2i_R@k``
        (a caption is a hit when its image ranks in the top k), and ``mean_recall`` over all.
    """
    num_i = similarity.shape[0]
    owner = text_image.long()  # [T]
    out: dict[str, float] = {}
    i2t_rank = similarity.argsort(dim=1, descending=True)  # [I, T]
    t2i_rank = similarity.t().argsort(dim=1, descending=True)  # [T, I]
    for k in ks:
        i2t = (owner[i2t_rank[:, :k]] == torch.arange(num_i)[:, None]).any(1)  # [I]
        t2i = (t2i_rank[:, :k] == owner[:, None]).any(1)  # [T]
        out[f"i2t_R@{k}"] = float(i2t.float().mean())
        out[f"t2i_R@{k}"] = float(t2i.float().mean())
    out["mean_recall"] = float(np.mean(list(out.values())))
    return out


# --- near-duplicate check -----------------------------------------------------------------------


def chip_hashes(store: ChipStore, indices: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """64-bit pHashes (:func:`geofm.build.dedup.phash64`) of chips rendered as RGB composites.

    The composite is the store's true-colour bands where it has them (else the first three
    bands, or VV/VH/VV for radar), each chip stretched 2–98 % to 8 bits.

    Returns:
        ``[len(indices)]`` uint64.
    """
    rgb = [store.bands[i] for i in composite_bands(store.bands)]
    idx = np.asarray(indices, dtype=np.int64)
    out = np.zeros(len(idx), dtype=np.uint64)
    for start in range(0, len(idx), batch_size):
        part = idx[start:start + batch_size]
        images = store.read(part, bands=list(dict.fromkeys(rgb)), arrays=["image"])["image"]
        order = [list(dict.fromkeys(rgb)).index(b) for b in rgb]
        for j, img in enumerate(images[:, order].astype(np.float32)):
            out[start + j] = phash64((stretch(img) * 255).round().astype(np.uint8))
    return out


def duplicate_check(store: ChipStore, split: str | None, header: dict[str, Any],
                    radius: int = DUPLICATE_RADIUS) -> dict[str, Any]:
    """Chips of ``split`` that the model trained on, and near duplicates of its training chips.

    The reference is the checkpoint's training chips (``header["train"]``: store and split)
    when that store exists; otherwise this store's ``train`` split. Chips with the same chip id
    in both sets are counted as shared; other pairs whose pHashes differ in at most ``radius``
    bits are near duplicates.

    Returns:
        A JSON-ready dict: reference, radius, method, counts and the first pairs.
    """
    train = header.get("train") or {}
    note = ""
    ref_store: ChipStore | None = None
    ref_split: str | None = "train"
    if train.get("store") and Path(train["store"]).exists():
        ref_store, ref_split = open_store(train["store"]), train.get("split")
        note = "the checkpoint's training chips"
    else:
        note = ("the checkpoint names no training store" if not train.get("store")
                else f"the training store {train['store']} was not found")
        note += "; compared with this store's train split"
        if "train" in set(store.chips["split"]) and split != "train":
            ref_store = store
    result: dict[str, Any] = {
        "radius": int(radius),
        "method": "64-bit DCT pHash of each chip's 2–98 % stretched RGB composite; near "
                  f"duplicates differ in at most {radius} bits",
        "reference": {"store": str(ref_store.path) if ref_store else None,
                      "split": ref_split, "what": note},
    }
    if ref_store is None:
        result["checked"] = False
        return result
    ev_idx = store.split_indices(split)
    rf_idx = ref_store.split_indices(ref_split)
    ev_ids = store.chips["chip_id"].to_numpy()[ev_idx]
    rf_ids = ref_store.chips["chip_id"].to_numpy()[rf_idx]
    shared = sorted(set(ev_ids) & set(rf_ids))
    h_ev, h_rf = chip_hashes(store, ev_idx), chip_hashes(ref_store, rf_idx)
    hashes = np.concatenate([h_ev, h_rf])
    pairs = near_duplicate_pairs(hashes, radius) if len(hashes) > 1 else np.zeros((0, 2), int)
    n = len(h_ev)
    cross = pairs[(pairs[:, 0] < n) & (pairs[:, 1] >= n)]
    rows = [(int(a), int(b) - n) for a, b in cross if ev_ids[a] != rf_ids[b - n]]
    dist = [int(hamming(h_ev[a], h_rf[b])) for a, b in rows]
    result.update({
        "checked": True,
        "evaluated_chips": n,
        "reference_chips": len(h_rf),
        "shared_chips": len(shared),
        "shared_chip_ids": shared[:MAX_LISTED],
        "near_duplicate_pairs": len(rows),
        "evaluated_with_near_duplicate": len({a for a, _ in rows}),
        "pairs": [{"evaluated": str(ev_ids[a]), "reference": str(rf_ids[b]), "distance": d}
                  for (a, b), d in list(zip(rows, dist, strict=True))[:MAX_LISTED]],
    })
    return result


# --- reports ----------------------------------------------------------------------------------


def _load(model_path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    from geofm.inference import load_aligned

    model, header = load_aligned(model_path)
    return model.eval(), header


def _common(model_path: str | Path, header: dict[str, Any], store: ChipStore,
            split: str | None, num_chips: int, duplicates: dict[str, Any]) -> dict[str, Any]:
    trained = duplicates.get("shared_chips") if duplicates.get("checked") else None
    return {
        "model": str(model_path),
        "model_kind": header.get("kind"),
        "store": str(store.path),
        "split": split,
        "num_chips": num_chips,
        "checkpoint": {"train": header.get("train") or {}, "text": header.get("text"),
                       "captions": header.get("captions"),
                       "image_encoder": header.get("model", {}).get("name")},
        "split_method": store.attrs.get("split"),
        "seeds": {"training": (header.get("train") or {}).get("seed"),
                  "training_captions": (header.get("captions") or {}).get("seed")},
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
    out = Path(output)
    return out if out.suffix == ".json" else out.with_suffix(".json")


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
    if isinstance(templates, (str, Path)):
        templates, source = load_templates(templates), f"file {templates}"
    elif templates is not None:
        templates, source = check_templates(templates), "given"
    model, header = _load(model_path)
    if templates is None:
        source = "recorded in the checkpoint" if header.get("templates") else "geofm default"
        templates = check_templates(header.get("templates") or ZEROSHOT_TEMPLATES)
    store = open_store(store_path)
    if "label" not in store.arrays or not store.classes:
        raise GeofmError("zero-shot evaluation needs scene labels but the store has none",
                         store.path)
    ds = split_dataset(store, split, header)
    images = image_embeddings(model, ds, batch_size)  # [N, E]
    classes = class_embeddings(model, store.classes, templates)  # [K, E]
    labels = torch.from_numpy(store.read(ds.indices, arrays=["label"])["label"].astype(np.int64))
    metrics = zeroshot_metrics(images @ classes.t(), labels)
    report = {
        **_common(model_path, header, store, split, len(ds),
                  duplicate_check(store, split, header, radius)),
        "task": "zeroshot-multilabel",
        "templates": list(templates), "templates_source": source,
        "prompt": "class names in caption form; each class embedding is the mean of its "
                  "templates' normalised text embeddings",
        "classes": store.classes,
        "metrics": metrics,
    }
    out = _out_path(model_path, output, f"zeroshot_{split or 'all'}")
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
    model, header = _load(model_path)
    store = open_store(store_path)
    recorded = header.get("captions") or {}
    seed = int(recorded.get("seed", 0) if seed is None else seed)
    per_chip = int(recorded.get("per_chip", 1) if per_chip is None else per_chip)
    all_caps, provenance = captions_for(store, seed=seed, per_chip=per_chip)
    ds = split_dataset(store, split, header)
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
    base = _common(model_path, header, store, split, len(ds),
                   duplicate_check(store, split, header, radius))
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
    out = _out_path(model_path, output, f"retrieval_{split or 'all'}")
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
    lines += ["", f"mean recall: {m['mean_recall']:.4f}"]
    lines += _duplicate_lines(r["duplicate_check"])
    return "\n".join(lines) + "\n"
