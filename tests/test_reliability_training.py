"""Training runs under bad settings and faults: settings checked before anything trains, band
counts, metrics kept across --resume, the user's umask on outputs, a full disk."""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
import torch

from geofm.card import ModelCard
from geofm.checkpoint import save_checkpoint
from geofm.cli import main
from geofm.errors import GeofmError
from geofm.training.config import (
    ALIGN_DEFAULTS,
    FINETUNE_DEFAULTS,
    apply_overrides,
    merge,
)
from geofm.training.pretrain import run_pretrain

from .conftest import S2_SCENE, one_line_error, pretrain_cfg

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

TINY = ["--model", "channelvit_test", "--set", "model.kwargs={}", "--set",
        "objective.kwargs={hcs: false, decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}",
        "--set", "trainer.accelerator=cpu", "--set", "data.split=null"]


@pytest.fixture
def no_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training must never start: a settings error is raised before ``trainer.fit``."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("trainer.fit was reached")

    monkeypatch.setattr(L.Trainer, "fit", refuse)


@pytest.fixture(scope="module")
def pretrained(tiny_pretrained: Callable[..., Path]) -> Path:
    return tiny_pretrained("vit_test", 1)


@pytest.fixture(scope="module")
def aligned(pretrained: Path, reben_store: Path,
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geofm.training.align import run_align

    cfg = apply_overrides(merge(ALIGN_DEFAULTS, {}), [
        f"init={pretrained}", f"data.store={reben_store}",
        f"output={tmp_path_factory.mktemp('aligned')}", "data.batch_size=6", "data.crop=64",
        "model.embed_dim=64", "data.split=null", "trainer.accelerator=cpu",
        "trainer.max_steps=1"])
    return Path(run_align(cfg, progress=False)["checkpoint"])


# --- settings checked before anything trains -------------------------------------------------

PRETRAIN_BAD = [
    ("optim.lr=0", "'optim.lr' must be greater than 0"),
    ("optim.lr=-1e-3", "'optim.lr' must be greater than 0"),
    ("optim.lr=.nan", "'optim.lr' must be a finite number"),
    ("optim.lr=inf", "'optim.lr' must be a finite number"),
    ("optim.weight_decay=-0.1", "'optim.weight_decay' must be at least 0"),
    ("optim.warmup_steps=-1", "'optim.warmup_steps' must be at least 0"),
    ("optim.betas=[0.9, 1.5]", "'optim.betas' must be two numbers in [0, 1)"),
    ("optim.betas=0.9", "'optim.betas' must be two numbers"),
    ("trainer.max_steps=0", "'trainer.max_steps' must be at least 1"),
    ("trainer.max_steps=-5", "'trainer.max_steps' must be at least 1"),
    ("trainer.checkpoint_every_n_steps=0", "'trainer.checkpoint_every_n_steps' must be at least"),
    ("trainer.log_every_n_steps=0", "'trainer.log_every_n_steps' must be at least 1"),
    ("trainer.gradient_clip_val=-1", "'trainer.gradient_clip_val' must be at least 0"),
    ("trainer.seed=-1", "'trainer.seed' must be at least 0"),
    ("trainer.num_nodes=0", "'trainer.num_nodes' must be at least 1"),
    ("trainer.devices=0", "'trainer.devices' must be at least 1"),
    ("data.batch_size=-2", "'data.batch_size' must be at least 1"),
    ("data.num_workers=-1", "'data.num_workers' must be at least 0"),
    ("probe.k=0", "'probe.k' must be at least 1"),
    ("probe.every_n_steps=0", "'probe.every_n_steps' must be at least 1"),
    ("probe.max_chips=0", "'probe.max_chips' must be at least 1"),
    ("previews=-1", "'previews' must be at least 0"),
    ("objective.kwargs.mask_ratio=1.5", "mask_ratio"),
]


@pytest.mark.parametrize(("setting", "needle"), PRETRAIN_BAD)
def test_pretrain_settings_fail_before_training(setting: str, needle: str, reben_store: Path,
                                                tmp_path: Path, no_fit: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["pretrain", "--data", str(reben_store), "--quiet", "--output", str(tmp_path / "o"),
            *TINY, "--set", setting]
    if setting.startswith("objective."):
        argv += ["--objective", "mae"]
    one_line_error(argv, capsys, needle)
    if not setting.startswith("objective."):  # the Python API checks the same settings
        with pytest.raises(GeofmError, match=re.escape(needle)):
            run_pretrain(pretrain_cfg(reben_store, tmp_path / "api", setting), progress=False)


@pytest.mark.parametrize(("flag", "needle"), [
    (["--max-steps", "0"], "'trainer.max_steps' must be at least 1"),
    (["--batch-size", "-1"], "'data.batch_size' must be at least 1"),
    (["--num-nodes", "0"], "'trainer.num_nodes' must be at least 1"),
])
def test_pretrain_flags_fail_before_training(flag: list[str], needle: str, reben_store: Path,
                                             tmp_path: Path, no_fit: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(["pretrain", "--data", str(reben_store), "--quiet", "--output",
                     str(tmp_path / "o"), *flag], capsys, needle)


@pytest.mark.parametrize(("args", "needle"), [
    (["--lr", "0"], "'optim.lr' must be greater than 0"),
    (["--lr", "-0.01"], "'optim.lr' must be greater than 0"),
    (["--layer-decay", "0"], "'optim.layer_decay' must be in (0, 1]"),
    (["--layer-decay", "1.5"], "'optim.layer_decay' must be in (0, 1]"),
    (["--unfreeze-last", "-1"], "'head.unfreeze_last' must be at least 0"),
    (["--set", "optim.weight_decay=-1"], "'optim.weight_decay' must be at least 0"),
    (["--set", "trainer.val_every_n_steps=0"], "'trainer.val_every_n_steps' must be at least 1"),
])
def test_finetune_settings_fail_before_training(args: list[str], needle: str,
                                                pretrained: Path, reben_store: Path,
                                                tmp_path: Path, no_fit: None,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.training.finetune import run_finetune

    one_line_error(["finetune", "--init", str(pretrained), "--data", str(reben_store),
                     "--quiet", "--output", str(tmp_path / "o"), *args], capsys, needle)
    key, value = (args[1].split("=") if args[0] == "--set" else
                  ({"--lr": "optim.lr", "--layer-decay": "optim.layer_decay",
                    "--unfreeze-last": "head.unfreeze_last"}[args[0]], args[1]))
    cfg = apply_overrides(merge(FINETUNE_DEFAULTS, {}), [
        f"init={pretrained}", f"data.store={reben_store}", f"output={tmp_path / 'api'}",
        f"{key}={value}"])
    with pytest.raises(GeofmError, match=key):
        run_finetune(cfg, progress=False)


@pytest.mark.parametrize(("setting", "needle"), [
    ("optim.lr=0", "'optim.lr' must be greater than 0"),
    ("optim.encoder_lr=0", "set optim.freeze_encoder=true"),
    ("optim.text_lr=-1", "'optim.text_lr' must be greater than 0"),
    ("model.init_temperature=0", "'model.init_temperature' must be greater than 0"),
    ("model.embed_dim=0", "'model.embed_dim' must be at least 1"),
    ("captions.per_chip=0", "'captions.per_chip' must be at least 1"),
    ("data.crop=0", "'data.crop' must be null or an integer of at least 1"),
    ("trainer.max_steps=0", "'trainer.max_steps' must be at least 1"),
])
def test_align_settings_fail_before_training(setting: str, needle: str, pretrained: Path,
                                             reben_store: Path, tmp_path: Path, no_fit: None,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.training.align import run_align

    one_line_error(["align", "--init", str(pretrained), "--data", str(reben_store), "--quiet",
                     "--output", str(tmp_path / "o"), "--set", setting], capsys, needle)
    cfg = apply_overrides(merge(ALIGN_DEFAULTS, {}), [
        f"init={pretrained}", f"data.store={reben_store}", f"output={tmp_path / 'api'}",
        setting])
    with pytest.raises(GeofmError, match=setting.split("=")[0]):
        run_align(cfg, progress=False)


# --- band counts ----------------------------------------------------------------------------

@pytest.mark.parametrize("count", ["0", "-3"])
def test_band_counts_must_be_at_least_one(count: str, reben_store: Path, pretrained: Path,
                                          aligned: Path, tmp_path: Path, no_fit: None,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    need = f"the band count must be at least 1, got {count}"
    out = str(tmp_path / "o")
    one_line_error(["pretrain", "--data", str(reben_store), "--quiet", "--output", out,
                     f"--bands={count}"], capsys, need)
    one_line_error(["pretrain", "--data", str(reben_store), "--data", str(reben_store),
                     "--quiet", "--output", out, f"--bands={count}", "--bands=3"], capsys, need)
    one_line_error(["align", "--init", str(pretrained), "--data", str(reben_store), "--quiet",
                     "--output", out, f"--bands={count}"], capsys, need)
    one_line_error(["finetune", "--init", str(pretrained), "--data", str(reben_store),
                     "--quiet", "--output", out, "--set", f"data.bands={count}"], capsys, need)
    one_line_error(["predict", str(pretrained), str(S2_SCENE), "-o",
                     str(tmp_path / "emb.tif"), "--embed", f"--bands={count}"], capsys, need)
    one_line_error(["query", str(aligned), str(S2_SCENE), "forest", "-o",
                     str(tmp_path / "q.tif"), f"--bands={count}"], capsys, need)


# --- metrics kept across --resume ----------------------------------------------------------

def test_metrics_rows_survive_a_resume(reben_store: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = ["pretrain", "--data", str(reben_store), "--quiet", "--output", str(out), *TINY,
            "--batch-size", "2", "--set", "trainer.log_every_n_steps=1",
            "--set", "trainer.checkpoint_every_n_steps=2", "--set", "previews=0"]
    assert main([*argv, "--max-steps", "4"]) == 0
    before = pd.read_csv(out / "metrics.csv")
    assert sorted(before["step"].unique()) == [0, 1, 2, 3]
    # Resume from step 2 in the same directory, to step 6: steps 0-1 are kept, 2-5 logged anew.
    ckpt = next((out / "checkpoints").glob("*step=2.ckpt"))
    assert main([*argv, "--max-steps", "6", "--resume", str(ckpt)]) == 0
    after = pd.read_csv(out / "metrics.csv")
    assert sorted(after["step"]) == [0, 1, 2, 3, 4, 5]
    kept = after[after["step"] < 2].sort_values("step")
    assert kept["train/loss"].tolist() == before[before["step"] < 2].sort_values("step")[
        "train/loss"].tolist()
    # Resuming from the end (last.ckpt at step 6) to step 8 keeps all six earlier rows.
    assert main([*argv, "--max-steps", "8", "--resume", str(out / "checkpoints" / "last.ckpt")]
                ) == 0
    assert sorted(pd.read_csv(out / "metrics.csv")["step"]) == list(range(8))
    capsys.readouterr()


# --- the user's umask -----------------------------------------------------------------------

@pytest.fixture
def umask022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def test_outputs_get_the_users_umask(reben_store: Path, tmp_path: Path, umask022: None) -> None:
    card = ModelCard.from_header({"kind": "pretrain", "bands": ["S2.B02"]})
    path = save_checkpoint(tmp_path / "w.safetensors", {"w": torch.zeros(2)}, card)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    os.umask(0o027)
    path = save_checkpoint(tmp_path / "v.safetensors", {"w": torch.zeros(2)}, card)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    os.umask(0o022)
    out = tmp_path / "run"
    r = run_pretrain(pretrain_cfg(reben_store, out, "trainer.max_steps=2",
                                  "trainer.checkpoint_every_n_steps=1", "previews=1"),
                     progress=False)
    out2 = tmp_path / "resumed"
    run_pretrain(pretrain_cfg(reben_store, out2, "trainer.max_steps=3",
                              f"resume={out / 'checkpoints' / 'last.ckpt'}"), progress=False)
    files = [Path(r["checkpoint"]), out / "metrics.csv", out / "config.yaml",
             out / "checkpoints" / "last.ckpt", *out.glob("previews/*.png"),
             out / "data_rank0.json", out2 / "pretrain.safetensors", out2 / "metrics.csv"]
    modes = {str(f.relative_to(tmp_path)): oct(stat.S_IMODE(f.stat().st_mode)) for f in files}
    assert set(modes.values()) == {"0o644"}, modes


# --- a full disk ----------------------------------------------------------------------------

def test_full_disk_while_checkpointing_is_one_line(reben_store: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import geofm.training.checkpoint_io as checkpoint_io

    write = checkpoint_io.write_bytes
    calls = []

    def fills_up(path: Path, data: memoryview) -> None:
        calls.append(path)
        if len(calls) < 2:  # the first checkpoint fits; the second fills the disk part-way
            write(path, data)
            return
        path.write_bytes(bytes(data[:1000]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_io, "write_bytes", fills_up)
    out = tmp_path / "o"
    one_line_error(["pretrain", "--data", str(reben_store), "--quiet", "--output", str(out),
                     *TINY, "--max-steps", "3", "--set", "trainer.checkpoint_every_n_steps=1"],
                    capsys, str(out), "disk full while writing the run's checkpoints",
                    "needs about", "MB free", "left")
    assert not (out / "pretrain.safetensors").exists()
    # Only whole checkpoints are left: the one written before the disk filled up.
    left = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert left == ["epoch=0-step=1.ckpt"], left


def test_full_disk_while_writing_the_checkpoint_leaves_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import geofm.checkpoint as checkpoint

    def half_written(tensors: dict, path: str, metadata: dict) -> None:
        Path(path).write_bytes(b"\0" * 100)  # part of the file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint, "save_file", half_written)
    target = tmp_path / "pretrain.safetensors"
    with pytest.raises(GeofmError, match=r"disk full while writing the checkpoint "
                       r"pretrain\.safetensors: it needs about 4\.0 kB free"):
        save_checkpoint(target, {"w": torch.zeros(1000)},
                        ModelCard.from_header({"kind": "pretrain", "bands": ["S2.B02"]}))
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MB tmpfs (skipped where mounting is not permitted)."""
    mount = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mount.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_real_full_disk_during_pretraining(reben_store: Path, small_disk: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    # Each Lightning checkpoint of the tiny model is about 0.7 MB: the second does not fit.
    out = small_disk / "run"
    one_line_error(["pretrain", "--data", str(reben_store), "--quiet", "--output", str(out),
                     *TINY, "--max-steps", "3", "--set", "trainer.checkpoint_every_n_steps=1"],
                    capsys, str(out), "disk full while writing", "needs about", "left")
    assert not (out / "pretrain.safetensors").exists()
    for ckpt in (out / "checkpoints").glob("*.ckpt"):  # every checkpoint left is whole
        torch.load(ckpt, map_location="cpu", weights_only=True)
    leftovers = [p.name for p in (out / "checkpoints").iterdir() if not p.name.endswith(".ckpt")]
    assert leftovers == [], leftovers
