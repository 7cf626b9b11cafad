"""Near-duplicate index: exactly the pairs a brute-force comparison finds, far fewer comparisons."""

from __future__ import annotations

import io

import numpy as np
import pytest
import rasterio
from PIL import Image

from geofm.curation.dedup import (
    cluster_labels,
    duplicate_edges,
    hamming,
    hash_tables,
    near_duplicate_pairs,
    phash64,
)

from .conftest import S2_SCENE


def _hashes(n: int, seed: int, radius: int) -> np.ndarray:
    """Random 64-bit hashes with planted pairs at 0..radius+2 bits and a group of copies."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    for i in range(0, n // 4, 2):
        flips = rng.choice(64, size=int(rng.integers(0, radius + 3)), replace=False)
        h[i + 1] = h[i] ^ np.uint64(sum(1 << int(b) for b in flips))
    h[n // 2:n // 2 + 6] = h[n // 2]  # six copies
    h[n // 2 + 6] = h[n // 2] ^ np.uint64(1 << 63)  # and one bit away from them
    return h


def _brute_force(h: np.ndarray, radius: int) -> np.ndarray:
    d = hamming(h[:, None], h[None, :])
    i, j = np.triu_indices(len(h), 1)
    keep = d[i, j] <= radius
    return np.stack([i[keep], j[keep]], axis=1)


@pytest.mark.parametrize("radius", [0, 1, 2, 4, 6, 10])
def test_index_finds_exactly_the_brute_force_pairs(radius: int) -> None:
    h = _hashes(2000, seed=radius, radius=radius)
    expected = _brute_force(h, radius)
    counts: dict[str, int] = {}
    got = near_duplicate_pairs(h, radius, counts=counts)
    np.testing.assert_array_equal(got, expected)
    assert len(expected) >= 70  # planted pairs (a third to most of 250) and 21 among the copies
    assert counts["tables"] == radius + 1
    assert counts["candidates"] < len(h) ** 2 / 2 / 4


@pytest.mark.parametrize(("radius", "blocks"), [(2, 4), (3, 6), (4, 6), (4, 7)])
def test_wider_keys_find_the_same_pairs(radius: int, blocks: int) -> None:
    h = _hashes(1500, seed=blocks, radius=radius)
    np.testing.assert_array_equal(near_duplicate_pairs(h, radius, blocks=blocks),
                                  _brute_force(h, radius))


def test_tables_cover_every_pattern_within_the_radius() -> None:
    rng = np.random.default_rng(0)
    for radius, n in ((4, 1000), (4, 13_200_000), (6, 10**6)):
        tables = np.array(hash_tables(n, radius), dtype=np.uint64)
        for _ in range(300):
            x = np.uint64(sum(1 << int(b) for b in rng.choice(64, radius, replace=False)))
            assert ((tables & x) == 0).any()  # some table's key ignores every differing bit
    assert len(hash_tables(1000, 4)) == 5  # radius + 1 blocks: one block per key
    assert len(hash_tables(13_200_000, 4)) == 15  # 6 blocks, keys of 2: 21-22 bits


def _components(n: int, pairs: np.ndarray) -> list[frozenset[int]]:
    parent = list(range(n))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for a, b in pairs:
        parent[find(int(a))] = find(int(b))
    groups: dict[int, set[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), set()).add(i)
    return sorted((frozenset(g) for g in groups.values()), key=min)


def test_duplicate_edges_give_the_brute_force_clusters() -> None:
    h = _hashes(1200, seed=7, radius=3)
    digests = np.array([f"d{i}" for i in range(len(h))])
    digests[[3, 900, 1100]] = "same pixels"  # exact duplicates whose hashes differ
    pairs = _brute_force(h, 3)
    pairs = np.concatenate([pairs, [[3, 900], [900, 1100]]])
    expected = _components(len(h), pairs)
    labels = cluster_labels(len(h), duplicate_edges(h, 3, digests))
    got = sorted((frozenset(np.flatnonzero(labels == k).tolist()) for k in np.unique(labels)),
                 key=min)
    assert got == expected
    assert [min(g) for g in got] == sorted(min(g) for g in got)
    assert labels[0] == 0 and np.all(np.diff(np.maximum.accumulate(labels)) <= 1)
    assert len(duplicate_edges(np.full(5000, 42, np.uint64), 4)) == 4999  # a star, not 12.5 M


def test_phash_on_real_imagery() -> None:
    with rasterio.open(S2_SCENE) as ds:
        rgb = ds.read([4, 3, 2]).astype(np.float32)
    lo, hi = np.percentile(rgb, [2, 98])
    scene = np.clip((rgb - lo) * 255 / (hi - lo), 0, 255).astype(np.uint8).transpose(1, 2, 0)
    quads = [scene[y:y + 128, x:x + 128] for y in (0, 128) for x in (0, 128)]
    hashes = np.array([phash64(q) for q in quads], dtype=np.uint64)
    assert hamming(hashes[:, None], hashes[None, :])[np.triu_indices(4, 1)].min() >= 10
    buf = io.BytesIO()
    Image.fromarray(quads[0]).resize((96, 96), Image.Resampling.BILINEAR).save(buf, "JPEG",
                                                                               quality=60)
    altered = phash64(np.asarray(Image.open(buf)))
    assert hamming(np.uint64(altered), hashes[0]) <= 4
