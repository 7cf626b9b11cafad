"""A larger reBEN-layout tree made of the six real patch pairs of ``datasets/reben_mini``.

Used by ``scripts/bench_store.py`` and ``scripts/bench_build.py``: six patches all sit in the page
cache and in one shard, which says nothing about random access. :func:`make_reben_tree` writes
``n`` patches with distinct patch ids in reBEN's own layout::

    DST/metadata.parquet
    DST/BigEarthNet-S2/<tile dir>/<patch_id>/<patch_id>_B01.tif ... _B12.tif, _B8A.tif
    DST/BigEarthNet-S1/<s1 dir>/<s1_name>/<s1_name>_VV.tif, _VH.tif
    DST/Reference_Maps/<tile dir>/<patch_id>/<patch_id>_reference_map.tif

Patch ``i`` is a copy of real patch ``i % 6`` (GeoTIFFs copied byte for byte, or hard-linked
with ``link=True``), in the same tile directory, with new column/row numbers
``100 + i // 100`` and ``i % 100`` (reBEN's own numbers stay below 100, so no id repeats a real
one). ``s1_name`` and ``s2v1_name`` get the same new numbers, so the S1/S2 pairing is consistent.
Every metadata column is kept; ``split`` is one value for all patches (torchgeo's
``BigEarthNetV2`` serves one split at a time).

This module is imported by the benchmark scripts only; nothing in ``geofm`` imports it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd

REBEN_MINI = Path(__file__).resolve().parent.parent / "datasets" / "reben_mini"
S2_DIR, S1_DIR, MAPS_DIR = "BigEarthNet-S2", "BigEarthNet-S1", "Reference_Maps"


def _renumber(name: str, col: int, row: int) -> str:
    """``name`` with its last two ``_``-fields (column, row) replaced."""
    return "_".join([*name.split("_")[:-2], str(col), str(row)])


def _s2_dir(patch_id: str) -> str:
    return "_".join(patch_id.split("_")[:-2])


def _s1_dir(s1_name: str) -> str:
    return "_".join(s1_name.split("_")[:-3])


def _place(src: Path, dst: Path, link: bool) -> None:
    if link:
        os.link(src, dst)
    else:
        shutil.copyfile(src, dst)


def make_reben_tree(
    dst: str | Path,
    n: int,
    *,
    src: str | Path = REBEN_MINI,
    split: str = "train",
    link: bool = False,
) -> pd.DataFrame:
    """Write ``n`` reBEN patch pairs replicated from the real ones at ``src`` into ``dst``.

    Args:
        dst: New directory (must not exist, or hold a tree this function made with the same ``n``,
            ``split`` and ``link``, which is then reused as it is).
        n: Number of patches.
        src: A reBEN-layout directory with ``metadata.parquet`` (default: the embedded sample).
        split: reBEN split value given to every patch (``train``, ``validation`` or ``test``).
        link: Hard-link the GeoTIFFs instead of copying them (same inode, so the page cache
            holds only the source patches; copies make ``n`` distinct files as in a real release).

    Returns:
        The written metadata (one row per patch, reBEN's columns).
    """
    src, dst = Path(src), Path(dst)
    stamp = f"n={n} split={split} link={link} src={src.resolve()}"
    if (dst / ".synth").exists() and (dst / ".synth").read_text() == stamp:
        return pd.read_parquet(dst / "metadata.parquet")
    if dst.exists():
        raise FileExistsError(f"{dst}: exists and is not a generated tree of {stamp}")
    meta = pd.read_parquet(src / "metadata.parquet").sort_values("patch_id").reset_index(drop=True)
    has_maps = (src / MAPS_DIR).is_dir()
    rows = []
    for i in range(n):
        base = meta.iloc[i % len(meta)]
        col, row = 100 + i // 100, i % 100
        pid = _renumber(base["patch_id"], col, row)
        s1 = _renumber(base["s1_name"], col, row)
        new = base.copy()
        new["patch_id"], new["s1_name"], new["split"] = pid, s1, split
        if "s2v1_name" in new:
            new["s2v1_name"] = _renumber(base["s2v1_name"], col, row)
        rows.append(new)

        s2_src = src / S2_DIR / _s2_dir(base["patch_id"]) / base["patch_id"]
        s2_dst = dst / S2_DIR / _s2_dir(pid) / pid
        s2_dst.mkdir(parents=True)
        for f in sorted(s2_src.glob("*.tif")):
            band = f.name[len(base["patch_id"]) + 1:]
            _place(f, s2_dst / f"{pid}_{band}", link)
        s1_src = src / S1_DIR / _s1_dir(base["s1_name"]) / base["s1_name"]
        s1_dst = dst / S1_DIR / _s1_dir(s1) / s1
        s1_dst.mkdir(parents=True)
        for f in sorted(s1_src.glob("*.tif")):
            band = f.name[len(base["s1_name"]) + 1:]
            _place(f, s1_dst / f"{s1}_{band}", link)
        if has_maps:
            m_src = src / MAPS_DIR / _s2_dir(base["patch_id"]) / base["patch_id"]
            m_dst = dst / MAPS_DIR / _s2_dir(pid) / pid
            m_dst.mkdir(parents=True)
            _place(m_src / f"{base['patch_id']}_reference_map.tif",
                   m_dst / f"{pid}_reference_map.tif", link)
    out = pd.DataFrame(rows).reset_index(drop=True)
    out.to_parquet(dst / "metadata.parquet", index=False)
    (dst / ".synth").write_text(stamp)
    return out


def tree_bytes(root: str | Path) -> tuple[int, int]:
    """(files, bytes) of every regular file under ``root``."""
    files = size = 0
    for dirpath, _, names in os.walk(root):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return files, size


def warm_page_cache(*roots: str | Path) -> tuple[int, int]:
    """Read every file under ``roots`` once, so later timings see the same (cached) disk.

    Returns:
        (files, bytes) read.
    """
    files = size = 0
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                with open(os.path.join(dirpath, name), "rb") as fh:
                    while chunk := fh.read(1 << 22):
                        size += len(chunk)
                files += 1
    return files, size
