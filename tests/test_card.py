"""The model card: header versions, old checkpoints, and one normalisation for every consumer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from geofm.card import (
    CARD_VERSION,
    Architecture,
    BandContract,
    ModelCard,
    Provenance,
    TaskSpec,
    TextSpec,
)
from geofm.checkpoint import load_checkpoint, read_card, save_checkpoint
from geofm.errors import BandError, GeofmError
from geofm.evaluation.aligned.inputs import split_dataset
from geofm.evaluation.finetuned import _dataset
from geofm.io.store import open_store
from geofm.loading import load_aligned, load_encoder, load_finetuned, load_model
from geofm.predict.band_plan import plan_bands
from geofm.predict.model import Predictor

from .synthetic import make_store

V1 = Path(__file__).parent / "data" / "v1"
S2 = ("S2.B02", "S2.B03", "S2.B04", "S2.B08")
L8 = ["L8.B2", "L8.B3", "L8.B4", "L8.B5"]


def _card(**changes: object) -> ModelCard:
    card = ModelCard(
        kind="finetune", architecture=Architecture("channelvit_test", {"bands": list(S2)}),
        contract=BandContract(S2, (1000.0, 900.0, 800.0, 2500.0), (500.0, 400.0, 300.0, 900.0),
                              flexible=True, processing_levels={"S2": "L2A"}),
        tile_size=(64, 64), patch_size=8, gsd_m=10.0, classes=("water", "land"),
        class_colors=("#0000ff", "#00ff00"),
        task=TaskSpec(task="segmentation", head="segmentation", num_outputs=2,
                      selection={"split": "val", "metric": "miou"}, val_metrics={"miou": 0.5}),
        provenance=Provenance(data={"store": "a.zarr", "split": "train"},
                              training={"steps": 3}))
    return card.with_(**changes)


def test_version_2_round_trip_is_exact(tmp_path: Path) -> None:
    card = _card(text=TextSpec(embed_dim=16, source={"kind": "hf", "name": "x", "locked": True},
                               templates=("a photo of {}",), captions={"seed": 1}))
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(2)}, card)
    with safe_open(str(path), framework="pt") as f:
        raw = json.loads(f.metadata()["geofm"])
    assert raw["format_version"] == CARD_VERSION == 2 and "contract" in raw
    back = read_card(path)
    assert back.with_(geofm_version=None) == card
    assert back.text is not None and back.text.locked and back.task is not None


def test_newer_and_malformed_headers_are_one_line(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "m.safetensors", {"w": torch.zeros(1)}, _card())
    weights = load_file(path)
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["geofm"])
    for change, needle in (({"format_version": 9}, "newer than this geofm reads"),
                           ({"contract": {"mean": [0.0]}}, "header is malformed")):
        bad = tmp_path / "bad.safetensors"
        save_file(weights, str(bad), metadata={"geofm": json.dumps({**header, **change})})
        with pytest.raises(GeofmError, match=needle) as err:
            read_card(bad)
        assert "\n" not in str(err.value)


def test_version_1_checkpoints_load_and_predict_as_they_did(reben_store: Path) -> None:
    """Checkpoints written by geofm 0.1 (flat version-1 headers) give the outputs they gave."""
    expected = np.load(V1 / "expected.npz")
    ft_model, ft = load_finetuned(V1 / "finetune.safetensors")
    assert ft.kind == "finetune" and ft.flexible and ft.task is not None
    assert ft.task.task == "multilabel" and ft.task.num_outputs == 19 == len(ft.classes)
    assert ft.contract.processing_levels == {"S2": "L2A", "S1": "GRD"}
    assert ft.provenance.encoder_source["kind"] == "pretrain"
    store = open_store(reben_store)
    x = store.read([0, 1], arrays=["image"])["image"].astype(np.float32)
    x = x[:, [store.bands.index(b) for b in ft.bands]]
    mean, std = ft.contract.normalization(list(ft.bands))
    xn = torch.from_numpy((x - mean[None, :, None, None]) / std[None, :, None, None])
    with torch.no_grad():
        np.testing.assert_allclose(ft_model(xn, list(ft.bands)).numpy(), expected["logits"],
                                   atol=1e-5)
        encoder, pre = load_encoder(V1 / "pretrain.safetensors")
        assert pre.kind == "pretrain" and pre.provenance.objective["name"] == "mae"
        np.testing.assert_allclose(encoder.forward_features(xn, list(ft.bands)).numpy(),
                                   expected["features"], atol=1e-5)
        aligned, al = load_aligned(V1 / "align.safetensors")
        assert al.text is not None and al.text.templates and al.text.locked
        assert al.provenance.data["store"]  # version 1 kept align's data under "train"
        np.testing.assert_allclose(
            aligned.encode_image(xn[:, :, :64, :64], list(ft.bands)).numpy(),
            expected["image_embedding"], atol=1e-5)
    assert type(load_model(V1 / "finetune.safetensors")[0]) is type(ft_model)


def test_a_version_1_checkpoint_written_again_reads_the_same(tmp_path: Path) -> None:
    weights, card = load_checkpoint(V1 / "finetune.safetensors")
    again = read_card(save_checkpoint(tmp_path / "v2.safetensors", weights, card))
    assert again.with_(geofm_version=None) == card.with_(geofm_version=None)


def test_band_contract_matching() -> None:
    fixed = BandContract(S2, (0.0,) * 4, (1.0,) * 4)
    assert fixed.match(["S2.B08", "S2.B04", "S2.B03", "S2.B02", "S2.B11"]) == list(S2)
    with pytest.raises(BandError, match=r"needs bands S2\.B08"):
        fixed.match(["S2.B02", "S2.B03", "S2.B04"])
    flexible = BandContract(S2, (0.0,) * 4, (1.0,) * 4, flexible=True)
    assert flexible.match(["S2.B04", "S2.B02"]) == ["S2.B02", "S2.B04"]
    assert flexible.match(L8) == L8  # nearest in wavelength, when no name matches
    assert flexible.stands_for(L8) == dict(zip(L8, S2, strict=True))


def test_units_of_published_models_convert_stored_numbers() -> None:
    reflectance = BandContract(("S2.B04",), (0.1,), (0.05,), input_units="reflectance")
    assert reflectance.conversion("S2.B04", "S2.B04") == (0.0001, 0.0)
    assert reflectance.conversion("S2.B04", "S2.B04", data_units="physical") == (1.0, 0.0)
    mean, std = reflectance.normalization(["S2.B04"])  # stored DN, as stores hold them
    assert mean[0] == pytest.approx(1000.0) and std[0] == pytest.approx(500.0)


def test_evaluation_zero_shot_and_prediction_normalise_a_band_the_same(tmp_path: Path) -> None:
    """A Landsat-8 store fed to a Sentinel-2 model: every consumer feeds the same values."""
    store = open_store(make_store(tmp_path / "l8.zarr", L8))
    card = _card()
    predicted = plan_bands(Predictor(torch.nn.Identity(), card), [b.split(".")[1] for b in L8],
                           sensor="L8")
    evaluated = _dataset(store, "train", L8, card.contract).transforms
    zero_shot = split_dataset(store, "train", card.contract).transforms
    assert predicted.bands == L8
    for norm in (evaluated, zero_shot):
        np.testing.assert_allclose(norm.mean.numpy(), predicted.mean, rtol=1e-6)
        np.testing.assert_allclose(norm.std.numpy(), predicted.std, rtol=1e-6)
    # The Landsat DN is brought to Sentinel-2's reflectance × 10,000 before normalising.
    a, b = card.contract.conversion("L8.B4", "S2.B04")
    assert predicted.mean[2] == pytest.approx((800.0 - b) / a)
