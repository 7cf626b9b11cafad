"""Check every published encoder against its reference implementation, on one batch each.

Each module ``scripts/published_refs/<family>.py`` (modules starting with ``_`` are helpers)
defines ``CHECKS``: a list of ``(name, check)``, where ``check()`` saves random weights in the
release's own file layout, loads them through geofm (:func:`geofm.published.load_release`) and
through the reference (torchgeo's model with its weight enum, timm, or the official code), runs
both on a batch of real Sentinel-2 chips and returns ``(max_abs_diff, geofm_seconds,
reference_seconds)``. Timings are the best of a few interleaved runs of the pooled forward in
the same process, so the ratio is measured under the same load.

Usage::

    python scripts/check_published.py                 # every model
    python scripts/check_published.py --only dofa_base ssl4eo_vits16_mae

Prints per model::

    RESULT max_abs_diff_<name>=<x>
    RESULT speed_ratio_<name>=<reference seconds / geofm seconds>

and finally ``RESULT published_encoders=<n>``: the models within the tolerance. Exits 1 when a
model exceeds it or its check fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REFS = Path(__file__).resolve().parent / "published_refs"
TOLERANCE = 1e-4

Check = Callable[[], tuple[float, float, float]]


def discover() -> list[tuple[str, Check]]:
    """Every ``(name, check)`` of every reference module, in file-name order."""
    sys.path.insert(0, str(REFS))
    checks: list[tuple[str, Check]] = []
    for path in sorted(REFS.glob("*.py")):
        if path.name.startswith("_"):
            continue
        spec = importlib.util.spec_from_file_location(f"published_refs.{path.stem}", path)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        checks.extend(getattr(module, "CHECKS", []))
    return checks


def main(argv: list[str] | None = None) -> int:
    """Run the checks; 0 when every model is within :data:`TOLERANCE`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=None, metavar="NAME",
                        help="check only these models")
    args = parser.parse_args(argv)

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, tolerance "
          f"{TOLERANCE:g}", flush=True)
    passed, failed = 0, 0
    for name, check in discover():
        if args.only and name not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            diff, t_geofm, t_ref = check()
        except Exception:  # one model's failure must not hide the others' results
            traceback.print_exc()
            print(f"FAILED {name}", flush=True)
            failed += 1
            continue
        ok = diff <= TOLERANCE
        passed += ok
        failed += not ok
        print(f"RESULT max_abs_diff_{name}={diff:.3g}")
        print(f"RESULT speed_ratio_{name}={t_ref / t_geofm:.3f}")
        print(f"# {name}: geofm {t_geofm:.3f} s, reference {t_ref:.3f} s per batch; check "
              f"took {time.perf_counter() - t0:.0f} s", flush=True)
    print(f"RESULT published_encoders={passed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
