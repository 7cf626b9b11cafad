"""Evaluating a finetuned model on a store split: metrics, split audit and band robustness.

``evaluate`` writes ``report.json`` and ``report.md``. The report states the split evaluated,
the split method and its leakage audit, and that model selection used the validation split
only. For channel-flexible models it adds the primary metric against the number of bands given
(random band subsets, fixed seed), the robustness Hierarchical Channel Sampling trains for.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, SupportsFloat, cast

import numpy as np
import torch

from geofm.card import BandContract
from geofm.curation.split_store import audit_store
from geofm.data.dataset import ChipDataset, collate_samples
from geofm.data.transforms import Normalize
from geofm.errors import GeofmError
from geofm.io.store import ChipStore, open_store
from geofm.loading import load_finetuned
from geofm.metrics import PRIMARY, batch_targets, per_class_table, task_metrics
from geofm.models.encoder import FeatureEncoder


@torch.no_grad()
def _predict(model: torch.nn.Module, ds: ChipDataset, task: str, batch_size: int,
             keep: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    outs, tgts = [], []
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=collate_samples)
    for batch in loader:
        images, bands = batch["image"], batch["bands"]
        if keep is not None:
            images, bands = images[:, keep], [bands[i] for i in keep]
        outs.append(model(images, bands))
        tgts.append(batch_targets(task, batch))
    return torch.cat(outs), torch.cat(tgts)


def _dataset(
    store: ChipStore, split: str, bands: list[str], contract: BandContract,
    max_chips: int | None = None,
) -> ChipDataset:
    mean, std = contract.normalization(bands)  # as prediction normalises the same bands
    m, s = mean.tolist(), std.tolist()
    indices = store.split_indices(split)
    if max_chips is not None and len(indices) > max_chips:  # a fixed random subset, in order
        indices = np.sort(np.random.default_rng(0).choice(indices, max_chips, replace=False))
    return ChipDataset(store, bands=bands, transforms=Normalize(bands, m, s), indices=indices)


def evaluate(model_path: str | Path, store_path: str | Path, split: str = "test",
             output: str | Path | None = None, batch_size: int = 16,
             band_counts: list[int] | None = None, draws: int = 3,
             seed: int = 0) -> dict[str, Any]:
    """Evaluate a finetuned checkpoint on ``split`` of a store and write the reports.

    Args:
        model_path: ``finetune.safetensors``.
        store_path: The chip store.
        split: Split to evaluate.
        output: Report directory (default: beside the model, ``eval_<split>``).
        batch_size: Inference batch size.
        band_counts: Band counts of the robustness table (default 1, 2, 4, ... all).
        draws: Random band subsets per count.
        seed: Seed of the subsets.

    Returns:
        The report dict (also written as JSON).
    """
    from geofm.published.resolve import refuse_headless

    refuse_headless(model_path, "eval (without --knn)")
    model, card = load_finetuned(model_path)
    assert card.task is not None
    store = open_store(store_path)
    task = card.task.task
    flexible = card.flexible
    bands = card.contract.match(store.bands, store.path)
    ds = _dataset(store, split, bands, card.contract)
    if len(ds) == 0:
        raise GeofmError(f"split {split!r} is empty", store.path)
    if task in ("multilabel", "classification") and store.classes != list(card.classes):
        raise GeofmError("the store's classes differ from the model's", store.path)
    outs, tgts = _predict(model, ds, task, batch_size)
    metrics = task_metrics(task, outs, tgts)
    primary = PRIMARY[task]
    report: dict[str, Any] = {
        "model": str(model_path), "store": str(store.path), "split": split,
        "num_chips": len(ds), "task": task, "bands_used": bands,
        "metrics": metrics, "primary_metric": primary,
        "model_selection": f"on the {card.task.selection.get('split')!r} split by "
                           f"{card.task.selection.get('metric')} only; the evaluated split "
                           "never influenced training or selection",
        "split_method": store.attrs["split"],
        "leakage_audit": audit_store(store, distance_km=2.0),
        "classes": list(card.classes),
    }
    if flexible and len(bands) > 1:
        rng = np.random.default_rng(seed)
        counts = band_counts or sorted({*(2**i for i in range(len(bands).bit_length())
                                          if 2**i < len(bands)), len(bands)})
        rows = []
        for k in counts:
            vals = []
            for _ in range(1 if k == len(bands) else draws):
                keep = sorted(rng.choice(len(bands), size=k, replace=False).tolist())
                o, t = _predict(model, ds, task, batch_size, keep)
                vals.append(float(cast(SupportsFloat, task_metrics(task, o, t)[primary])))
            rows.append({"bands": k, primary: float(np.nanmean(vals)), "draws": len(vals)})
        report["band_robustness"] = rows
    out = Path(output) if output else Path(model_path).parent / f"eval_{split}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    (out / "report.md").write_text(_markdown(report))
    report["output"] = str(out)
    return report


def _markdown(r: dict[str, Any]) -> str:
    m = r["metrics"]
    lines = [f"# Evaluation: {Path(r['model']).name} on {Path(r['store']).name} ({r['split']})",
             "",
             f"- task: {r['task']}; chips: {r['num_chips']}; "
             f"bands: {', '.join(r['bands_used'])}",
             f"- model selection: {r['model_selection']}",
             f"- split method: {r['split_method']['method']} "
             f"{json.dumps(r['split_method'].get('params', {}))}", "", "## Metrics", "",
             "| metric | value |", "|---|---:|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in m.items() if isinstance(v, float)]
    per = next(((k, v) for k, v in m.items() if isinstance(v, list)), None)
    if per and r["classes"]:
        lines += ["", f"## Per class ({per[0]})", "", per_class_table(r["classes"], per[1],
                                                                     per[0])]
    lines += ["", "## Leakage audit (chips within 2 km of another split)", "",
              "| pair | min distance km | chips within 2 km |", "|---|---:|---|"]
    for pair, row in r["leakage_audit"].get("pairs", {}).items():
        lines.append(f"| {pair} | {row.get('min_distance_km')} | {row.get('within')} |")
    if "band_robustness" in r:
        p = r["primary_metric"]
        lines += ["", f"## {p} against the number of bands given", "",
                  f"| bands | {p} | random subsets |", "|---:|---:|---:|"]
        lines += [f"| {x['bands']} | {x[p]:.4f} | {x['draws']} |" for x in r["band_robustness"]]
    return "\n".join(lines) + "\n"


def knn_evaluate(model_path: str | Path, store_path: str | Path, split: str = "test",
                 train_split: str = "train", k: int = 20, temperature: float = 0.07,
                 task: str = "multilabel", batch_size: int = 16,
                 weights: str | Path | None = None) -> dict[str, Any]:
    """kNN evaluation of frozen embeddings (DINO-style weighted vote) of any geofm checkpoint,
    or of a published encoder (``model_path`` its name, ``weights`` its release file; the
    store is normalised with the release's contract).

    Embeddings of ``train_split`` chips vote, weighted by ``exp(cos / temperature)``, for the
    labels of each ``split`` chip; no parameter is trained.

    Returns:
        ``{"metrics", "k", "temperature", "train_split", "split", "num_train", "num_query"}``.
    """
    from geofm.loading import load_encoder
    from geofm.published.release import check_store_scale, has_release_contract

    encoder, card = load_encoder(model_path, weights)
    store = open_store(store_path)
    if has_release_contract(card):  # a release's units: check the store's are what it says
        check_store_scale(store, card.contract.match(store.bands, store.path), train_split)
    return knn_metrics(encoder, card.contract, store, split, train_split, k,
                       temperature, task, batch_size)


def knn_metrics(encoder: FeatureEncoder, contract: BandContract, store: ChipStore,
                split: str = "test", train_split: str = "train", k: int = 20,
                temperature: float = 0.07, task: str = "multilabel",
                batch_size: int = 16, max_chips: int | None = None) -> dict[str, Any]:
    """:func:`knn_evaluate` for an encoder in memory (e.g. during pretraining).

    Args:
        encoder: The encoder; it runs in eval mode, its mode is restored.
        contract: Its band contract.
        store: A store with scene labels.
        max_chips: Use at most this many chips of each split (a fixed random subset).

    Raises:
        GeofmError: The store has no labels, lacks the model's bands, or a split is empty.
    """
    from geofm.models.knn import extract_features, knn_predict

    if "label" not in store.arrays:
        raise GeofmError("kNN evaluation needs scene labels but the store has none", store.path)
    bands = contract.match(store.bands, store.path)
    feats = {}
    for name, sp in (("train", train_split), ("query", split)):
        ds = _dataset(store, sp, bands, contract, max_chips)
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size,
                                             collate_fn=collate_samples)
        feats[name] = extract_features(encoder, loader, target_key="label")
    (tf, tl), (qf, ql) = feats["train"], feats["query"]
    assert tl is not None and ql is not None
    targets = tl if task == "multilabel" else tl.argmax(1)
    scores = knn_predict(tf, targets, qf, k=k, temperature=temperature, task=task,
                         num_classes=len(store.classes))
    truth = ql if task == "multilabel" else ql.argmax(1)
    logits = scores.clamp(1e-6, 1 - 1e-6).logit() if task == "multilabel" else scores
    return {"metrics": task_metrics(task, logits, truth), "k": k, "temperature": temperature,
            "train_split": train_split, "split": split, "num_train": len(tf),
            "num_query": len(qf)}
