"""Benchmark: streaming GeoTIFF prediction — pipeline efficiency, peak memory, throughput.

Rasters are tiled from real Sentinel-2 pixels: bands B02, B03, B04 and B08 of the full scene in
``../shared/data/sentinel2_l1c/`` (1,947 × 1,933 px at 10 m) when present, else of the 256 px
cut-out in ``datasets/sentinel2_l1c/``, repeated to N × N px and written as tiled, uncompressed
GeoTIFFs with band descriptions (UTM 18N, 10 m).

1. **Efficiency**: a geofm model (encoder + segmentation head, 19 classes, 128 px tiles, 32 px
   overlap, batches of 8) predicts a raster end to end with
   :func:`geofm.predict.predict_raster` — read, normalise, infer, blend, write, Cloud-Optimized
   GeoTIFF with overviews — and, on the same tiles read into memory beforehand, the model alone
   (the same ``Predictor.outputs`` calls), 512² px (``--size``). Each round runs both back to
   back (the order alternates) and gives one ratio model-only time ÷ end-to-end time; the
   median over ``--rounds`` (default 3) is the efficiency (1.0: the pipeline costs nothing
   beyond the model; goal ≥ 0.9). Pairing adjacent runs matters on a shared machine, where
   the load changes the speed of both by several times within minutes; CPU times are printed
   beside. Two encoders: ``channelvit_tiny`` (ViT-Ti size; the shipped recipes use the larger
   ``channelvit_small``), reported as ``predict_efficiency``, and the 2-block
   ``channelvit_test``, whose tiles take so little time that the pipeline's own work shows.
2. **Peak memory** (``--rss-sizes``, default 2,048², 4,096², 8,192² px): each size is predicted
   in a fresh subprocess with a tiny per-pixel model (two 1 × 1 convolutions, 4 → 16 → 19
   classes, so the 64-Mpx run stays within minutes on 2 cores) and the same pipeline (256 px
   tiles, 32 px overlap), reporting ``ru_maxrss`` and the RSS before predicting.
   ``rss_8k_over_2k`` = peak RSS at the largest size ÷ at the smallest (1.0: flat).

3. **Host pipeline** (``--host-only``, alone): the whole of ``predict_raster`` with a null
   model (a 19-class segmentation predictor whose model is a channel gather, so the model costs
   one copy) on a ``--host-size`` (default 2,048²) DEFLATE-tiled input, in a fresh process
   pinned to one CPU and in one using all of them, ``--rounds`` paired rounds each against the
   same run's **I/O floor**: reading the pipeline's windows (one thread) and writing a plain
   tiled GeoTIFF of the class map's size with GDAL. Reports ``host_cpu_s_per_mpx`` (CPU
   seconds of the process, all threads, per megapixel; all cores), ``host_mpx_per_s_1`` and
   ``host_mpx_per_s_all`` (best wall-clock throughput) and ``host_over_io_floor`` (median of
   floor time ÷ pipeline time per round, all cores; goal ≥ 0.7). Run it against another
   checkout's code with ``PYTHONPATH=<checkout> python <checkout>/scripts/bench_predict.py``.

Usage::

    .venv/bin/python scripts/bench_predict.py                 # ~4 min on 2 cores
    .venv/bin/python scripts/bench_predict.py --size 256 --rounds 1 \
        --rss-sizes 1024 2048                                  # a quick run
    .venv/bin/python scripts/bench_predict.py --rss-only --rss-sizes 2048 8192
    .venv/bin/python scripts/bench_predict.py --host-only     # ~2 min on 2 cores

Output ends with ``RESULT predict_efficiency=<model-only ÷ end-to-end time>`` (and the same for
the test encoder), ``RESULT rss_8k_over_2k=<peak RSS ratio>``, ``RESULT predict_px_per_s=...``
(end to end, each encoder) and ``RESULT predict_tiny_px_per_s=...`` (largest size, tiny
per-pixel model); with ``--host-only``, the four ``host_*`` results instead.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from affine import Affine
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data" / "sentinel2_l1c"
SCENE = REPO / "datasets" / "sentinel2_l1c" / "s2_l1c_13band_10m_256px.tif"
BANDS = ("B02", "B03", "B04", "B08")
CLASSES = 19
HOST_OVERLAP = 32


def source_pixels() -> tuple[np.ndarray, str]:
    """``[4, H, W]`` uint16 real pixels and where they came from."""
    if all((SHARED / f"{b}.tif").exists() for b in BANDS):
        arrays = []
        for b in BANDS:
            with rasterio.open(SHARED / f"{b}.tif") as ds:
                arrays.append(ds.read(1))
        h = min(a.shape[0] for a in arrays)
        w = min(a.shape[1] for a in arrays)
        return np.stack([a[:h, :w] for a in arrays]), f"{SHARED} ({h}×{w} px)"
    with rasterio.open(SCENE) as ds:
        index = [ds.descriptions.index(b) + 1 for b in BANDS]
        return ds.read(index), f"{SCENE.relative_to(REPO)} (256×256 px)"


def make_raster(path: Path, size: int, pixels: np.ndarray, compress: str | None = None
                ) -> Path:
    """An N × N GeoTIFF repeating ``pixels``, written in bands of 512 rows."""
    _, h, w = pixels.shape
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint16",
               "crs": "EPSG:32618", "transform": Affine(10, 0, 400000, 0, -10, 4200000),
               "tiled": True, "blockxsize": 512, "blockysize": 512}
    if compress:
        profile["compress"] = compress
    reps = (1, -(-512 // h) + 1, -(-size // w))
    strip = np.tile(pixels, reps)  # [4, ≥ 512 + h, ≥ size]
    with rasterio.open(path, "w", **profile) as ds:
        ds.descriptions = BANDS
        for row in range(0, size, 512):
            n = min(512, size - row)
            start = row % h
            ds.write(strip[:, start:start + n, :size], window=((row, row + n), (0, size)))
    return path


def geofm_checkpoint(path: Path, model: str = "channelvit_test") -> Path:
    """A ``model`` + segmentation-head checkpoint on the four bands (random weights: speed
    does not depend on them)."""
    from geofm.bands import bands_info
    from geofm.card import ModelCard
    from geofm.checkpoint import save_checkpoint
    from geofm.models import create_model
    from geofm.models.finetuner import Finetuner

    bands = [f"S2.{b}" for b in BANDS]
    torch.manual_seed(0)
    encoder = create_model(model, bands=bands)
    finetuner = Finetuner(encoder, "segmentation", CLASSES, head="segmentation")
    header = {"kind": "finetune", "task": "segmentation",
              "head": {"kind": "segmentation", "num_outputs": CLASSES, "freeze": "full",
                       "unfreeze_last": 0},
              "model": {"name": model, "config": encoder.model_config},
              "bands": bands, "band_info": bands_info(bands),
              "normalization": {"mean": [1000.0] * 4, "std": [600.0] * 4},
              "classes": [f"class {i}" for i in range(CLASSES)], "class_colors": [],
              "tile_size": [128, 128], "patch_size": 8, "gsd_m": 10.0}
    return save_checkpoint(path, finetuner.state_dict(), ModelCard.from_header(header))


class PixelModel(nn.Module):
    """Two 1 × 1 convolutions: the cheapest per-pixel segmentation model."""

    patch_size = 8
    embed_dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(4, 16, 1), nn.GELU(), nn.Conv2d(16, CLASSES, 1))

    def forward(self, images: Tensor, bands: list[str]) -> Tensor:
        return self.net(images)  # [B, K, H, W]


def tiny_predictor() -> Any:
    from geofm.card import ModelCard
    from geofm.predict import Predictor

    torch.manual_seed(0)
    header = {"kind": "finetune", "task": "segmentation", "bands": [f"S2.{b}" for b in BANDS],
              "head": {"kind": "segmentation", "num_outputs": CLASSES},
              "normalization": {"mean": [1000.0] * 4, "std": [600.0] * 4},
              "classes": [f"class {i}" for i in range(CLASSES)], "tile_size": [256, 256],
              "patch_size": 8, "gsd_m": 10.0, "model": {"name": "pixel_mlp"}}
    return Predictor(PixelModel(), ModelCard.from_header(header), "pixel_mlp")


def null_predictor(classes: int = CLASSES) -> Any:
    """A segmentation predictor whose model is a channel gather: output ``k`` is input band
    ``k mod C``. The model costs one copy, so a run measures the host pipeline; the class map
    keeps the input's structure (the argmax of the four bands)."""
    from geofm.card import ModelCard
    from geofm.predict import Predictor

    class Null(Predictor):
        def outputs(self, images: Tensor, bands: Any, mode: str) -> Tensor:
            index = torch.arange(classes, device=images.device) % images.shape[1]
            return images[:, index]  # [B, K, H, W]

    header = {"kind": "finetune", "task": "segmentation", "bands": [f"S2.{b}" for b in BANDS],
              "head": {"kind": "segmentation", "num_outputs": classes},
              "normalization": {"mean": [1000.0] * 4, "std": [600.0] * 4},
              "classes": [f"class {i}" for i in range(classes)], "tile_size": [256, 256],
              "patch_size": 8, "gsd_m": 10.0, "model": {"name": "null"}}
    return Null(nn.Identity(), ModelCard.from_header(header), "null")


def cpu_seconds() -> float:
    """User + system CPU time of this process, all threads (GDAL's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def io_floor(raster: Path, out: Path) -> float:
    """Seconds to read the pipeline's windows (one thread, float32, its GDAL cache) and write
    a plain tiled GeoTIFF of the class map's size: the I/O a prediction cannot avoid."""
    from geofm.predict import build_grid
    from geofm.predict.settings import GDAL_CACHE_BYTES

    t0 = time.perf_counter()
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(raster) as ds:
        grid = build_grid(null_predictor(), "pixel", ds.height, ds.width, None, HOST_OVERLAP)
        th, tw = grid.tile
        for panel in grid.panels:
            for y in grid.rows:
                for j in panel.cols:
                    x = grid.cols[j]
                    window = rasterio.windows.Window(x, y, min(tw, ds.width - x),
                                                     min(th, ds.height - y))
                    ds.read(window=window, out_dtype="float32")
        profile = {"driver": "GTiff", "width": ds.width, "height": ds.height, "count": 1,
                   "dtype": "uint8", "crs": ds.crs, "transform": ds.transform, "tiled": True,
                   "blockxsize": 256, "blockysize": 256}
        block = np.zeros((1, 256, ds.width), np.uint8)
        with rasterio.open(out, "w", **profile) as dst:
            for row in range(0, ds.height, 256):
                n = min(256, ds.height - row)
                dst.write(block[:, :n], window=((row, row + n), (0, ds.width)))
    return time.perf_counter() - t0


def host_child(raster: Path, workdir: Path, cores: int, rounds: int) -> None:
    """Pipeline with the null model and the I/O floor, paired round by round, on ``cores``
    CPUs (the process is pinned before torch and GDAL start their threads); prints JSON."""
    from geofm.predict import predict_raster

    predictor = null_predictor()
    runs: dict[str, list[tuple[float, float]]] = {"host": [], "floor": []}
    for r in range(rounds):
        for step in ("host", "floor") if r % 2 == 0 else ("floor", "host"):
            out = workdir / f"host_{cores}_{r}_{step}.tif"
            t0, c0 = time.perf_counter(), cpu_seconds()
            if step == "host":
                predict_raster(predictor, raster, out, overlap=HOST_OVERLAP, batch_size=8,
                               progress=False)
            else:
                io_floor(raster, out)
            runs[step].append((time.perf_counter() - t0, cpu_seconds() - c0))
            out.unlink()
    print(json.dumps(runs))


def host_only(args: argparse.Namespace, pixels: np.ndarray, workdir: Path) -> None:
    """Section 3 alone: host pipeline throughput with 1 and all cores against the I/O floor."""
    size = args.host_size
    raster = make_raster(workdir / f"host_{size}.tif", size, pixels, compress="deflate")
    mpx = size * size / 1e6
    cores_all = len(os.sched_getaffinity(0))
    print(f"\n3. host pipeline: null model (channel gather), 19 classes, 256 px tiles, overlap "
          f"{HOST_OVERLAP}, batch 8, {size}² px DEFLATE input, class map COG; "
          f"{args.rounds} paired rounds per core count", flush=True)
    results = {}
    for cores in sorted({1, cores_all}):
        load = os.getloadavg()
        out = subprocess.run(
            [sys.executable, __file__, "--host-child", str(raster), str(workdir), str(cores),
             str(args.rounds)], check=True, capture_output=True, text=True)
        runs = json.loads(out.stdout.strip().splitlines()[-1])
        host = min(w for w, _ in runs["host"])
        floor = min(w for w, _ in runs["floor"])
        ratios = [f[0] / h[0] for h, f in zip(runs["host"], runs["floor"])]
        cpu = statistics.median(c for _, c in runs["host"])
        results[cores] = {"rate": mpx / host, "ratio": statistics.median(ratios),
                          "cpu": cpu / mpx}
        print(f"  {cores} core(s) (load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}): "
              f"best pipeline {host:.2f} s ({mpx / host:.2f} Mpx/s, median CPU {cpu:.2f} s = "
              f"{cpu / mpx:.3f} s/Mpx), best I/O floor {floor:.2f} s; floor ÷ pipeline per "
              "round " + ", ".join(f"{r:.3f}" for r in ratios), flush=True)
    print(f"\nRESULT host_cpu_s_per_mpx={results[cores_all]['cpu']:.3f}")
    print(f"RESULT host_mpx_per_s_1={results[1]['rate']:.3f}")
    print(f"RESULT host_mpx_per_s_all={results[cores_all]['rate']:.3f}")
    print(f"RESULT host_over_io_floor={results[cores_all]['ratio']:.3f}")


def rss_mib() -> float:
    """Current resident set size in MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def rss_child(raster: Path, out: Path) -> None:
    """Predict one raster with the tiny model and print a JSON line of measurements."""
    from geofm.predict import predict_raster

    predictor = tiny_predictor()
    before = rss_mib()
    t0 = time.perf_counter()
    result = predict_raster(predictor, raster, out, overlap=32, batch_size=8, progress=False)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"before_mib": before, "peak_mib": peak, "seconds": seconds,
                      "tiles": result["tiles"], "accumulator_mib":
                      result["accumulator_bytes"] / 2**20}))


def efficiency(raster: Path, workdir: Path, rounds: int, model: str,
               device: str = "cpu") -> dict[str, float]:
    """End-to-end and model-only runs on the same tiles, paired round by round.

    Returns:
        The median paired ratio (model-only ÷ end-to-end wall time) and each round's, the best
        wall and median CPU times of each, the tile and pixel counts.
    """
    from geofm.predict import Predictor, build_grid, plan_bands, predict_raster
    from geofm.predict.pipeline import read_batches
    from geofm.predict.sources import open_source

    predictor = Predictor.from_checkpoint(geofm_checkpoint(workdir / f"{model}.safetensors",
                                                           model)).to(device)
    with open_source([raster]) as source:
        plan = plan_bands(predictor, source.labels, source=source.name)
        grid = build_grid(predictor, "pixel", source.height, source.width, None, None)
        batches = [b.images for b in read_batches(source, plan, grid, 8)]
    def model_only(images: np.ndarray) -> np.ndarray:
        inputs = torch.from_numpy(images).to(device)
        return predictor.outputs(inputs, plan.bands, "pixel").cpu().numpy()

    model_only(batches[0])  # warm-up
    runs: dict[str, list[tuple[float, float]]] = {"model": [], "e2e": []}
    for r in range(rounds):
        for step in ("model", "e2e") if r % 2 == 0 else ("e2e", "model"):
            t0, c0 = time.perf_counter(), time.process_time()
            if step == "model":
                for images in batches:
                    model_only(images)
            else:
                inside = predict_raster(predictor, raster, workdir / f"e2e_{model}_{r}.tif",
                                        device=device, progress=False)["model_seconds"]
            runs[step].append((time.perf_counter() - t0, time.process_time() - c0))
        print(f"  round {r + 1}: end-to-end {runs['e2e'][-1][0]:.2f} s (model calls inside "
              f"the pipeline {inside:.2f} s), model only {runs['model'][-1][0]:.2f} s",
              flush=True)
    pairs = [m[0] / e[0] for m, e in zip(runs["model"], runs["e2e"])]
    return {"ratio": statistics.median(pairs), "pairs": pairs,
            "e2e": min(w for w, _ in runs["e2e"]), "model": min(w for w, _ in runs["model"]),
            "e2e_cpu": statistics.median(c for _, c in runs["e2e"]),
            "model_cpu": statistics.median(c for _, c in runs["model"]),
            "tiles": grid.num_tiles, "pixels": grid.height * grid.width}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="channelvit_tiny",
                        help="encoder of the efficiency run reported as predict_efficiency")
    parser.add_argument("--test-model", default="channelvit_test",
                        help="a second, cheaper encoder (the pipeline's overhead shows more)")
    parser.add_argument("--size", type=int, default=512, help="efficiency raster side (px)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="device of the efficiency runs")
    parser.add_argument("--rss-sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument("--rss-only", action="store_true",
                        help="only the peak-memory runs (section 2)")
    parser.add_argument("--host-only", action="store_true",
                        help="only the host pipeline with a null model against the I/O floor")
    parser.add_argument("--host-size", type=int, default=2048,
                        help="raster side of the host-only run (px)")
    parser.add_argument("--rss-child", nargs=2, metavar=("RASTER", "OUT"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--host-child", nargs=4, metavar=("RASTER", "DIR", "CORES", "ROUNDS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(Path(args.rss_child[0]), Path(args.rss_child[1]))
        return
    if args.host_child:
        cores = int(args.host_child[2])
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])
        torch.set_num_threads(cores)
        host_child(Path(args.host_child[0]), Path(args.host_child[1]), cores,
                   int(args.host_child[3]))
        return

    print(f"torch {torch.__version__}, rasterio {rasterio.__version__} "
          f"(GDAL {rasterio.__gdal_version__}), {torch.get_num_threads()} torch threads")
    pixels, origin = source_pixels()
    print(f"pixels from {origin}")
    workdir = Path(tempfile.mkdtemp(prefix="bench_predict_"))
    if args.host_only:
        try:
            host_only(args, pixels, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return
    try:
        print("\n1. efficiency: " + ("skipped (--rss-only)" if args.rss_only else
                                      "segmentation head, 19 classes, 128 px tiles, overlap "
                                      f"32, batch 8, device {args.device}"), flush=True)
        ratios: dict[str, float] = {}
        rates: dict[str, float] = {}
        raster = make_raster(workdir / f"s2_{args.size}.tif", args.size, pixels)
        for model in () if args.rss_only else (args.model, args.test_model):
            print(f" {model}, {args.size}² px, {args.rounds} rounds "
                  f"(load average {os.getloadavg()[0]:.1f})", flush=True)
            eff = efficiency(raster, workdir, args.rounds, model, args.device)
            ratios[model] = eff["ratio"]
            rates[model] = eff["pixels"] / eff["e2e"]
            print(f"  {eff['tiles']} tiles; best end-to-end {eff['e2e']:.2f} s "
                  f"({rates[model]:,.0f} px/s), best model-only {eff['model']:.2f} s "
                  f"({eff['pixels'] / eff['model']:,.0f} px/s); efficiency per round "
                  + ", ".join(f"{r:.3f}" for r in eff["pairs"])
                  + f" -> median {eff['ratio']:.3f}")
            print(f"  CPU time (median): end-to-end {eff['e2e_cpu']:.2f} s, model only "
                  f"{eff['model_cpu']:.2f} s -> {eff['model_cpu'] / eff['e2e_cpu']:.3f}",
                  flush=True)

        print("\n2. peak RSS: tiny per-pixel model, 256 px tiles, overlap 32, batch 8, "
              "one subprocess per size", flush=True)
        print(f"  {'size':>6} {'tiles':>6} {'seconds':>8} {'px/s':>12} {'RSS before':>11} "
              f"{'peak RSS':>9} {'accumulator':>11}")
        rows = []
        for size in args.rss_sizes:
            path = make_raster(workdir / f"rss_{size}.tif", size, pixels)
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(path),
                 str(workdir / f"rss_{size}_pred.tif")],
                check=True, capture_output=True, text=True)
            m = json.loads(out.stdout.strip().splitlines()[-1])
            rate = size * size / m["seconds"]
            rows.append((size, m, rate))
            print(f"  {size:>6} {m['tiles']:>6} {m['seconds']:>8.1f} {rate:>12,.0f} "
                  f"{m['before_mib']:>9.0f} M {m['peak_mib']:>7.0f} M "
                  f"{m['accumulator_mib']:>9.1f} M", flush=True)
            path.unlink()
        rss_ratio = rows[-1][1]["peak_mib"] / rows[0][1]["peak_mib"]
        print(f"  peak RSS {rows[-1][0]}² / {rows[0][0]}²: {rss_ratio:.3f} "
              f"for {rows[-1][0] ** 2 / rows[0][0] ** 2:.0f}× the pixels")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    if not args.rss_only:
        print(f"RESULT predict_efficiency={ratios[args.model]:.3f}")
        print(f"RESULT predict_efficiency_{args.test_model}={ratios[args.test_model]:.3f}")
    print(f"RESULT rss_8k_over_2k={rss_ratio:.3f}")
    if not args.rss_only:
        print(f"RESULT predict_px_per_s={rates[args.model]:.0f}")
        print(f"RESULT predict_px_per_s_{args.test_model}={rates[args.test_model]:.0f}")
    print(f"RESULT predict_tiny_px_per_s={rows[-1][2]:.0f}")


if __name__ == "__main__":
    main()
