"""Bad input to `geofm build reben`, `split`, `info`, `validate`: one line, exit 2, nothing done."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import geofm
from geofm.cli import main
from geofm.io.schema import CHIP_TABLE

from .conftest import last_line_error

PATCH = "S2A_MSIL2A_20170617T113321_N9999_R080_T29UPU_36_85"


def _band(root: Path, band: str = "B03", patch: str = PATCH) -> Path:
    return root / "BigEarthNet-S2" / "_".join(patch.split("_")[:-2]) / patch / f"{patch}_{band}.tif"


def _not_complete(out: Path) -> None:
    with pytest.raises(geofm.GeofmError):
        geofm.open_store(out)


def test_missing_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    last_line_error(["build", "reben", str(tmp_path / "nope"), str(tmp_path / "o.zarr")], capsys,
                    "source directory not found")
    assert not (tmp_path / "o.zarr").exists()


def test_missing_metadata(reben_copy: Path, tmp_path: Path, capsys) -> None:
    (reben_copy / "metadata.parquet").unlink()
    last_line_error(["build", "reben", str(reben_copy), str(tmp_path / "o.zarr")], capsys,
                    "metadata.parquet missing")


def test_parquet_without_columns(reben_copy: Path, tmp_path: Path, capsys) -> None:
    meta = pd.read_parquet(reben_copy / "metadata.parquet").drop(columns=["s1_name", "labels"])
    meta.to_parquet(reben_copy / "metadata.parquet")
    last_line_error(["build", "reben", str(reben_copy), str(tmp_path / "o.zarr")], capsys,
                    "missing columns ['labels', 's1_name']", "metadata.parquet")


def test_band_missing(reben_copy: Path, tmp_path: Path, capsys) -> None:
    _band(reben_copy).unlink()
    out = tmp_path / "o.zarr"
    last_line_error(["build", "reben", str(reben_copy), str(out)], capsys, "band file missing",
                    PATCH, f"{PATCH}_B03.tif")
    assert not out.exists()  # checked before anything is written


def test_corrupt_geotiff(reben_copy: Path, tmp_path: Path, capsys) -> None:
    f = _band(reben_copy, "B8A")
    f.write_bytes(f.read_bytes()[:500])  # truncated
    out = tmp_path / "o.zarr"
    last_line_error(["build", "reben", str(reben_copy), str(out), "--scheduler", "synchronous"],
                    capsys, "cannot read raster", f.name)
    _not_complete(out)


def test_mismatched_s1_s2(reben_copy: Path, tmp_path: Path, capsys) -> None:
    meta = pd.read_parquet(reben_copy / "metadata.parquet")
    a, b = meta.index[:2]
    meta.loc[a, "s1_name"], meta.loc[b, "s1_name"] = meta.loc[b, "s1_name"], meta.loc[a, "s1_name"]
    meta.to_parquet(reben_copy / "metadata.parquet")
    out = tmp_path / "o.zarr"
    last_line_error(["build", "reben", str(reben_copy), str(out), "--scheduler", "synchronous"],
                    capsys, "does not cover Sentinel-2 patch")
    _not_complete(out)


def test_existing_output(reben_store: Path, capsys) -> None:
    last_line_error(["build", "reben", str(reben_store.parent), str(reben_store)], capsys,
                    "output already exists", "--overwrite")


def test_unwritable_output(tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    last_line_error(["build", "reben", "datasets/reben_mini", str(blocker / "o.zarr")], capsys,
                    "cannot create the output directory")


def test_store_commands_on_bad_paths(tmp_path: Path, capsys) -> None:
    last_line_error(["info", str(tmp_path / "none.zarr")], capsys, "no such chip store")
    last_line_error(["split", str(tmp_path / "none.zarr"), "--method", "reben"], capsys,
                    "no such chip store")
    assert main(["validate", str(tmp_path / "none.zarr")]) == 1


def test_split_region_bad_column(store_copy: Path, capsys) -> None:
    last_line_error(["split", str(store_copy), "--method", "region", "--column", "continent"],
                    capsys, "no column 'continent'")


def test_build_split_info_end_to_end(tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.zarr"
    assert main(["build", "reben", "datasets/reben_mini", str(out), "--quiet",
                 "--scheduler", "synchronous"]) == 0
    assert main(["split", str(out), "--method", "reben"]) == 0
    chips = pd.read_parquet(out / CHIP_TABLE)
    assert (chips["split"] == chips["source_split"]).all()  # the rule reproduces reBEN's split
    png = tmp_path / "map.png"
    assert main(["info", str(out), "--map", str(png)]) == 0
    text = capsys.readouterr().out
    assert "reben" in text and "S1.VH" in text and png.stat().st_size > 1000
    assert main(["validate", str(out), "--deep"]) == 0


@pytest.mark.slow
def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "geofm"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "geofm.cli"]
    p = subprocess.run([*cmd, "info", str(tmp_path / "x.zarr")], capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.count("\n") == 1
    shutil.rmtree(tmp_path, ignore_errors=True)
