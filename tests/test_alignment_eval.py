"""Zero-shot and retrieval metrics, the near-duplicate check, reports and their bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import geofm
from geofm.card import BandContract, ModelCard, Provenance
from geofm.checkpoint import save_checkpoint
from geofm.cli import main
from geofm.errors import GeofmError
from geofm.evaluation.aligned import (
    duplicate_check,
    expected_random_ap,
    load_templates,
    retrieval_metrics,
    zeroshot,
    zeroshot_metrics,
)
from geofm.io.writer import StoreSpec, create_store, finalize_store, write_region
from geofm.models import create_model
from geofm.models.align import AlignModel, aligned_card, save_aligned
from geofm.models.text import TextTower

from .conftest import one_line_error
from .synthetic import make_store


@pytest.fixture(scope="module")
def align_ckpt(reben_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained align checkpoint (vit_test + the bundled text tower) 'trained' on train."""
    store = geofm.open_store(reben_store)
    torch.manual_seed(0)
    encoder = create_model("vit_test", bands=store.bands)
    model = AlignModel(encoder, TextTower.from_source(), embed_dim=16)
    mean, std = store.band_stats()
    card = aligned_card(
        model, BandContract(tuple(store.bands), tuple(mean.tolist()), tuple(std.tolist())),
        templates=["a satellite image of {}"],
        captions={"source": "labels", "seed": 3, "per_chip": 2},
        patch_size=8, tile_size=(120, 120), classes=tuple(store.classes),
        provenance=Provenance(data={"store": str(reben_store), "split": "train"},
                              training={"seed": 0}))
    return save_aligned(tmp_path_factory.mktemp("align") / "align.safetensors", model, card)


def test_retrieval_recall_follows_remoteclip_protocol() -> None:
    owner = torch.tensor([0, 0, 1, 1, 2])  # images 0 and 1 have two captions, image 2 one
    sim = torch.tensor([
        [0.9, 0.1, 0.0, 0.2, 0.3],  # image 0: its caption 0 first (caption 1 last): hit at 1
        [0.8, 0.1, 0.2, 0.5, 0.0],  # image 1: image 0's caption first, its caption 3 second
        [0.0, 0.7, 0.1, 0.4, 0.6],  # image 2: image 0's caption first, its caption 4 second
    ])
    m = retrieval_metrics(sim, owner, ks=(1, 2))
    assert m["i2t_R@1"] == pytest.approx(1 / 3)
    assert m["i2t_R@2"] == 1.0
    # Captions (columns) rank images: 0 → image 0 (hit), 1 → image 2 (miss; its image 0 is
    # second), 2 → image 1, 3 → image 1, 4 → image 2 (hits).
    assert m["t2i_R@1"] == pytest.approx(4 / 5)
    assert m["t2i_R@2"] == 1.0
    assert m["mean_recall"] == pytest.approx(np.mean([1 / 3, 4 / 5, 1, 1]))
    # A random ranking: image 0 has 2 of 5 captions, 1 − C(3, k)/C(5, k); image 2 has one.
    assert m["chance_i2t_R@1"] == pytest.approx(np.mean([2 / 5, 2 / 5, 1 / 5]))
    assert m["chance_i2t_R@2"] == pytest.approx(np.mean([7 / 10, 7 / 10, 4 / 10]))
    assert m["chance_t2i_R@1"] == pytest.approx(1 / 3)
    assert m["chance_t2i_R@2"] == pytest.approx(2 / 3)
    full = retrieval_metrics(sim, owner)
    assert {k for k in full if not k.startswith("chance_")} == {
        "i2t_R@1", "t2i_R@1", "i2t_R@5", "t2i_R@5", "i2t_R@10", "t2i_R@10", "mean_recall"}
    assert full["chance_t2i_R@5"] == 1.0 and full["chance_i2t_R@10"] == 1.0  # k ≥ the pool


def test_expected_random_ap_matches_simulation() -> None:
    rng = np.random.default_rng(0)
    for n, m in ((6, 1), (6, 2), (6, 4), (20, 3)):
        aps = []
        for _ in range(4000):
            rel = np.zeros(n, bool)
            rel[rng.choice(n, m, replace=False)] = True
            hits = np.cumsum(rel)
            aps.append(np.mean((hits / np.arange(1, n + 1))[rel]))
        assert expected_random_ap(m, n) == pytest.approx(np.mean(aps), abs=0.01)
    assert expected_random_ap(6, 6) == 1.0


def test_zeroshot_metrics_and_chance() -> None:
    labels = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0]])
    perfect = labels.float() + 0.01 * torch.arange(4)
    m = zeroshot_metrics(perfect, labels)
    assert m["top1"] == 1.0 and m["map_macro"] == pytest.approx(1.0)
    assert m["chance_top1"] == pytest.approx(np.mean([1 / 4, 2 / 4, 1 / 4]))
    assert m["chance_map"] == pytest.approx(np.mean([expected_random_ap(1, 3),
                                                     expected_random_ap(1, 3),
                                                     expected_random_ap(2, 3)]))
    assert m["classes_evaluated"] == 3 and np.isnan(m["per_class_ap"][3])
    wrong = zeroshot_metrics(1 - labels.float(), labels)
    assert wrong["top1"] == 0.0 and wrong["map_macro"] < m["chance_map"]


def test_templates_file(tmp_path: Path) -> None:
    good = tmp_path / "t.txt"
    good.write_text("# prompts\na photo of {}\n\n  an image of {}  \n")
    assert load_templates(good) == ["a photo of {}", "an image of {}"]
    for text, needle in (("", "no templates"), ("# only a comment\n", "no templates"),
                         ("a photo of forest\n", "placeholder"),
                         ("{} and {}\n", "placeholder"), ("a {name}\n", "placeholder")):
        (tmp_path / "bad.txt").write_text(text)
        with pytest.raises(GeofmError, match=needle):
            load_templates(tmp_path / "bad.txt")


def _duplicate_store(src: Path, out: Path) -> Path:
    """The real chips, with test chip 3 replaced by a brightened, noisy copy of train chip 0."""
    s = geofm.open_store(src)
    batch = s.read(np.arange(len(s)))
    image = batch["image"].astype(np.float32)
    rng = np.random.default_rng(0)
    image[3] = image[0] * 1.05 + rng.normal(0, 5, image[0].shape)
    spec = StoreSpec(num_chips=len(s), bands=s.bands, chip_size=s.chip_size, dtype="float32",
                     classes=s.classes, class_colors=s.class_colors, has_label=True,
                     gsd_m=10.0, fingerprint="dup", provenance={"builder": "test"})
    create_store(out, spec)
    write_region(out, 0, image, s.chips.drop(columns=["index"]), label=batch["label"])
    finalize_store(out)
    return out


def test_duplicate_check_finds_leaked_test_chip(reben_store: Path, tmp_path: Path) -> None:
    path = _duplicate_store(reben_store, tmp_path / "dup.zarr")
    store = geofm.open_store(path)
    splits = store.chips["split"].tolist()
    assert splits[0] == "train" and splits[3] == "test"
    d = duplicate_check(store, "test", {"store": str(path), "split": "train"})
    assert d["checked"] and d["shared_chips"] == 0
    assert d["evaluated_chips"] == 2 and d["reference_chips"] == 3
    assert d["near_duplicate_pairs"] == 1 and d["evaluated_with_near_duplicate"] == 1
    pair = d["pairs"][0]
    ids = store.chips["chip_id"].tolist()
    assert (pair["evaluated"], pair["reference"]) == (ids[3], ids[0])
    assert pair["distance"] <= d["radius"]
    # Without training records the store's own train split is the reference, and it says so.
    d2 = duplicate_check(store, "test", {})
    assert d2["near_duplicate_pairs"] == 1 and "no training store" in d2["reference"]["what"]
    # The real sample has no near duplicates across its splits.
    d3 = duplicate_check(geofm.open_store(reben_store), "test", {})
    assert d3["near_duplicate_pairs"] == 0 and d3["shared_chips"] == 0


@pytest.mark.slow
def test_zeroshot_and_retrieval_reports(align_ckpt: Path, reben_store: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "zs.json"
    assert main(["zeroshot", str(align_ckpt), "--data", str(reben_store), "--split", "test",
                 "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "top-1" in printed and "chance" in printed and "near-duplicate check" in printed
    r = json.loads(out.read_text())
    assert r["templates"] == ["a satellite image of {}"]
    assert r["templates_source"] == "recorded in the checkpoint"
    assert r["split"] == "test" and r["num_chips"] == 2
    assert r["checkpoint"]["data"]["split"] == "train"
    assert r["evaluated_chips_in_training"] == 0
    assert r["duplicate_check"]["checked"] and r["duplicate_check"]["reference_chips"] == 3
    assert 0 <= r["metrics"]["top1"] <= 1 and r["metrics"]["chance_map"] > 0
    md = out.with_suffix(".md").read_text()
    assert "`a satellite image of {}`" in md and "Near-duplicate check" in md

    tfile = tmp_path / "t.txt"
    tfile.write_text("an aerial view of {}\n")
    r = zeroshot(align_ckpt, reben_store, split="all", templates=tfile)
    assert r["templates"] == ["an aerial view of {}"] and r["num_chips"] == 6
    assert r["evaluated_chips_in_training"] == 3
    assert "3 of the evaluated chips were training chips" in Path(r["markdown"]).read_text()
    assert Path(r["output"]) == align_ckpt.parent / "zeroshot_all.json"

    assert main(["retrieval", str(align_ckpt), "--data", str(reben_store)]) == 0
    r = json.loads((align_ckpt.parent / "retrieval_test.json").read_text())
    # Captioned from labels with the checkpoint's recorded caption settings.
    assert r["captions"]["source"] == "labels"
    assert (r["captions"]["seed"], r["captions"]["per_chip"]) == (3, 2)
    assert r["num_chips"] == 2 and r["num_captions"] == 4
    assert r["seeds"] == {"training": 0, "training_captions": 3, "evaluation_captions": 3}
    assert set(r["metrics"]) >= {"i2t_R@1", "t2i_R@10", "mean_recall"}
    assert "RemoteCLIP" in r["protocol"]
    assert "mean recall" in (align_ckpt.parent / "retrieval_test.md").read_text()


def test_bad_input_one_line(align_ckpt: Path, reben_store: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    pre = save_checkpoint(tmp_path / "pre.safetensors", {"encoder.w": torch.zeros(1)},
                          ModelCard.from_header({"kind": "pretrain", "bands": ["S2.B02"]}))
    one_line_error(["zeroshot", str(pre), "--data", str(reben_store)], capsys,
                   "has no text tower (it is a pretrain checkpoint)", "geofm align")
    one_line_error(["retrieval", str(pre), "--data", str(reben_store)], capsys, "has no text tower")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    one_line_error(["zeroshot", str(align_ckpt), "--data", str(reben_store), "--templates",
                    str(empty)], capsys, "no templates")
    one_line_error(["zeroshot", str(align_ckpt), "--data", str(reben_store), "--split", "nope"],
                   capsys, "split 'nope'")
    one_line_error(["retrieval", str(align_ckpt), "--data", str(reben_store), "--split", "nope"],
                   capsys, "split 'nope'")
    bare = make_store(tmp_path / "bare.zarr", list(geofm.open_store(reben_store).bands), n=2,
                      size=16)
    one_line_error(["retrieval", str(align_ckpt), "--data", str(bare)], capsys,
                   "neither captions nor labels")
    one_line_error(["zeroshot", str(align_ckpt), "--data", str(bare), "--split", "all"], capsys,
                   "needs scene labels")
