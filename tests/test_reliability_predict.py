"""Prediction under hostile conditions: giant tiles, wrong extensions, signals, killed runs, a
full disk, the user's umask and class names that travel with the GeoTIFF."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import rasterio

from geofm.cli import main
from geofm.errors import GeofmError
from geofm.io.cog import remove_stale_temporaries
from geofm.predict import build_grid, predict_raster
from geofm.predict.model import Predictor
from geofm.predict.settings import MAX_TILE_TOKENS

from .conftest import REPO, S2_SCENE

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    line = err.splitlines()[-1]
    assert line.startswith("geofm: error: "), err
    return line


def _leftovers(directory: Path, keep: tuple[str, ...] = ()) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


def _scene_tiled(dst: Path, times: int) -> Path:
    """The Sentinel-2 scene repeated ``times`` × ``times`` (band names kept)."""
    with rasterio.open(S2_SCENE) as src:
        data = np.tile(src.read(), (1, times, times))
        profile = src.profile
        names = src.descriptions
    profile.update(height=data.shape[1], width=data.shape[2], tiled=True, blockxsize=256,
                   blockysize=256)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        out.descriptions = names
    return dst


# --- tiles -----------------------------------------------------------------------------------


def test_tile_larger_than_the_raster_is_clamped(finetuned: dict[str, Path], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    start = time.perf_counter()
    r = predict_raster(finetuned["cvit_seg"], S2_SCENE, tmp_path / "map.tif", tile=100_000,
                       progress=False)
    assert time.perf_counter() - start < 120
    assert r["tiles"] == 1
    with rasterio.open(tmp_path / "map.tif") as ds:
        assert ds.tags()["GEOFM_TILE"] == "256x256"  # the raster, not a 100000-px tile
    assert "larger than the 256×256 raster; using 256×256" in caplog.text


def test_tile_tokens_are_bounded(finetuned: dict[str, Path], tmp_path: Path,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    predictor = Predictor.from_checkpoint(finetuned["cvit_seg"])  # ChannelViT, patch 8
    # 14 bands × 64 × 64 patches: a band-token model counts every band.
    with pytest.raises(GeofmError, match=r"makes 57344 tokens per tile \(14 bands") as e:
        build_grid(predictor, "pixel", 4096, 4096, 512, None, 14)
    assert f"more than {MAX_TILE_TOKENS}" in str(e.value) and "at most 272 px" in str(e.value)
    assert build_grid(predictor, "pixel", 4096, 4096, 272, None, 14).tile == (272, 272)
    # Through the command line, on a raster the tile fits in: refused before any model call.
    big = _scene_tiled(tmp_path / "big.tif", 3)
    out = tmp_path / "map.tif"
    assert main(["predict", str(finetuned["cvit_seg"]), str(big), "-o", str(out), "--tile",
                 "768", "--quiet"]) == 2
    assert "tokens per tile" in _one_line(capsys)
    assert _leftovers(tmp_path) == ["big.tif"]


# --- output names ----------------------------------------------------------------------------


def test_output_extensions_must_name_the_format(finetuned: dict[str, Path], tmp_path: Path,
                                                reben_store: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    model, scene = str(finetuned["cvit_seg"]), str(S2_SCENE)
    cases = [
        (["predict", model, scene, "-o", str(tmp_path / "map.png")], "a GeoTIFF", "map.tif"),
        (["predict", model, scene, "-o", str(tmp_path / "map")], "a GeoTIFF", "map.tif"),
        (["predict", model, scene, "-o", str(tmp_path / "map.tif"), "--vector",
          str(tmp_path / "polys.xyz")], "a GeoPackage", "polys.gpkg"),
        (["query", model, scene, "water", "-o", str(tmp_path / "q.jpg")], "a GeoTIFF", "q.tif"),
        (["export", model, "--onnx", str(tmp_path / "model.pt")], "an ONNX model",
         "model.onnx"),
        (["info", str(reben_store), "--map", str(tmp_path / "split.xyz")], "a PNG image",
         "split.png"),
        (["zeroshot", model, "--data", str(reben_store), "-o", str(tmp_path / "r.txt")],
         "a JSON report", "r.json"),
        (["retrieval", model, "--data", str(reben_store), "-o", str(tmp_path / "r.csv")],
         "a JSON report", "r.json"),
    ]
    for argv, kind, suggested in cases:
        assert main([*argv, *(["--quiet"] if argv[0] in ("predict", "query") else [])]) == 2
        line = _one_line(capsys)
        assert f"is written as {kind}" in line and f"name it {suggested}" in line, line
    assert _leftovers(tmp_path) == []
    # Upper-case extensions are the same format.
    r = predict_raster(finetuned["cvit_seg"], S2_SCENE, tmp_path / "MAP.TIF", progress=False)
    assert Path(r["output"]).exists()


# --- signals and killed runs -----------------------------------------------------------------

_SLOW_CHILD = """
import sys, time
from pathlib import Path
import torch
from geofm.predict.model import Predictor

marker = Path(sys.argv[1])
real = Predictor.outputs

def giant(self, images, bands, mode):
    # Stand-in for a giant tile: one native call of about a minute that the interpreter
    # cannot interrupt.
    torch.set_num_threads(1)
    marker.write_text("model call started")
    torch.linalg.matrix_power(torch.zeros(4000, 4000), 256)
    return real(self, images, bands, mode)

Predictor.outputs = giant
from geofm.cli import main
sys.argv = ["geofm", *sys.argv[2:]]
sys.exit(main())
"""


def _start_slow_predict(checkpoint: Path, out: Path, tmp_path: Path
                        ) -> tuple[subprocess.Popen[str], Path]:
    marker = tmp_path / "started"
    script = tmp_path / "child.py"
    script.write_text(_SLOW_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(marker), "predict", str(checkpoint), str(S2_SCENE),
         "-o", str(out), "--quiet", "--probabilities"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 180
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the prediction never reached the model"
        time.sleep(0.1)
    time.sleep(0.5)  # well inside the native call
    return proc, marker


@pytest.mark.parametrize(("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"),
                                                      (signal.SIGINT, 130, "Ctrl-C")])
def test_signals_stop_a_running_model_call_within_seconds(
        finetuned: dict[str, Path], tmp_path: Path, signum: int, code: int, name: str) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "map.tif"
    proc, _ = _start_slow_predict(finetuned["cvit_seg"], out, tmp_path)
    assert any(".geofm-tmp-" in p for p in _leftovers(outdir))  # temporary rasters exist
    sent = time.monotonic()
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    elapsed = time.monotonic() - sent
    assert proc.returncode == code, err
    assert elapsed < 10, f"took {elapsed:.1f} s to stop"
    assert "Traceback" not in err and err.strip().splitlines()[-1] == f"geofm: stopped by {name}"
    assert _leftovers(outdir) == []  # nothing at -o, no temporary file


def test_next_run_removes_temporary_files_of_a_killed_run(finetuned: dict[str, Path],
                                                          tmp_path: Path) -> None:
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "map.tif"
    proc, _ = _start_slow_predict(finetuned["cvit_seg"], out, tmp_path)
    proc.kill()  # SIGKILL: no handler runs
    proc.communicate(timeout=60)
    stale = _leftovers(outdir)
    assert stale and all(".geofm-tmp-" in p and f"-{proc.pid}-" in p for p in stale), stale
    # A run still in progress (this process) keeps its files.
    live = outdir / stale[0].replace(f"-{proc.pid}-", f"-{os.getpid()}-")
    live.write_text("in progress")
    predict_raster(finetuned["cvit_seg"], S2_SCENE, out, probabilities=True, progress=False)
    assert _leftovers(outdir) == sorted([live.name, "map.qml", "map.tif", "map.tif.aux.xml",
                                         "map_probabilities.tif"])
    assert remove_stale_temporaries(out) == []


# --- full disk -------------------------------------------------------------------------------


def test_full_disk_is_one_line_and_leaves_nothing(finetuned: dict[str, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "map.tif"
    usage = namedtuple("usage", "total used free")
    # The disk fills up while the prediction runs: writes are checked before GDAL makes them
    # (GDAL's GeoTIFF writer only prints failed writes and carries on).
    free = iter([10**9] + [100_000] * 10_000)
    monkeypatch.setattr("geofm.io.space.shutil.disk_usage",
                        lambda _: usage(10**10, 10**10, next(free)))
    assert main(["predict", str(finetuned["cvit_seg"]), str(S2_SCENE), "-o", str(out),
                 "--probabilities", "--quiet"]) == 2
    line = _one_line(capsys)
    assert f"{out}: the disk is full (100.0 kB free in {tmp_path}" in line, line
    assert "the output needs up to" in line and " MB)" in line
    assert _leftovers(tmp_path) == []
    monkeypatch.undo()

    # A Python write that hits ENOSPC (the QGIS style), after the rasters were written.
    def no_space(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("geofm.predict.raster.write_qml", no_space)
    with pytest.raises(GeofmError, match="the disk is full") as e:
        predict_raster(finetuned["cvit_seg"], S2_SCENE, out, progress=False)
    assert str(out) in str(e.value)
    assert _leftovers(tmp_path) == []


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True)
    return done.returncode == 0


def test_a_really_full_disk(finetuned: dict[str, Path], tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "600k"):
        pytest.skip("needs root and mount to make a small filesystem (the simulated full disk "
                    "above runs everywhere)")
    try:
        out = small / "map.tif"
        assert main(["predict", str(finetuned["cvit_seg"]), str(S2_SCENE), "-o", str(out),
                     "--probabilities", "--quiet"]) == 2
        assert "the disk is full" in _one_line(capsys)
        assert _leftovers(small) == []
    finally:
        subprocess.run(["umount", str(small)], check=False)


# --- permissions -----------------------------------------------------------------------------


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640)])
def test_outputs_follow_the_umask(finetuned: dict[str, Path], tmp_path: Path, umask: int,
                                  mode: int) -> None:
    from geofm.export import export_onnx

    old = os.umask(umask)
    try:
        predict_raster(finetuned["cvit_seg"], S2_SCENE, tmp_path / "map.tif",
                       probabilities=True, vector=tmp_path / "polys.gpkg", progress=False)
        export_onnx(finetuned["vit_seg"], tmp_path / "model.onnx", tile_size=64,
                    verify=False)
    finally:
        os.umask(old)
    files = sorted(tmp_path.iterdir())
    assert len(files) == 6, files
    for path in files:
        assert path.stat().st_mode & 0o777 == mode, (path.name, oct(path.stat().st_mode))


# --- class names inside the GeoTIFF ----------------------------------------------------------


def test_a_cog_copied_alone_keeps_its_class_names(finetuned: dict[str, Path],
                                                  tmp_path: Path) -> None:
    r = predict_raster(finetuned["cvit_seg"], S2_SCENE, tmp_path / "map.tif", progress=False)
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    shutil.copy(r["output"], alone / "map.tif")  # without map.tif.aux.xml and map.qml
    predictor = Predictor.from_checkpoint(finetuned["cvit_seg"])
    with rasterio.open(alone / "map.tif") as ds:
        names = {int(k.removeprefix("CLASS_")): v for k, v in ds.tags(1).items()
                 if k.startswith("CLASS_")}
        assert [names[i] for i in range(len(names))] == predictor.classes
        assert ds.colormap(1)[0][:3] == (230, 0, 77)  # the colours are inside too
        assert ds.files == [str(alone / "map.tif")]  # no sidecar was read
