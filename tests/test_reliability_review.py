"""Bad settings of ``geofm predict`` and ``geofm export`` that were once accepted silently,
checked on the default command line (``geofm ...`` in a subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import REPO, S2_SCENE, finetune_tiny

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


@pytest.fixture(scope="module")
def multilabel(reben_store: Path, tiny_pretrained: Callable[..., Path],
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A briefly trained multi-label (scene) ChannelViT: its tiles take no overlap."""
    root = tmp_path_factory.mktemp("review_models")
    return finetune_tiny(tiny_pretrained("channelvit_test", 1), reben_store, root / "ml",
                         "multilabel")


def _geofm(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "geofm", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def _one_line(run: subprocess.CompletedProcess[str]) -> str:
    assert run.returncode == 2, (run.returncode, run.stderr)
    assert "Traceback" not in run.stderr, run.stderr
    # Warnings about the input (an L1C scene) may come first; the error is one last line.
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("geofm: error: "), run.stderr
    assert all(ln.startswith("geofm: warning: ") for ln in lines[:-1]), run.stderr
    return lines[-1]


@pytest.mark.parametrize("overlap", ["-1", "-40", "1000"])
def test_scene_model_overlap_out_of_range_is_refused(multilabel: Path, tmp_path: Path,
                                                     overlap: str) -> None:
    # A scene model tiles without overlap; a negative or oversized one was ignored silently.
    run = _geofm("predict", str(multilabel), str(S2_SCENE), "-o", "map.tif", "--overlap",
                 overlap, "--quiet", cwd=tmp_path)
    assert f"overlap {overlap} must be at least 0 and less than the tile" in _one_line(run)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("devices", ["0", "-2"])
def test_predict_devices_below_one_is_refused(multilabel: Path, tmp_path: Path,
                                              devices: str) -> None:
    # --devices 0 used to fall back to the CPU without a word.
    run = _geofm("predict", str(multilabel), str(S2_SCENE), "-o", "map.tif", "--devices",
                 devices, "--quiet", cwd=tmp_path)
    assert f"--devices must be at least 1, got {devices}" in _one_line(run)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("count", ["0", "-3", "4"])
def test_export_bands_count_is_refused_as_for_predict(multilabel: Path, tmp_path: Path,
                                                      count: str) -> None:
    run = _geofm("export", str(multilabel), "--onnx", "model.onnx", "--bands", count,
                 cwd=tmp_path)
    line = _one_line(run)
    assert "takes the input's band names in order, not a count" in line
    assert ("must be at least 1" in line) == (int(count) < 1)
    assert list(tmp_path.iterdir()) == []


def test_export_of_a_folder_names_it(tmp_path: Path) -> None:
    # A folder once gave the OS's "No such device (os error 19)".
    (tmp_path / "model").mkdir()
    run = _geofm("export", "model", "--onnx", "model.onnx", cwd=tmp_path)
    assert "model: is a folder, not a checkpoint file" in _one_line(run)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_pretrain_lists_only_the_outputs_it_wrote(reben_store: Path, tmp_path: Path) -> None:
    # Two steps log nothing at the default interval: metrics.csv was announced but absent.
    run = _geofm("pretrain", "--data", str(reben_store), "--model", "vit_test", "--max-steps",
                 "2", "--batch-size", "4", "--output", "run", "--quiet",
                 "--set", "trainer.accelerator=cpu", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    listed = run.stdout.strip().splitlines()[-1]
    assert listed.startswith("outputs in run: pretrain.safetensors (checkpoint)"), run.stdout
    assert not (tmp_path / "run" / "metrics.csv").exists()
    assert "metrics.csv" not in listed
    for name in ("config.yaml", "checkpoints/last.ckpt"):
        assert name in listed and (tmp_path / "run" / name).exists()
