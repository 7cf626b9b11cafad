"""What the papers' own recipes cost against geofm's defaults, and what they change on the sample.

Three parts, in one process:

1. **Cost** (always): wall time of each variant against its geofm default, measured in the same
   run in rotating rounds (so load from other processes hits all alike); each ratio is the median
   over rounds of variant time / default time.

   * ``scoring``: SelectiveMAE token scoring alone, ``released`` vs ``richness``.
   * ``smae_step``: a SelectiveMAE training step (forward, backward, AdamW) with the whole
     released recipe (scoring, floor counts, raw decoder memory, class token) vs the default.
   * ``cvit_layout``: a ChannelViT forward with class token and learned positions vs sincos.
   * ``probe32``: an attentive-probe forward+backward with 32 queries vs 4.
   * ``simmim_squares``: a SimMIM step with 8-px mask squares over 4-px patches vs per patch.
   * ``finetune_hcs``: a ChannelViT finetuning step with HCS vs without.

2. **Token selection on the real sample** (always): on the embedded reBEN sample's RGB bands
   (120 px chips, ViT patch 8: 225 tokens), for each scoring the entropy of the token
   distribution over ``log T`` (1 = uniform) and the share of flat-area tokens (the quarter of
   each image's tokens with the least gradient energy) among the seeds and the reconstruction
   targets; uniform drawing gives 0.25.

3. **kNN-probe curve** (``--curve STEPS``): a short SelectiveMAE pretraining on the sample with
   each scoring and the same seed, its ``probe.store`` kNN probe (the sample's own validation
   split voted by its train split) every ``--probe-every`` steps; ``probe.csv`` rows are printed.

Usage::

    python scripts/bench_recipes.py                       # parts 1-2, ~2 minutes on 2 cores
    python scripts/bench_recipes.py --curve 300 --probe-every 50

Ends with ``RESULT <variant>_ratio=…`` (time over the default's), ``RESULT
<scoring>_entropy=…``, ``RESULT <scoring>_flat_seed_share=…`` and, with ``--curve``, ``RESULT
<scoring>_final_knn=…``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from geofm.bands import BAND_SETS
from geofm.models import create_model
from geofm.models.finetuner import Finetuner
from geofm.models.heads import AttentiveProbe
from geofm.objectives import create_objective
from geofm.objectives.selective_mae import SelectiveMAE

RGB = ["S2.B04", "S2.B03", "S2.B02"]
SMALL = {"decoder_dim": 128, "decoder_depth": 2, "decoder_heads": 4}
RELEASED = {"scoring": "released", "counts": "floor", "decoder_memory": "raw",
            "psts_epochs": 800, "psts_breakpoints": [280, 300, 580, 600]}


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="timed calls per variant per round")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--curve", type=int, default=0, help="pretraining steps per scoring (0: none)")
    p.add_argument("--probe-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    return p.parse_args()


def _trainer(module: torch.nn.Module, run: Callable[[], torch.Tensor]) -> Callable[[], object]:
    opt = torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        run().backward()
        opt.step()

    return step


def cost_pairs(batch: int) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """``name -> (default, variant)`` callables of equal work apart from the variant."""
    torch.manual_seed(0)
    rgb = torch.randn(batch, 3, 128, 128)
    valid = torch.ones_like(rgb, dtype=torch.bool)
    s1s2 = list(BAND_SETS["s1s2"])
    modis = list(BAND_SETS["modis14"])
    ms = torch.randn(batch, 14, 64, 64)
    md = torch.randn(batch, 14, 64, 64)

    def smae(cls: bool, **kw: object) -> SelectiveMAE:
        enc = create_model("vit_small", bands=RGB, patch_size=16, depth=4, class_token=cls)
        return SelectiveMAE(enc, **SMALL, **kw)  # type: ignore[arg-type]

    geo, rel = smae(False), smae(True, **RELEASED)
    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {
        "scoring": (lambda: geo.token_scores(rgb, valid),
                    lambda: rel.token_scores(rgb, valid)),
        "smae_step": (_trainer(geo, lambda: geo(rgb, RGB, progress=0.5).loss),
                      _trainer(rel, lambda: rel(rgb, RGB, progress=0.5).loss)),
    }
    plain = create_model("channelvit_tiny", bands=s1s2, depth=2)
    paper = create_model("channelvit_tiny", bands=s1s2, depth=2, class_token=True,
                         pos_embed="learned", img_size=64)
    with torch.no_grad():
        pairs["cvit_layout"] = (lambda: plain(ms, s1s2), lambda: paper(ms, s1s2))
    tokens = torch.randn(batch, 14 * 64, 384)
    p4, p32 = AttentiveProbe(384, 19, num_queries=4), AttentiveProbe(384, 19, num_queries=32)
    pairs["probe32"] = (_trainer(p4, lambda: p4(tokens).sum()),
                        _trainer(p32, lambda: p32(tokens).sum()))
    enc_a = create_model("vit_small", bands=modis, patch_size=4, depth=4)
    enc_b = create_model("vit_small", bands=modis, patch_size=4, depth=4)
    per_patch = create_objective("simmim", enc_a)
    squares = create_objective("simmim", enc_b, mask_patch_size=8)
    pairs["simmim_squares"] = (_trainer(per_patch, lambda: per_patch(md, modis).loss),
                               _trainer(squares, lambda: squares(md, modis).loss))
    labels = (torch.rand(batch, 19) > 0.7).float()
    plain_ft = Finetuner(create_model("channelvit_tiny", bands=s1s2, depth=2), "multilabel", 19,
                         freeze="full")
    hcs_ft = Finetuner(create_model("channelvit_tiny", bands=s1s2, depth=2), "multilabel", 19,
                       freeze="full", hcs=True)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    pairs["finetune_hcs"] = (_trainer(plain_ft, lambda: bce(plain_ft(ms, s1s2), labels)),
                             _trainer(hcs_ft, lambda: bce(hcs_ft(ms, s1s2), labels)))
    return pairs


def time_pairs(pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]], rounds: int,
               steps: int) -> dict[str, tuple[float, float, float]]:
    """Median default seconds, variant seconds and ratio per pair."""
    base: dict[str, list[float]] = {k: [] for k in pairs}
    var: dict[str, list[float]] = {k: [] for k in pairs}
    ratio: dict[str, list[float]] = {k: [] for k in pairs}
    for name, (a, b) in pairs.items():  # warm-up
        t0 = time.perf_counter()
        torch.manual_seed(0)
        a()
        b()
        print(f"  warm-up {name}: {time.perf_counter() - t0:.1f} s", flush=True)
    for r in range(rounds):
        for name, (a, b) in pairs.items():
            times = []
            for fn in ((a, b) if r % 2 == 0 else (b, a)):
                torch.manual_seed(r)
                t0 = time.perf_counter()
                for _ in range(steps):
                    fn()
                times.append((time.perf_counter() - t0) / steps)
            ta, tb = times if r % 2 == 0 else times[::-1]
            base[name].append(ta)
            var[name].append(tb)
            ratio[name].append(tb / ta)
    return {k: (statistics.median(base[k]), statistics.median(var[k]),
                statistics.median(ratio[k])) for k in pairs}


def _sample_store(root: Path) -> Path:
    from geofm.training.pretrain import sample_store

    return sample_store(root)


def selection_stats(store: Path) -> dict[str, dict[str, float]]:
    """Entropy of the token distribution and flat-token shares, per scoring, on the sample."""
    from geofm.objectives.hog import hog_histograms
    from geofm.training.datamodule import ChipDataModule

    dm = ChipDataModule(store, bands=RGB, batch_size=64, train_split=None, seed=0)
    images = torch.cat([b["image"] for b in dm.train_dataloader()])  # [N, 3, 120, 120]
    valid = torch.ones_like(images, dtype=torch.bool)
    energy = hog_histograms(images, 8).sum(dim=-1).sum(dim=1)  # [N, T] gradient energy
    t = energy.shape[1]
    flat = energy <= energy.quantile(0.25, dim=1, keepdim=True)  # [N, T]
    out: dict[str, dict[str, float]] = {}
    for scoring in ("richness", "released"):
        torch.manual_seed(0)
        obj = SelectiveMAE(create_model("vit_test", bands=RGB), scoring=scoring, **SMALL)
        scores = obj.token_scores(images, valid)  # [N, T]
        p = scores.softmax(dim=1)
        entropy = float((-(p * p.clamp_min(1e-30).log()).sum(1) / torch.log(torch.tensor(t)))
                        .mean())
        feats = obj.encoder.tokenize(images, RGB)
        seeds, targets = [], []
        for rep in range(20):
            sel = obj.select_tokens(scores, feats, 0.5, torch.Generator().manual_seed(rep))
            seeds.append(flat.gather(1, sel.seed_idx).float().mean())
            targets.append(flat.gather(1, sel.target_idx).float().mean())
        out[scoring] = {"entropy": entropy, "flat_seed_share": float(torch.stack(seeds).mean()),
                        "flat_target_share": float(torch.stack(targets).mean()),
                        "max_over_min_prob": float((p.amax(1) / p.amin(1)).median())}
        print(f"{scoring:>9}: chips {images.shape[0]}, tokens {t}, entropy/log T "
              f"{entropy:.4f}, flat share of seeds {out[scoring]['flat_seed_share']:.3f}, of "
              f"targets {out[scoring]['flat_target_share']:.3f}, median max/min token "
              f"probability {out[scoring]['max_over_min_prob']:.4g}", flush=True)
    return out


def knn_curve(store: Path, steps: int, every: int, root: Path) -> dict[str, list[dict]]:
    """A short pretraining per scoring with the kNN probe; the probe rows per scoring."""
    import csv

    from geofm.training.config import PRETRAIN_DEFAULTS, apply_overrides, merge
    from geofm.training.pretrain import run_pretrain

    curves: dict[str, list[dict]] = {}
    for scoring in ("richness", "released"):
        out = root / f"curve_{scoring}"
        cfg = apply_overrides(merge(PRETRAIN_DEFAULTS, {}), [
            f"data.store={store}", "data.bands=[S2.B04, S2.B03, S2.B02]", "data.split=train",
            "data.batch_size=8", "model.name=vit_tiny", "model.kwargs={depth: 4}",
            "objective.name=selective_mae",
            f"objective.kwargs={{scoring: {scoring}, decoder_dim: 128, decoder_depth: 2, "
            "decoder_heads: 4}", f"trainer.max_steps={steps}", "trainer.accelerator=cpu",
            "trainer.log_every_n_steps=10", f"trainer.checkpoint_every_n_steps={steps}",
            "optim.lr=5e-4", "optim.warmup_steps=10", f"output={out}", "previews=0",
            f"probe.store={store}", f"probe.every_n_steps={every}"])
        t0 = time.perf_counter()
        run_pretrain(cfg, progress=False)
        with open(out / "probe.csv") as f:
            curves[scoring] = list(csv.DictReader(f))
        print(f"{scoring}: {steps} steps in {time.perf_counter() - t0:.0f} s")
        for row in curves[scoring]:
            print("   ", {k: row[k] for k in row})
    return curves


def main() -> None:
    """Run the benchmark and print RESULT lines."""
    args = parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch_size}, "
          f"{args.rounds} rounds × {args.steps} calls")
    with tempfile.TemporaryDirectory() as tmp:
        store = _sample_store(Path(tmp))
        stats = selection_stats(store)
        timings = time_pairs(cost_pairs(args.batch_size), args.rounds, args.steps)
        print(f"{'variant':>16} {'default ms':>11} {'variant ms':>11} {'ratio':>7}")
        for name, (a, b, r) in timings.items():
            print(f"{name:>16} {a * 1e3:11.1f} {b * 1e3:11.1f} {r:7.3f}", flush=True)
        curves = knn_curve(store, args.curve, args.probe_every, Path(tmp)) if args.curve else {}
    for name, (_, _, r) in timings.items():
        print(f"RESULT {name}_ratio={r:.3f}")
    for scoring, s in stats.items():
        print(f"RESULT {scoring}_entropy={s['entropy']:.4f}")
        print(f"RESULT {scoring}_flat_seed_share={s['flat_seed_share']:.3f}")
        print(f"RESULT {scoring}_flat_target_share={s['flat_target_share']:.3f}")
    for scoring, rows in curves.items():
        if rows:
            last = rows[-1]
            key = next((k for k in last if k not in ("step", "epoch")), None)
            if key is not None:
                print(f"RESULT {scoring}_final_knn={last[key]}")


if __name__ == "__main__":
    main()
