"""Shared fixtures: the embedded real reBEN sample and a store built from it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REBEN_MINI = REPO / "datasets" / "reben_mini"
S2_SCENE = REPO / "datasets" / "sentinel2_l1c" / "s2_l1c_13band_10m_256px.tif"


@pytest.fixture(scope="session")
def reben_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample built once per session (synchronous scheduler); treat as read-only."""
    from geofm.builders.reben import build_reben

    out = tmp_path_factory.mktemp("stores") / "reben_mini.zarr"
    build_reben(REBEN_MINI, out, scheduler="synchronous", progress=False)
    return out


@pytest.fixture
def reben_copy(tmp_path: Path) -> Path:
    """A writable copy of the reBEN sample to damage."""
    dst = tmp_path / "reben"
    shutil.copytree(REBEN_MINI, dst)
    return dst


@pytest.fixture
def store_copy(reben_store: Path, tmp_path: Path) -> Path:
    """A writable copy of the built sample store."""
    dst = tmp_path / "copy.zarr"
    shutil.copytree(reben_store, dst)
    return dst


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run the CLI in-process and check it failed with exit 2 and one line holding ``needles``."""
    from geofm.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err
