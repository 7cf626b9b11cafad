"""Finetuning and evaluation: every task overfits real sample chips, freezing, band checks."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import geofm
from geofm.evaluation.finetuned import evaluate, knn_evaluate
from geofm.io.writer import StoreSpec, create_store, finalize_store, write_region
from geofm.loading import encoder_state, load_finetuned
from geofm.training.config import FINETUNE_DEFAULTS, apply_overrides, merge
from geofm.training.finetune import run_finetune

from .conftest import one_line_error
from .synthetic import make_store


@pytest.fixture(scope="module")
def pretrained(tiny_pretrained: Callable[..., Path]) -> dict[str, Path]:
    return {m: tiny_pretrained(m, 2) for m in ("channelvit_test", "vit_test")}


def _finetune(init: Path, store: Path, out: Path, task: str, *sets: str) -> dict:
    cfg = apply_overrides(merge(FINETUNE_DEFAULTS, {}), [
        f"init={init}", f"data.store={store}", f"task={task}", f"output={out}",
        "data.train_split=all", "data.val_split=all", "data.batch_size=6",
        "trainer.accelerator=cpu", "trainer.log_every_n_steps=1", "optim.warmup_steps=2",
        "trainer.val_every_n_steps=1000",
        *sets])
    return run_finetune(cfg, progress=False)


def _derived_store(src: Path, out: Path, *, single_label: bool = False,
                   ndvi: bool = False, drop_mask: bool = False) -> Path:
    """A store of the same real chips with single labels or an NDVI regression target."""
    s = geofm.open_store(src)
    batch = s.read(np.arange(len(s)))
    labels = batch["label"]
    if single_label:
        first = labels.argmax(1)
        labels = np.eye(labels.shape[1], dtype=np.uint8)[first]
    target = None
    if ndvi:
        nir, red = batch["image"][:, 7], batch["image"][:, 3]
        v = (nir - red) / np.maximum(nir + red, 1)  # [N, 120, 120]
        # Patch-level NDVI: means over the model's 8 × 8 px patches, at pixel resolution.
        v = v.reshape(len(v), 15, 8, 15, 8).mean(axis=(2, 4)).repeat(8, 1).repeat(8, 2)
        target = v[:, None].astype(np.float32)
    spec = StoreSpec(num_chips=len(s), bands=s.bands, chip_size=s.chip_size, dtype="float32",
                     classes=s.classes, class_colors=s.class_colors, has_label=True,
                     has_mask=not drop_mask, target_names=["ndvi"] if ndvi else [],
                     gsd_m=10.0, fingerprint="derived", provenance={"builder": "test"})
    create_store(out, spec)
    write_region(out, 0, batch["image"], s.chips.drop(columns=["index"]), label=labels,
                 mask=None if drop_mask else batch["mask"], target=target)
    finalize_store(out)
    return out


@pytest.mark.slow
def test_multilabel_overfits_and_frozen_encoder_is_untouched(
        pretrained: dict[str, Path], reben_store: Path, tmp_path: Path) -> None:
    init = pretrained["channelvit_test"]
    r = _finetune(init, reben_store, tmp_path / "ml", "multilabel", "trainer.max_steps=100",
                  "optim.lr=5e-2", "head.kind=attentive", "head.freeze=frozen",
                  "optim.weight_decay=0", "data.bands=[S2.B04, S2.B03, S2.B02, S1.VV]")
    assert r["val_metrics"]["map_macro"] > 0.95
    before = encoder_state(load_file(init))
    after = encoder_state(load_file(r["checkpoint"]))
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k  # bit-identical
    _, card = load_finetuned(r["checkpoint"])
    assert card.classes[0] == "Urban fabric" and card.class_colors[0] == "#e6004d"
    assert card.tile_size == (120, 120) and card.task is not None
    assert card.task.selection["metric"] == "map_macro"


@pytest.mark.slow
def test_classification_overfits(pretrained: dict[str, Path], reben_store: Path,
                                 tmp_path: Path) -> None:
    store = _derived_store(reben_store, tmp_path / "single.zarr", single_label=True)
    r = _finetune(pretrained["vit_test"], store, tmp_path / "cls", "classification",
                  "trainer.max_steps=60", "optim.lr=3e-2", "head.kind=mlp")
    assert r["val_metrics"]["accuracy"] == 1.0


@pytest.mark.slow
def test_segmentation_overfits(pretrained: dict[str, Path], reben_store: Path,
                               tmp_path: Path) -> None:
    r = _finetune(pretrained["vit_test"], reben_store, tmp_path / "seg", "segmentation",
                  "trainer.max_steps=120", "optim.lr=5e-3", "head.freeze=full",
                  "optim.layer_decay=1.0", "optim.weight_decay=0", "data.train_split=train",
                  "data.val_split=train", "data.batch_size=3")
    assert r["val_metrics"]["miou"] > 0.9


@pytest.mark.slow
def test_regression_overfits(pretrained: dict[str, Path], reben_store: Path,
                             tmp_path: Path) -> None:
    store = _derived_store(reben_store, tmp_path / "ndvi.zarr", ndvi=True)
    r = _finetune(pretrained["vit_test"], store, tmp_path / "reg", "regression",
                  "trainer.max_steps=100", "optim.lr=5e-3", "head.freeze=full",
                  "optim.layer_decay=1.0", "optim.weight_decay=0", "data.train_split=train",
                  "data.val_split=train", "data.batch_size=3")
    s = geofm.open_store(store)
    ndvi = s.read(s.split_indices("train"))["target"]
    # The fit explains almost all of the variance of the chips' patch-level NDVI.
    assert r["val_metrics"]["rmse"] < 0.3 * float(ndvi.std())


@pytest.mark.slow
def test_eval_report_and_band_checks(pretrained: dict[str, Path], reben_store: Path,
                                     tmp_path: Path) -> None:
    flex = _finetune(pretrained["channelvit_test"], reben_store, tmp_path / "f", "multilabel",
                     "trainer.max_steps=3")
    rep = evaluate(flex["checkpoint"], reben_store, split="test", output=tmp_path / "rep")
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["split"] == "test" and saved["num_chips"] == 2
    assert "validation" not in saved["model_selection"] or "only" in saved["model_selection"]
    assert saved["split_method"]["method"] == "reben-official"
    assert "train/test" in saved["leakage_audit"]["pairs"]
    counts = [row["bands"] for row in rep["band_robustness"]]
    assert counts[0] == 1 and counts[-1] == 14
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "against the number of bands" in md and "Leakage audit" in md
    # A store with fewer bands: the channel-flexible model uses what is there ...
    s2 = make_store(tmp_path / "s2.zarr", list(geofm.BAND_SETS["s2l2a"]), n=2, size=16)
    fixed = _finetune(pretrained["vit_test"], reben_store, tmp_path / "v", "multilabel",
                      "trainer.max_steps=2")
    with pytest.raises(geofm.GeofmError, match=r"S1\.VV, S1\.VH"):  # ... a plain ViT cannot
        evaluate(fixed["checkpoint"], s2, split="train")


def test_knn_on_frozen_embeddings(pretrained: dict[str, Path], reben_store: Path) -> None:
    r = knn_evaluate(pretrained["channelvit_test"], reben_store, split="test",
                     train_split="train", k=3)
    assert r["num_train"] == 3 and r["num_query"] == 2
    assert 0.0 <= r["metrics"]["map_micro"] <= 1.0


def test_bad_input(pretrained: dict[str, Path], reben_store: Path, tmp_path: Path,
                   capsys) -> None:
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    base = ["finetune", "--data", str(reben_store), "--quiet", "--output", str(tmp_path / "o")]
    one_line_error([*base, "--init", str(junk)], capsys, "not a safetensors file")
    nomask = _derived_store(reben_store, tmp_path / "nomask.zarr", drop_mask=True)
    one_line_error(["finetune", "--init", str(pretrained["vit_test"]), "--data", str(nomask),
                    "--task", "segmentation", "--quiet", "--output", str(tmp_path / "o")], capsys,
                   "needs masks")
    one_line_error([*base, "--init", str(pretrained["vit_test"]), "--set",
                    "data.train_split=nowhere"], capsys, "split 'nowhere' is empty")
    one_line_error(["eval", str(pretrained["vit_test"]), "--data", str(reben_store)], capsys,
                   "not a finetuned model")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["reben_multilabel", "reben_segmentation"])
def test_finetune_config_twins_run(name: str, pretrained: dict[str, Path], reben_store: Path,
                                   tmp_path: Path) -> None:
    from geofm.training.config import load_yaml

    repo = Path(__file__).resolve().parents[1]
    full = load_yaml(repo / "configs" / "finetune" / f"{name}.yaml")
    tiny = load_yaml(repo / "configs" / "finetune" / f"{name}.tiny.yaml")
    assert set(tiny) <= set(full)  # the twin only shrinks the real config
    assert tiny["task"] == full["task"] and tiny["head"]["kind"] == full["head"]["kind"]
    cfg = apply_overrides(merge(merge(FINETUNE_DEFAULTS, full), tiny), [
        f"init={pretrained['vit_test']}", f"data.store={reben_store}",
        f"output={tmp_path / 'out'}", "data.train_split=all", "data.val_split=all"])
    r = run_finetune(cfg, progress=False)
    assert r["steps"] == 3 and Path(r["checkpoint"]).exists()
