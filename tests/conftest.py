"""Shared test data, helpers and session-scoped checkpoints.

Test modules import the plain helpers from here (``from .conftest import ...``) and never from
one another. The expensive things several modules need (the built reBEN sample store, briefly
pretrained and finetuned checkpoints) are session-scoped fixtures, built once per run under
``tmp_path_factory`` and treated as read-only by every test.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch
from torch import Tensor, nn

REPO = Path(__file__).resolve().parents[1]
REBEN_MINI = REPO / "datasets" / "reben_mini"
S2_SCENE = REPO / "datasets" / "sentinel2_l1c" / "s2_l1c_13band_10m_256px.tif"
RGBN = ["S2.B02", "S2.B03", "S2.B04", "S2.B08"]

TINY_OBJECTIVE = ("objective.kwargs={hcs: false, decoder_dim: 32, decoder_depth: 1, "
                  "decoder_heads: 2}")
"""The small MAE decoder every tiny pretraining run uses."""


# --- CLI errors -----------------------------------------------------------------------------


def one_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Run the CLI in-process and check it failed with exit 2 and one line holding ``needles``."""
    from geofm.cli import main

    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert err.startswith("geofm: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def last_line_error(argv: list[str], capsys: pytest.CaptureFixture[str], *needles: str) -> str:
    """Like :func:`one_line_error` where progress output may come before the one error line."""
    from geofm.cli import main

    code = main(argv)
    full = capsys.readouterr().err.strip()
    assert code == 2, full
    assert "Traceback" not in full, full
    err = full.splitlines()[-1] if full else ""
    assert err.startswith("geofm: error: "), full
    assert "geofm: error:" not in full.rsplit(err, 1)[0], full  # one error, the last line
    for needle in needles:
        assert needle in err, err
    return err


# --- tiny training runs ---------------------------------------------------------------------


def pretrain_cfg(store: Path, out: Path, *sets: str) -> dict:
    """A pretraining config of the small ChannelViT test model (no previews) plus ``sets``."""
    from geofm.training.config import PRETRAIN_DEFAULTS, apply_overrides, merge

    return apply_overrides(merge(PRETRAIN_DEFAULTS, {}), [
        f"data.store={store}", f"output={out}", "model.name=channelvit_test", "model.kwargs={}",
        TINY_OBJECTIVE, "data.split=null", "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1", "previews=0", *sets])


def pretrain_tiny(store: Path, out: Path, model: str, steps: int = 2) -> Path:
    """A ``model`` (e.g. ``vit_test``) pretrained with MAE for ``steps`` on ``store``."""
    from geofm.training.config import PRETRAIN_DEFAULTS, apply_overrides, merge
    from geofm.training.pretrain import run_pretrain

    cfg = apply_overrides(merge(PRETRAIN_DEFAULTS, {}), [
        f"data.store={store}", f"output={out}", f"model.name={model}", "model.kwargs={}",
        "objective.name=mae", "objective.kwargs={decoder_dim: 32, decoder_depth: 1, "
        "decoder_heads: 2}", "data.split=null", f"trainer.max_steps={steps}",
        "trainer.accelerator=cpu", "previews=0"])
    return Path(run_pretrain(cfg, progress=False)["checkpoint"])


def finetune_tiny(init: Path, store: Path, out: Path, task: str, *sets: str) -> Path:
    """``init`` finetuned for ``task`` for 2 steps on the train split of ``store``."""
    from geofm.training.config import FINETUNE_DEFAULTS, apply_overrides, merge
    from geofm.training.finetune import run_finetune

    cfg = apply_overrides(merge(FINETUNE_DEFAULTS, {}), [
        f"init={init}", f"data.store={store}", f"task={task}", f"output={out}",
        "data.train_split=train", "data.val_split=validation", "data.batch_size=3",
        "trainer.accelerator=cpu", "trainer.max_steps=2", *sets])
    return Path(run_finetune(cfg, progress=False)["checkpoint"])


def train_losses(out: Path) -> list[float]:
    """The logged training losses of the run in ``out``, step by step."""
    m = pd.read_csv(out / "metrics.csv")
    return m["train/loss"].dropna().tolist()


def ddp_pretrain(out: Path, steps: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``geofm pretrain`` of the small test model on two CPU ranks (gloo), batches of one chip;
    ``args`` add the data and anything else. Asserts it succeeded."""
    cmd = [sys.executable, "-m", "geofm.cli", "pretrain", *args,
           "--devices", "2", "--strategy", "ddp", "--model", "channelvit_test",
           "--max-steps", str(steps), "--batch-size", "1", "--output", str(out), "--quiet",
           "--set", "trainer.accelerator=cpu", "--set", "data.split=null",
           "--set", "objective.kwargs={decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p


# --- untrained checkpoints and echo models (fast to make) -----------------------------------


def make_checkpoint(path: Path, task: str = "segmentation", *, bands: list[str] | None = None,
                    classes: int = 5, model: str = "channelvit_test", tile: int = 64,
                    constant: float | None = None, seed: int = 0) -> Path:
    """An untrained finetuned checkpoint with a complete header (fast to make)."""
    from geofm.bands import BAND_SETS, bands_info
    from geofm.card import ModelCard
    from geofm.checkpoint import save_checkpoint
    from geofm.models import create_model
    from geofm.models.finetuner import Finetuner

    bands = list(bands or BAND_SETS["s2l2a"])
    torch.manual_seed(seed)
    encoder = create_model(model, bands=bands)
    head = "segmentation" if task in ("segmentation", "regression") else "linear"
    module = Finetuner(encoder, task, classes, head=head)
    if constant is not None:
        nn.init.zeros_(module.head.classifier.weight)
        nn.init.constant_(module.head.classifier.bias, constant)
    header = {
        "kind": "finetune", "task": task,
        "head": {"kind": head, "num_outputs": classes, "freeze": "full", "unfreeze_last": 0},
        "model": {"name": model, "config": encoder.model_config}, "bands": bands,
        "band_info": bands_info(bands),
        "normalization": {"mean": [1200.0] * len(bands), "std": [600.0] * len(bands)},
        "classes": [f"class {i}" for i in range(classes)],
        "class_colors": ["#e6004d", "#80ff00", "#00a600", "#80f2e6", "#e6f2ff"][:classes],
        "tile_size": [tile, tile], "patch_size": encoder.patch_size, "gsd_m": 10.0,
    }
    return save_checkpoint(path, module.state_dict(), ModelCard.from_header(header))


class Echo(nn.Module):
    """Returns its input bands as outputs: exact answers are known and nothing is computed.

    With more outputs than bands, output ``k`` is the first band times a ramp over ``k``.
    """

    patch_size = 8
    embed_dim = 1

    def __init__(self, outputs: int = 1, fail_after: int | None = None,
                 ramp: bool = False) -> None:
        super().__init__()
        self.outputs = outputs
        self.calls = 0
        self.fail_after = fail_after
        self.ramp = ramp

    def forward(self, images: Tensor, bands: list[str]) -> Tensor:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise RuntimeError("simulated failure mid-way")
        if self.ramp:  # depends on where a pixel sits in its tile, so blending matters
            return images[:, :1] + torch.linspace(0.0, 1.0, images.shape[3])
        if self.outputs <= images.shape[1]:
            return images[:, : self.outputs]  # [B, K, H, W]
        ramp = torch.linspace(-1.0, 1.0, self.outputs).view(1, -1, 1, 1)
        return images[:, :1] * ramp  # [B, K, H, W]


def echo_predictor(task: str = "regression", outputs: int = 1, *, tile: int = 64,
                   fail_after: int | None = None, ramp: bool = False) -> Any:
    """A fixed-band (B02, B03, B04, B08) :class:`~geofm.predict.Predictor` around :class:`Echo`."""
    from geofm.card import ModelCard
    from geofm.predict import Predictor

    header = {"kind": "finetune", "task": task, "bands": RGBN,
              "head": {"kind": "segmentation", "num_outputs": outputs},
              "normalization": {"mean": [1000.0, 900.0, 800.0, 2000.0],
                                "std": [500.0, 400.0, 300.0, 1000.0]},
              "classes": [f"class {i}" for i in range(outputs)],
              "class_colors": ["#e6004d", "#80ff00", "#00a600", "#80f2e6"][:outputs],
              "tile_size": [tile, tile], "patch_size": 8, "gsd_m": 10.0,
              "model": {"name": "echo"}}
    return Predictor(Echo(outputs, fail_after, ramp), ModelCard.from_header(header),
                     "echo.safetensors")


def tiny_bert_folder(root: Path, pooling: str | None = None) -> Path:
    """A randomly initialised 2-layer BERT saved like sentence-transformers, MiniLM's vocab."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from geofm.models.text import default_text_folder

    folder = root / "tiny_bert"
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(default_text_folder(), local_files_only=True).save_pretrained(
        folder)
    if pooling:
        (folder / "1_Pooling").mkdir()
        (folder / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 32, f"pooling_mode_{pooling}": True}))
    return folder


# --- rasters --------------------------------------------------------------------------------


def crop(dst: Path, size: int, bands: list[int] | None = None) -> Path:
    """The top-left ``size`` × ``size`` pixels of the scene (all or some bands)."""
    with rasterio.open(S2_SCENE) as src:
        indexes = bands or list(range(1, 14))
        data = src.read(indexes, window=((0, size), (0, size)))
        names = [src.descriptions[i - 1] for i in indexes]
    write_like(S2_SCENE, dst, data)
    with rasterio.open(dst, "r+") as ds:
        ds.descriptions = names
    return dst


def write_like(src: Path, dst: Path, data: np.ndarray, **update: Any) -> Path:
    """A copy of ``src``'s georeferencing and band names with new pixels."""
    with rasterio.open(src) as ds:
        profile = ds.profile
        descriptions = ds.descriptions
    profile.update(count=data.shape[0], height=data.shape[1], width=data.shape[2],
                   dtype=str(data.dtype), tiled=True, blockxsize=128, blockysize=128, **update)
    with rasterio.open(dst, "w", **profile) as out:
        out.write(data)
        if profile.get("count") == len(descriptions):
            out.descriptions = descriptions
    return dst


# --- QGIS under the system Python -----------------------------------------------------------

SYSTEM_PYTHON = Path("/usr/bin/python3")
QGIS_MARKER = "GEOFM_QGIS_JSON "
"""Prefix of the one stdout line a PyQGIS script prints its JSON result on."""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the venv's Python paths, Qt offscreen, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return {**env, "QT_QPA_PLATFORM": "offscreen", **extra}


@functools.cache
def has_pyqgis() -> bool:
    """Whether the system Python imports ``qgis.core``."""
    if not SYSTEM_PYTHON.exists():
        return False
    done = subprocess.run([str(SYSTEM_PYTHON), "-c", "import qgis.core"], env=clean_env(),
                          capture_output=True, timeout=60, check=False)
    return done.returncode == 0


def qgis_json(stdout: str) -> dict[str, Any]:
    """The JSON a PyQGIS script printed after :data:`QGIS_MARKER`."""
    for line in stdout.splitlines():
        if line.startswith(QGIS_MARKER):
            return json.loads(line[len(QGIS_MARKER):])
    raise AssertionError(f"no result in the output:\n{stdout[-2000:]}")


# --- fixtures -------------------------------------------------------------------------------


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


@pytest.fixture(scope="session")
def tiny_pretrained(reben_store: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Callable[..., Path]:
    """``get(model, steps)``: :func:`pretrain_tiny` on the reBEN sample, each pair trained once
    per session; treat the checkpoints (and their run folders) as read-only."""
    root = tmp_path_factory.mktemp("pretrained")

    @functools.cache
    def get(model: str, steps: int = 2) -> Path:
        return pretrain_tiny(reben_store, root / f"{model}_{steps}", model, steps=steps)

    return get


@pytest.fixture(scope="session")
def finetuned(reben_store: Path, tiny_pretrained: Callable[..., Path],
              tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Real (briefly trained) checkpoints on the reBEN sample; treat as read-only.

    Keys: ``vit_pre`` and ``cvit_pre`` (pretrained one step), ``vit_seg``, ``cvit_seg``
    (segmentation) and ``cvit_ml`` (multi-label, attentive head).
    """
    root = tmp_path_factory.mktemp("finetuned")
    vit = tiny_pretrained("vit_test", 1)
    cvit = tiny_pretrained("channelvit_test", 1)
    return {
        "vit_pre": vit,
        "cvit_pre": cvit,
        "vit_seg": finetune_tiny(vit, reben_store, root / "vit_seg", "segmentation"),
        "cvit_seg": finetune_tiny(cvit, reben_store, root / "cvit_seg", "segmentation"),
        "cvit_ml": finetune_tiny(cvit, reben_store, root / "cvit_ml", "multilabel",
                                 "head.kind=attentive"),
    }
