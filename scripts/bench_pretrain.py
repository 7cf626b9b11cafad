"""Training throughput of SelectiveMAE against MAE, on ViT and ChannelViT.

Measures images/s of full training steps (forward, backward, AdamW step) for
{vit, channelvit} × {mae, selective_mae} with the same encoder size, decoder, batch, image size
and band count, in one process. Timing runs in rounds: each round times ``--steps`` steps of
every configuration (in a rotating order), so that load from other processes hits all of them
alike. Warm-up steps are excluded. The table shows the median images/s over rounds; each
speed-up is the median over rounds of the ratio within the round.

On CUDA, each configuration's floating-point operations per step (forward and backward, counted
once with :class:`torch.utils.flop_counter.FlopCounterMode`) give its model FLOPs utilisation:
FLOP/s achieved over ``--peak-tflops`` (default: the datasheet dense bf16 peak of the detected
H100/H200, 989.4 TFLOP/s). ``--compile`` runs each step under :func:`torch.compile`.

``--bare`` adds ``selective_mae_bare`` rows: the same encoder and decoder token counts with the
HOG scoring and PSTS selection replaced by a random pick, i.e. the compute ceiling that token
selection can at best reach.

Usage::

    python scripts/bench_pretrain.py                 # defaults: < 10 minutes on 2 CPU cores
    python scripts/bench_pretrain.py --bare --img-size 120 --device cuda --size base
    python scripts/bench_pretrain.py --bare --models vit --img-size 120 --batch-size 16
    python scripts/bench_pretrain.py --device cuda --bf16 --size base --img-size 224 \
        --patch-size 16 --batch-size 128 --steps 5 --rounds 5      # GPU speed-up and MFU

It ends with ``RESULT channelvit_smae_over_vit_mae=…`` and then ``RESULT speedup_vit=…`` and
``RESULT speedup_channelvit=…`` (SelectiveMAE images/s over MAE images/s).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from geofm.bands import BAND_SETS
from geofm.models import create_model
from geofm.objectives import create_objective
from geofm.objectives.common import random_subset
from geofm.objectives.selective_mae import SelectiveMAE, TokenSelection

SDPA_BACKENDS = {
    "auto": [],
    "flash": [SDPBackend.FLASH_ATTENTION],
    "cudnn": [SDPBackend.CUDNN_ATTENTION],
    "efficient": [SDPBackend.EFFICIENT_ATTENTION],
    "math": [SDPBackend.MATH],
}
"""``--sdpa`` choices: the backend tried first; PyTorch's usual order follows."""


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="tiny", help="encoder size: test|tiny|small|base|large")
    parser.add_argument("--img-size", type=int, default=64)
    parser.add_argument("--patch-size", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--bands", type=int, default=14, help="first N bands of the s1s2 set")
    parser.add_argument("--decoder-dim", type=int, default=512)
    parser.add_argument("--decoder-depth", type=int, default=8)
    parser.add_argument("--decoder-heads", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1, help="timed steps per config and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per config")
    parser.add_argument("--bare", action="store_true", help="also time selection-free compute")
    parser.add_argument("--hcs", action="store_true",
                        help="Hierarchical Channel Sampling on every step (ChannelViT's recipe)")
    parser.add_argument("--models", default="vit,channelvit", help="encoder families to time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile each step")
    parser.add_argument("--sdpa", default="auto", choices=sorted(SDPA_BACKENDS),
                        help="preferred attention kernel (falls back to PyTorch's order)")
    parser.add_argument("--peak-tflops", type=float, default=0.0,
                        help="peak for MFU (0: datasheet dense bf16 of a detected H100/H200)")
    return parser.parse_args()


def structured_batch(batch: int, bands: int, size: int, device: str) -> torch.Tensor:
    """Smooth random fields with edges: a stand-in for normalised imagery, ``[B, C, H, W]``."""
    gen = torch.Generator().manual_seed(0)
    coarse = torch.randn(batch, bands, size // 8, size // 8, generator=gen)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    blocks = F.interpolate(coarse.sign(), size=(size, size), mode="nearest")
    return (smooth + 0.5 * blocks + 0.1 * torch.randn(smooth.shape, generator=gen)).to(device)


def bare_selection(objective: SelectiveMAE) -> None:
    """Replace HOG scoring and PSTS with a uniform pick of the same token counts."""

    def scores(inputs: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        b, c, h, w = inputs.shape
        tokens = (h // objective.encoder.patch_size) * (w // objective.encoder.patch_size)
        tokens *= c if objective.encoder.band_tokens else 1
        return torch.zeros(b, tokens, device=inputs.device)

    def select(scores: torch.Tensor, features: torch.Tensor, progress: float,
               generator: torch.Generator | None = None) -> TokenSelection:
        b, t = scores.shape
        _, num_visible, num_targets = objective.token_counts(t)
        idx = random_subset(b, t, num_visible + num_targets, scores.device)
        visible, target = idx[:, :num_visible], idx[:, num_visible:]
        return TokenSelection(visible, visible[:, :0], visible, target)

    objective.token_scores = scores  # type: ignore[method-assign]
    objective.select_tokens = select  # type: ignore[method-assign]


def make_step(args: argparse.Namespace, model: str, objective_name: str) -> Callable[[], None]:
    """Build one configuration and return a function running one training step."""
    bands = list(BAND_SETS["s1s2"][: args.bands])
    encoder = create_model(f"{model}_{args.size}", bands=bands, patch_size=args.patch_size)
    bare = objective_name.endswith("_bare")
    objective = create_objective(
        objective_name.removesuffix("_bare"),
        encoder,
        decoder_dim=args.decoder_dim,
        decoder_depth=args.decoder_depth,
        decoder_heads=args.decoder_heads,
        hcs=args.hcs,
    ).to(args.device)
    if bare:
        assert isinstance(objective, SelectiveMAE)
        bare_selection(objective)
    # The fused AdamW kernel (CPU and CUDA) keeps the optimizer step from swamping small models.
    optimizer = torch.optim.AdamW(objective.parameters(), lr=1e-4, fused=True)
    images = structured_batch(args.batch_size, args.bands, args.img_size, args.device)

    def forward_backward(batch: torch.Tensor = images) -> None:
        with torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16,
                            enabled=args.bf16):
            loss = objective(batch, bands, progress=0.5).loss
        loss.backward()

    compiled = torch.compile(forward_backward) if args.compile else forward_backward
    preferred = SDPA_BACKENDS[args.sdpa]
    order = preferred + [b for b in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                     SDPBackend.CUDNN_ATTENTION, SDPBackend.MATH)
                         if b not in preferred]

    def step() -> None:
        if preferred:
            with sdpa_kernel(order, set_priority=True):
                compiled()
        else:
            compiled()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.forward_backward = forward_backward  # type: ignore[attr-defined]
    return step


def step_flops(step: Callable[[], None], batch_size: int, device: str, bands: int,
               img_size: int) -> float:
    """Floating-point operations of one forward + backward pass (matrix products, convolutions
    and attention, as counted by PyTorch).

    Every counted operation is linear in the batch (attention is per image), so the count runs
    eagerly on a batch of at most 8 and is scaled: the eager pass at the full batch would need
    more memory than the compiled steps being measured.
    """
    counted = min(batch_size, 8)
    images = structured_batch(counted, bands, img_size, device)
    with FlopCounterMode(display=False) as counter:
        step.forward_backward(images)  # type: ignore[attr-defined]
    return float(counter.get_total_flops()) * batch_size / counted


def peak_flops(args: argparse.Namespace) -> float:
    """The peak FLOP/s that MFU is measured against (0 when unknown, e.g. on a CPU)."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12
    if args.device.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(args.device))
        if "H100" in name or "H200" in name:
            return 989.4e12  # SXM dense bf16 (without sparsity), NVIDIA datasheet
    return 0.0


def sync(device: str) -> None:
    """Wait for queued GPU work so timings are real."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    """Run the benchmark and print the table and RESULT lines."""
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    objectives = ["mae", "selective_mae"] + (["selective_mae_bare"] if args.bare else [])
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    configs = [(m, o) for m in models for o in objectives]
    steps = {cfg: make_step(args, *cfg) for cfg in configs}
    # Under HCS each step draws its own band count, so one counted step says nothing of MFU.
    peak = 0.0 if args.hcs else peak_flops(args)
    flops = {
        cfg: step_flops(step, args.batch_size, args.device, args.bands, args.img_size)
        for cfg, step in steps.items()
    } if peak else {}
    for cfg, step in steps.items():
        for _ in range(args.warmup):
            step()
        sync(args.device)
        print(f"warmed up {cfg[0]} + {cfg[1]}", flush=True)

    rates: dict[tuple[str, str], list[float]] = {cfg: [] for cfg in configs}
    for round_index in range(args.rounds):
        shift = round_index % len(configs)
        for cfg in configs[shift:] + configs[:shift]:
            sync(args.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                steps[cfg]()
            sync(args.device)
            rates[cfg].append(args.steps * args.batch_size / (time.perf_counter() - start))
        print(f"round {round_index + 1}/{args.rounds} done", flush=True)

    def paired(num: tuple[str, str], den: tuple[str, str]) -> float:
        return statistics.median(a / b for a, b in zip(rates[num], rates[den]))

    print(f"\nencoder {args.size}, decoder {args.decoder_dim}×{args.decoder_depth}, "
          f"{args.bands} bands, {args.img_size} px, patch {args.patch_size}, "
          f"batch {args.batch_size}, HCS {args.hcs}, device {args.device}, "
          f"threads {torch.get_num_threads()}")
    if args.device.startswith("cuda"):
        print(f"GPU {torch.cuda.get_device_name(torch.device(args.device))}, bf16 {args.bf16}, "
              f"compile {args.compile}, attention {args.sdpa}, peak {peak / 1e12:.1f} TFLOP/s")
    print(f"{'encoder':<12}{'objective':<20}{'images/s':>10}{'min':>10}{'max':>10}"
          + (f"{'GFLOP/img':>11}{'TFLOP/s':>9}{'MFU':>7}" if flops else ""))
    for (model, objective), r in rates.items():
        line = (f"{model:<12}{objective:<20}{statistics.median(r):>10.2f}"
                f"{min(r):>10.2f}{max(r):>10.2f}")
        if flops:
            per_image = flops[(model, objective)] / args.batch_size
            achieved = per_image * statistics.median(r)
            line += f"{per_image / 1e9:>11.1f}{achieved / 1e12:>9.1f}{achieved / peak:>7.1%}"
        print(line)
    for (model, objective), r in rates.items():
        if flops:
            mfu = flops[(model, objective)] / args.batch_size * statistics.median(r) / peak
            print(f"RESULT mfu_{model}_{objective}={mfu:.3f}")
    if args.bare:
        for model in models:
            ceiling = paired((model, "selective_mae_bare"), (model, "mae"))
            print(f"RESULT ceiling_{model}={ceiling:.2f}")
    if {"vit", "channelvit"} <= set(models):
        ratio = paired(("channelvit", "selective_mae"), ("vit", "mae"))
        print(f"RESULT channelvit_smae_over_vit_mae={ratio:.2f}")
    for model in models:
        speedup = paired((model, "selective_mae"), (model, "mae"))
        print(f"RESULT speedup_{model}={speedup:.2f}")


if __name__ == "__main__":
    main()
