"""Pretraining one band-token model on several stores (sensors) at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from geofm.bands import BAND_SETS
from geofm.checkpoint import load_checkpoint
from geofm.cli import main
from geofm.data.mixed import MixedChips, StoreBatchSampler
from geofm.io.stats import BandStats, pooled_stats
from geofm.io.store import open_store
from geofm.loading import store_bands_for
from geofm.models import create_model
from geofm.training.datamodule import MixedChipDataModule, band_specs
from geofm.training.pretrain import run_pretrain

from .conftest import REPO, ddp_pretrain, one_line_error, pretrain_cfg, train_losses
from .synthetic import make_store


@pytest.fixture(scope="module")
def modis_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 32-px chips of the 14 SatVision-TOA MODIS bands."""
    return make_store(tmp_path_factory.mktemp("modis") / "modis.zarr",
                      list(BAND_SETS["modis14"]), n=4, size=32, seed=1)


def _mixed(reben: Path, modis: Path, out: Path, *sets: str) -> dict:
    return pretrain_cfg(reben, out, "previews=1", f"data.store=[{reben}, {modis}]", *sets)


def test_batches_come_from_one_store_and_cover_every_chip_once() -> None:
    sizes = [7, 4, 1]
    sampler = StoreBatchSampler(sizes, batch_size=3, seed=5)
    bounds = np.cumsum([0, *sizes])
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) == 3 + 2 + 1
        for batch in batches:
            stores = {int(np.searchsorted(bounds, i, side="right")) - 1 for i in batch}
            assert len(stores) == 1 and 1 <= len(batch) <= 3
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(sum(sizes)))
        epochs.append(batches)
    assert epochs[0] != epochs[1] != epochs[2]
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]  # the order depends on (seed, epoch) only
    sampler.resume_after(1, 4)
    assert len(sampler) == 6 and list(sampler) == epochs[1][4:]  # len: the whole epoch's
    assert list(sampler) == epochs[1]  # the skip applies once


def test_ranks_take_equal_slices_of_global_batches() -> None:
    sizes, batch, world = [12, 5], 2, 3  # global batches of 6: 2 of store 0, 1 of store 1
    ranks = [StoreBatchSampler(sizes, batch, seed=0, rank=r, world_size=world)
             for r in range(world)]
    shares = [list(s) for s in ranks]
    assert [len(s) for s in shares] == [len(r) for r in ranks] == [3, 3, 3]
    assert all(len(b) == batch for share in shares for b in share)  # equal on every rank
    for step in range(3):  # every rank trains on the same store at each step
        assert len({int(shares[r][step][0] >= 12) for r in range(world)}) == 1
    store0 = [i for share in shares for b in share for i in b if i < 12]
    assert sorted(store0) == list(range(12))  # disjoint and complete
    store1 = [i for share in shares for b in share for i in b if i >= 12]
    assert len(store1) == 6 and set(store1) == set(range(12, 17))  # filled up from the start
    globals_ = ranks[0].all_batches()
    for r in range(world):
        assert shares[r] == [g[r * batch:(r + 1) * batch] for g in globals_]
    # One rank keeps a store's short last batch; one shorter than min_batch is dropped.
    assert [len(b) for b in StoreBatchSampler([7], 3)] == [3, 3, 1]
    assert [len(b) for b in StoreBatchSampler([7], 3, min_batch=2)] == [3, 3]


def test_pooled_statistics_are_those_of_the_pooled_pixels() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(10, 2, (3, 2, 8, 8)).astype(np.float32)  # bands x, y
    b = rng.normal(20, 5, (5, 2, 8, 8)).astype(np.float32)  # bands y, z
    valid_b = rng.random(b.shape) > 0.3
    sources = [(BandStats.of(a), ["x", "y"]), (BandStats.of(b, valid_b), ["y", "z"])]
    pooled = pooled_stats(sources, ["z", "y", "x"])
    y = np.concatenate([a[:, 1].ravel(), b[:, 0][valid_b[:, 0]].ravel()]).astype(np.float64)
    np.testing.assert_allclose(pooled.mean[1], y.mean(), rtol=1e-9)
    np.testing.assert_allclose(pooled.std[1], y.std(), rtol=1e-6)
    np.testing.assert_allclose(pooled.mean[[0, 2]], [b[:, 1][valid_b[:, 1]].mean(),
                                                     a[:, 0].mean()], rtol=1e-6)
    alone = pooled_stats(sources[:1], ["x", "y"])
    np.testing.assert_array_equal(alone.mean, sources[0][0].mean)


def test_band_selections_per_store() -> None:
    assert band_specs(None, 3) == [None, None, None]
    assert band_specs(["s1s2", 4], 2) == ["s1s2", 4]
    assert band_specs(["S2.B04", "S2.B08"], 2) == [["S2.B04", "S2.B08"]] * 2
    assert band_specs(["S2.B04", "S2.B08"], 1) == [["S2.B04", "S2.B08"]]


def test_mixed_chips_read_a_batch_from_its_store(reben_store: Path, modis_store: Path) -> None:
    dm = MixedChipDataModule([reben_store, modis_store], [None, "modis14"], batch_size=2,
                             split=None)
    data = dm.dataset(None)
    assert isinstance(data, MixedChips) and len(data) == 6 + 4
    samples = data[[7, 6]]
    assert [s["meta"]["index"] for s in samples] == [7, 6]  # 6 reBEN chips come first
    assert samples[0]["bands"] == list(BAND_SETS["modis14"])
    assert samples[0]["image"].shape == (14, 32, 32)
    with pytest.raises(ValueError, match="one store"):
        data[[0, 6]]
    # The pooled statistics of a band only one store has are that store's.
    mean, _ = open_store(modis_store).band_stats(["MODIS.B31"])
    assert dm.normalize.mean[dm.band_names.index("MODIS.B31")] == pytest.approx(mean[0])


@pytest.mark.slow
def test_one_channelvit_pretrains_on_two_sensors(reben_store: Path, modis_store: Path,
                                                 tmp_path: Path) -> None:
    out = tmp_path / "mixed"
    result = run_pretrain(_mixed(reben_store, modis_store, out, "trainer.max_steps=10",
                                 "data.batch_size=2"), progress=False)
    weights, card = load_checkpoint(result["checkpoint"])
    union = list(BAND_SETS["s1s2"]) + list(BAND_SETS["modis14"])
    assert list(card.bands) == union
    assert [b["name"] for b in card.contract.info] == union
    assert len(card.contract.mean) == 28
    assert [list(s["bands"]) for s in card.provenance.data["stores"]] == [list(BAND_SETS["s1s2"]),
                                                              list(BAND_SETS["modis14"])]
    seen = json.loads((out / "data_rank0.json").read_text())["chip_indices"]
    assert seen == list(range(10))  # two epochs of 5 batches: every chip of both stores
    losses = train_losses(out)
    assert len(losses) == 10 and all(np.isfinite(losses))
    metrics = pd.read_csv(out / "metrics.csv")
    per_store = [metrics[f"train/loss_store{i}"].dropna() for i in (0, 1)]
    assert len(per_store[0]) == 6 and len(per_store[1]) == 4  # 3 + 2 batches, two epochs
    assert sorted([*per_store[0], *per_store[1]]) == sorted(losses)
    # Each sensor's bands run through the one encoder, with their learned band offsets.
    enc = create_model(card.architecture.name, **card.architecture.config)
    enc.load_state_dict({k[8:]: v for k, v in weights.items() if k.startswith("encoder.")})
    for bands, size in ((BAND_SETS["s1s2"], 120), (BAND_SETS["modis14"], 32)):
        assert torch.isfinite(enc(torch.randn(1, 14, size, size), list(bands))).all()
    assert enc.band_embed.known_bands == tuple(union)
    # Finetuning on one sensor's store takes that store's bands by default.
    assert store_bands_for(card, modis_store) == list(BAND_SETS["modis14"])


@pytest.mark.slow
@pytest.mark.parametrize("workers,every,step", [
    (0, 3, 3),  # mid-epoch 0
    (1, 3, 6),  # mid-epoch 1, with a worker process drawing batches before any hook runs
    (1, 5, 5),  # saved on epoch 0's last batch: picks up at epoch 1's start
])
def test_mixed_resume_takes_the_same_next_steps(reben_store: Path, modis_store: Path,
                                                tmp_path: Path, workers: int, every: int,
                                                step: int) -> None:
    common = ("trainer.max_steps=8", f"trainer.checkpoint_every_n_steps={every}",
              "data.batch_size=2", f"data.num_workers={workers}")  # 5 batches an epoch
    full = run_pretrain(_mixed(reben_store, modis_store, tmp_path / "full", *common),
                        progress=False)
    ckpt = next((tmp_path / "full" / "checkpoints").glob(f"*step={step}.ckpt"))
    resumed = run_pretrain(_mixed(reben_store, modis_store, tmp_path / "resumed", *common,
                                  f"resume={ckpt}"), progress=False)
    a, b = load_file(full["checkpoint"]), load_file(resumed["checkpoint"])
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    assert train_losses(tmp_path / "full")[step:] == train_losses(tmp_path / "resumed")


@pytest.mark.slow
def test_ddp_ranks_split_the_mixed_batches(reben_store: Path, modis_store: Path,
                                           tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    p = ddp_pretrain(out, 5, "--data", str(reben_store), "--data", str(modis_store),
                     "--bands", "s1s2", "--bands", "modis14")
    assert p.stdout.count("pretrained 5 steps") == 1  # rank 0 reports
    seen = [set(json.loads((out / f"data_rank{r}.json").read_text())["chip_indices"])
            for r in (0, 1)]
    assert not seen[0] & seen[1]  # 10 one-chip batches, 5 per rank, none read twice
    assert seen[0] | seen[1] == set(range(10))


@pytest.mark.slow
def test_mixed_bad_input(reben_store: Path, modis_store: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    base = ["pretrain", "--data", str(reben_store), "--data", str(modis_store), "--quiet",
            "--max-steps", "1", "--output", str(tmp_path / "o"), "--set", "data.split=null"]
    one_line_error([*base, "--bands", "s1s2", "--bands", "modis14", "--bands", "s2"], capsys,
                   "3 band selections for 2 store(s)")
    small = make_store(tmp_path / "small.zarr", list(BAND_SETS["modis14"]), n=2, size=36)
    one_line_error([*base[:4], str(small), *base[5:], "--model", "channelvit_test"], capsys,
                   f"{small}: chips of 36×36 px do not split into 8-px patches")
    assert not (tmp_path / "o" / "checkpoints").exists()  # refused before any step
    one_line_error([*base, "--set", "data.weights=[0, 1]"], capsys, "gives a store no batches")
    one_line_error([*base, "--bands", "s1s2"], capsys,
                   f"{modis_store}: band S2.B01 is not available")
    one_line_error([*base, "--model", "vit_test"], capsys, "the stores serve different bands")
    # Repeated --bands are one selection per store, band names included, with the stores
    # listed in a config file as well as by --data.
    two = tmp_path / "two.yaml"
    two.write_text(f"data: {{store: [{reben_store}, {modis_store}], split: null}}\n")
    names = ["pretrain", "--config", str(two), "--quiet", "--max-steps", "1", "--model",
             "channelvit_test", "--output", str(tmp_path / "names"), "--bands",
             "S2.B02,S2.B03", "--bands", "MODIS.B31"]
    assert main(names) == 0
    _, card = load_checkpoint(tmp_path / "names" / "pretrain.safetensors")
    assert [list(r["bands"]) for r in card.provenance.data["stores"]] == [["S2.B02", "S2.B03"],
                                                              ["MODIS.B31"]]
    # A plain ViT pretrains on several stores that serve the same bands.
    same = ["pretrain", "--data", str(reben_store), "--data", str(reben_store), "--quiet",
            "--max-steps", "1", "--output", str(tmp_path / "vit"), "--set", "data.split=null",
            "--model", "vit_test", "--set",
            "objective.kwargs={decoder_dim: 32, decoder_depth: 1, decoder_heads: 2}"]
    assert main(same) == 0
    assert "pretrained 1 steps" in capsys.readouterr().out


def test_default_bands_of_a_store_for_a_checkpoint(modis_store: Path) -> None:
    from geofm.card import ModelCard
    from geofm.errors import BandError

    bands = [*BAND_SETS["s1s2"], *BAND_SETS["modis14"]]
    flexible = ModelCard.from_header({"model": {"name": "channelvit_tiny"}, "bands": bands})
    assert store_bands_for(flexible, modis_store) == list(BAND_SETS["modis14"])
    fixed = ModelCard.from_header({"model": {"name": "vit_tiny"}, "bands": bands})
    with pytest.raises(BandError, match=r"needs bands S2\.B01"):
        store_bands_for(fixed, modis_store)


def test_multisensor_config_twin_runs(reben_store: Path, modis_store: Path,
                                      tmp_path: Path) -> None:
    from geofm.training.config import PRETRAIN_DEFAULTS, apply_overrides, load_yaml, merge

    full = load_yaml(REPO / "configs" / "pretrain" / "multisensor.yaml")
    tiny = load_yaml(REPO / "configs" / "pretrain" / "multisensor.tiny.yaml")
    assert set(tiny) <= set(full) | {"previews"}
    assert tiny["data"]["bands"] == full["data"]["bands"]
    cfg = apply_overrides(merge(merge(PRETRAIN_DEFAULTS, full), tiny),
                          [f"data.store=[{reben_store}, {modis_store}]",
                           f"output={tmp_path / 'out'}"])
    result = run_pretrain(cfg, progress=False)
    _, card = load_checkpoint(result["checkpoint"])
    assert result["steps"] == 3 and len(card.bands) == 28


def test_weights_share_the_batches_and_walk_through_each_store() -> None:
    sizes, b = [20, 2], 2  # 10 + 1 batches per epoch
    sampler = StoreBatchSampler(sizes, b, seed=3, weights=[1, 1])
    assert sampler.quotas == [6, 5] and len(sampler) == 11
    per_store: list[list[int]] = [[], []]
    for epoch in range(4):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == 11 and all(len(x) == b for x in batches)
        for batch in batches:
            store = int(batch[0] >= 20)
            assert all(int(i >= 20) == store for i in batch)
        # Within the epoch the batches stay in stream order per store.
        for store in (0, 1):
            chunk = [i for x in batches if int(x[0] >= 20) == store for i in x]
            per_store[store].append(sorted(chunk))
    # Store 0 (12 of its 20 chips an epoch): every chip once before any twice.
    assert len(set(per_store[0][0])) == 12
    assert set(per_store[0][0]) | set(per_store[0][1]) == set(range(20))
    seen0 = [i for e in per_store[0] for i in e]
    counts = np.bincount(seen0, minlength=20)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 48  # 4 epochs × 6 batches × 2
    # Store 1 (2 chips, 10 chips an epoch): repeated, each chip equally often.
    seen1 = [i for e in per_store[1] for i in e]
    assert np.bincount(np.array(seen1) - 20).tolist() == [20, 20]
    with pytest.raises(ValueError, match="non-negative"):
        StoreBatchSampler(sizes, b, weights=[1, -1])
    with pytest.raises(ValueError, match="no chips"):
        StoreBatchSampler([5, 0], b, weights=[1, 1])
    assert StoreBatchSampler([5, 0], b, weights=[1, 0]).quotas == [3, 0]
    assert StoreBatchSampler(sizes, b, weights=[1e308, 1e308]).quotas == [6, 5]


def test_weighted_mixed_run(reben_store: Path, modis_store: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "w"
    # 5 batches an epoch, shared 1 : 3 -> 1 of reBEN (2 chips) and 4 of MODIS (each chip twice).
    result = run_pretrain(_mixed(reben_store, modis_store, out, "trainer.max_steps=5",
                                 "data.batch_size=2", "data.weights=[1, 3]",
                                 "trainer.seed=4000000000"), progress=False)
    seen = json.loads((out / "data_rank0.json").read_text())["chip_indices"]
    assert len([i for i in seen if i < 6]) == 2 and [i for i in seen if i >= 6] == [6, 7, 8, 9]
    _, card = load_checkpoint(result["checkpoint"])
    assert [r["weight"] for r in card.provenance.data["stores"]] == [1.0, 3.0]
    base = ["pretrain", "--data", str(reben_store), "--quiet", "--max-steps", "1",
            "--output", str(tmp_path / "o"), "--set", "data.split=null"]
    one_line_error([*base, "--data", str(modis_store), "--set", "data.weights=[1]"], capsys,
                   "data.weights: weights must be 2 non-negative numbers")
    one_line_error([*base, "--set", "data.weights=[1]"], capsys, "one is given")


def test_restored_position_follows_lightnings_loop_state() -> None:
    from types import SimpleNamespace

    from geofm.training.datamodule import restored_position

    def trainer(epoch: int, started: int, processed: int, ready: int) -> SimpleNamespace:
        epochs = SimpleNamespace(started=started, processed=processed)
        batches = SimpleNamespace(current=SimpleNamespace(ready=ready))
        return SimpleNamespace(current_epoch=epoch, fit_loop=SimpleNamespace(
            epoch_progress=SimpleNamespace(current=epochs),
            epoch_loop=SimpleNamespace(batch_progress=batches)))

    assert restored_position(None, 5) == (0, 0)
    assert restored_position(trainer(0, 0, 0, 0), 5) == (0, 0)  # fresh run
    assert restored_position(trainer(1, 2, 1, 3), 5) == (1, 3)  # saved mid-epoch 1
    assert restored_position(trainer(1, 2, 1, 5), 5) == (2, 0)  # saved on epoch 1's last batch
    # Saved when training ended mid-epoch: Lightning closed that epoch and opens the next.
    assert restored_position(trainer(2, 2, 2, 3), 5) == (2, 0)


@pytest.mark.slow
def test_ddp_resume_with_a_worker_takes_the_same_steps(reben_store: Path,
                                                       tmp_path: Path) -> None:
    def run(out: Path, *extra: str) -> None:
        ddp_pretrain(out, 6, "--data", str(reben_store), "--set", "data.num_workers=1",
                     "--set", "trainer.checkpoint_every_n_steps=4", *extra)

    run(tmp_path / "full")  # 6 chips, 3 one-chip batches per rank and epoch
    ckpt = next((tmp_path / "full" / "checkpoints").glob("*step=4.ckpt"))  # mid-epoch 1
    run(tmp_path / "resumed", "--resume", str(ckpt))
    a = load_file(tmp_path / "full" / "pretrain.safetensors")
    b = load_file(tmp_path / "resumed" / "pretrain.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.mark.slow
def test_store_loss_columns_average_the_steps_between_rows(reben_store: Path,
                                                           modis_store: Path,
                                                           tmp_path: Path) -> None:
    common = ("trainer.max_steps=5", "data.batch_size=2")
    run_pretrain(_mixed(reben_store, modis_store, tmp_path / "each", *common), progress=False)
    run_pretrain(_mixed(reben_store, modis_store, tmp_path / "five", *common,
                        "trainer.log_every_n_steps=5"), progress=False)
    each = pd.read_csv(tmp_path / "each" / "metrics.csv")
    five = pd.read_csv(tmp_path / "five" / "metrics.csv").dropna(subset=["train/loss"])
    assert len(five) == 1  # one row, after step 5
    for i in (0, 1):
        steps = each[f"train/loss_store{i}"].dropna()
        assert len(steps) >= 1
        assert five[f"train/loss_store{i}"].iloc[0] == pytest.approx(steps.mean(), rel=1e-6)
