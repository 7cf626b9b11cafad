"""Image–text alignment training: real sample pairs are learnt, only training captions train."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

import geofm
from geofm.cli import main
from geofm.curation.captions import write_captions
from geofm.errors import GeofmError
from geofm.evaluation.aligned import retrieval, zeroshot
from geofm.loading import load_aligned
from geofm.training.align import pick_caption, random_crop, run_align, training_captions
from geofm.training.config import ALIGN_DEFAULTS, apply_overrides, merge

from .conftest import REPO, one_line_error
from .synthetic import make_store


@pytest.fixture(scope="module")
def pretrained(tiny_pretrained: Callable[..., Path]) -> Path:
    return tiny_pretrained("vit_test", 2)


def _align(init: Path, store: Path, out: Path, *sets: str) -> dict:
    cfg = apply_overrides(merge(ALIGN_DEFAULTS, {}), [
        f"init={init}", f"data.store={store}", f"output={out}", "data.batch_size=6",
        "data.crop=64", "model.embed_dim=64", "trainer.accelerator=cpu",
        "trainer.log_every_n_steps=1", "trainer.checkpoint_every_n_steps=1000", *sets])
    return run_align(cfg, progress=False)


@pytest.mark.slow
def test_alignment_learns_the_real_sample(pretrained: Path, reben_store: Path,
                                          tmp_path: Path) -> None:
    # All six real chips train (data.split=null); captions are made from their labels.
    r = _align(pretrained, reben_store, tmp_path / "a", "data.split=null",
               "trainer.max_steps=25", "optim.lr=1e-2", "optim.encoder_lr=1e-3",
               "optim.warmup_steps=5")
    assert r["steps"] == 25 and r["num_chips"] == 6 and r["captions"]["source"] == "labels"
    weights = load_file(r["checkpoint"])
    assert not any(k.startswith("text.") for k in weights)  # locked tower: rebuilt on load
    card = load_aligned(r["checkpoint"])[1]
    assert card.kind == "align" and card.text is not None and card.text.locked
    assert card.provenance.data["split"] is None and card.text.captions["seed"] == 0
    assert card.text.templates and list(card.bands) == geofm.open_store(reben_store).bands

    ret = retrieval(r["checkpoint"], reben_store, split="all")
    m = ret["metrics"]
    assert m["i2t_R@1"] >= 0.9 and m["t2i_R@1"] >= 0.9, m
    assert ret["evaluated_chips_in_training"] == 6

    zs = zeroshot(r["checkpoint"], reben_store, split="all")
    z = zs["metrics"]
    assert z["map_macro"] >= z["chance_map"] + 0.15, z
    assert z["top1"] >= z["chance_top1"] + 0.3, z
    log = (tmp_path / "a" / "metrics.csv").read_text()
    assert all(k in log for k in ("train/loss", "train/scale", "train/lr_projection",
                                  "train/lr_encoder"))


def test_only_training_captions_train(pretrained: Path, store_copy: Path, tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["caption", str(store_copy), "--seed", "5", "--per-chip", "2"]) == 0
    assert "captioned 6 chips" in capsys.readouterr().out
    store = geofm.open_store(store_copy)
    assert store.attrs["captions"]["seed"] == 5
    splits = store.chips["split"].to_numpy()
    caps = [[f"held-out caption {i}"] if splits[i] != "train" else list(c)
            for i, c in enumerate(store.chips["captions"])]
    write_captions(store, caps, seed=5)

    train = training_captions(store, caps, "train")
    assert sorted(train) == np.flatnonzero(splits == "train").tolist()
    assert not any("held-out" in c for cs in train.values() for c in cs)

    out = tmp_path / "run"
    assert main(["align", "--init", str(pretrained), "--data", str(store_copy), "--max-steps",
                 "2", "--batch-size", "3", "--output", str(out), "--quiet", "--set",
                 "data.crop=64", "--set", "trainer.accelerator=cpu", "--set",
                 "model.embed_dim=16"]) == 0
    assert "captions from store (seed 5)" in capsys.readouterr().out
    seen = json.loads((out / "data_rank0.json").read_text())
    assert seen["chip_indices"] == np.flatnonzero(splits == "train").tolist()
    card = load_aligned(out / "align.safetensors")[1]
    assert card.text is not None and card.text.captions["source"] == "store"
    assert card.provenance.data["split"] == "train"


def test_caption_choice_and_crops_are_seeded() -> None:
    caps = ["a", "b", "c"]
    assert pick_caption(caps, 0, 7, 3) == pick_caption(caps, 0, 7, 3)
    assert {pick_caption(caps, 0, s, 3) for s in range(40)} == set(caps)
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    a = random_crop(images, 8, torch.Generator().manual_seed(1))
    b = random_crop(images, 8, torch.Generator().manual_seed(1))
    assert a.shape == (2, 1, 8, 8) and torch.equal(a, b)
    assert random_crop(images, None, torch.Generator()) is images


@pytest.mark.slow
def test_tiny_config_twin_runs(pretrained: Path, reben_store: Path, tmp_path: Path) -> None:
    cfg = REPO / "configs" / "align" / "reben_align.tiny.yaml"
    full = yaml.safe_load((REPO / "configs" / "align" / "reben_align.yaml").read_text())
    tiny = yaml.safe_load(cfg.read_text())
    assert set(tiny) <= set(full) and set(full) <= set(ALIGN_DEFAULTS)
    out = tmp_path / "tiny"
    assert main(["align", "--config", str(cfg), "--init", str(pretrained), "--data",
                 str(reben_store), "--output", str(out), "--quiet"]) == 0
    assert (out / "config.yaml").exists() and (out / "metrics.csv").exists()
    model, card = load_aligned(out / "align.safetensors")
    assert card.provenance.training["steps"] == 3
    assert card.text is not None and card.text.captions["per_chip"] == 2
    assert model.embed_dim == 32


@pytest.mark.slow
def test_resume_with_a_locked_text_tower(pretrained: Path, reben_store: Path,
                                         tmp_path: Path) -> None:
    # The locked tower is left out of Lightning's checkpoints; resuming must still be accepted.
    first = _align(pretrained, reben_store, tmp_path / "a", "trainer.max_steps=2",
                   "trainer.checkpoint_every_n_steps=1")
    ckpt = tmp_path / "a" / "checkpoints" / "last.ckpt"
    assert not any(k.startswith("model.text.") for k in
                   torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    resumed = _align(pretrained, reben_store, tmp_path / "b", "trainer.max_steps=3",
                     f"resume={ckpt}")
    assert first["steps"] == 2 and resumed["steps"] == 3


def test_non_finite_loss_is_an_error(pretrained: Path, reben_store: Path, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from geofm.objectives.contrastive import ContrastiveLoss

    monkeypatch.setattr(ContrastiveLoss, "forward",
                        lambda self, i, t, s: (i.sum() + t.sum()) * float("nan"))
    with pytest.raises(GeofmError, match="non-finite loss"):
        _align(pretrained, reben_store, tmp_path / "nan", "trainer.max_steps=1")


def test_bad_input_one_line(pretrained: Path, reben_store: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    base = ["align", "--init", str(pretrained), "--output", str(tmp_path / "o"), "--quiet"]
    bare = make_store(tmp_path / "bare.zarr", list(geofm.open_store(reben_store).bands), n=2,
                      size=16)
    one_line_error([*base, "--data", str(bare)], capsys, "neither captions nor labels",
                   "geofm caption")
    one_line_error([*base, "--data", str(reben_store), "--split", "nope"], capsys, "split 'nope'")
    one_line_error([*base, "--data", str(reben_store), "--batch-size", "1"], capsys,
                   "needs at least 2 image-text pairs")
    one_line_error(["align", "--data", str(reben_store)], capsys, "no pretrained checkpoint")
    one_line_error([*base, "--data", str(reben_store), "--set", "data.crop=60"], capsys,
                   "multiple of the patch size")
    one_line_error([*base, "--data", str(reben_store), "--text-model", str(tmp_path / "nowhere")],
                   capsys, "not a local folder")
    one_line_error(["caption", str(bare)], capsys, "no labels to caption")


def test_one_captioned_chip_is_refused(pretrained: Path, store_copy: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    store = geofm.open_store(store_copy)
    caps = [["a field"] if i == 0 else [] for i in range(len(store))]
    write_captions(store, caps, seed=0)
    one_line_error(["align", "--init", str(pretrained), "--data", str(store_copy), "--split", "all",
                    "--output", str(tmp_path / "o"), "--quiet"], capsys, "at least 2")


def test_temperature_is_bounded_on_the_parameter(pretrained: Path, reben_store: Path,
                                                 tmp_path: Path) -> None:
    from geofm.loading import load_encoder
    from geofm.models.align import AlignModel
    from geofm.models.text import TextTower
    from geofm.training.align import AlignTask

    encoder, _ = load_encoder(pretrained)
    model = AlignModel(encoder, TextTower.from_source(), embed_dim=8, max_logit_scale=100.0)
    task = AlignTask(model, {0: ["a"], 1: ["b"]})
    with torch.no_grad():
        model.logit_scale.fill_(9.0)  # exp(9) ≈ 8100, past the cap
    task.on_train_batch_end(None, None, 0)
    assert model.logit_scale.item() == pytest.approx(np.log(100.0))
    with torch.no_grad():
        model.logit_scale.fill_(-3.0)
    task.on_train_batch_end(None, None, 0)
    assert model.logit_scale.item() == 0.0


@pytest.mark.slow
def test_ddp_alignment_gives_every_rank_an_equal_disjoint_batch(pretrained: Path,
                                                               reben_store: Path,
                                                               tmp_path: Path) -> None:
    # 6 chips, 2 ranks of 4: a global batch of 8 filled up from the start of the shuffle, so
    # the gathered contrastive batch has the same size on both ranks (dealing whole batches of
    # 4 and 2 to the ranks failed in the gather).
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "geofm.cli", "align", "--init", str(pretrained), "--data",
           str(reben_store), "--output", str(out), "--quiet", "--max-steps", "2",
           "--batch-size", "4", "--devices", "2", "--set", "trainer.strategy=ddp",
           "--set", "trainer.accelerator=cpu", "--set", "data.split=null",
           "--set", "model.embed_dim=32", "--set", "data.crop=64"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.count("aligned 2 steps") == 1
    seen = [set(json.loads((out / f"data_rank{r}.json").read_text())["chip_indices"])
            for r in (0, 1)]
    assert seen[0] | seen[1] == set(range(6))
