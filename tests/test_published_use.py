"""Published encoders in use: reached by name, torchgeo enum or weights file; fed through the
band contract and the scale guard; finetuned, mapped and exported end to end on the real
Sentinel-2 scene. Weights are random, saved in each release's file format; nothing is
downloaded (GEOFM_OFFLINE)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import rasterio
import torch

import geofm
from geofm.checkpoint import read_card
from geofm.cli import main
from geofm.errors import BandError, GeofmError
from geofm.export import read_metadata
from geofm.loading import load_encoder, load_finetuned
from geofm.models.finetuner import Finetuner
from geofm.published import PUBLISHED
from geofm.published.resolve import card_for, load_published
from geofm.scale import check_scale
from tests.conftest import S2_SCENE, one_line_error
from tests.published_files import l1c_store, write_release

SSL4EO = "ssl4eo_vits16_mae"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEOFM_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("releases")
    return {SSL4EO: write_release(SSL4EO, folder)}


@pytest.fixture(scope="module")
def dofa_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_release("dofa_base", tmp_path_factory.mktemp("dofa"))


def _scene_window(size: int = 64) -> tuple[np.ndarray, list[str]]:
    with rasterio.open(S2_SCENE) as src:
        data = src.read(window=rasterio.windows.Window(96, 96, size, size)).astype(np.float32)
        names = [f"S2.{d}" for d in src.descriptions]
    return data, names


# --- cards and how users reach the models --------------------------------------------------


def test_card_carries_the_release_contract_and_provenance() -> None:
    card = card_for(PUBLISHED["dofa_base"])
    assert card.kind == "published" and card.architecture.name == "dofa_vit_base_patch16"
    c = card.contract
    assert c.input_units == "dn" and c.flexible and c.processing_levels == {"S2": "L1C"}
    assert len(c.bands) == 13 and c.mean[1] == pytest.approx(1397.6)
    assert card.tile_size == (224, 224) and card.patch_size == 16 and card.gsd_m == 10.0
    rel = card.provenance.release
    assert rel["licence"] == "CC-BY-4.0" and rel["torchgeo_weights"] == \
        "DOFABase16_Weights.DOFA_MAE" and rel["weights_url"].endswith(rel["weights_file"])
    back = type(card).from_header({**card.to_header(), "format_version": 2})
    assert back.contract == c and back.provenance.release == rel
    # SSL4EO divides DN by 10,000: DN in, mean 0, std 10,000
    s = card_for(PUBLISHED[SSL4EO]).contract
    assert not s.flexible and s.normalization(["S2.B04"])[1].tolist() == [10000.0]


def test_models_lists_name_bands_licence_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "-v"]) == 0
    out = capsys.readouterr().out
    for needle in ("dofa_base", "ssl4eo_vits16_dino", "CC-BY-4.0", "github.com/zhu-xlab/DOFA",
                   "torchgeo:DOFABase16_Weights.DOFA_MAE", "any subset", "satvision"):
        assert needle in out


@pytest.mark.slow
def test_load_by_name_and_weights_returns_the_analyst_model(releases: dict[str, Path],
                                                            tmp_path: Path) -> None:
    model = geofm.load(SSL4EO, weights=releases[SSL4EO])
    assert model.task is None and len(model.bands) == 13
    emb = model.embed(str(S2_SCENE))
    assert emb.shape == (384, 16, 16) and np.isfinite(emb.values).all()
    # one 64 px tile: geofm's embedding is the release's forward on DN / 10,000
    data, names = _scene_window(64)
    chip = _write_like_scene(tmp_path / "chip.tif", data)
    got = model.embed(str(chip), tile=64, overlap=0)
    enc, _ = load_encoder(SSL4EO, releases[SSL4EO])
    x = torch.from_numpy(data)[None] / 10000.0  # the release's own scaling
    with torch.no_grad():
        want = enc.forward_patch_features(x, names)[0].T.reshape(384, 4, 4)
    np.testing.assert_allclose(got.values, want.numpy(), atol=1e-4)


def test_torchgeo_enum_reads_torchs_cache_and_offline_names_file_url_and_place(
        releases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ref = f"torchgeo:{PUBLISHED[SSL4EO].torchgeo_weights}"
    err = one_line_error(["predict", ref, str(S2_SCENE), "-o", str(tmp_path / "e.tif"),
                          "--embed"], capsys, PUBLISHED[SSL4EO].weights_file,
                         PUBLISHED[SSL4EO].weights_url, str(tmp_path / "torch_home"))
    assert "save it as" in err
    cache = tmp_path / "torch_home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    (cache / PUBLISHED[SSL4EO].weights_file).write_bytes(releases[SSL4EO].read_bytes())
    enc, card = load_published(ref)
    assert card.provenance.release["name"] == SSL4EO and not enc.training


def test_wrong_references_are_one_line(releases: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    scene, out = str(S2_SCENE), str(tmp_path / "x.tif")
    one_line_error(["predict", "dofa_base", scene, "-o", out, "--embed"], capsys,
                   "dofa_base_patch16_224-a0275954.pth", "--weights")
    one_line_error(["predict", "dofa_base", scene, "-o", out, "--embed", "--weights",
                    str(tmp_path / "none.pth")], capsys, "not found", "hf.co/torchgeo/dofa")
    one_line_error(["predict", "torchgeo:Nope.X", scene, "-o", out, "--embed"], capsys,
                   "not among geofm's published encoders")
    one_line_error(["pretrain", "--init", "dofa_base", "--weights", str(releases[SSL4EO])],
                   capsys, "own tokenizer", "geofm finetune --init dofa_base")
    one_line_error(["export", SSL4EO, "--weights", str(releases[SSL4EO]), "--onnx",
                    str(tmp_path / "m.onnx")], capsys, "task head", "finetune it first")
    one_line_error(["eval", SSL4EO, "--data", "x.zarr", "--weights", str(releases[SSL4EO])],
                   capsys, "task head")


# --- band contract and scale guard -------------------------------------------------------


@pytest.mark.slow
def test_missing_bands_are_named_and_flexible_models_use_what_is_there(
        releases: dict[str, Path], dofa_file: Path, tmp_path: Path) -> None:
    data, _ = _scene_window(64)
    four = data[[1, 2, 3, 7]]  # B02 B03 B04 B08
    path = tmp_path / "four.tif"
    with rasterio.open(S2_SCENE) as src:
        profile = src.profile
    profile.update(count=4, width=64, height=64, tiled=False)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(four.astype(profile["dtype"]))
        dst.descriptions = ("B02", "B03", "B04", "B08")
    with pytest.raises(BandError, match=r"needs bands S2\.B01, S2\.B05"):
        geofm.load(SSL4EO, weights=releases[SSL4EO]).embed(str(path))
    r = geofm.predict.predict_raster("dofa_base", path, tmp_path / "d.tif", embed=True,
                                     weights=dofa_file, progress=False)
    assert list(r["bands"]) == ["S2.B02", "S2.B03", "S2.B04", "S2.B08"]
    assert "S2.B01" in r["bands_missing"] and "B01" in r["message"]


def _write_like_scene(path: Path, data: np.ndarray, dtype: str = "float32") -> Path:
    with rasterio.open(S2_SCENE) as src:
        profile, desc = src.profile, src.descriptions
    profile.update(dtype=dtype, width=data.shape[2], height=data.shape[1], tiled=False)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data.astype(dtype))
        dst.descriptions = desc
    return path


@pytest.mark.slow
def test_reflectance_fed_to_a_dn_model_is_refused_or_converted(
        releases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = _scene_window(64)
    dn = _write_like_scene(tmp_path / "dn.tif", data)
    refl = _write_like_scene(tmp_path / "refl.tif", data / 10000.0)
    one_line_error(["predict", SSL4EO, "--weights", str(releases[SSL4EO]), str(refl), "-o",
                    str(tmp_path / "a.tif"), "--embed"], capsys,
                   "look like physical reflectance", "--data-units physical")
    one_line_error(["predict", SSL4EO, "--weights", str(releases[SSL4EO]), str(dn), "-o",
                    str(tmp_path / "b.tif"), "--embed", "--data-units", "physical"], capsys,
                   "stored numbers", "--data-units native")
    native = geofm.load(SSL4EO, weights=releases[SSL4EO]).embed(str(dn))
    physical = geofm.load(SSL4EO, weights=releases[SSL4EO], data_units="physical").embed(
        str(refl))
    np.testing.assert_allclose(physical.values, native.values, atol=1e-4)


@pytest.mark.parametrize(("bands", "good", "bad", "units", "needle"), [
    # Sentinel-2 reflectance: DN vs 0–1
    (["S2.B04", "S2.B08"], lambda r: r.uniform(300, 4000, (2, 400)),
     lambda r: r.uniform(0.03, 0.4, (2, 400)), "native", "--data-units physical"),
    (["S2.B04", "S2.B08"], lambda r: r.uniform(0.03, 0.4, (2, 400)),
     lambda r: r.uniform(300, 4000, (2, 400)), "physical", "--data-units native"),
    # Landsat Collection-2 SR DN (offset −0.2) vs reflectance
    (["L8.B4"], lambda r: r.uniform(8000, 20000, (1, 400)),
     lambda r: r.uniform(0.02, 0.3, (1, 400)), "native", "--data-units physical"),
    # 8-bit RGB DN vs 0–1
    (["RGB.R", "RGB.G", "RGB.B"], lambda r: r.uniform(0, 255, (3, 400)),
     lambda r: r.uniform(0, 1, (3, 400)), "native", "--data-units physical"),
    # SAR backscatter: dB vs linear power
    (["S1.VV"], lambda r: r.normal(-14, 4, (1, 400)),
     lambda r: 10 ** (r.normal(-14, 4, (1, 400)) / 10), "native", "10·log10"),
    # brightness temperature: Landsat ST DN vs K, and K vs °C
    (["L8.B10"], lambda r: r.uniform(38000, 48000, (1, 400)),
     lambda r: r.uniform(270, 310, (1, 400)), "native", "--data-units physical"),
    (["MODIS.B31"], lambda r: r.uniform(260, 300, (1, 400)),
     lambda r: r.uniform(-10, 25, (1, 400)), "native", "brightness temperature"),
])
def test_scale_guard_for_each_unit_kind(bands, good, bad, units, needle) -> None:
    rng = np.random.default_rng(0)
    check_scale(bands, good(rng), units)
    with pytest.raises(GeofmError) as e:
        check_scale(bands, bad(rng), units, "chip.tif")
    text = str(e.value)
    assert needle in text and "\n" not in text and bands[0] in text


# --- finetuning heads on a published encoder ---------------------------------------------


@pytest.mark.slow
def test_finetuner_heads_layer_decay_and_partial_freeze(releases: dict[str, Path]) -> None:
    enc, _ = load_encoder(SSL4EO, releases[SSL4EO])
    data, names = _scene_window(48)
    x = torch.from_numpy(data)[None].expand(2, -1, -1, -1) / 10000.0
    for head, shape in (("linear", (2, 3)), ("attentive", (2, 3))):
        model = Finetuner(enc, "multilabel", 3, head=head, freeze="frozen")
        assert model(x, names).shape == shape
    seg = Finetuner(enc, "segmentation", 4, freeze="frozen")
    assert seg(x[..., :40, :40], names).shape == (2, 4, 40, 40)  # padded to 48, cropped back
    model = Finetuner(enc, "multilabel", 3, head="linear", freeze="full")
    groups = {g["name"]: g for g in model.param_groups(lr=1.0, layer_decay=0.5)}
    assert groups["block11/decay"]["lr"] == 0.5 and groups["block0/decay"]["lr"] == 0.5 ** 12
    assert groups["embed/decay"]["lr"] == 0.5 ** 13 and groups["head/decay"]["lr"] == 1.0
    assert groups["norm/no_decay"]["lr"] == 1.0
    part = Finetuner(enc, "multilabel", 3, freeze="partial", unfreeze_last=2)
    trainable = {n for n, p in part.named_parameters() if p.requires_grad}
    assert any(".blocks.11." in n for n in trainable) and any(".blocks.10." in n
                                                              for n in trainable)
    assert not any(".blocks.9." in n or "patch_embed" in n for n in trainable)


# --- end to end ---------------------------------------------------------------------------


def _onnx_matches_torch(onnx_path: Path, ckpt: Path, raw: np.ndarray) -> float:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": raw})[0]
    model, card = load_finetuned(ckpt)
    mean, std = card.contract.normalization(list(card.bands))
    x = (torch.from_numpy(raw) - torch.from_numpy(mean)[None, :, None, None]) \
        / torch.from_numpy(std)[None, :, None, None]
    with torch.no_grad():
        want = model(x, list(card.bands)).sigmoid().numpy()  # multilabel
    want = np.broadcast_to(want[:, :, None, None], got.shape)
    return float(np.abs(got - want).max())


def _end_to_end(name: str, weights: Path, store: Path, tmp_path: Path,
                capsys: pytest.CaptureFixture[str], opset: int = 17) -> None:
    run = tmp_path / "ft"
    assert main(["finetune", "--init", name, "--weights", str(weights), "--data", str(store),
                 "--max-steps", "2", "--batch-size", "4", "--probe", "attentive",
                 "--output", str(run), "--quiet", "--set", "trainer.val_every_n_steps=2"]) == 0
    ckpt = run / "finetune.safetensors"
    card = read_card(ckpt)
    # the release's architecture, contract and provenance travel with the checkpoint
    assert card.architecture.name == PUBLISHED[name].architecture
    assert card.contract.input_units == PUBLISHED[name].input_units
    assert card.provenance.release["name"] == name
    assert card.provenance.encoder_source["weights"] == str(weights)
    out = tmp_path / "map.tif"
    assert main(["predict", str(ckpt), str(S2_SCENE), "-o", str(out), "--tile", "128",
                 "--quiet"]) == 0
    with rasterio.open(out) as ds:
        assert ds.count == len(card.classes) and ds.crs is not None
        assert np.isfinite(ds.read()).all()
    onnx_path = tmp_path / "m.onnx"
    # the release's 224 px tile: its position table as trained
    assert main(["export", str(ckpt), "--onnx", str(onnx_path), "--tile-size", "224",
                 "--opset", str(opset)]) == 0
    capsys.readouterr()
    with rasterio.open(S2_SCENE) as src:
        chip = src.read(window=rasterio.windows.Window(16, 32, 224, 224)).astype(np.float32)
    bands = list(card.bands)
    all_bands = [f"S2.{d}" for d in rasterio.open(S2_SCENE).descriptions]
    raw = np.ascontiguousarray(chip[[all_bands.index(b) for b in bands]][None])
    assert _onnx_matches_torch(onnx_path, ckpt, raw) <= 1e-4
    # the release (and its licence) travels into the exported file too
    release = read_metadata(onnx_path)["geofm_release"]
    assert release["name"] == name and release["licence"] == PUBLISHED[name].licence


@pytest.mark.slow
def test_dofa_finetune_predict_export_on_reben_and_the_scene(
        dofa_file: Path, reben_store: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    _end_to_end("dofa_base", dofa_file, reben_store, tmp_path, capsys)
    assert main(["eval", "dofa_base", "--knn", "--weights", str(dofa_file), "--data",
                 str(reben_store), "--split", "validation", "-k", "3"]) == 0
    assert "kNN (k=3" in capsys.readouterr().out
    card = read_card(tmp_path / "ft" / "finetune.safetensors")
    # trained on reBEN's 12 L2A bands: the card says so, with DOFA's own statistics
    assert "S2.B10" not in card.bands and card.contract.processing_levels["S2"] == "L2A"
    assert card.contract.mean[0] == pytest.approx(PUBLISHED["dofa_base"].mean[0])


@pytest.mark.slow
def test_ssl4eo_on_reben_names_the_band_it_lacks(
        releases: dict[str, Path], reben_store: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(["finetune", "--init", SSL4EO, "--weights", str(releases[SSL4EO]),
                    "--data", str(reben_store), "--output", str(tmp_path / "r")], capsys,
                   "needs bands S2.B10")
    one_line_error(["eval", SSL4EO, "--knn", "--weights", str(releases[SSL4EO]), "--data",
                    str(reben_store)], capsys, "needs bands S2.B10")
    one_line_error(["eval", "--knn", "--init", SSL4EO, "--weights", str(releases[SSL4EO]),
                    "--data", str(reben_store)], capsys, "needs bands S2.B10")


@pytest.mark.slow
def test_ssl4eo_finetune_predict_export_on_the_l1c_scene(
        releases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = l1c_store(tmp_path / "l1c.zarr")
    # timm's dynamic-size ViT resamples its position table with an antialiased Resize, which
    # opset 17 cannot express: opset 18 (the export says so in one line at 17)
    _end_to_end(SSL4EO, releases[SSL4EO], store, tmp_path, capsys, opset=18)


def test_readme_table_is_the_registry() -> None:
    from geofm.published.resolve import README_BEGIN, README_END, markdown_table

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = text[text.index(README_BEGIN) + len(README_BEGIN):text.index(README_END)].strip()
    assert table == markdown_table()
