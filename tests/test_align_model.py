"""AlignModel, its checkpoint round trip, and the (distributed) contrastive loss."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geofm.card import BandContract, ModelCard
from geofm.checkpoint import load_checkpoint, save_checkpoint
from geofm.errors import GeofmError
from geofm.loading import load_aligned
from geofm.models import create_model
from geofm.models.align import AlignModel, aligned_card, save_aligned
from geofm.models.text import DEFAULT_TEXT_MODEL, TextTower
from geofm.objectives.contrastive import ContrastiveLoss

from .conftest import tiny_bert_folder

BANDS = ["S2.B04", "S2.B03", "S2.B02", "S2.B08"]


class HashText(nn.Module):
    """A stand-in text backend: one learned vector per character, averaged."""

    dim = 16

    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(256, self.dim)

    def forward(self, texts: list[str]) -> Tensor:
        return torch.stack([self.table(torch.tensor([ord(c) % 256 for c in t])).mean(0)
                            for t in texts])  # [T, dim]


def toy_model(encoder: str = "vit_test", locked: bool = True) -> AlignModel:
    torch.manual_seed(0)
    text = TextTower(HashText(), {"name": "hash", "kind": "hf"}, locked=locked)
    return AlignModel(create_model(encoder, bands=BANDS), text, embed_dim=24)


@pytest.mark.parametrize("encoder", ["vit_test", "channelvit_test"])
def test_encodings_are_normalised_and_consistent(encoder: str) -> None:
    model = toy_model(encoder).eval()
    images = torch.randn(2, 4, 32, 24)
    img = model.encode_image(images, BANDS)
    patches = model.encode_patches(images, BANDS)
    txt = model.encode_text(["forest", "water bodies", "urban fabric"])
    assert img.shape == (2, 24) and patches.shape == (2, 24, 4, 3) and txt.shape == (3, 24)
    for emb, dim in ((img, 1), (patches, 1), (txt, 1)):
        torch.testing.assert_close(emb.norm(dim=dim), torch.ones_like(emb.norm(dim=dim)))
    # Pooled features are the mean of the per-location ones, and the projection is linear.
    with torch.no_grad():
        feats = model.encoder.forward_patch_features(images, BANDS)  # [B, N, D]
        per_loc = model.image_proj(feats)  # [B, N, E]
        torch.testing.assert_close(img, F.normalize(per_loc.mean(1), dim=-1), atol=1e-5,
                                   rtol=1e-5)
        torch.testing.assert_close(patches[:, :, 1, 2], F.normalize(per_loc[:, 5], dim=-1))


def test_forward_scale_and_header() -> None:
    model = toy_model()
    img, txt, scale = model(torch.randn(2, 4, 16, 16), BANDS, ["a", "b"])
    assert img.shape == (2, 24) and txt.shape == (2, 24)
    assert math.isclose(scale.item(), 1 / 0.07, rel_tol=1e-5)
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    assert math.isclose(model.scale().item(), 100.0, rel_tol=1e-5)
    assert model.settings() == {"embed_dim": 24, "init_temperature": 0.07, "max_logit_scale": 100.0,
                              "text": {"name": "hash", "kind": "hf", "dim": 16, "locked": True}}


def test_locked_text_gets_no_gradient() -> None:
    model = toy_model().train()
    img, txt, scale = model(torch.randn(3, 4, 16, 16), BANDS, ["forest", "sea", "port"])
    ContrastiveLoss()(img, txt, scale).backward()
    assert model.text.backend.table.weight.grad is None
    assert not model.text.backend.training
    for name in ("image_proj.weight", "text_proj.weight", "logit_scale",
                 "encoder.patch_embed.weight"):
        assert model.get_parameter(name).grad is not None, name

    unlocked = toy_model(locked=False).train()
    img, txt, scale = unlocked(torch.randn(3, 4, 16, 16), BANDS, ["forest", "sea", "port"])
    ContrastiveLoss()(img, txt, scale).backward()
    assert unlocked.text.backend.table.weight.grad is not None


def test_align_checkpoint_round_trip_with_bundled_text(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AlignModel(create_model("channelvit_test", bands=BANDS), TextTower.from_source(),
                       embed_dim=16, init_temperature=0.1)
    card = aligned_card(model, BandContract(tuple(BANDS), (0.0,) * 4, (1.0,) * 4),
                        classes=("Forest",), templates=["a photo of {}"])
    path = save_aligned(tmp_path / "align.safetensors", model, card)
    weights, _ = load_checkpoint(path)
    assert not [k for k in weights if k.startswith("text.")]  # locked: rebuilt by name
    loaded, card = load_aligned(path)
    assert card.kind == "align" and card.classes == ("Forest",)
    assert card.text is not None and card.text.templates == ("a photo of {}",)
    assert card.text.embed_dim == 16 and card.text.init_temperature == 0.1
    assert card.text.source == {"name": DEFAULT_TEXT_MODEL, "kind": "hf", "dim": 384,
                                "locked": True}
    assert card.architecture.name == "channelvit_test"
    assert not loaded.training and loaded.text.locked
    images = torch.randn(2, 4, 16, 16)
    with torch.no_grad():
        model.eval()
        torch.testing.assert_close(loaded.encode_image(images, BANDS),
                                   model.encode_image(images, BANDS))
        torch.testing.assert_close(loaded.encode_text(["pastures"]),
                                   model.encode_text(["pastures"]))


def test_unlocked_text_weights_are_saved(tmp_path: Path) -> None:
    folder = tiny_bert_folder(tmp_path)
    model = AlignModel(create_model("vit_test", bands=BANDS),
                       TextTower.from_source(folder, locked=False), embed_dim=8)
    with torch.no_grad():
        model.text.backend.model.embeddings.word_embeddings.weight.add_(1.0)
    path = save_aligned(tmp_path / "align.safetensors", model,
                        aligned_card(model, BandContract(tuple(BANDS), (0.0,) * 4, (1.0,) * 4)))
    assert any(k.startswith("text.backend.model.") for k in load_checkpoint(path)[0])
    loaded, card = load_aligned(path)
    assert card.text is not None and not card.text.locked and not loaded.text.locked
    torch.testing.assert_close(loaded.encode_text(["a lake"]),
                               model.eval().encode_text(["a lake"]))


def test_load_aligned_refuses_other_checkpoints(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "pre.safetensors", {"encoder.x": torch.zeros(1)},
                           ModelCard.from_header({"kind": "pretrain", "bands": ["S2.B02"]}))
    with pytest.raises(GeofmError, match=r"has no text tower \(it is a pretrain checkpoint\) "
                                         "— align it with 'geofm align'"):
        load_aligned(path)


def reference_clip_loss(image: Tensor, text: Tensor, scale: float) -> Tensor:
    """CLIP's symmetric InfoNCE written out term by term."""
    sim = scale * image @ text.T  # [B, B]
    i2t = -(sim.diag() - sim.logsumexp(dim=1)).mean()
    t2i = -(sim.diag() - sim.logsumexp(dim=0)).mean()
    return (i2t + t2i) / 2


def test_contrastive_loss_matches_reference() -> None:
    torch.manual_seed(0)
    image = F.normalize(torch.randn(6, 8), dim=-1)
    text = F.normalize(torch.randn(6, 8), dim=-1)
    loss = ContrastiveLoss()(image, text, torch.tensor(14.0))
    torch.testing.assert_close(loss, reference_clip_loss(image, text, 14.0))
    perfect = ContrastiveLoss()(image, image, torch.tensor(100.0))
    assert perfect < 0.05 < loss
    with pytest.raises(ValueError, match="pair up"):
        ContrastiveLoss()(image, text[:5], torch.tensor(1.0))


def _ddp_worker(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    torch.manual_seed(0)
    image = F.normalize(torch.randn(world * 3, 8), dim=-1)
    text = F.normalize(torch.randn(world * 3, 8), dim=-1)
    mine_i = image[rank * 3:(rank + 1) * 3].clone().requires_grad_(True)
    mine_t = text[rank * 3:(rank + 1) * 3].clone().requires_grad_(True)
    loss = ContrastiveLoss()(mine_i, mine_t, torch.tensor(10.0))
    loss.backward()
    torch.save({"loss": loss.detach(), "grad_i": mine_i.grad, "grad_t": mine_t.grad},
               f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_gathered_loss_equals_loss_on_whole_batch(tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(world)]
    torch.manual_seed(0)
    image = F.normalize(torch.randn(world * 3, 8), dim=-1).requires_grad_(True)
    text = F.normalize(torch.randn(world * 3, 8), dim=-1).requires_grad_(True)
    whole = ContrastiveLoss()(image, text, torch.tensor(10.0))
    whole.backward()
    # DDP averages over ranks: the mean rank loss is the whole-batch loss, and each rank's
    # gradient (summed over ranks by the gather's backward) is world × the whole-batch one.
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), whole.detach())
    for r, res in enumerate(results):
        rows = slice(r * 3, (r + 1) * 3)
        torch.testing.assert_close(res["grad_i"], world * image.grad[rows])
        torch.testing.assert_close(res["grad_t"], world * text.grad[rows])
