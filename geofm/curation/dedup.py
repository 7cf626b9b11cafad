"""Perceptual hashes and a sub-quadratic index of near-duplicate 64-bit hashes.

An image's perceptual hash (:func:`phash64`) is imagehash's DCT hash: the image (box-reduced to
at most 256 px first) in grey levels, resized to 32 × 32 (Lanczos), 2-D DCT, and one bit per
coefficient of the lowest 8 × 8 frequencies (above or below their median). Re-encoding, rescaling
and mild colour changes move few bits; different scenes differ in about half of the 64.

Two images are near duplicates when their hashes differ in at most ``radius`` bits.
:func:`near_duplicate_pairs` finds every such pair without comparing all of them, by the
pigeonhole principle behind multi-index hashing (Norouzi, Punjani and Fleet, "Fast Search in
Hamming Space with Multi-Index Hashing", CVPR 2012) in the permuted-table form of Manku, Jain and
Das Sarma ("Detecting Near-Duplicates for Web Crawling", WWW 2007): cut the 64 bits into
``B > radius`` disjoint blocks; two hashes within ``radius`` bits differ in at most ``radius``
blocks, so they agree exactly on some ``B - radius`` of them. Each choice of ``B - radius`` blocks
is a table: the hashes are sorted by those bits, pairs inside runs of equal keys are the
candidates, and a popcount of their XOR keeps those within the radius. A pair that agrees in
several tables is reported only by the first. With ``B = radius + 1`` this is the plain
"radius + 1 blocks" pigeonhole; :func:`hash_tables` picks ``B`` from the number of hashes so the
candidates stay few: work is ``O(T·N log N)`` for the ``T = C(B, radius)`` sorts plus one
vectorised check per candidate, about ``T · N² / 2^(k+1)`` of them for evenly spread hashes and
``k``-bit keys, instead of ``N² / 2`` (13.2 M hashes, radius 4: 15 tables of 21-bit keys, about
``6·10⁸`` candidates instead of ``8.7·10¹³``).

:func:`duplicate_edges` gives the builder a smaller edge set with the same connected components:
equal hashes (and equal content digests) are joined by a star, and the index runs on distinct
hash values only, so a hash shared by thousands of copies costs thousands of edges, not millions
of pairs. :func:`cluster_labels` turns edges into clusters (connected components, the result a
union-find would give).
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from math import comb

import imagehash
import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

HASH_BITS = 64
PHASH_INPUT_PX = 256


def phash64(image: np.ndarray) -> int:
    """64-bit perceptual hash of an image.

    Images over :data:`PHASH_INPUT_PX` on a side are first reduced by an integer box filter
    (``PIL.Image.reduce``) to at most that, which costs a fraction of the Lanczos resize it
    spares and moves no bit on the real test scenes.

    Args:
        image: ``[H, W, 3]`` or ``[H, W]`` uint8 pixels.

    Returns:
        The hash as an unsigned integer; bit 63 is the first DCT coefficient in row-major order.
    """
    im = Image.fromarray(np.ascontiguousarray(image))
    factor = -(-max(im.size) // PHASH_INPUT_PX)
    if factor > 1:
        im = im.reduce(factor)
    bits = imagehash.phash(im).hash  # [8, 8] bool
    return int.from_bytes(np.packbits(bits.ravel()).tobytes(), "big")


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between uint64 hashes (broadcasting)."""
    return np.bitwise_count(np.bitwise_xor(a.astype(np.uint64), b.astype(np.uint64)))


def hash_blocks(radius: int, count: int | None = None) -> list[tuple[int, int]]:
    """``(shift, width)`` of ``count`` disjoint blocks covering 64 bits (default ``radius + 1``).

    Widths differ by at most one bit; the first blocks are the wider ones.
    """
    if not 0 <= radius < HASH_BITS:
        raise ValueError(f"radius must be in 0..{HASH_BITS - 1}, got {radius}")
    count = radius + 1 if count is None else count
    if not radius < count <= HASH_BITS:
        raise ValueError(f"need more than {radius} and at most {HASH_BITS} blocks, got {count}")
    widths = [HASH_BITS // count + (1 if i < HASH_BITS % count else 0) for i in range(count)]
    shifts = np.cumsum([0, *widths[:-1]])
    return [(int(s), w) for s, w in zip(shifts, widths)]


def _table_cost(n: int, radius: int, count: int) -> float:
    """Estimated work of ``count`` blocks: sorts plus candidates of evenly spread hashes."""
    widths = sorted(w for _, w in hash_blocks(radius, count))
    key_bits = sum(widths[: count - radius])
    tables = comb(count, radius)
    return tables * (n * max(np.log2(max(n, 2)), 1.0) + n * (n - 1) / 2 / 2.0**key_bits)


def hash_tables(n: int, radius: int, blocks: int | None = None,
                max_tables: int = 256) -> list[int]:
    """Bit masks of the index's tables for ``n`` hashes.

    The 64 bits are cut into ``B >= radius + 1`` blocks; a pair within ``radius`` bits differs in
    at most ``radius`` blocks, so it agrees exactly on some choice of ``B - radius`` blocks. Each
    such choice is one table (``C(B, radius)`` of them) keyed by those blocks' bits. ``B`` is the
    count that minimises the estimated work (unless ``blocks`` gives it): ``radius + 1`` (one
    block per key) for small ``n``, more blocks and wider keys as ``n`` grows and candidates would
    dominate. At most ``max_tables`` tables.
    """
    best = radius + 1 if blocks is None else blocks
    for count in range(radius + 1, HASH_BITS + 1) if blocks is None else ():
        if comb(count, radius) > max_tables:
            break
        if _table_cost(n, radius, count) < _table_cost(n, radius, best):
            best = count
    masks = [((1 << w) - 1) << s for s, w in hash_blocks(radius, best)]
    return [sum(masks[i] for i in chosen) for chosen in combinations(range(best), best - radius)]


def _table_pairs(hashes: np.ndarray, radius: int, mask: int, earlier: Sequence[int],
                 counts: dict[str, int]) -> np.ndarray:
    """Pairs within ``radius`` whose bits under ``mask`` agree and under no ``earlier`` mask do.

    The hashes are sorted by their masked bits; step ``d`` pairs each sorted position with the
    one ``d`` further on, and positions whose run of equal keys ends before that drop out, so the
    work is the number of candidates and no step holds more than N of them. Adds the candidates
    to ``counts["candidates"]``.
    """
    keys = hashes & np.uint64(mask)
    order = np.argsort(keys)
    sorted_keys = keys[order]
    sorted_hashes = hashes[order]
    n = hashes.size
    found = []
    active = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    step = 1
    while active.size:
        x = sorted_hashes[active] ^ sorted_hashes[active + step]
        counts["candidates"] = counts.get("candidates", 0) + int(active.size)
        keep = np.bitwise_count(x) <= radius
        for m in earlier:
            keep &= (x & np.uint64(m)) != 0
        if keep.any():
            a, b = order[active[keep]], order[active[keep] + step]
            found.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
        step += 1
        active = active[: np.searchsorted(active, n - step)]
        active = active[sorted_keys[active + step] == sorted_keys[active]]
    return np.concatenate(found) if found else np.zeros((0, 2), np.int64)


def near_duplicate_pairs(hashes: np.ndarray, radius: int, *, blocks: int | None = None,
                         counts: dict[str, int] | None = None) -> np.ndarray:
    """Every pair of hashes at Hamming distance ``<= radius``.

    Args:
        hashes: ``[N]`` uint64 hashes.
        radius: Largest distance in bits (0 finds equal hashes only).
        blocks: Blocks the 64 bits are cut into (default: chosen by :func:`hash_tables`).
        counts: If given, receives ``tables`` and ``candidates`` (pairs compared).

    Returns:
        ``[P, 2]`` int64 index pairs ``i < j``, sorted by ``i`` then ``j``.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    tables = hash_tables(h.size, radius, blocks)
    counts = {} if counts is None else counts
    counts.update(tables=len(tables), candidates=0)
    pairs = np.concatenate([_table_pairs(h, radius, m, tables[:k], counts)
                            for k, m in enumerate(tables)])
    pairs = pairs.astype(np.int64)
    return pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]


def _star_edges(keys: np.ndarray) -> np.ndarray:
    """``[E, 2]`` edges joining each item to the first item with the same key."""
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    head = first[inverse.ravel()]
    items = np.arange(keys.size)
    linked = head != items
    return np.stack([head[linked], items[linked]], axis=1).astype(np.int64)


def duplicate_edges(hashes: np.ndarray, radius: int,
                    digests: Sequence[str] | np.ndarray | None = None) -> np.ndarray:
    """Edges whose connected components are the near-duplicate clusters.

    Args:
        hashes: ``[N]`` uint64 perceptual hashes.
        radius: Largest Hamming distance of near duplicates.
        digests: Optional ``[N]`` exact content digests; equal digests are joined too.

    Returns:
        ``[E, 2]`` int64 item indices; components equal those of all pairs within ``radius``
        (and all pairs of equal digests), with ``E`` linear in N plus the near pairs among
        distinct hash values.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    values, first = np.unique(h, return_index=True)
    parts = [_star_edges(h)]
    if values.size > 1:
        parts.append(first[near_duplicate_pairs(values, radius)].astype(np.int64))
    if digests is not None:
        parts.append(_star_edges(np.asarray(digests)))
    return np.concatenate(parts)


def cluster_labels(n: int, edges: np.ndarray) -> np.ndarray:
    """Cluster of every item given undirected ``edges``.

    Returns:
        ``[n]`` int64 labels numbered 0, 1, ... in the order of each cluster's first item.
    """
    e = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(e), np.int8), (e[:, 0], e[:, 1])), shape=(n, n))
    _, raw = connected_components(graph, directed=False)
    _, first = np.unique(raw, return_index=True)
    rank = np.empty(first.size, np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[raw]
