"""Pretraining task: learning, resuming, DDP over two CPU ranks, config twins, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from geofm.checkpoint import load_checkpoint, read_card
from geofm.models import create_model
from geofm.objectives import create_objective
from geofm.training.config import PRETRAIN_DEFAULTS, apply_overrides, load_yaml, merge
from geofm.training.pretrain import run_pretrain

from .conftest import REPO, ddp_pretrain, one_line_error, pretrain_cfg, train_losses
from .synthetic import make_store


def _cfg(store: Path, out: Path, *sets: str) -> dict:
    return pretrain_cfg(store, out, "previews=1", *sets)


def _zero_prediction_loss(store: Path) -> float:
    """MSE of predicting 0 for every normalised valid pixel of the store's chips."""
    from geofm.training.datamodule import ChipDataModule

    dm = ChipDataModule(store, bands="s1s2", batch_size=64, num_workers=0, train_split=None,
                        seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return float((batch["image"][batch["valid"]] ** 2).mean())


@pytest.mark.slow
def test_loss_decreases_on_the_real_sample(reben_store: Path, tmp_path: Path) -> None:
    # Raw-pixel loss, so a model that ignores its input cannot beat predicting 0 (the mean of
    # normalised pixels): getting well below that needs the visible tokens.
    cfg = _cfg(reben_store, tmp_path / "run", "trainer.max_steps=80", "optim.lr=1e-3",
               "optim.warmup_steps=3", "data.batch_size=6", "objective.name=mae",
               "objective.kwargs.norm_pix_loss=false")
    result = run_pretrain(cfg, progress=False)
    losses = train_losses(tmp_path / "run")
    assert len(losses) == 80 and result["steps"] == 80
    assert sum(losses[-5:]) / 5 < 0.85 * _zero_prediction_loss(reben_store)
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5
    card = read_card(result["checkpoint"])
    assert list(card.bands) == [f"S2.{b}" for b in ("B01", "B02", "B03", "B04", "B05", "B06",
                                                   "B07", "B08", "B8A", "B09", "B11", "B12")] \
        + ["S1.VV", "S1.VH"]
    assert len(card.contract.mean) == 14
    assert list((tmp_path / "run" / "previews").glob("*.png"))
    assert (tmp_path / "run" / "config.yaml").exists()


@pytest.mark.slow
def test_default_recipe_learns_on_the_real_sample(reben_store: Path, tmp_path: Path) -> None:
    # ChannelViT + SelectiveMAE, as `geofm pretrain` trains by default.
    cfg = _cfg(reben_store, tmp_path / "run", "trainer.max_steps=80", "optim.lr=1e-3",
               "optim.warmup_steps=3", "data.batch_size=6", "objective.name=selective_mae",
               "objective.kwargs.norm_pix_loss=false")
    run_pretrain(cfg, progress=False)
    losses = train_losses(tmp_path / "run")
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_pretraining_reads_only_pixels_and_validity(reben_store: Path, tmp_path: Path,
                                                    monkeypatch) -> None:
    from geofm.io.store import ChipStore

    requested: list = []
    original = ChipStore.read

    def spy(self, indices, bands=None, arrays=None):  # type: ignore[no-untyped-def]
        requested.append(arrays)
        return original(self, indices, bands, arrays)

    monkeypatch.setattr(ChipStore, "read", spy)
    run_pretrain(_cfg(reben_store, tmp_path / "r", "trainer.max_steps=2"), progress=False)
    assert requested and all(a == ["image", "valid"] for a in requested)  # no labels, masks


def test_checkpoint_rebuilds_the_model(reben_store: Path, tmp_path: Path) -> None:
    result = run_pretrain(_cfg(reben_store, tmp_path / "r", "trainer.max_steps=2"),
                          progress=False)
    weights, card = load_checkpoint(result["checkpoint"])
    enc = create_model(card.architecture.name, **card.architecture.config)
    objective = card.provenance.objective
    obj = create_objective(objective["name"], enc, **objective["config"])
    obj.load_state_dict(weights, strict=True)
    x = torch.randn(1, 14, 120, 120)
    assert torch.isfinite(enc(x, list(card.bands))).all()


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1])
def test_resume_takes_the_same_next_steps(reben_store: Path, tmp_path: Path,
                                          workers: int) -> None:
    # With a worker, the loader draws from the sampler before any hook of the task runs.
    common = ("trainer.max_steps=4", "trainer.checkpoint_every_n_steps=2", "data.batch_size=2",
              "objective.kwargs.hcs=true", f"data.num_workers={workers}")
    full = run_pretrain(_cfg(reben_store, tmp_path / "full", *common), progress=False)
    ckpt = next((tmp_path / "full" / "checkpoints").glob("*step=2.ckpt"))
    resumed = run_pretrain(_cfg(reben_store, tmp_path / "resumed", *common, f"resume={ckpt}"),
                           progress=False)
    a, b = load_file(full["checkpoint"]), load_file(resumed["checkpoint"])
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert train_losses(tmp_path / "full")[2:] == train_losses(tmp_path / "resumed")


@pytest.mark.slow
def test_compiled_blocks_train_like_eager_ones(reben_store: Path, tmp_path: Path) -> None:
    from torch._dynamo.utils import counters

    from geofm.training.trainer import compile_blocks

    encoder = create_model("channelvit_test", bands=["S2.B02", "S2.B03"], depth=12,
                           drop_path_rate=0.1)
    objective = create_objective("selective_mae", encoder, decoder_depth=2)
    names = [n for n, _ in objective.named_parameters()]
    assert compile_blocks(objective) == 12 + 2
    assert [n for n, _ in objective.named_parameters()] == names  # checkpoints unchanged
    assert all(block._compiled_call_impl is not None for block in encoder.blocks)
    # Twelve drop-path rates are twelve graphs: none of them may fall back to eager.
    counters.clear()
    objective(torch.randn(2, 2, 32, 32), ["S2.B02", "S2.B03"]).loss.backward()
    assert counters["stats"]["unique_graphs"] >= 12 + 1  # one for both decoder blocks
    assert not any("recompile limit" in str(k) for k in counters["unimplemented"])

    common = ("trainer.max_steps=3", "data.batch_size=2", "objective.kwargs.hcs=true")
    eager = run_pretrain(_cfg(reben_store, tmp_path / "eager", *common), progress=False)
    counters.clear()
    compiled = run_pretrain(_cfg(reben_store, tmp_path / "compiled", *common,
                                 "trainer.compile=true"), progress=False)
    assert counters["stats"]["unique_graphs"] > 0  # the run did compile
    a, b = load_file(eager["checkpoint"]), load_file(compiled["checkpoint"])
    assert a.keys() == b.keys()
    # Key biases get no true gradient (softmax ignores a shift shared by all keys), so AdamW
    # turns rounding noise into full-size steps there: compare within a tenth of lr.
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4, msg=k)
    torch.testing.assert_close(train_losses(tmp_path / "eager"),
                               train_losses(tmp_path / "compiled"), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_ddp_two_cpu_ranks_split_the_data(reben_store: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    ddp_pretrain(out, 2, "--data", str(reben_store))
    r0 = json.loads((out / "data_rank0.json").read_text())
    r1 = json.loads((out / "data_rank1.json").read_text())
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["chip_indices"] and r1["chip_indices"]
    assert not set(r0["chip_indices"]) & set(r1["chip_indices"])  # disjoint shares
    weights, card = load_checkpoint(out / "pretrain.safetensors")
    assert card.provenance.training["world_size"] == 2
    enc = create_model(card.architecture.name, **card.architecture.config)
    objective = card.provenance.objective
    create_objective(objective["name"], enc, **objective["config"]).load_state_dict(weights)


@pytest.mark.parametrize("name,bands", [("reben_s1s2", None), ("modis_toa14", "modis14"),
                                        ("opticalrs_rgb", "rgb")])
def test_config_twins_run(name: str, bands: str | None, reben_store: Path, tmp_path: Path) -> None:
    from geofm.bands import BAND_SETS

    full = load_yaml(REPO / "configs" / "pretrain" / f"{name}.yaml")
    tiny = load_yaml(REPO / "configs" / "pretrain" / f"{name}.tiny.yaml")
    assert set(tiny) <= set(full) | {"previews"}  # the twin only shrinks the real config
    store = reben_store if bands is None else make_store(tmp_path / "s.zarr",
                                                         list(BAND_SETS[bands]), size=32)
    cfg = apply_overrides(merge(merge(PRETRAIN_DEFAULTS, full), tiny),
                          [f"data.store={store}", f"output={tmp_path / 'out'}"])
    result = run_pretrain(cfg, progress=False)
    assert result["steps"] == 3
    assert read_card(result["checkpoint"]).architecture.name == tiny["model"]["name"]


@pytest.mark.slow
def test_bad_input(reben_store: Path, store_copy: Path, tmp_path: Path, capsys) -> None:
    base = ["pretrain", "--data", str(reben_store), "--quiet", "--max-steps", "1",
            "--output", str(tmp_path / "o")]
    one_line_error([*base, "--model", "resnet9000"], capsys, "resnet9000")
    one_line_error([*base, "--objective", "dino"], capsys, "unknown objective 'dino'")
    one_line_error([*base, "--bands", "20"], capsys, "20 bands requested but only 14")
    one_line_error([*base, "--bands", "modis14"], capsys, "not available")
    one_line_error([*base, "--set", "optim.nope=1"], capsys, "unknown config key 'optim.nope'")
    one_line_error([*base, "--strategy", "fsdp", "--set", "trainer.accelerator=cpu"], capsys,
                   "FSDP needs GPUs")
    one_line_error([*base, "--devices", "abc", "--set", "trainer.accelerator=cpu"], capsys,
                   "trainer settings rejected")
    one_line_error([*base, "--batch-size", "0"], capsys, "'data.batch_size' must be at least 1")
    one_line_error([*base, "--set", "optim.lr=abc"], capsys, "'optim.lr' must be a number")
    one_line_error([*base, "--set", "model.kwargs.foo=1"], capsys, "bad settings for model")
    one_line_error([*base, "--model", "channelvit_test", "--set",
                    "objective.kwargs.decoder_heads=5"], capsys, "does not split into 5 heads")
    one_line_error([*base, "--set", "objective.kwargs.visible_ratio=1.5"], capsys, "visible_ratio")
    typo = tmp_path / "typo.yaml"
    typo.write_text("trainer: {max_step: 5}\n")
    one_line_error([*base, "--config", str(typo)], capsys, "unknown config key 'trainer.max_step'")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    one_line_error([*base, "--resume", str(junk)], capsys, "cannot read the resume checkpoint")
    run_pretrain(_cfg(reben_store, tmp_path / "small", "trainer.max_steps=1"), progress=False)
    other = next((tmp_path / "small" / "checkpoints").glob("last*.ckpt"))
    one_line_error([*base, "--model", "channelvit_tiny", "--resume", str(other)], capsys,
                   "written for another model")
    (store_copy / "image" / "c" / "0" / "0" / "0" / "0").unlink()
    one_line_error(["pretrain", "--data", str(store_copy), "--quiet", "--output",
                    str(tmp_path / "o")], capsys, "store fails validation")
    blocker = tmp_path / "file"
    blocker.write_text("")
    one_line_error(["pretrain", "--data", str(reben_store), "--quiet", "--output",
                    str(blocker / "x")], capsys, "cannot create the output directory")
    one_line_error([*base, "--model", "channelvit_test", "--set", "optim.lr=1e30",
                    "--set", "optim.warmup_steps=1", "--max-steps", "6", "--set",
                    "objective.name=mae"], capsys, "non-finite loss")


@pytest.mark.slow
def test_knn_probe_scores_the_features_during_training(reben_store: Path, tmp_path: Path) -> None:
    from geofm.evaluation.finetuned import knn_evaluate

    out = tmp_path / "probed"
    result = run_pretrain(_cfg(reben_store, out, "trainer.max_steps=5",
                               f"probe.store={reben_store}", "probe.every_n_steps=2",
                               "probe.k=3", "probe.split=test"), progress=False)
    rows = pd.read_csv(out / "probe.csv")
    assert rows["step"].tolist() == [0, 2, 4, 5]  # before training, every 2 steps, at the end
    _, card = load_checkpoint(result["checkpoint"])
    last = card.provenance.training["probe"]
    assert last["step"] == 5 and last["split"] == "test"
    assert (last["k"], last["train_split"], last["task"]) == (3, "train", "multilabel")
    # At most max_chips of each split, the same seeded subset each time.
    from geofm.evaluation.finetuned import knn_metrics
    from geofm.io.store import open_store
    from geofm.loading import load_encoder

    encoder, card = load_encoder(result["checkpoint"])
    small = knn_metrics(encoder, card.contract, open_store(reben_store), split="test", k=3,
                        max_chips=2)
    assert (small["num_train"], small["num_query"]) == (2, 2)  # of 3 train and 2 test chips
    # The probe of the final encoder is what evaluating the saved checkpoint gives.
    offline = knn_evaluate(result["checkpoint"], reben_store, split="test", k=3)["metrics"]
    for name in ("map_macro", "map_micro", "f1_micro"):
        assert last[name] == pytest.approx(float(offline[name]), abs=1e-6)
        assert rows[name].iloc[-1] == pytest.approx(last[name], abs=1e-6)


def test_knn_probe_bad_input(reben_store: Path, tmp_path: Path, capsys) -> None:
    from geofm.bands import BAND_SETS

    base = ["pretrain", "--data", str(reben_store), "--quiet", "--max-steps", "1",
            "--output", str(tmp_path / "o"), "--set", "data.split=null"]
    unlabelled = make_store(tmp_path / "u.zarr", list(BAND_SETS["s1s2"]), size=32)
    one_line_error([*base, "--probe", str(unlabelled)], capsys, "needs scene labels")
    one_line_error([*base, "--set", f"probe.store={reben_store}", "--set", "probe.split=val2"],
                   capsys, "split 'val2' is empty")
    one_line_error([*base, "--set", f"probe.store={reben_store}", "--set", "probe.task=regression"],
                   capsys, "probe.task must be multilabel or classification")
    one_line_error([*base, "--set", f"probe.store={reben_store}", "--set", "probe.k=0"], capsys,
                   "'probe.k' must be at least 1")
    one_line_error([*base, "--set", f"probe.store={reben_store}", "--strategy", "fsdp"], capsys,
                   "does not run under FSDP")
    probe = ["--set", f"probe.store={reben_store}"]
    one_line_error([*base, *probe, "--set", "probe.split=train"], capsys, "two different splits")
    one_line_error([*base, *probe, "--set", "probe.k=null"], capsys, "'probe.k' needs a value")
    one_line_error([*base, "--set", "probe=null"], capsys, "'probe' must be a mapping")
    one_line_error([*base, "--set", f"probe.store=[{reben_store}, {reben_store}]"], capsys,
                   "probe.store must be one store path")
    assert not (tmp_path / "o" / "checkpoints").exists()  # each refused before any step
