"""Hostile files: no pickle payload runs through --resume, open_clip folders or text towers."""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import geofm
from geofm.errors import GeofmError
from geofm.models.openclip import load_open_clip
from geofm.models.text import TextTower
from geofm.training.config import ALIGN_DEFAULTS, apply_overrides, merge
from geofm.training.pretrain import run_pretrain

from .conftest import one_line_error, pretrain_cfg

pytestmark = [pytest.mark.reliability, pytest.mark.slow]


class Payload:
    """Unpickling this creates ``marker`` (a shell command run by ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def genuine(reben_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real ``last.ckpt`` of a 1-step pretraining run."""
    out = tmp_path_factory.mktemp("genuine")
    run_pretrain(pretrain_cfg(reben_store, out, "trainer.max_steps=1"), progress=False)
    return out / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def pretrained(tiny_pretrained: Callable[..., Path]) -> Path:
    return tiny_pretrained("vit_test", 1)


def _poisoned(genuine: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The genuine checkpoint with a payload added beside its real contents."""
    marker = tmp_path / "PAYLOAD_RAN"
    ckpt = torch.load(genuine, map_location="cpu", weights_only=True)
    ckpt["callbacks"]["extra"] = Payload(marker)
    evil = tmp_path / "evil.ckpt"
    torch.save(ckpt, evil)
    return evil, marker



def test_resume_never_runs_a_payload_pretrain(genuine: Path, reben_store: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    evil, marker = _poisoned(genuine, tmp_path)
    base = ["pretrain", "--data", str(reben_store), "--model", "channelvit_test", "--quiet",
            "--max-steps", "2", "--output", str(tmp_path / "o"), "--set", "model.kwargs={}",
            "--set", "objective.kwargs={hcs: false, decoder_dim: 32, decoder_depth: 1, "
            "decoder_heads: 2}", "--set", "trainer.accelerator=cpu"]
    err = one_line_error([*base, "--resume", str(evil)], capsys, str(evil),
                          "refused the resume checkpoint", "posix.system")
    assert "weights_only" not in err and not marker.exists()
    with pytest.raises(GeofmError, match="refused the resume checkpoint") as info:
        run_pretrain(pretrain_cfg(reben_store, tmp_path / "api", "trainer.max_steps=2",
                                  f"resume={evil}"), progress=False)
    assert "weights_only" not in str(info.value) and not marker.exists()
    # A plain pickle (not a torch zip) with the payload is refused unread too.
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"state_dict": Payload(marker)}))
    one_line_error([*base, "--resume", str(raw)], capsys, "cannot read the resume checkpoint")
    assert not marker.exists()
    # Forcing torch's default back to unrestricted loading changes nothing: geofm asks for
    # weights-only loading explicitly.
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        one_line_error([*base, "--resume", str(evil)], capsys, "refused")
    finally:
        del os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"]
    assert not marker.exists()
    # The genuine checkpoint still resumes.
    r = run_pretrain(pretrain_cfg(reben_store, tmp_path / "ok", "trainer.max_steps=2",
                                  f"resume={genuine}"), progress=False)
    assert r["steps"] == 2


def test_lightning_loads_resume_checkpoints_weights_only(genuine: Path, reben_store: Path,
                                                         tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # Even past geofm's own check, Lightning's load in fit(ckpt_path=...) runs no payload.
    import geofm.training.trainer as trainer

    evil, marker = _poisoned(genuine, tmp_path)
    monkeypatch.setattr(trainer, "check_resume", lambda task, path: None)
    with pytest.raises(pickle.UnpicklingError):
        run_pretrain(pretrain_cfg(reben_store, tmp_path / "o", "trainer.max_steps=2",
                                  f"resume={evil}"), progress=False)
    assert not marker.exists()


def test_resume_never_runs_a_payload_align(genuine: Path, pretrained: Path, reben_store: Path,
                                           tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.training.align import run_align

    evil, marker = _poisoned(genuine, tmp_path)
    base = ["align", "--init", str(pretrained), "--data", str(reben_store), "--quiet",
            "--split", "all", "--max-steps", "1", "--batch-size", "6", "--output",
            str(tmp_path / "a"), "--set", "data.crop=64", "--set", "model.embed_dim=64",
            "--set", "trainer.accelerator=cpu"]
    err = one_line_error([*base, "--resume", str(evil)], capsys, str(evil), "refused")
    assert "weights_only" not in err and not marker.exists()
    cfg = apply_overrides(merge(ALIGN_DEFAULTS, {}), [
        f"init={pretrained}", f"data.store={reben_store}", f"output={tmp_path / 'b'}",
        "data.batch_size=6", "data.crop=64", "model.embed_dim=64", "data.split=null",
        "trainer.accelerator=cpu", "trainer.max_steps=1", f"resume={evil}"])
    with pytest.raises(GeofmError, match="refused the resume checkpoint"):
        run_align(cfg, progress=False)
    assert not marker.exists()


def test_sharded_resume_folder_is_read_with_an_allow_list(tmp_path: Path) -> None:
    import torch.distributed.checkpoint as dcp

    from geofm.safeload import RefusedPickle, read_sharded_index
    from geofm.training.trainer import check_resume

    folder = tmp_path / "sharded.ckpt"
    with pytest.warns(UserWarning):  # one process, no process group
        dcp.save({"model": torch.nn.Linear(3, 4).state_dict()}, checkpoint_id=folder)
    torch.save({"global_step": 7, "loops": {}}, folder / "meta.pt")
    index = read_sharded_index(folder / ".metadata")  # a genuine index reads
    assert "model.weight" in index.state_dict_metadata
    assert check_resume(torch.nn.Linear(3, 4), str(folder)) == 7
    marker = tmp_path / "PAYLOAD_RAN"
    (folder / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(RefusedPickle):
        read_sharded_index(folder / ".metadata")
    with pytest.raises(GeofmError, match=r"refused the resume checkpoint.*posix\.system"):
        check_resume(torch.nn.Linear(3, 4), str(folder))
    assert not marker.exists()


def _open_clip_folder(tmp_path: Path, weights: object) -> tuple[Path, Path]:
    """An open_clip folder (config + pickled weights) whose weights carry a payload."""
    folder = tmp_path / "clip"
    folder.mkdir()
    cfg = {"embed_dim": 16,
           "vision_cfg": {"layers": 1, "width": 64, "patch_size": 8, "image_size": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                        "layers": 1}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save(weights if weights is not None else {"visual.proj": Payload(marker)},
               folder / "open_clip_pytorch_model.bin")
    return folder, marker


def test_open_clip_folder_with_a_payload_is_one_clear_error(
        tmp_path: Path, reben_store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder, marker = _open_clip_folder(tmp_path, None)
    for load in (load_open_clip, geofm.load, TextTower.from_source):
        with pytest.raises(GeofmError, match="geofm does not load") as info:
            load(folder)
        assert str(folder) in str(info.value) and "weights_only" not in str(info.value)
    err = one_line_error(["zeroshot", str(folder), "--data", str(reben_store)], capsys,
                          str(folder), "geofm does not load")
    assert "weights_only" not in err
    # A state-dict file with a payload is refused the same way.
    single = tmp_path / "single.pt"
    torch.save({"visual.proj": Payload(marker)}, single)
    with pytest.raises(GeofmError, match="nothing in it was run"):
        geofm.load(single)
    assert not marker.exists()


def test_text_model_folder_with_a_payload_is_one_clear_error(tmp_path: Path) -> None:
    from transformers import BertConfig

    folder = tmp_path / "bert"
    folder.mkdir()
    BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
               intermediate_size=8).save_pretrained(folder)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"]))
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"embeddings.word_embeddings.weight": Payload(marker)},
               folder / "pytorch_model.bin")
    with pytest.raises(GeofmError, match="cannot load the text model") as info:
        TextTower.from_source(folder)
    assert str(folder) in str(info.value) and "weights_only" not in str(info.value)
    assert not marker.exists()


def test_no_unrestricted_unpickling_in_the_package() -> None:
    # Every torch.load asks for weights-only loading; no module calls pickle.load(s).
    root = Path(geofm.__file__).parent
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "weights_only=False" not in text, path
        assert "pickle.load(" not in text and "pickle.loads(" not in text, path
        for i, line in enumerate(text.splitlines()):
            if "torch.load(" in line and not line.lstrip().startswith(("#", "``")):
                call = " ".join(text.splitlines()[i:i + 3])
                assert "weights_only=True" in call, f"{path}:{i + 1}"


def test_truncated_geofm_checkpoint_is_one_clear_error(pretrained: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.safetensors"
    data = pretrained.read_bytes()
    cut.write_bytes(data[: len(data) - 1000])
    with pytest.raises(GeofmError, match=str(cut)):
        geofm.load(cut)
