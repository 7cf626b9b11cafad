"""The installed product, as a user meets it: build the wheel, install it (not editable) into a
fresh environment that cannot see the source tree, and run the README's headline from an empty
folder.

The environment (tests/wheel_env.py) holds the wheel and the core dependencies only, linked from
the test interpreter's site-packages without the optional extras (onnx, text, modis), so the run
also proves that the core needs none of them. Nothing is downloaded.
"""

from __future__ import annotations

import subprocess
import zipfile
from pathlib import Path

import pytest

from .wheel_env import build_wheel, install, run

pytestmark = pytest.mark.slow


def test_installed_wheel_runs_the_headline_from_an_empty_folder(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in ("geofm/resources/configs/pretrain/reben_s1s2.yaml",
                    "geofm/resources/configs/align/reben_align.tiny.yaml",
                    "geofm/resources/datasets/reben_mini/metadata.parquet",
                    "geofm/resources/datasets/reben_mini/CARD.md",
                    "geofm/__main__.py"):
        assert shipped in names, shipped
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert not any(n.startswith(("tests/", "scripts/", "datasets/", "configs/")) for n in names)

    bindir, env = install(tmp_path, wheel)  # without the extras' packages
    empty = tmp_path / "empty"
    empty.mkdir()
    cache = tmp_path / "cache"
    env["GEOFM_CACHE"] = str(cache)
    python, geofm = str(bindir / "python"), str(bindir / "geofm")

    where = run([python, "-c", "import geofm, importlib.metadata as m; print(geofm.__file__); "
                  "print(m.version('geofm'), geofm.__version__)"], empty, env).stdout.split()
    assert Path(where[0]).is_relative_to(tmp_path / "venv"), where  # the wheel, not the checkout
    assert where[1] == where[2]
    assert "pretrain" in run([geofm, "--help"], empty, env).stdout
    assert run([python, "-m", "geofm", "--help"], empty, env).stdout.startswith("usage: geofm")
    listed = run([geofm, "configs"], empty, env).stdout
    assert "reben_s1s2 " in listed and "reben_align.tiny" in listed

    r = run([geofm, "pretrain", "--bands", "14", "--max-steps", "2", "--quiet"], empty, env)
    assert f"building the embedded reBEN sample store in {cache / 'reben_mini.zarr'}" in r.stderr
    checkpoint = empty / "runs" / "pretrain" / "pretrain.safetensors"
    assert checkpoint.is_file() and "pretrained 2 steps" in r.stdout
    assert sorted(p.name for p in empty.iterdir()) == ["runs"]  # the store went to the cache

    # An extra that is not installed: one line naming it, exit status 2.
    r = subprocess.run([geofm, "export", str(checkpoint), "--onnx", "m.onnx"], cwd=empty,
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "geofm: error: ONNX export needs onnx, which is not installed — pip install "
        "'geofm[onnx]'"], r.stderr
