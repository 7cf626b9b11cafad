"""Benchmark: ``predict --embed`` with a published encoder, end to end against the model alone.

For each published encoder (default DOFA-B/16 and SSL4EO-S12 ViT-S/16 MAE), random weights are
saved in the release's own file format (the writers of ``scripts/published_refs``) and loaded by
name, as ``geofm predict NAME --weights FILE --embed`` does. The raster is the real 13-band
Sentinel-2 L1C cut-out in ``datasets/sentinel2_l1c/`` repeated to ``--size`` px (a tiled GeoTIFF
with the band descriptions, UTM, 10 m). Each round runs, back to back (the order alternating):

* **end to end**: :func:`geofm.predict.predict_raster` with ``embed=True`` — read the windows,
  match the bands by name, check their scale, normalise with the release's contract, run the
  encoder, blend the patch embeddings and write a Cloud-Optimized GeoTIFF with overviews;
* **model only**: the same tiles, read into memory and normalised beforehand, through the same
  ``Predictor.outputs(..., "embed")`` calls.

The ratio model-only ÷ end-to-end wall time (median over ``--rounds`` paired rounds) is the
pipeline's efficiency (1.0: the pipeline costs nothing beyond the model; goal ≥ 0.9).

Usage::

    .venv/bin/python scripts/bench_published_predict.py                 # ~5 min on 2 cores
    .venv/bin/python scripts/bench_published_predict.py --size 256 --rounds 1   # quick

Output ends with ``RESULT predict_embed_efficiency_<name>=<ratio>`` and
``RESULT predict_embed_px_per_s_<name>=<end-to-end px/s>`` for each model.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np
import rasterio
import torch

REPO = Path(__file__).resolve().parents[1]
SCENE = REPO / "datasets" / "sentinel2_l1c" / "s2_l1c_13band_10m_256px.tif"
REFS = REPO / "scripts" / "published_refs"


def ref_module(family: str) -> ModuleType:
    """``scripts/published_refs/<family>.py``: the release-format writers."""
    spec = importlib.util.spec_from_file_location(f"published_refs_{family}",
                                                  REFS / f"{family}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def release_file(name: str, folder: Path) -> Path:
    """Random weights of ``name`` saved as its published file."""
    from geofm.published.resolve import spec_for

    spec = spec_for(name)
    path = folder / spec.weights_file
    if name.startswith("dofa"):
        state = ref_module("dofa").release_state(name)
    elif name.startswith("ssl4eo"):
        state = ref_module("ssl4eo").release_state()
    else:
        raise SystemExit(f"no release writer for {name}")
    torch.save(state, path)
    return path


def make_raster(path: Path, size: int) -> Path:
    """The real 13-band scene repeated to ``size`` × ``size`` px, tiled, band descriptions
    kept."""
    with rasterio.open(SCENE) as src:
        data, profile, desc = src.read(), src.profile, src.descriptions
    reps = -(-size // data.shape[1])
    tiled = np.tile(data, (1, reps, reps))[:, :size, :size]
    profile.update(width=size, height=size, tiled=True, blockxsize=256, blockysize=256,
                   compress=None)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(tiled)
        dst.descriptions = desc
    return path


def efficiency(name: str, weights: Path, raster: Path, workdir: Path, rounds: int,
               batch_size: int) -> dict[str, float]:
    """Paired end-to-end and model-only rounds; the median ratio and the best times."""
    from geofm.predict import Predictor, build_grid, plan_bands, predict_raster
    from geofm.predict.pipeline import read_batches
    from geofm.predict.sources import open_source

    predictor = Predictor.from_checkpoint(name, weights)
    with open_source([raster]) as source:
        plan = plan_bands(predictor, source.labels, source=source.name)
        grid = build_grid(predictor, "embed", source.height, source.width, None, None)
        batches = [b.images for b in read_batches(source, plan, grid, batch_size)]

    def model_only(images: np.ndarray) -> None:
        predictor.outputs(torch.from_numpy(images), plan.bands, "embed")

    model_only(batches[0])  # warm-up
    runs: dict[str, list[float]] = {"model": [], "e2e": []}
    for r in range(rounds):
        for step in ("model", "e2e") if r % 2 == 0 else ("e2e", "model"):
            t0 = time.perf_counter()
            if step == "model":
                for images in batches:
                    model_only(images)
            else:
                predict_raster(predictor, raster, workdir / f"{name}_{r}.tif", embed=True,
                               batch_size=batch_size, progress=False)
            runs[step].append(time.perf_counter() - t0)
        print(f"  {name} round {r + 1}: end to end {runs['e2e'][-1]:.2f} s, model only "
              f"{runs['model'][-1]:.2f} s ({grid.num_tiles} tiles)", flush=True)
    pairs = [m / e for m, e in zip(runs["model"], runs["e2e"], strict=True)]
    return {"ratio": statistics.median(pairs), "e2e": min(runs["e2e"]),
            "model": min(runs["model"]), "pixels": grid.height * grid.width}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dofa_base", "ssl4eo_vits16_mae"])
    parser.add_argument("--size", type=int, default=512, help="raster side in px")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    os.environ.setdefault("GEOFM_OFFLINE", "1")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.size}² px, "
          f"{args.rounds} paired rounds", flush=True)
    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        raster = make_raster(work / "scene.tif", args.size)
        for name in args.models:
            weights = release_file(name, work)
            r = efficiency(name, weights, raster, work, args.rounds, args.batch_size)
            print(f"{name}: model only {r['model']:.2f} s, end to end {r['e2e']:.2f} s, "
                  f"ratio {r['ratio']:.3f}", flush=True)
            results += [(f"predict_embed_efficiency_{name}", round(r["ratio"], 3)),
                        (f"predict_embed_px_per_s_{name}", round(r["pixels"] / r["e2e"]))]
    for key, value in results:
        print(f"RESULT {key}={value}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
