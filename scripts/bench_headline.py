"""Time of the README's headline, ``geofm pretrain --bands 14``, as a user meets it.

Builds geofm's wheel and installs it (not editable) into a fresh venv whose dependencies are
linked from this interpreter's site-packages without the optional extras (tests/wheel_env.py),
then, from empty folders with an empty ``GEOFM_CACHE``:

1. ``geofm --help`` (start-up: Python, argparse, no torch);
2. the headline on first use: the embedded reBEN sample is built into a chip store in the cache,
   then the default model trains (120 steps unless ``--max-steps``);
3. the headline again from a second empty folder: the cached store, training only (the
   baseline of the ratio);
4. the sample-store build alone, in one process (``geofm.packaged.sample_store`` into a new cache
   folder), to separate first-use cost from import and training time.

Each run records wall-clock seconds, the CPU seconds of its processes and the 1-minute load
average before and after (``os.getloadavg()``): on a machine shared with other work the
wall-clock figures stretch and the CPU seconds do not.

Usage::

    python scripts/bench_headline.py                  # the headline as typed (~5 min on 2 cores)
    python scripts/bench_headline.py --max-steps 20   # shorter

It ends with ``RESULT`` lines: ``headline_first_s``, ``headline_cached_s``,
``first_over_cached``, ``sample_store_build_s``, ``help_s``, their CPU seconds, and the load
averages.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.wheel_env import build_wheel, install, run


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Wall-clock and CPU seconds of one command, and the load average around it."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    run(cmd, cwd, env, timeout=3600)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "load_before": load_before,
            "load_after": os.getloadavg()[0]}


def main() -> None:
    """Install the wheel, time the runs, print the table and RESULT lines."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-steps", type=int, help="add --max-steps N to the headline")
    args = parser.parse_args()
    extra = [] if args.max_steps is None else ["--max-steps", str(args.max_steps)]
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="geofm-bench-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        bindir, env = install(tmp, build_wheel(tmp))
        setup_s = time.perf_counter() - t0
        env["GEOFM_CACHE"] = str(tmp / "cache")
        geofm, python = str(bindir / "geofm"), str(bindir / "python")
        first, second = tmp / "first", tmp / "second"
        first.mkdir()
        second.mkdir()
        rows = {
            "help": timed([geofm, "--help"], first, env),
            "headline_first": timed([geofm, "pretrain", "--bands", "14", "--quiet", *extra],
                                    first, env),
            "headline_cached": timed([geofm, "pretrain", "--bands", "14", "--quiet", *extra],
                                     second, env),
            "sample_store_build": timed(
                [python, "-c", "from geofm.packaged import sample_store; "
                 f"sample_store({str(tmp / 'cache2')!r}, quiet=True)"], second, env),
        }
        assert (first / "runs/pretrain/pretrain.safetensors").is_file()
        assert (second / "runs/pretrain/pretrain.safetensors").is_file()
    cpus = os.cpu_count()
    print(f"geofm pretrain --bands 14 --quiet {' '.join(extra)} from an empty folder after a "
          f"wheel install; {cpus} CPUs; wheel build + install {setup_s:.1f} s")
    print(f"load average at start (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in load_start)}")
    print(f"{'run':<22}{'wall s':>10}{'CPU s':>10}{'load before':>13}{'load after':>12}")
    for name, r in rows.items():
        print(f"{name:<22}{r['wall']:>10.1f}{r['cpu']:>10.1f}{r['load_before']:>13.2f}"
              f"{r['load_after']:>12.2f}")
    ratio = rows["headline_first"]["wall"] / rows["headline_cached"]["wall"]
    for name, r in rows.items():
        print(f"RESULT {name}_s={r['wall']:.2f}")
        print(f"RESULT {name}_cpu_s={r['cpu']:.2f}")
    print(f"RESULT first_over_cached={ratio:.3f}")
    print(f"RESULT load1_start={load_start[0]:.2f}")
    print(f"RESULT load1_end={os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
