"""Task heads, the finetuner (freezing, layer-wise lr decay, losses) and kNN evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import pytest
import torch
from torch import nn

from geofm.bands import BAND_SETS
from geofm.errors import GeofmError
from geofm.models import create_model
from geofm.models.finetuner import Finetuner, task_loss
from geofm.models.heads import (
    AttentiveProbe,
    LinearProbe,
    MLPHead,
    SegmentationHead,
    create_head,
)
from geofm.models.knn import extract_features, knn_predict
from geofm.objectives import create_objective
from geofm.published import PublishedEncoder

S1S2 = list(BAND_SETS["s1s2"])
ENCODERS = ("vit_test", "channelvit_test")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """These models are tiny: one thread is faster than contended ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def images(b: int = 2, c: int = 14, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- heads -----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("head", ["linear", "attentive", "mlp"])
def test_scene_heads_give_one_logit_row_per_chip(encoder: str, head: str) -> None:
    model = Finetuner(create_model(encoder), "multilabel", 19, head=head)
    assert model(images(3), S1S2).shape == (3, 19)


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("task", ["segmentation", "regression"])
def test_pixel_tasks_predict_at_full_resolution(encoder: str, task: str) -> None:
    model = Finetuner(create_model(encoder), task, 4)
    assert model.head_kind == "segmentation"
    assert model(images(2), S1S2).shape == (2, 4, 32, 32)
    # Non-square chips: rows and columns must not be swapped.
    assert model(images(1, h=16, w=40), S1S2).shape == (1, 4, 16, 40)


def test_channelvit_pixel_task_takes_any_band_subset() -> None:
    model = Finetuner(create_model("channelvit_test"), "segmentation", 3)
    out = model(images(2, c=3), ["S2.B04", "S2.B03", "S1.VV"])
    assert out.shape == (2, 3, 32, 32)


@pytest.mark.parametrize(
    ("patch", "size"), [(8, (24, 40)), (16, (32, 16)), (14, (28, 42)), (1, (5, 3))]
)
def test_segmentation_head_output_covers_every_pixel(patch: int, size: tuple[int, int]) -> None:
    rows, cols = size[0] // patch, size[1] // patch
    head = SegmentationHead(32, 6, patch, hidden=16)
    feats = torch.randn(2, rows * cols, 32)
    assert head(feats, (rows, cols)).shape == (2, 6, *size)
    with pytest.raises(ValueError, match="does not hold"):
        head(feats, (rows + 1, cols))


def test_segmentation_head_is_local_and_keeps_the_patch_layout() -> None:
    torch.manual_seed(0)
    head = SegmentationHead(32, 3, 8, hidden=16).eval()
    rows, cols = 4, 6
    base = torch.randn(1, rows * cols, 32)
    poked = base.clone()
    poked[0, 1 * cols + 4] = torch.randn(32)  # patch at row 1, column 4
    with torch.no_grad():
        diff = (head(poked, (rows, cols)) - head(base, (rows, cols))).abs().sum(1)[0]  # [H, W]
    assert diff[8:16, 32:40].min() > 0  # the patch's own pixels change
    # Only a small neighbourhood of that patch can change: the neighbouring patches (3×3
    # convolution on the grid) plus a pixel of the 3×3 convolution at full resolution.
    outside = torch.ones_like(diff, dtype=torch.bool)
    outside[0 : 3 * 8 + 1, 3 * 8 - 1 : 6 * 8] = False
    assert diff[outside].max() < 1e-5 * diff[8:16, 32:40].mean()  # float rounding at most


def test_attentive_probe_matches_an_explicit_per_query_computation() -> None:
    torch.manual_seed(0)
    dim, m, h, k = 32, 4, 2, 5
    probe = AttentiveProbe(dim, k, num_queries=m, num_heads=h).eval()
    tokens = torch.randn(3, 10, dim)
    x = probe.norm(tokens)
    v = probe.value(x)  # [B, T, D]
    hd, dv = dim // h, dim // (m * h)
    pooled = []
    for qi in range(m):
        for hi in range(h):
            q = probe.queries[qi, hi * hd : (hi + 1) * hd]
            attn = (x[..., hi * hd : (hi + 1) * hd] @ q / math.sqrt(hd)).softmax(dim=1)  # [B, T]
            sl = slice((qi * h + hi) * dv, (qi * h + hi + 1) * dv)
            pooled.append((attn.unsqueeze(-1) * v[..., sl]).sum(1))  # [B, dv]
    expected = probe.fc(probe.out_norm(torch.cat(pooled, dim=1)))
    torch.testing.assert_close(probe(tokens), expected)
    attn = probe.attention(tokens)
    assert attn.shape == (3, h, m, 10)
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, h, m))
    # Pooling ignores token order.
    perm = torch.randperm(10)
    torch.testing.assert_close(probe(tokens[:, perm]), probe(tokens))


class _MHAProbe(nn.Module):
    """Standard attentive probe: learned queries + nn.MultiheadAttention + linear."""

    def __init__(self, dim: int, k: int, num_queries: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.zeros(1, num_queries, dim))
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.fc = nn.Linear(dim, k)


@pytest.mark.parametrize("dim", [32, 192, 768])
def test_attentive_probe_has_fewer_parameters_than_a_multihead_attention_probe(dim: int) -> None:
    ep = AttentiveProbe(dim, 19, num_queries=4)
    mha = _MHAProbe(dim, 19, num_queries=4, num_heads=4)
    assert n_params(ep) < n_params(mha)
    # Exactly one D×D projection (values) instead of four.
    assert n_params(ep) == 4 * dim + 2 * dim + dim * dim + dim * 19 + 19


def test_linear_and_mlp_heads_on_pooled_features() -> None:
    feats = torch.randn(5, 32)
    assert LinearProbe(32, 7)(feats).shape == (5, 7)
    assert MLPHead(32, 7, hidden=64)(feats).shape == (5, 7)
    # LayerNorm, not BatchNorm: a batch of one works and rows do not interact.
    probe = LinearProbe(32, 7).train()
    torch.testing.assert_close(probe(feats[:1]), probe(feats)[:1])


def test_create_head_by_name_and_its_errors() -> None:
    assert isinstance(create_head("linear", 32, 3), LinearProbe)
    assert isinstance(create_head("attentive", 32, 3, num_queries=8), AttentiveProbe)
    assert isinstance(create_head("mlp", 32, 3, hidden=16), MLPHead)
    assert isinstance(create_head("segmentation", 32, 3, patch_size=8), SegmentationHead)
    with pytest.raises(GeofmError, match=r"unknown head 'conv'.*linear, attentive, mlp, segm"):
        create_head("conv", 32, 3)
    with pytest.raises(GeofmError, match="patch_size"):
        create_head("segmentation", 32, 3)
    with pytest.raises(GeofmError, match="does not take num_querys"):
        create_head("attentive", 32, 3, num_querys=8)
    with pytest.raises(GeofmError, match="not divisible"):
        create_head("attentive", 32, 3, num_queries=3)


def test_finetuner_rejects_heads_and_modes_that_do_not_fit() -> None:
    enc = create_model("vit_test")
    with pytest.raises(GeofmError, match="unknown task"):
        Finetuner(enc, "detection", 3)
    with pytest.raises(GeofmError, match="needs the 'segmentation' head"):
        Finetuner(enc, "segmentation", 3, head="linear")
    with pytest.raises(GeofmError, match="one output per chip"):
        Finetuner(enc, "multilabel", 3, head="segmentation")
    with pytest.raises(GeofmError, match="unknown freeze mode"):
        Finetuner(enc, "multilabel", 3, freeze="thawed")
    with pytest.raises(GeofmError, match=r"outside 1\.\.2"):
        Finetuner(enc, "multilabel", 3, freeze="partial", unfreeze_last=3)
    with pytest.raises(GeofmError, match="only applies to freeze='partial'"):
        Finetuner(enc, "multilabel", 3, freeze="full", unfreeze_last=1)


# --- encoders geofm did not build --------------------------------------------------------------


class _PatchMeanEncoder(PublishedEncoder):
    """A fixed-band encoder that is not a geofm token encoder, as a published one is not."""

    bands = ("S2.B04", "S2.B03", "S2.B02")

    def __init__(self) -> None:
        super().__init__()
        self.patch_size, self.embed_dim = 8, 16
        self.embed = nn.Conv2d(3, 16, 8, stride=8)
        self.blocks = nn.ModuleList([nn.Linear(16, 16), nn.Linear(16, 16)])
        self.norm = nn.LayerNorm(16)
        self.model_name, self.model_config = "patch_mean", {}

    def forward_patch_features(self, images: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        x = self.embed(self.ordered(images, bands)).flatten(2).transpose(1, 2)  # [B, N, D]
        for block in self.blocks:
            x = x + block(x)
        return self.norm(x)

    def forward_features(self, images: torch.Tensor, bands: Sequence[str]) -> torch.Tensor:
        return self.forward_patch_features(images, bands).mean(dim=1)  # [B, D]


def test_an_encoder_geofm_did_not_build_finetunes_but_is_not_pretrained() -> None:
    bands = ["S2.B02", "S2.B03", "S2.B04"]  # reordered to the encoder's order inside
    scene = Finetuner(_PatchMeanEncoder(), "multilabel", 5, freeze="partial", unfreeze_last=1)
    assert scene(images(c=3, h=16, w=24), bands).shape == (2, 5)
    assert not any(p.requires_grad for p in scene.encoder.blocks[0].parameters())
    assert all(p.requires_grad for p in scene.encoder.blocks[1].parameters())
    pixels = Finetuner(_PatchMeanEncoder(), "segmentation", 4)
    assert pixels(images(c=3, h=16, w=24), bands).shape == (2, 4, 16, 24)
    with pytest.raises(GeofmError, match="'mae' pretrains a geofm ViT or ChannelViT"):
        create_objective("mae", _PatchMeanEncoder())


# --- freezing --------------------------------------------------------------------------------


def _train_steps(model: Finetuner, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    x, target = images(4), torch.randint(0, 2, (4, 5))
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        task_loss("multilabel", model(x, S1S2), target).backward()
        optimizer.step()


@pytest.mark.parametrize("encoder", ENCODERS)
@pytest.mark.parametrize("head", ["linear", "attentive"])
def test_frozen_encoder_stays_bit_identical_while_the_head_learns(encoder: str, head: str) -> None:
    torch.manual_seed(0)
    model = Finetuner(
        create_model(encoder, drop_path_rate=0.5), "multilabel", 5, head=head, freeze="frozen"
    )
    before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    model.train()
    assert model.head.training and not model.encoder.training
    assert not any(m.training for m in model.encoder.modules())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    # Drop path is off: the frozen features are deterministic in training mode.
    torch.testing.assert_close(model.head_inputs(images(), S1S2), model.head_inputs(images(), S1S2))
    # Even an optimizer over every parameter, with weight decay, must not move the encoder.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    _train_steps(model, opt)
    opt = torch.optim.AdamW(model.param_groups(lr=1e-2, weight_decay=0.5))
    _train_steps(model, opt)
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(head_before[k], v) for k, v in model.head.state_dict().items())


@pytest.mark.parametrize("encoder", ENCODERS)
def test_partial_finetuning_trains_exactly_the_last_blocks(encoder: str) -> None:
    torch.manual_seed(0)
    model = Finetuner(
        create_model(encoder, depth=4), "multilabel", 5, freeze="partial", unfreeze_last=2
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("encoder.blocks.2.", "encoder.blocks.3.", "encoder.norm.", "head."))
    }
    assert trainable == expected
    assert any(n.startswith("encoder.blocks.3.") for n in trainable)
    model.train()
    assert [b.training for b in model.encoder.blocks] == [False, False, True, True]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _train_steps(model, torch.optim.AdamW(model.param_groups(lr=1e-2)))
    after = model.state_dict()
    for name in before:
        if name.startswith("encoder.") and name not in expected:
            assert torch.equal(before[name], after[name]), name
    for name in ("encoder.blocks.3.mlp.fc1.weight", "encoder.blocks.2.attn.qkv.weight"):
        assert not torch.equal(before[name], after[name]), name


# --- layer-wise learning-rate decay ----------------------------------------------------------


@pytest.mark.parametrize("encoder", ENCODERS)
def test_layer_decay_gives_block_i_decay_to_the_power_l_minus_i(encoder: str) -> None:
    depth, lr, decay = 4, 1e-3, 0.65
    model = Finetuner(create_model(encoder, depth=depth), "multilabel", 5, head="attentive")
    groups = model.param_groups(lr=lr, weight_decay=0.05, layer_decay=decay)
    group_of = {id(p): g for g in groups for p in g["params"]}
    assert sum(len(g["params"]) for g in groups) == len(group_of)  # each parameter once
    names = dict(model.named_parameters())
    assert set(group_of) == {id(p) for p in names.values()}
    for name, p in names.items():
        g = group_of[id(p)]
        if name.startswith("encoder.blocks."):
            i = int(name.split(".")[2])
            assert g["lr"] == lr * decay ** (depth - i), name
        elif name.startswith(("encoder.norm.", "head.")):
            assert g["lr"] == lr, name
        else:
            assert g["lr"] == lr * decay ** (depth + 1), name
        assert g["lr"] == pytest.approx(lr * g["lr_scale"])
        no_decay = (
            p.ndim == 1
            or name.endswith((".queries", "offsets.weight"))
            or ".norm" in name
        )
        assert g["weight_decay"] == (0.0 if no_decay else 0.05), name
    assert group_of[id(names["encoder.blocks.0.attn.qkv.weight"])]["lr"] == pytest.approx(
        lr * decay**4
    )
    assert group_of[id(names["encoder.patch_embed.weight"])]["lr"] == pytest.approx(lr * decay**5)
    assert group_of[id(names["head.queries"])]["weight_decay"] == 0.0


def test_param_groups_hold_only_trainable_parameters() -> None:
    model = Finetuner(create_model("vit_test"), "multilabel", 5, freeze="frozen")
    groups = model.param_groups(lr=1e-3)
    params = [p for g in groups for p in g["params"]]
    assert {id(p) for p in params} == {id(p) for p in model.head.parameters()}
    assert all(g["lr"] == 1e-3 for g in groups)
    with pytest.raises(GeofmError, match="layer_decay"):
        model.param_groups(lr=1e-3, layer_decay=1.5)


# --- training end to end ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoder", "head"), [("vit_test", "linear"), ("channelvit_test", "attentive")]
)
def test_tiny_finetuner_overfits_a_handful_of_multilabel_samples(encoder: str, head: str) -> None:
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    bands = S1S2[:4] if encoder == "channelvit_test" else S1S2
    x = torch.randn(6, len(bands), 16, 16, generator=gen)
    y = torch.randint(0, 2, (6, 5), generator=gen)
    model = Finetuner(create_model(encoder, bands=bands), "multilabel", 5, head=head)
    opt = torch.optim.AdamW(model.param_groups(lr=3e-3, weight_decay=0.0, layer_decay=0.9))
    model.train()
    for _ in range(100):
        opt.zero_grad()
        loss = task_loss("multilabel", model(x, bands), y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        logits = model(x, bands)
    assert torch.equal((logits > 0).long(), y)
    assert task_loss("multilabel", logits, y) < 0.1


def test_task_losses_respect_ignored_and_missing_pixels() -> None:
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    mask = torch.full((2, 4, 4), 255)
    assert task_loss("segmentation", logits, mask).item() == 0.0
    mask[0, 0, 0] = 1
    expected = -logits.log_softmax(1)[0, 1, 0, 0]
    torch.testing.assert_close(task_loss("segmentation", logits, mask), expected)
    target = torch.full((2, 3, 4, 4), float("nan"))
    target[1, 2, 3, 3] = 2.0
    loss = task_loss("regression", logits, target)
    torch.testing.assert_close(loss, (logits[1, 2, 3, 3] - 2.0) ** 2)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    onehot = torch.eye(3)[[2, 0]]
    scene = torch.randn(2, 3)
    torch.testing.assert_close(
        task_loss("classification", scene, onehot),
        task_loss("classification", scene, torch.tensor([2, 0])),
    )
    with pytest.raises(GeofmError, match="exactly one label"):
        task_loss("classification", scene, torch.ones(2, 3))


# --- kNN -------------------------------------------------------------------------------------


def _brute_force_knn(
    train: torch.Tensor, targets: torch.Tensor, query: torch.Tensor, k: int, t: float
) -> torch.Tensor:
    out = []
    for q in query:
        sims = torch.stack([torch.dot(q, r) / (q.norm() * r.norm()) for r in train])
        top = sims.argsort(descending=True)[:k]
        w = torch.exp(sims[top] / t)
        out.append((w[:, None] * targets[top]).sum(0) / w.sum())
    return torch.stack(out)


def _clusters(n_per: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.eye(4, 16) * 5.0
    labels = torch.arange(4).repeat_interleave(n_per)
    feats = centres[labels] + torch.randn(len(labels), 16, generator=gen) * 0.5
    return feats, labels


def test_knn_classifies_separable_clusters_perfectly_and_matches_brute_force() -> None:
    train, labels = _clusters(15, seed=0)
    query, q_labels = _clusters(5, seed=1)
    scores = knn_predict(
        train, labels, query, k=7, temperature=0.07, task="classification",
        chunk_size=3, train_chunk_size=11,
    )
    assert scores.shape == (20, 4)
    assert torch.equal(scores.argmax(1), q_labels)
    torch.testing.assert_close(scores.sum(1), torch.ones(20))
    onehot = torch.eye(4)[labels]
    torch.testing.assert_close(scores, _brute_force_knn(train, onehot, query, 7, 0.07))


def test_knn_multilabel_averages_neighbour_label_vectors() -> None:
    train, labels = _clusters(15, seed=2)
    query, q_labels = _clusters(5, seed=3)
    # Each cluster carries a fixed multi-hot label set over 6 classes.
    sets = torch.tensor([[1, 0, 1, 0, 0, 0], [0, 1, 1, 0, 0, 1], [1, 1, 0, 1, 0, 0],
                         [0, 0, 0, 0, 1, 1]])
    targets = sets[labels]
    scores = knn_predict(train, targets, query, k=10, temperature=0.1, chunk_size=4,
                         train_chunk_size=7)
    assert torch.equal((scores > 0.5).long(), sets[q_labels])
    torch.testing.assert_close(scores, _brute_force_knn(train, targets.float(), query, 10, 0.1))
    # Random, overlapping features: still the brute-force answer, k larger than N clamps.
    gen = torch.Generator().manual_seed(4)
    tr, qu = torch.randn(9, 8, generator=gen), torch.randn(5, 8, generator=gen)
    tg = torch.randint(0, 2, (9, 3), generator=gen)
    torch.testing.assert_close(
        knn_predict(tr, tg, qu, k=50, temperature=0.2, train_chunk_size=2),
        _brute_force_knn(tr, tg.float(), qu, 9, 0.2),
    )


def test_knn_errors_and_feature_extraction() -> None:
    with pytest.raises(GeofmError, match="at least one reference"):
        knn_predict(torch.zeros(0, 4), torch.zeros(0, 2), torch.randn(3, 4))
    with pytest.raises(GeofmError, match="targets"):
        knn_predict(torch.randn(5, 4), torch.zeros(4, 2), torch.randn(3, 4))
    with pytest.raises(GeofmError, match="unknown kNN task"):
        knn_predict(torch.randn(5, 4), torch.zeros(5, 2), torch.randn(3, 4), task="regression")
    enc = create_model("vit_test").train()
    batches = [{"image": images(2, seed=s), "bands": S1S2, "label": torch.ones(2, 3)}
               for s in range(3)]
    feats, targets = extract_features(enc, batches)
    assert feats.shape == (6, 32) and targets is not None and targets.shape == (6, 3)
    assert enc.training
    with torch.no_grad():
        torch.testing.assert_close(feats[:2], enc.eval()(images(2, seed=0), S1S2))
    with pytest.raises(GeofmError, match="empty"):
        extract_features(enc, [])
