"""``geofm eval``, ``zeroshot`` and ``retrieval``: scoring models on a store split."""

from __future__ import annotations

import argparse

from geofm.cli.help import Commands, add_model_argument, examples, model_ref

__all__ = ["add_eval", "add_retrieval", "add_zeroshot"]


def _zeroshot(a: argparse.Namespace) -> int:
    from geofm.evaluation.aligned import zeroshot

    r = zeroshot(a.model, a.data, split=a.split, templates=a.templates, output=a.output)
    m = r["metrics"]
    print(f"zero-shot on {r['split']} ({r['num_chips']} chips, {m['classes_evaluated']} classes "
          f"present, {len(r['templates'])} templates): top-1 {m['top1']:.4f} "
          f"(chance {m['chance_top1']:.4f}), mAP {m['map_macro']:.4f} "
          f"(chance {m['chance_map']:.4f})")
    print(_duplicate_summary(r))
    print(f"reports: {r['output']}, {r['markdown']}")
    return 0


_RECALLS = ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")


def _retrieval(a: argparse.Namespace) -> int:
    from geofm.evaluation.aligned import retrieval

    r = retrieval(a.model, a.data, split=a.split, output=a.output, seed=a.seed,
                  per_chip=a.per_chip)
    m = r["metrics"]
    print(f"retrieval on {r['split']} ({r['num_chips']} images, {r['num_captions']} captions): "
          + ", ".join(f"{k} {m[k]:.4f}" for k in _RECALLS)
          + f"; mean recall {m['mean_recall']:.4f}")
    print("random ranking: " + ", ".join(f"{k} {m['chance_' + k]:.4f}" for k in _RECALLS))
    print(_duplicate_summary(r))
    print(f"reports: {r['output']}, {r['markdown']}")
    return 0


def _duplicate_summary(r: dict) -> str:
    d = r["duplicate_check"]
    if not d.get("checked"):
        return f"near-duplicate check: not run ({d['reference']['what']})"
    line = (f"near-duplicate check against {d['reference']['split'] or 'all'} chips: "
            f"{d['shared_chips']} shared, {d['near_duplicate_pairs']} near-duplicate pairs")
    if d["shared_chips"]:
        line += " (the model trained on evaluated chips)"
    return line


def _eval(a: argparse.Namespace) -> int:
    from geofm.evaluation.finetuned import evaluate, knn_evaluate

    model = model_ref(a, "eval", "--knn")
    if a.knn:
        r = knn_evaluate(model, a.data, split=a.split, train_split=a.train_split, k=a.k,
                         task=a.knn_task, weights=a.weights)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items() if isinstance(v, float))
        print(f"kNN (k={r['k']}, {r['num_train']} {r['train_split']} chips vote for "
              f"{r['num_query']} {r['split']} chips): {shown}")
        return 0
    r = evaluate(model, a.data, split=a.split, output=a.output)
    p = r["primary_metric"]
    print(f"{r['task']} on {r['split']} ({r['num_chips']} chips): {p} {r['metrics'][p]:.4f}")
    print(f"reports: {r['output']}/report.json, report.md")
    return 0


def add_zeroshot(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm zeroshot``."""
    z = sub.add_parser("zeroshot", help="zero-shot classification with an aligned model",
                       description="Score every class of the store with prompts from the "
                       "checkpoint's recorded templates (or --templates); report top-1, mAP, "
                       "their chance levels and a near-duplicate check against training chips.",
                       epilog=examples(
                           "geofm zeroshot runs/align/align.safetensors --data "
                           "outputs/reben_mini.zarr",
                           "geofm zeroshot align.safetensors --data reben.zarr --split all "
                           "--templates prompts.txt"), formatter_class=fmt)
    z.add_argument("model", help="aligned checkpoint (align.safetensors)")
    z.add_argument("--data", required=True, help="chip store with labels")
    z.add_argument("--split", default="test", help="split to evaluate ('all': every chip)")
    z.add_argument("--templates", help="file of templates, one per line with '{}' (default: "
                   "the checkpoint's)")
    z.add_argument("-o", "--output", help="report .json (default: beside the model)")
    z.set_defaults(func=_zeroshot)


def add_retrieval(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm retrieval``."""
    rt = sub.add_parser("retrieval", help="image↔text retrieval with an aligned model",
                        description="Recall at 1, 5 and 10 in both directions and mean recall "
                        "(the RemoteCLIP protocol) over a split's captions, with a "
                        "near-duplicate check against training chips.",
                        epilog=examples(
                            "geofm retrieval runs/align/align.safetensors --data "
                            "outputs/reben_mini.zarr",
                            "geofm retrieval align.safetensors --data reben.zarr --split all "
                            "-o retrieval.json"), formatter_class=fmt)
    rt.add_argument("model", help="aligned checkpoint (align.safetensors)")
    rt.add_argument("--data", required=True, help="chip store with captions or labels")
    rt.add_argument("--split", default="test", help="split to evaluate ('all': every chip)")
    rt.add_argument("--seed", type=int, help="caption seed for stores without captions "
                    "(default: the checkpoint's)")
    rt.add_argument("--per-chip", type=int, help="captions per chip for stores without "
                    "captions (default: the checkpoint's)")
    rt.add_argument("-o", "--output", help="report .json (default: beside the model)")
    rt.set_defaults(func=_retrieval)


def add_eval(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm eval``."""
    e = sub.add_parser("eval", help="evaluate a finetuned model on a store split",
                       description="Score a finetuned checkpoint on a split (report.json and "
                       "report.md), or any checkpoint's frozen embeddings with a kNN vote.",
                       epilog=examples(
                           "geofm eval runs/finetune/finetune.safetensors --data "
                           "outputs/reben_mini.zarr",
                           "geofm eval runs/pretrain/pretrain.safetensors --data "
                           "outputs/reben_mini.zarr --knn -k 10",
                           "geofm eval --knn --init ssl4eo_vits16_mae --weights "
                           "B13_vits16_mae_ep99_enc.pth --data l1c.zarr"), formatter_class=fmt)
    add_model_argument(e, "finetuned checkpoint (finetune.safetensors); with --knn any geofm "
                       "checkpoint", "with --knn: the encoder to score, a geofm checkpoint, a "
                       "published model's name (ssl4eo_vits16_mae) or torchgeo:Enum.MEMBER "
                       "(default: MODEL)")
    e.add_argument("--data", required=True, help="chip store")
    e.add_argument("--split", default="test", help="split to evaluate")
    e.add_argument("--output", help="report directory (default: beside the model)")
    e.add_argument("--knn", action="store_true",
                   help="kNN evaluation of the frozen embeddings of any geofm checkpoint")
    e.add_argument("--train-split", default="train", help="kNN reference split")
    e.add_argument("-k", type=int, default=20, help="kNN neighbours")
    e.add_argument("--knn-task", default="multilabel", choices=("multilabel", "classification"),
                   help="kNN vote: several labels per chip, or one")
    e.set_defaults(func=_eval)
