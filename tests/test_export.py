"""ONNX export: Deepness metadata, onnxruntime against torch, overwrite and failure handling."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import save_file

import geofm
from geofm import export
from geofm.card import Architecture, BandContract, ModelCard
from geofm.checkpoint import read_card
from geofm.errors import GeofmError
from geofm.export import deepness_metadata, export_onnx, export_tile_size
from geofm.loading import load_finetuned
from geofm.models.finetuner import task_scores

TOL = 1e-4


@pytest.fixture(scope="module")
def exported(finetuned: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:
    """ViT segmentation at a 64 px tile; ChannelViT segmentation and multi-label at 120 px."""
    out = tmp_path_factory.mktemp("onnx")
    return {
        "vit_seg": export_onnx(finetuned["vit_seg"], out / "vit_seg.onnx", tile_size=64),
        "cvit_seg": export_onnx(finetuned["cvit_seg"], out / "cvit_seg.onnx"),
        "cvit_ml": export_onnx(finetuned["cvit_ml"], out / "cvit_ml.onnx"),
    }


def _torch_scores(checkpoint: Path, raw: np.ndarray) -> np.ndarray:
    """The reference: the finetuned model on normalised input, as inference uses it."""
    model, card = load_finetuned(checkpoint)
    assert card.task is not None
    mean = np.asarray(card.contract.mean, np.float32)[None, :, None, None]
    std = np.asarray(card.contract.std, np.float32)[None, :, None, None]
    with torch.no_grad():
        logits = model(torch.from_numpy((raw - mean) / std), list(card.bands))
        scores = task_scores(card.task.task, logits).numpy()
    if scores.ndim == 2:
        scores = np.broadcast_to(scores[:, :, None, None], (*scores.shape, *raw.shape[2:]))
    return scores


def _real_chip(store: Path, bands: list[str], tile: int) -> np.ndarray:
    s = geofm.open_store(store)
    image = s.read(np.array([0]))["image"]  # [1, C, 120, 120] raw values
    return np.ascontiguousarray(image[:, [s.bands.index(b) for b in bands], :tile, :tile])


def _metadata(path: Path) -> dict[str, str]:
    """Custom metadata as onnxruntime (and so Deepness) reads it."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(session.get_modelmeta().custom_metadata_map)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_seg", "cvit_seg", "cvit_ml"])
def test_onnxruntime_matches_torch(name: str, exported: dict[str, Path],
                                   finetuned: dict[str, Path], reben_store: Path) -> None:
    path, ckpt = exported[name], finetuned[name]
    card = read_card(ckpt)
    assert card.task is not None
    bands, k = list(card.bands), card.task.num_outputs
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["image"]
    # The band list is fixed: ChannelViT's band-embedding network is folded into constants.
    assert not [i.name for i in model.graph.initializer if "band_embed" in i.name]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    tile = 64 if name == "vit_seg" else 120
    assert inp.name == "image" and inp.type == "tensor(float)"
    assert isinstance(inp.shape[0], str) and inp.shape[1:] == [len(bands), tile, tile]
    assert isinstance(out.shape[0], str) and out.shape[1:] == [k, tile, tile]

    chip = _real_chip(reben_store, bands, tile)  # a real chip, batch of one
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((2, len(bands), tile, tile))
    batch = (np.asarray(card.contract.mean)[None, :, None, None]
             + np.asarray(card.contract.std)[None, :, None, None] * noise).astype(np.float32)
    for raw in (chip, batch):
        got = session.run(None, {"image": raw})[0]
        want = _torch_scores(ckpt, raw)
        assert got.shape == want.shape == (len(raw), k, tile, tile)
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    sums = got.sum(axis=1)
    if card.task.task == "segmentation":  # softmax over classes
        np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    else:  # multi-label: independent sigmoids, one value per tile
        assert not np.allclose(sums, 1.0, atol=1e-3)
        assert np.ptp(got, axis=(2, 3)).max() == 0.0


@pytest.mark.slow
def test_deepness_preprocessing_feeds_raw_values(exported: dict[str, Path],
                                                 finetuned: dict[str, Path],
                                                 reben_store: Path) -> None:
    """Deepness divides by 255, then standardises with the metadata: the graph sees raw values."""
    path = exported["vit_seg"]
    meta = _metadata(path)
    bands = json.loads(meta["geofm_bands"])
    raw = _real_chip(reben_store, bands, 64)
    tiles = raw.transpose(0, 2, 3, 1)  # Deepness reads tiles as [N, H, W, C]
    mean = np.array(json.loads(meta["standardization_mean"]), dtype=np.float32)
    std = np.array(json.loads(meta["standardization_std"]), dtype=np.float32)
    fed = (np.float32(tiles * 1.0 / 255.0) - mean) / std  # Deepness's preprocessing
    fed = np.ascontiguousarray(fed.transpose(0, 3, 1, 2))
    np.testing.assert_allclose(fed, raw, rtol=1e-6, atol=1e-6)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": fed})[0]
    np.testing.assert_allclose(got, _torch_scores(finetuned["vit_seg"], raw), atol=TOL, rtol=0)


@pytest.mark.slow
def test_metadata_keys_and_values(exported: dict[str, Path],
                                  finetuned: dict[str, Path]) -> None:
    card = read_card(finetuned["cvit_seg"])
    meta = _metadata(exported["cvit_seg"])
    values = {key: json.loads(text) for key, text in meta.items()}  # every value is JSON
    c = len(card.bands)
    assert values["model_type"] == "Segmentor"
    assert values["class_names"] == {str(i): n for i, n in enumerate(card.classes)}
    assert values["class_names"]["0"] == "Urban fabric" and len(values["class_names"]) == 19
    assert values["resolution"] == pytest.approx(1000.0)  # 10 m = 1000 cm/px
    assert values["tile_size"] == values["tiles_size"] == 120
    assert values["tiles_overlap"] == 25
    assert values["standardization_mean"] == [0.0] * c
    assert values["standardization_std"] == pytest.approx([1 / 255] * c)
    assert values["seg_thresh"] == 0.0 and values["seg_small_segment"] == 0
    assert values["geofm_bands"] == list(card.bands)
    assert values["geofm_version"] == geofm.__version__
    assert values["geofm_task"] == "segmentation" and values["geofm_output"] == "scores"
    assert "geofm_release" not in values  # a geofm encoder, not a published release
    assert values["geofm_model"] == "channelvit_test"
    assert values["geofm_normalization"]["mean"] == pytest.approx(card.contract.mean)
    assert values["geofm_normalization"]["std"] == pytest.approx(card.contract.std)
    assert values["geofm_class_colors"] == list(card.class_colors)
    assert values["geofm_checkpoint"] == "finetune.safetensors"

    vit = {k: json.loads(v) for k, v in _metadata(exported["vit_seg"]).items()}
    assert vit["tile_size"] == vit["tiles_size"] == 64 and vit["geofm_model"] == "vit_test"
    scene = {k: json.loads(v) for k, v in _metadata(exported["cvit_ml"]).items()}
    assert scene["model_type"] == "Regressor" and scene["tiles_overlap"] == 0
    assert scene["reg_output_scaling"] == 1.0 and "seg_thresh" not in scene
    assert scene["geofm_task"] == "multilabel"
    # Node-level exporter metadata (stack traces, local paths) is stripped.
    assert not any(node.metadata_props for node in onnx.load(exported["cvit_ml"]).graph.node)


def test_metadata_of_other_tasks(finetuned: dict[str, Path]) -> None:
    card = read_card(finetuned["vit_seg"])
    assert card.task is not None
    reg = card.with_(task=dataclasses.replace(card.task, task="regression", num_outputs=1),
                     classes=("ndvi",))
    meta = {k: json.loads(v) for k, v in deepness_metadata(reg, 120).items()}
    assert meta["model_type"] == "Regressor" and meta["class_names"] == {"0": "ndvi"}
    assert meta["tiles_overlap"] == 25 and meta["reg_output_scaling"] == 1.0
    cls = card.with_(task=dataclasses.replace(card.task, task="classification"), classes=(),
                     gsd_m=None)
    meta = {k: json.loads(v) for k, v in deepness_metadata(cls, 120).items()}
    assert meta["model_type"] == "Segmentor" and meta["tiles_overlap"] == 0
    assert meta["class_names"]["18"] == "class_18" and "resolution" not in meta


def test_tile_size() -> None:
    card = ModelCard(kind="finetune", architecture=Architecture("vit_test"),
                     contract=BandContract(("S2.B02",), (0.0,), (1.0,)), tile_size=(120, 120),
                     patch_size=8)
    assert export_tile_size(card) == 120
    assert export_tile_size(card.with_(tile_size=(122, 122))) == 120
    assert export_tile_size(card.with_(tile_size=(130, 126))) == 128
    assert export_tile_size(card.with_(tile_size=(3, 3))) == 8
    assert export_tile_size(card.with_(tile_size=None)) == 128
    assert export_tile_size(card, 256) == 256
    with pytest.raises(GeofmError, match="not a positive multiple of the model's patch size 8"):
        export_tile_size(card, 100)
    with pytest.raises(GeofmError, match="positive multiple"):
        export_tile_size(card, 0)


def test_bad_checkpoints_and_arguments(finetuned: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "m.onnx"
    with pytest.raises(GeofmError, match="is a pretrain checkpoint, not a finetuned model"):
        export_onnx(finetuned["vit_pre"], out)
    with pytest.raises(GeofmError, match="checkpoint not found"):
        export_onnx(tmp_path / "missing.safetensors", out)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(GeofmError, match="not a safetensors file"):
        export_onnx(junk, out)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(GeofmError, match="not a geofm checkpoint"):
        export_onnx(foreign, out)
    with pytest.raises(GeofmError, match="tile size 100 is not a positive multiple"):
        export_onnx(finetuned["vit_seg"], out, tile_size=100)
    with pytest.raises(GeofmError, match="opset 13 is not supported"):
        export_onnx(finetuned["vit_seg"], out, opset=13)
    with pytest.raises(GeofmError, match="output directory does not exist"):
        export_onnx(finetuned["vit_seg"], tmp_path / "nowhere" / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.safetensors",
                                                           "junk.safetensors"]


@pytest.fixture
def quick_trace(exported: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Reuse the exported ViT graph instead of tracing again (the 64 px ViT export)."""
    monkeypatch.setattr(export, "_trace", lambda *args: onnx.load(exported["vit_seg"]))


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


@pytest.mark.usefixtures("quick_trace")
def test_overwrite_protection(finetuned: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier file")
    with pytest.raises(GeofmError, match=r"output already exists.*--overwrite"):
        export_onnx(finetuned["vit_seg"], out, tile_size=64)
    assert out.read_bytes() == b"an earlier file"
    assert export_onnx(finetuned["vit_seg"], out, tile_size=64, overwrite=True) == out
    assert json.loads(_metadata(out)["geofm_task"]) == "segmentation"
    assert _leftovers(tmp_path) == []


@pytest.mark.usefixtures("quick_trace")
def test_failed_export_leaves_nothing_behind(finetuned: dict[str, Path], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    monkeypatch.setattr(export, "_verify", lambda *args: 0.5)
    with pytest.raises(GeofmError, match="disagrees with torch"):
        export_onnx(finetuned["vit_seg"], out, tile_size=64)
    assert not out.exists() and _leftovers(tmp_path) == []
    monkeypatch.undo()
    monkeypatch.setattr(export, "_trace",
                        lambda *args: _raise(RuntimeError("trace failed\nmore")))
    with pytest.raises(GeofmError, match=r"cannot export the model to ONNX \(trace failed\)$"):
        export_onnx(finetuned["vit_seg"], out, tile_size=64)
    assert not out.exists() and _leftovers(tmp_path) == []


@pytest.mark.usefixtures("quick_trace")
def test_interrupted_write_keeps_the_old_file(finetuned: dict[str, Path], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "model.onnx"
    out.write_bytes(b"an earlier file")

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export.os, "fsync", full_disk)
    with pytest.raises(GeofmError, match="cannot write the ONNX model"):
        export_onnx(finetuned["vit_seg"], out, tile_size=64, overwrite=True)
    assert out.read_bytes() == b"an earlier file" and _leftovers(tmp_path) == []


def _raise(error: Exception) -> None:
    raise error


@pytest.mark.slow
def test_cli_export(finetuned: dict[str, Path], tmp_path: Path,
                    capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.cli import main

    ckpt = finetuned["vit_seg"]
    out = tmp_path / "cli.onnx"
    assert main(["export", str(ckpt), "--onnx", str(out), "--tile-size", "64"]) == 0
    assert out.exists() and "Deepness" in capsys.readouterr().out
    assert main(["export", str(ckpt), "--onnx", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
