"""Embedding export: an encoder's ONNX graph (raw pixels → the patch-feature grid that
``geofm predict --embed`` writes) for geofm checkpoints and published encoders, checked against
torch's ``forward_patch_features``; and ``--init REF`` naming the encoder of ``export``,
``eval --knn`` and ``predict --embed`` as it does for ``finetune``. Published weights are
random, saved in each release's file format; nothing is downloaded (GEOFM_OFFLINE)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import rasterio
import torch

import geofm
from geofm import export
from geofm.cli import main
from geofm.errors import GeofmError
from geofm.export import export_onnx, read_metadata
from geofm.loading import load_encoder
from geofm.published import PUBLISHED
from tests.conftest import S2_SCENE, one_line_error
from tests.published_files import write_release

TOL = 1e-4
SSL4EO = "ssl4eo_vits16_mae"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GEOFM_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Release files by name, each written when first asked for."""
    folder = tmp_path_factory.mktemp("releases")

    class Written(dict[str, Path]):
        def __missing__(self, name: str) -> Path:
            self[name] = write_release(name, folder)
            return self[name]

    return Written()


@pytest.fixture(scope="module")
def encoder_ckpt(tiny_pretrained: Callable[..., Path]) -> Path:
    """A ChannelViT pretrained one step on the reBEN sample (S1 + S2)."""
    return tiny_pretrained("channelvit_test", 1)


@pytest.fixture(scope="module")
def cvit_onnx(encoder_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The pretrained ChannelViT's embeddings at a 96 px tile, exported through the CLI."""
    out = tmp_path_factory.mktemp("onnx") / "cvit.onnx"
    assert main(["export", str(encoder_ckpt), "--embed", "--onnx", str(out), "--tile-size",
                 "96"]) == 0
    return out


def _scene_chip(bands: Sequence[str], tile: int = 224) -> np.ndarray:
    """``[1, C, tile, tile]`` raw DN of the real L1C scene, ``bands`` in order."""
    with rasterio.open(S2_SCENE) as src:
        chip = src.read(window=rasterio.windows.Window(16, 32, tile, tile)).astype(np.float32)
        names = [f"S2.{d}" for d in src.descriptions]
    return np.ascontiguousarray(chip[[names.index(b) for b in bands]][None])


def _run(path: Path, raw: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("image", "embeddings")
    return np.asarray(session.run(None, {"image": raw})[0])


def _torch_grid(ref: str | Path, raw: np.ndarray, bands: Sequence[str],
                weights: Path | None = None) -> np.ndarray:
    """The reference: the encoder's ``forward_patch_features [B, N, D]`` on the card's
    normalisation of ``raw``, laid out as a ``[B, D, rows, cols]`` grid."""
    encoder, card = load_encoder(ref, weights)
    mean, std = card.contract.normalization(list(bands))
    x = (raw - mean[None, :, None, None]) / std[None, :, None, None]
    with torch.no_grad():
        feats = encoder.forward_patch_features(torch.from_numpy(x), list(bands)).numpy()
    patch = int(card.patch_size or encoder.patch_size)
    rows, cols = raw.shape[2] // patch, raw.shape[3] // patch
    b, n, d = feats.shape
    assert n == rows * cols
    return feats.reshape(b, rows, cols, d).transpose(0, 3, 1, 2)  # [B, D, rows, cols]


# --- geofm checkpoints ----------------------------------------------------------------------


def test_pretrained_encoder_matches_forward_patch_features(
        cvit_onnx: Path, encoder_ckpt: Path, reben_store: Path) -> None:
    meta = read_metadata(cvit_onnx)
    bands = meta["geofm_bands"]
    s = geofm.open_store(reben_store)
    tile = meta["tile_size"]
    image = s.read(np.array([0, 1]))["image"]  # [2, C, 120, 120] raw values
    raw = np.ascontiguousarray(image[:, [s.bands.index(b) for b in bands], :tile, :tile])
    got = _run(cvit_onnx, raw.astype(np.float32))
    want = _torch_grid(encoder_ckpt, raw.astype(np.float32), bands)
    assert got.shape == want.shape == (2, meta["geofm_embed_dim"], tile // 8, tile // 8)
    assert np.abs(got - want).max() <= TOL
    # geofm's keys, and none of Deepness's: no Deepness model type reads an embedding grid
    assert meta["geofm_output"] == "embeddings" and meta["geofm_kind"] == "pretrain"
    assert meta["geofm_patch_size"] == 8 and meta["geofm_checkpoint"] == encoder_ckpt.name
    assert "model_type" not in meta and "class_names" not in meta
    assert "geofm_release" not in meta and "geofm_task" not in meta
    assert len(meta["geofm_normalization"]["mean"]) == len(bands)
    proto = onnx.load(cvit_onnx)
    assert proto.opset_import[0].version == 17 and proto.ir_version == 8


@pytest.mark.slow
def test_init_names_the_same_encoder_as_model_embed(
        cvit_onnx: Path, encoder_ckpt: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "init.onnx"
    capsys.readouterr()
    assert main(["export", "--init", str(encoder_ckpt), "--onnx", str(out), "--tile-size",
                 "96"]) == 0
    text = capsys.readouterr().out
    assert "embeddings [N, 32, 12, 12] of 96 px tiles" in text and "Deepness" in text
    raw = np.random.default_rng(0).uniform(0, 3000, (1, len(read_metadata(out)["geofm_bands"]),
                                                     96, 96)).astype(np.float32)
    assert np.array_equal(_run(out, raw), _run(cvit_onnx, raw))
    assert read_metadata(out) == read_metadata(cvit_onnx)


def test_bands_pick_the_rasters_bands_for_an_embedding_graph(
        encoder_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s2.onnx"
    # the 13 L1C bands of the scene: the S2 bands feed the ChannelViT, B10 is unused, and the
    # S1 bands it was pretrained with are missing (a band-token model runs without them)
    assert main(["export", "--init", str(encoder_ckpt), "--onnx", str(out), "--bands", "s2",
                 "--tile-size", "64"]) == 0
    text = capsys.readouterr().out
    assert "11 S2.B10 (unused)" in text and "model bands the rasters lack: S1.VV" in text
    meta = read_metadata(out)
    assert meta["geofm_bands"][10] == "S2.B10" and meta["geofm_bands_missing"] == [
        "S1.VV", "S1.VH"]
    raw = _scene_chip(meta["geofm_bands"], 64)
    used = [b for b in meta["geofm_bands"] if b != "S2.B10"]
    want = _torch_grid(encoder_ckpt, _scene_chip(used, 64), used)
    assert np.abs(_run(out, raw) - want).max() <= TOL


def test_model_without_head_and_not_embed_names_embed(
        encoder_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one_line_error(["export", str(encoder_ckpt), "--onnx", str(tmp_path / "x.onnx")], capsys,
                   "finetune it first", "--embed")


# --- published encoders ---------------------------------------------------------------------


@pytest.mark.slow
def test_ssl4eo_embeddings_match_torch(releases: dict[str, Path], tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "ssl4eo.onnx"
    # timm's dynamic-size ViT resamples its position table with an antialiased Resize even at
    # its own size while exporting, which opset 17 cannot express: one line saying so
    one_line_error(["export", "--init", SSL4EO, "--weights", str(releases[SSL4EO]), "--onnx",
                    str(out)], capsys, "opset 17", "antialias", "--opset 18")
    assert not out.exists()
    assert export_onnx(SSL4EO, out, embed=True, weights=releases[SSL4EO], opset=18) == out
    meta = read_metadata(out)
    bands = list(PUBLISHED[SSL4EO].bands)
    assert meta["geofm_bands"] == bands and meta["tile_size"] == 224
    assert (meta["geofm_patch_size"], meta["geofm_embed_dim"]) == (16, 384)
    assert meta["geofm_release"] == {
        "name": SSL4EO, "title": PUBLISHED[SSL4EO].title, "licence": "CC-BY-4.0",
        "source": PUBLISHED[SSL4EO].source, "weights_url": PUBLISHED[SSL4EO].weights_url}
    assert meta["geofm_checkpoint"] == releases[SSL4EO].name and "model_type" not in meta
    # DN in, divided by 10,000 inside the graph, as the release's card says
    assert meta["geofm_normalization"]["std"] == [10000.0] * 13
    raw = _scene_chip(bands)
    got = _run(out, raw)
    assert got.shape == (1, 384, 14, 14)
    assert np.abs(got - _torch_grid(SSL4EO, raw, bands, releases[SSL4EO])).max() <= TOL


@pytest.mark.slow
def test_dofa_embeddings_on_four_bands_match_torch(releases: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "dofa.onnx"
    weights = releases["dofa_base"]
    assert main(["export", "--init", "dofa_base", "--weights", str(weights), "--onnx", str(out),
                 "--bands", "B04,B03,B02,B08"]) == 0
    printed = capsys.readouterr()
    assert "raster bands, in this order: 1 S2.B04, 2 S2.B03, 3 S2.B02, 4 S2.B08" in printed.out
    assert printed.err == ""  # the exporter's own logging stays out of the way
    meta = read_metadata(out)
    assert meta["geofm_release"]["name"] == "dofa_base" and meta["geofm_kind"] == "published"
    assert onnx.load(out).opset_import[0].version == 17
    bands = ["S2.B04", "S2.B03", "S2.B02", "S2.B08"]
    raw = np.concatenate([_scene_chip(bands), _scene_chip(bands)[:, :, ::-1].copy()])
    got = _run(out, raw)
    assert got.shape == (2, 768, 14, 14)
    # the wavelength hypernetwork sees the four bands by name, as in torch
    assert np.abs(got - _torch_grid("dofa_base", raw, bands, weights)).max() <= TOL


def test_published_references_are_one_line(releases: dict[str, Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.onnx")
    one_line_error(["export", "--init", "dofa_base", "--onnx", out], capsys,
                   "dofa_base_patch16_224-a0275954.pth", "--weights")
    one_line_error(["export", "dofa_base", "--weights", str(releases["dofa_base"]), "--onnx",
                    out], capsys, "task head", "--embed")
    with pytest.raises(GeofmError, match="--weights goes with a published model name"):
        export_onnx(S2_SCENE, out, embed=True, weights=releases["dofa_base"])
    assert not Path(out).exists()


def test_a_model_the_exporter_cannot_trace_is_one_line_with_its_reason(
        releases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    def fails(*args: object) -> None:
        # torch.onnx wraps the failing step's error in a page about its steps
        try:
            raise RuntimeError("Could not guard on data-dependent expression u0 > 1\nmore")
        except RuntimeError as e:
            raise RuntimeError("\x1b[96mFailed to export the model with torch.export.\x1b[0m "
                               "This is step 1/3 of exporting\nNext steps: ...") from e

    monkeypatch.setattr(export, "_trace", fails)
    err = one_line_error(["export", "--init", SSL4EO, "--weights", str(releases[SSL4EO]),
                          "--onnx", str(tmp_path / "x.onnx")], capsys)
    assert err == ("geofm: error: ssl4eo_vits16_mae: cannot export the model to ONNX (Could "
                   "not guard on data-dependent expression u0 > 1)")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_copernicusfm_cannot_be_traced_and_says_why_in_one_line(
        releases: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # its dynamic patch embedding has a data-dependent shape torch.export cannot trace
    out = tmp_path / "cfm.onnx"
    err = one_line_error(["export", "--init", "copernicusfm_base", "--weights",
                          str(releases["copernicusfm_base"]), "--onnx", str(out)], capsys,
                         "copernicusfm_base: cannot export the model to ONNX (")
    assert "data-dependent" in err and "Next steps" not in err and "\x1b" not in err
    assert not out.exists()


# --- --init on eval --knn ---------------------------------------------------------------------


def test_eval_knn_with_init_equals_the_positional_model(
        encoder_ckpt: Path, reben_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", str(reben_store), "--split", "validation", "-k", "3"]
    assert main(["eval", str(encoder_ckpt), "--knn", *args]) == 0
    positional = capsys.readouterr().out
    assert main(["eval", "--knn", "--init", str(encoder_ckpt), *args]) == 0
    assert capsys.readouterr().out == positional and "kNN (k=3" in positional
    one_line_error(["eval", "--init", str(encoder_ckpt), *args], capsys,
                   "eval (without --knn) needs a model with a task head", "add --knn")
    one_line_error(["eval", str(encoder_ckpt), "--knn", "--init", str(encoder_ckpt), *args],
                   capsys, "eval takes one model, got both MODEL")
