"""Opening, reading, splitting and validating chip stores.

Example:
    >>> import geofm
    >>> store = geofm.open_store("datasets/reben_mini/reben_mini.zarr")  # doctest: +SKIP
    >>> batch = store.read([0, 3], bands=["S2.B04", "S2.B03", "S2.B02"])  # doctest: +SKIP
    >>> batch["image"].shape  # doctest: +SKIP
    (2, 3, 120, 120)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import pandas as pd
import xarray as xr
import zarr

from geofm.bands import resolve_bands
from geofm.errors import StoreError
from geofm.io.schema import (
    ARRAYS,
    ATTRS_KEY,
    BUILD_DIR,
    CHIP_TABLE,
    REQUIRED_COLUMNS,
    SCHEMA_VERSION,
    SPLITS,
)
from geofm.io.shardread import ShardReader
from geofm.io.stats import BandStats


class ChipStore:
    """A finished chip store, opened lazily.

    Attributes:
        path: The ``.zarr`` directory.
        attrs: The store's ``geofm`` attributes (bands, stats, classes, split, provenance).
    """

    def __init__(self, path: Path, attrs: dict[str, Any]):
        self.path = path
        self.attrs = attrs
        self._readers: dict[str, ShardReader] = {}

    def __repr__(self) -> str:
        return (f"ChipStore({str(self.path)!r}, chips={len(self)}, bands={len(self.bands)}, "
                f"chip_size={self.chip_size}, split={self.attrs['split']['method']!r})")

    def __len__(self) -> int:
        return int(self.attrs["num_chips"])

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "attrs": self.attrs}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"], state["attrs"])  # type: ignore[misc]

    @property
    def bands(self) -> list[str]:
        """Ordered canonical band names of ``image``."""
        return list(self.attrs["bands"])

    @property
    def chip_size(self) -> tuple[int, int]:
        """(H, W) of every chip."""
        h, w = self.attrs["chip_size"]
        return int(h), int(w)

    @property
    def classes(self) -> list[str]:
        """Class names of ``label`` and ``mask`` (empty without labels)."""
        return list(self.attrs.get("classes", []))

    @property
    def class_colors(self) -> list[str]:
        """``#rrggbb`` colour per class."""
        return list(self.attrs.get("class_colors", []))

    @property
    def stats(self) -> BandStats:
        """Per-band statistics computed at build time over every chip's valid pixels."""
        return BandStats.from_json(self.attrs["stats"])

    def band_stats(self, bands: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) float32 arrays for ``bands`` (default: all), for normalisation."""
        idx = self.band_indices(bands)
        s = self.stats
        return s.mean[idx].astype(np.float32), s.std[idx].astype(np.float32)

    @property
    def arrays(self) -> list[str]:
        """Names of the arrays present (``image`` and any of ``label``, ``mask``, ``valid``)."""
        return [n for n in ARRAYS if (self.path / n).is_dir()]

    @cached_property
    def chips(self) -> gpd.GeoDataFrame:
        """The chip table: one row per chip, in store order."""
        return gpd.read_parquet(self.path / CHIP_TABLE)

    def split_indices(self, split: str | None) -> np.ndarray:
        """Chip indices of ``split`` (``None`` or ``"all"``: every chip)."""
        if split is None or split == "all":
            return np.arange(len(self))
        name = {"val": "validation"}.get(split, split)
        col = pd.read_parquet(self.path / CHIP_TABLE, columns=["split"])["split"].to_numpy()
        if name not in set(col):
            have = sorted(set(col) - {""})
            raise StoreError(f"split {split!r} is empty (splits here: {', '.join(have) or 'none'})",
                             self.path, "run 'geofm split' first or choose another split")
        return np.flatnonzero(col == name)

    def band_indices(self, bands: Sequence[str] | str | int | None) -> np.ndarray:
        """Positions of ``bands`` (names, a named set or a count) in the store's band axis."""
        if bands is None:
            return np.arange(len(self.bands))
        names = resolve_bands(bands, self.bands)
        return np.array([self.bands.index(b) for b in names])

    def _reader(self, name: str) -> ShardReader:
        if name not in self._readers:
            self._readers[name] = ShardReader(self.path / name)
        return self._readers[name]

    def read(
        self, indices: Sequence[int] | np.ndarray, bands: Sequence[str] | None = None,
        arrays: Sequence[str] | None = None,
    ) -> dict[str, np.ndarray]:
        """Read a batch of chips.

        Args:
            indices: Chip indices, any order.
            bands: Canonical band names to return (default: all, store order).
            arrays: Arrays to read (default: every array the store has); e.g. ``["label"]``
                reads labels without decoding any pixels.

        Returns:
            ``{"image": [B, C, H, W], "label"?: [B, K], "mask"?: [B, H, W],
            "valid"?: [B, C, H, W], "target"?: [B, T, H, W]}`` as numpy arrays in the stored
            dtypes.
        """
        idx = np.asarray(indices, dtype=np.int64)
        out: dict[str, np.ndarray] = {}
        for name in self.arrays if arrays is None else [a for a in self.arrays if a in arrays]:
            if name == "label":
                # Labels are tiny and unsharded: one zarr read of the whole column is cheapest.
                out[name] = self._labels[idx]
            else:
                out[name] = self._reader(name).read(idx)
        if bands is not None and "image" in out:
            b = self.band_indices(bands)
            if not np.array_equal(b, np.arange(len(self.bands))):
                out["image"] = out["image"][:, b]
                if "valid" in out:
                    out["valid"] = out["valid"][:, b]
        return out

    @cached_property
    def _labels(self) -> np.ndarray:
        return np.asarray(zarr.open_array(str(self.path / "label"), mode="r")[:])

    def to_xarray(self) -> xr.Dataset:
        """Lazy ``xarray.Dataset`` view (dask-backed) with band and chip-id coordinates."""
        with warnings.catch_warnings():
            # chips.parquet sits beside the arrays; zarr notes it is not part of the hierarchy.
            warnings.simplefilter("ignore")
            ds: xr.Dataset = xr.open_zarr(self.path, consolidated=False, zarr_format=3)
        ds = ds.assign_coords(band=("band", self.bands),
                              chip=("chip", self.chips["chip_id"].to_numpy()))
        if "label" in ds and self.classes:
            ds = ds.assign_coords({"class": ("class", self.classes)})
        ds.attrs = {k: v for k, v in self.attrs.items() if isinstance(v, str | int | float)}
        return ds

    def write_split(self, split: np.ndarray, method: str, params: dict[str, Any]) -> None:
        """Record a split: the chip table's ``split`` column and the store's attributes.

        Args:
            split: One label per chip (``train``, ``validation``, ``test`` or ``""`` excluded).
            method: Name of the split rule.
            params: Its parameters (seed, sizes, ratios...), recorded for reproducibility.
        """
        split = np.asarray(split, dtype=object)
        if len(split) != len(self):
            raise StoreError(f"split has {len(split)} labels for {len(self)} chips", self.path)
        bad = set(split) - {*SPLITS, ""}
        if bad:
            raise StoreError(f"unknown split labels {sorted(bad)}", self.path)
        chips = self.chips.copy()
        chips["split"] = split.astype(str)
        tmp = self.path / (CHIP_TABLE + ".tmp")
        chips.to_parquet(tmp, index=False)
        os.replace(tmp, self.path / CHIP_TABLE)
        self.__dict__.pop("chips", None)
        counts = {s: int((split == s).sum()) for s in (*SPLITS, "")}
        counts["excluded"] = counts.pop("")
        self.attrs["split"] = {"method": method, "params": params, "counts": counts}
        root = zarr.open_group(str(self.path), mode="r+")
        root.attrs[ATTRS_KEY] = self.attrs


def band_info(stores: Sequence[ChipStore], bands: Sequence[str]) -> list[dict[str, Any]]:
    """The band contract's descriptions of ``bands``, in that order, each from the first of
    ``stores`` that holds it (what checkpoints record beside their band names)."""
    described: dict[str, dict[str, Any]] = {}
    for store in stores:
        for info in store.attrs["band_info"]:
            described.setdefault(info["name"], info)
    return [described[b] for b in bands]


def _read_attrs(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise StoreError("no such chip store", path,
                         "check the path or build one with 'geofm build'")
    if not (path / "zarr.json").exists():
        raise StoreError("is not a chip store (no zarr.json)", path,
                         "build one with 'geofm build'")
    try:
        root = zarr.open_group(str(path), mode="r")
        attrs = dict(cast(Mapping[str, Any], root.attrs.get(ATTRS_KEY, {})))
    except Exception as e:  # zarr raises many types for damaged metadata
        raise StoreError(f"cannot read the store's metadata ({e})", path) from None
    if not attrs:
        raise StoreError("is a Zarr group but not a geofm chip store", path)
    return attrs


def open_store(path: str | Path) -> ChipStore:
    """Open a finished chip store lazily.

    Raises:
        StoreError: Missing, not a store, of an unknown schema, or an unfinished build.
    """
    p = Path(path)
    attrs = _read_attrs(p)
    if not attrs.get("complete"):
        raise StoreError("is an unfinished build", p,
                         "rerun the same 'geofm build' command to complete it")
    if attrs.get("schema_version") != SCHEMA_VERSION:
        raise StoreError(f"has schema version {attrs.get('schema_version')}, this geofm reads "
                         f"{SCHEMA_VERSION}", p, "rebuild it with this geofm")
    return ChipStore(p, attrs)


def open_valid_store(path: str | Path, role: str = "store") -> ChipStore:
    """:func:`open_store` after :func:`validate_store` finds nothing wrong (what training and
    probing open their stores with).

    Raises:
        StoreError: ``"<role> fails validation: <first problem>"``, or :func:`open_store`'s.
    """
    problems = validate_store(path)
    if problems:
        raise StoreError(f"{role} fails validation: {problems[0]}", hint="rebuild it")
    return open_store(path)


def validate_store(path: str | Path, *, deep: bool = False) -> list[str]:
    """Check a store's integrity and say precisely what is wrong.

    Args:
        path: The store.
        deep: Also decode every chip and compare against the chip table and statistics.

    Returns:
        One line per problem; empty when the store is sound.
    """
    p = Path(path)
    try:
        store = open_store(p)
    except StoreError as e:
        return [str(e)]
    problems: list[str] = []
    n, c = len(store), len(store.bands)
    h, w = store.chip_size
    expected = {"image": (n, c, h, w), "label": (n, len(store.classes)), "mask": (n, h, w),
                "valid": (n, c, h, w),
                "target": (n, len(store.attrs.get("target_names", [])), h, w)}
    for name in store.arrays:
        try:
            a = zarr.open_array(str(p / name), mode="r")
        except Exception as e:
            problems.append(f"{p / name}: cannot open array ({e})")
            continue
        if tuple(a.shape) != expected[name]:
            problems.append(f"{p / name}: shape {tuple(a.shape)}, expected {expected[name]}")
        if a.ndim != len(expected[name]):
            continue
        if name != "label":
            shards = -(-n // a.shards[0]) if a.shards else 0
            for s in range(shards):
                f = p / name / "c" / str(s) / "/".join("0" * (a.ndim - 1))
                if not f.exists():
                    problems.append(f"{f}: shard file missing")
    if (p / BUILD_DIR).exists():
        problems.append(f"{p / BUILD_DIR}: leftover build directory")
    if not (p / CHIP_TABLE).exists():
        problems.append(f"{p / CHIP_TABLE}: chip table missing")
        return problems
    try:
        chips = store.chips
    except Exception as e:
        problems.append(f"{p / CHIP_TABLE}: unreadable ({e})")
        return problems
    missing = [col for col in REQUIRED_COLUMNS if col not in chips.columns]
    if missing:
        problems.append(f"{p / CHIP_TABLE}: missing columns {missing}")
    if len(chips) != n:
        problems.append(f"{p / CHIP_TABLE}: {len(chips)} rows for {n} chips")
    if "chip_id" in chips and chips["chip_id"].duplicated().any():
        problems.append(f"{p / CHIP_TABLE}: duplicate chip ids")
    if chips.crs is None or chips.crs.to_epsg() != 4326:
        problems.append(f"{p / CHIP_TABLE}: footprints are not in EPSG:4326")
    if len(store.attrs.get("stats", {}).get("mean", [])) != c:
        problems.append(f"{p}: statistics do not cover the {c} bands")
    if deep and not problems:
        stats = BandStats.empty(c)
        for start in range(0, n, 256):
            batch = store.read(np.arange(start, min(n, start + 256)))
            stats = stats.merge(BandStats.of(batch["image"], batch.get("valid")))
        if not np.array_equal(stats.count, store.stats.count) or not np.allclose(
            stats.total, store.stats.total, rtol=1e-9, equal_nan=True
        ):
            problems.append(f"{p / 'image'}: pixel statistics differ from those recorded at build")
    return problems
