"""Shared steps of the torchgeo reference checks: a real Sentinel-2 chip, a release file in
its published layout, torchgeo's own weight loading pointed at that file, and timing.

A check saves random weights in the release's file layout, loads them through geofm
(:func:`geofm.published.load_release`) and through torchgeo's builder with the weight enum
(``torchvision``'s ``load_state_dict_from_url`` answered from the local file, after checking
that torchgeo asks for the spec's URL), and compares both forwards on the same chip.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from geofm.published import PUBLISHED, PublishedEncoder, PublishedSpec, load_release
from geofm.published.common import S2_L1C

REPO = Path(__file__).resolve().parents[2]
S2_SCENE = REPO / "datasets" / "sentinel2_l1c" / "s2_l1c_13band_10m_256px.tif"


def read_chips(size: int, batch: int) -> Tensor:
    """``batch`` windows of ``size`` px from the real 13-band L1C scene, DN ``[B, 13, s, s]``
    (windows step diagonally over the scene, so the chips differ)."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(S2_SCENE) as src:
        room = min(src.width, src.height) - size
        offs = np.linspace(0, room, batch).round().astype(int) if batch > 1 else [room // 2]
        chips = [src.read(window=Window(int(o), int(room - o), size, size)) for o in offs]
    return torch.from_numpy(np.stack(chips).astype(np.float32))  # [B, 13, s, s]


def spec_input(spec: PublishedSpec, dn: Tensor, bands: Sequence[str] | None = None) -> Tensor:
    """``dn [B, 13, H, W]`` (S2 L1C order) in the spec's units, its ``bands`` (default: the
    card's) in order, standardised by the card's mean and std."""
    names = list(bands or spec.bands)
    x = dn[:, [S2_L1C.index(b) for b in names]]  # [B, C, H, W]
    if spec.input_units == "reflectance":
        x = x / 10000.0
    elif spec.input_units != "dn":
        raise ValueError(f"no S2 conversion to {spec.input_units}")
    idx = [spec.bands.index(b) for b in names]
    mean = torch.tensor([spec.mean[i] for i in idx]).view(1, -1, 1, 1)
    std = torch.tensor([spec.std[i] for i in idx]).view(1, -1, 1, 1)
    return (x - mean) / std


def jitter(state: Mapping[str, Tensor], seed: int = 0) -> dict[str, Tensor]:
    """Every floating tensor moved off its initial value (norms off 1/0, zero tables filled),
    so a tensor loaded into the wrong place changes the output."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, Tensor] = {}
    for k, v in state.items():
        if v.is_floating_point():
            v = v + 0.02 * torch.randn(v.shape, generator=g, dtype=v.dtype)
        out[k] = v.clone().contiguous()
    return out


@contextmanager
def torchgeo_reads(url: str, path: Path) -> Iterator[None]:
    """torchgeo's ``WeightsEnum.get_state_dict`` answered from ``path`` instead of ``url``."""
    import torchvision.models._api as api

    real = api.load_state_dict_from_url

    def local(asked: str, *args: Any, **kwargs: Any) -> Any:
        if asked != url:
            raise AssertionError(f"torchgeo asked for {asked}, the spec names {url}")
        return torch.load(path, map_location="cpu", weights_only=True)

    api.load_state_dict_from_url = local
    try:
        yield
    finally:
        api.load_state_dict_from_url = real


def torchgeo_weights(spec: PublishedSpec) -> Any:
    """The torchgeo weight enum member the spec names."""
    import torchgeo.models as tgm

    cls, member = (spec.torchgeo_weights or "").split(".")
    return getattr(getattr(tgm, cls), member)


def timed(fns: Sequence[Callable[[], Any]], repeats: int) -> tuple[list[Any], list[float]]:
    """Each ``fn()``'s output and its best wall time over ``repeats`` runs after one warm-up,
    the functions' runs interleaved so both sides see the same machine load."""
    with torch.inference_mode():
        outs = [fn() for fn in fns]  # the warm-up, whose outputs are compared
        best = [float("inf")] * len(fns)
        for _ in range(repeats):
            for i, fn in enumerate(fns):
                t0 = time.perf_counter()
                fn()
                best[i] = min(best[i], time.perf_counter() - t0)
    return outs, best


Side = Callable[[], Tensor]


def compare(name: str, release: Mapping[str, Tensor],
            reference: Callable[[Path], tuple[Side, Side | None]],
            ours: Callable[[PublishedEncoder], tuple[Side, Side | None]],
            repeats: int = 3) -> tuple[float, float, float]:
    """Save ``release`` as the published file of ``PUBLISHED[name]``, build both sides from
    it and compare their outputs.

    Args:
        name: The spec's name.
        release: Tensors in the release's layout (nested dicts allowed).
        reference: ``file → (pooled, patch)``: functions running torchgeo's model, loaded the
            torchgeo way; ``patch`` is ``None`` where the reference exposes no patch tokens.
        ours: ``encoder → (pooled, patch)``: the same for geofm's encoder from
            :func:`load_release`.
        repeats: Timed runs of the pooled forward per side (best kept).

    Returns:
        ``(max_abs_diff, geofm_seconds, reference_seconds)``: the largest difference over the
        pooled (and patch) features; the pooled forwards' times.
    """
    spec = PUBLISHED[name]
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / spec.weights_file
        torch.save(dict(release), path)
        with torchgeo_reads(spec.weights_url, path):
            ref_pooled, ref_patch = reference(path)
        enc = load_release(spec, path)
        our_pooled, our_patch = ours(enc)
        (got, want), (t_ours, t_ref) = timed([our_pooled, ref_pooled], repeats)
        diff = float((got - want).abs().max())
        if ref_patch is not None and our_patch is not None:
            with torch.inference_mode():
                diff = max(diff, float((our_patch() - ref_patch()).abs().max()))
    return diff, t_ours, t_ref
