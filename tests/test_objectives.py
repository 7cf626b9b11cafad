"""MAE, SelectiveMAE and SimMIM: token counts, selection schedule, learning and nodata safety."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geofm.bands import BAND_SETS
from geofm.errors import GeofmError
from geofm.models import create_model
from geofm.objectives import (
    MaskedImageObjective,
    SelectiveMAE,
    create_objective,
    list_objectives,
    psts_schedule,
)
from geofm.objectives.hog import hog_histograms, hog_richness
from geofm.objectives.selective_mae import progressive_selection

S1S2 = list(BAND_SETS["s1s2"])
RGBN = ["S2.B04", "S2.B03", "S2.B02", "S2.B08"]
SMALL_DECODER = {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}


def structured(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Smooth fields with sharp blocks and a little noise: learnable, not constant."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randn(b, c, size // 8, size // 8, generator=gen)
    smooth = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    blocks = F.interpolate(coarse.sign(), size=(size, size), mode="nearest")
    return smooth + 0.5 * blocks + 0.05 * torch.randn(b, c, size, size, generator=gen)


def build(
    objective: str, model: str = "channelvit_test", bands: list[str] = S1S2, **cfg: object
) -> MaskedImageObjective:
    torch.manual_seed(0)
    encoder = create_model(model, bands=bands)
    extra = {} if objective == "simmim" else SMALL_DECODER
    return create_objective(objective, encoder, **{**extra, **cfg})


# --- registry --------------------------------------------------------------------------------


def test_objective_registry_errors_are_one_line() -> None:
    assert list_objectives() == ["mae", "selective_mae", "simmim"]
    encoder = create_model("vit_test")
    with pytest.raises(GeofmError, match="unknown objective 'byol'; known objectives: mae, "):
        create_objective("byol", encoder)
    with pytest.raises(GeofmError, match="bad settings for objective 'mae'"):
        create_objective("mae", encoder, kept_ratio=0.3)


# --- SelectiveMAE token counts and selection --------------------------------------------------


@pytest.mark.parametrize(
    ("model", "size", "tokens", "visible", "targets"),
    [
        ("channelvit_test", 32, 14 * 16, 34, 56),  # floor(0.15·224 + .5), floor(0.25·224 + .5)
        ("vit_test", 64, 64, 10, 16),  # floor(9.6 + .5), 16
    ],
)
def test_selective_mae_encodes_and_reconstructs_the_configured_counts(
    model: str, size: int, tokens: int, visible: int, targets: int
) -> None:
    objective = build("selective_mae", model)
    out = objective(structured(3, 14, size), S1S2, generator=torch.Generator().manual_seed(0))
    assert (out.num_tokens, out.num_visible, out.num_targets) == (tokens, visible, targets)
    pixels = 14 * size * size
    assert (out.visible_mask.flatten(1).sum(1) == visible * pixels // tokens).all()
    assert (out.target_mask.flatten(1).sum(1) == targets * pixels // tokens).all()
    assert not (out.visible_mask & out.target_mask).any()
    assert out.pred_pixels[~out.target_mask].abs().max() == 0
    assert out.pred_pixels[out.target_mask].abs().min() > 0


def test_selective_mae_selection_indices_are_distinct() -> None:
    objective = build("selective_mae")
    assert isinstance(objective, SelectiveMAE)
    x = structured(4, 14, 32)
    batch = objective.prepare(x, S1S2, None)
    tokens = objective.encoder.tokenize(batch.inputs, batch.bands)
    scores = objective.token_scores(batch.inputs, batch.valid)
    sel = objective.select_tokens(scores, tokens, 0.3, torch.Generator().manual_seed(1))
    assert sel.seed_idx.shape == (4, 17) and sel.psts_idx.shape == (4, 17)
    assert sel.target_idx.shape == (4, 56)
    for row in range(4):
        both = torch.cat([sel.visible_idx[row], sel.target_idx[row]])
        assert both.unique().numel() == 34 + 56


def test_psts_schedule_breakpoints() -> None:
    def at(epoch: float) -> tuple[float, float, float]:
        return psts_schedule(epoch / 1200)

    assert at(0) == at(199) == (1.0, 0.0, 0.0)
    assert at(210) == pytest.approx((0.5, 0.5, 0.0))
    assert at(220) == at(700) == at(1179) == (0.0, 1.0, 0.0)
    assert at(1190) == pytest.approx((0.0, 0.5, 0.5))
    assert at(1200) == psts_schedule(1.5) == (0.0, 0.0, 1.0)


def _similarity_ranks(
    features: torch.Tensor, seeds: torch.Tensor, picks: torch.Tensor
) -> torch.Tensor:
    """Rank (0 = most similar) of each pick among the non-seed tokens, as a fraction."""
    feats = F.normalize(features, dim=-1)
    seed_feats = torch.gather(feats, 1, seeds[..., None].expand(-1, -1, feats.shape[-1]))
    best = (feats @ seed_feats.transpose(1, 2)).amax(-1)  # [B, T]
    best = best.scatter(1, seeds, torch.inf)  # seeds first, excluded below
    order = best.argsort(dim=1, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    num_candidates = best.shape[1] - seeds.shape[1]
    return (rank.gather(1, picks) - seeds.shape[1]).float() / (num_candidates - 1)


def test_psts_follows_the_schedule() -> None:
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(16, 200, 8, generator=gen)
    seeds = torch.randperm(200, generator=gen)[:10].expand(16, -1).contiguous()
    n = 20

    def picks(progress: float) -> torch.Tensor:
        out = progressive_selection(features, seeds, n, progress, steps=1,
                                    generator=torch.Generator().manual_seed(5))
        assert out.shape == (16, n)
        assert not torch.isin(out, seeds[0]).any()
        return _similarity_ranks(features, seeds, out)

    top = torch.arange(n) / 189
    # progress 0: exactly the n most similar non-seed tokens.
    torch.testing.assert_close(picks(0.0).sort(dim=1).values, top.expand(16, -1))
    # progress 0.5: exactly the n least similar.
    torch.testing.assert_close(picks(0.5).sort(dim=1).values, (1 - top.flip(0)).expand(16, -1))
    # Half-way through the first transition: half from each end.
    mixed = picks(210 / 1200)
    assert ((mixed < 0.06).sum(1) == 10).all() and ((mixed > 0.94).sum(1) == 10).all()
    # progress 1.0: random, so ranks spread over the whole range.
    ranks = picks(1.0)
    assert 0.4 < ranks.mean() < 0.6
    assert ((ranks > 0.2) & (ranks < 0.8)).float().mean() > 0.45


def test_psts_uses_most_similar_tokens_at_the_start_of_training() -> None:
    objective = build("selective_mae", psts_steps=1)
    assert isinstance(objective, SelectiveMAE)
    x = structured(2, 14, 32)
    batch = objective.prepare(x, S1S2, None)
    tokens = objective.encoder.tokenize(batch.inputs, batch.bands).detach()
    scores = objective.token_scores(batch.inputs, batch.valid)
    sel = objective.select_tokens(scores, tokens, 0.0, torch.Generator().manual_seed(2))
    ranks = _similarity_ranks(tokens, sel.seed_idx, sel.psts_idx)
    torch.testing.assert_close(ranks.sort(1).values,
                               (torch.arange(17) / (224 - 17 - 1)).expand(2, -1))


# --- HOG scoring -------------------------------------------------------------------------------


def test_hog_bins_follow_edge_orientation() -> None:
    x = torch.zeros(1, 2, 16, 16)
    x[0, 0, :, 8:] = 1.0  # vertical edge: horizontal gradient, orientation 0
    x[0, 1, 8:, :] = 1.0  # horizontal edge: vertical gradient, orientation π/2
    hist = hog_histograms(x, patch_size=8, num_bins=9)  # [1, 2, 4, 9]
    assert hist.shape == (1, 2, 4, 9)
    assert hist[0, 0].argmax(-1).tolist() == [0, 0, 0, 0]
    assert hist[0, 1].argmax(-1).tolist() == [4, 4, 4, 4]
    assert hist[0, 0].sum() == pytest.approx(2 * 16 * 1.0)  # two columns of unit steps
    flat = hog_histograms(torch.ones(1, 1, 16, 16), patch_size=8)
    assert flat.abs().max() == 0


def _pixel_gradient(img: torch.Tensor, ok: torch.Tensor, i: int, j: int) -> tuple[float, float]:
    """Centred differences at ``(i, j)``, zero across the border; ``(0, 0)`` if they touch an
    invalid pixel."""
    touched, gx, gy = [], 0.0, 0.0
    if 0 < j < img.shape[1] - 1:
        touched += [(i, j - 1), (i, j + 1)]
        gx = float(img[i, j + 1] - img[i, j - 1])
    if 0 < i < img.shape[0] - 1:
        touched += [(i - 1, j), (i + 1, j)]
        gy = float(img[i + 1, j] - img[i - 1, j])
    return (gx, gy) if all(ok[t] for t in touched) else (0.0, 0.0)


@pytest.mark.parametrize("strongest_band", [False, True])
def test_hog_ignores_gradients_that_touch_nodata(strongest_band: bool) -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(1, 3, 16, 16, generator=gen)
    valid = torch.rand(1, 3, 16, 16, generator=gen) > 0.2
    x_bad = x.masked_fill(~valid, 1e6)  # whatever nodata holds must not matter
    hist = hog_histograms(x_bad, 8, 9, valid, strongest_band=strongest_band)  # [1, 3 or 1, 4, 9]
    expected = torch.zeros(1 if strongest_band else 3, 4, 9)
    for i in range(16):
        for j in range(16):
            grads = [_pixel_gradient(x[0, c], valid[0, c], i, j) for c in range(3)]
            if strongest_band:  # the band with the largest valid gradient votes alone
                grads = [max(grads, key=lambda g: math.hypot(*g))]
            for row, (gx, gy) in enumerate(grads):
                slot = min(int((math.atan2(gy, gx) % math.pi) * 9 / math.pi), 8)
                expected[row, (i // 8) * 2 + j // 8, slot] += math.hypot(gx, gy)
    torch.testing.assert_close(hist[0], expected, atol=1e-4, rtol=1e-4)


def test_hog_strongest_band_votes_once_per_pixel() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 16, 16, generator=gen)
    per_band = hog_histograms(x, patch_size=8)  # [2, 5, 4, 9]
    strongest = hog_histograms(x, patch_size=8, strongest_band=True)  # [2, 1, 4, 9]
    assert strongest.shape == (2, 1, 4, 9)
    # Beside flat bands, one band's histogram is its own.
    lone = torch.zeros_like(x)
    lone[:, 3] = x[:, 2]
    torch.testing.assert_close(hog_histograms(lone, 8, strongest_band=True), per_band[:, 2:3])
    # Each pixel adds the largest of its bands' magnitudes, with that band's orientation.
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    gx = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]
    gy = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
    top = torch.hypot(gx, gy).amax(dim=1)  # [2, 16, 16]
    per_patch = top.reshape(2, 2, 8, 2, 8).sum(dim=(2, 4)).reshape(2, 4)
    torch.testing.assert_close(strongest.sum(-1)[:, 0], per_patch)
    assert (strongest.sum(-1) < per_band.sum(dim=(1, 3))).all()
    # The band order does not matter.
    torch.testing.assert_close(
        hog_histograms(x[:, [3, 0, 4, 1, 2]], 8, strongest_band=True), strongest
    )
    # A strong vertical edge in one band outvotes noise in the others: orientation 0 (the
    # first bin, or the last where noise tilts it just below π).
    y = 0.01 * torch.randn(1, 4, 16, 16, generator=gen)
    y[0, 1, :, 8:] += 1.0
    edge = hog_histograms(y, 8, strongest_band=True)[0, 0]  # [4, 9]
    assert edge[:, [0, 8]].sum() > 0.85 * edge.sum()


def test_selective_mae_seeds_prefer_textured_band_tokens() -> None:
    objective = build("selective_mae", bands=RGBN)
    assert isinstance(objective, SelectiveMAE)
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(64, 4, 32, 32)
    x[:, 2] = torch.randn(64, 32, 32, generator=gen)  # only S2.B02 has texture
    x[:, :, :, :16] += 0.01 * torch.randn(64, 4, 32, 16, generator=gen)
    batch = objective.prepare(x, RGBN, None)
    scores = objective.token_scores(batch.inputs, batch.valid)  # [B, 4·16]
    textured = torch.arange(64) // 16 == 2
    assert (scores[:, textured].min(1).values > scores[:, ~textured].max(1).values).all()
    tokens = objective.encoder.tokenize(batch.inputs, batch.bands)
    sel = objective.select_tokens(scores, tokens, 0.5, torch.Generator().manual_seed(0))
    # A quarter of the tokens are textured; HOG sampling draws them far more often.
    assert textured[sel.seed_idx].float().mean() > 0.55
    assert textured[sel.target_idx].float().mean() > 0.35


def test_hog_richness_ranks_texture_over_edges_over_flat() -> None:
    hist = torch.zeros(1, 3, 9)
    hist[0, 0, 0] = 1e-3  # nearly flat
    hist[0, 1, 0] = 8.0  # one straight edge
    hist[0, 2] = 1.0  # the same strength in every direction
    score = hog_richness(hist)[0]
    assert score[0] < score[1] < score[2]


# --- every objective: learning, nodata safety, outputs ----------------------------------------


def stripes(b: int, c: int, size: int, seed: int = 0) -> torch.Tensor:
    """Stripes with the patch's period, per-image phase and amplitude, alternating direction
    by band: a masked patch is predictable from the visible patches of its band."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.arange(size, dtype=torch.float32)
    cols = u.view(1, 1, 1, -1).expand(b, c, size, size)
    rows = u.view(1, 1, -1, 1).expand(b, c, size, size)
    axis = torch.where((torch.arange(c) % 2 == 0).view(1, -1, 1, 1), cols, rows)
    phase = 2 * math.pi * torch.rand(b, c, 1, 1, generator=gen)
    amplitude = 0.5 + torch.rand(b, c, 1, 1, generator=gen)
    noise = 0.1 * torch.randn(b, c, size, size, generator=gen)
    return amplitude * torch.sin(2 * math.pi * axis / 8 + phase) + noise


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mae", "selective_mae", "simmim"])
@pytest.mark.parametrize("model", ["vit_test", "channelvit_test"])
def test_loss_decreases_over_a_fixed_seed_run(objective: str, model: str) -> None:
    obj = build(objective, model, bands=RGBN)
    x = stripes(4, 4, 32, seed=1)
    optimizer = torch.optim.AdamW(obj.parameters(), lr=5e-3, fused=True)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for step in range(30):
        out = obj(x, RGBN, progress=step / 30, generator=gen)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.65 * first, losses
    if objective != "simmim":
        # Predicting each patch's mean scores about 1 on normalised pixels; this learned more.
        assert last < 0.75, losses


@pytest.mark.parametrize("objective", ["mae", "selective_mae", "simmim"])
@pytest.mark.parametrize("model", ["vit_test", "channelvit_test"])
def test_nodata_never_reaches_the_loss(objective: str, model: str) -> None:
    obj = build(objective, model, bands=RGBN)
    x = structured(2, 4, 32)
    valid = torch.ones_like(x, dtype=torch.bool)
    valid[:, 1, :12, :12] = False  # flagged nodata
    bad = ~valid
    bad[0, 3, 20:, 5:30] = True  # NaN without a flag
    nan_x = x.masked_fill(bad, torch.nan).requires_grad_(True)
    out = obj(nan_x, RGBN, valid=valid, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert torch.isfinite(nan_x.grad).all()
    assert (nan_x.grad[bad] == 0).all()
    for p in obj.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()
    assert torch.isfinite(out.images).all() and (out.images[bad] == 0).all()
    # Garbage in the same pixels gives exactly the same loss: they are never read.
    garbage = x.masked_fill(bad, 1e6)
    again = obj(garbage, RGBN, valid=valid & ~bad, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.loss, out.loss)


def test_all_nodata_batch_gives_zero_loss() -> None:
    obj = build("selective_mae")
    x = torch.full((2, 14, 32, 32), torch.nan)
    out = obj(x, S1S2)
    assert out.loss.item() == 0.0
    out.loss.backward()


@pytest.mark.parametrize("objective", ["mae", "selective_mae", "simmim"])
def test_outputs_follow_channel_sampling(objective: str) -> None:
    obj = build(objective, hcs=True).train()
    torch.manual_seed(4)
    out = obj(structured(2, 14, 32), S1S2)
    c = len(out.bands)
    assert out.pred_pixels.shape == out.visible_mask.shape == out.images.shape == (2, c, 32, 32)
    assert set(out.bands) <= set(S1S2)
    assert out.num_tokens == c * 16
    obj.eval()
    assert len(obj(structured(2, 14, 32), S1S2).bands) == 14  # no sampling in eval


def test_vit_channel_sampling_excludes_filled_bands_from_the_loss() -> None:
    obj = build("mae", "vit_test", hcs=True).train()
    torch.manual_seed(6)  # draws k < 14
    x = structured(2, 14, 32)
    batch = obj.prepare(x, S1S2, None)
    kept = batch.valid[0, :, 0, 0]
    assert 0 < int(kept.sum()) < 14
    assert (batch.inputs[:, ~kept] == 0).all()
    torch.testing.assert_close(batch.inputs[:, kept], x[:, kept] * 14 / int(kept.sum()))
    torch.testing.assert_close(batch.targets, x)
