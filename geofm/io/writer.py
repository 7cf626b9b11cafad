"""Creating and filling chip stores: the builders' side of the schema.

A build is resumable and deterministic. :func:`create_store` lays out empty arrays and writes
``_build/spec.json`` with a fingerprint of the build's inputs. Each task calls
:func:`write_region` for one shard's worth of chips: arrays first, then the region's chip rows
and partial statistics, then an atomic marker. A crash leaves at most a region without marker,
which a rerun rewrites. :func:`finalize_store` merges partials in region order, writes
``chips.parquet`` and marks the store complete; until then :func:`geofm.open_store` refuses it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import geopandas as gpd
import numpy as np
import pandas as pd
import zarr
from zarr.codecs import BloscCodec

from geofm._version import __version__
from geofm.bands import bands_info
from geofm.errors import StoreError
from geofm.io.schema import (
    ATTRS_KEY,
    BUILD_DIR,
    CHIP_TABLE,
    DIMS,
    MASK_IGNORE,
    SCHEMA_VERSION,
    SHARD_CHIPS,
)
from geofm.io.space import check_free_space, reporting_full_disk
from geofm.io.stats import BandStats


@dataclass
class StoreSpec:
    """What a builder is about to write.

    Attributes:
        num_chips: Number of chips N.
        bands: Ordered canonical band names (C).
        chip_size: (H, W) in pixels.
        dtype: Image dtype name.
        classes: Class names for ``label``/``mask`` (empty: no labels).
        class_colors: ``#rrggbb`` per class.
        has_label: Write a ``label`` array (N, K).
        has_mask: Write a ``mask`` array (N, H, W).
        has_valid: Write a ``valid`` array (N, C, H, W).
        target_names: Names of pixel regression targets; non-empty writes ``target``
            (N, T, H, W) float32.
        gsd_m: Pixel size of the chips in metres.
        provenance: Builder name, source path, parameters.
        fingerprint: Hash of the inputs; a resumed build must match it.
        shard_chips: Chips per shard file.
    """

    num_chips: int
    bands: list[str]
    chip_size: tuple[int, int]
    dtype: str
    classes: list[str] = field(default_factory=list)
    class_colors: list[str] = field(default_factory=list)
    has_label: bool = False
    has_mask: bool = False
    has_valid: bool = False
    target_names: list[str] = field(default_factory=list)
    gsd_m: float | None = None
    provenance: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    shard_chips: int = SHARD_CHIPS

    @property
    def num_regions(self) -> int:
        """Number of shard-aligned regions (build tasks)."""
        return -(-self.num_chips // self.shard_chips)

    def chip_bytes(self) -> int:
        """Uncompressed bytes of one chip in every array the store holds."""
        (h, w), c = self.chip_size, len(self.bands)
        n = c * h * w * np.dtype(self.dtype).itemsize
        n += len(self.classes) if self.has_label else 0
        n += h * w if self.has_mask else 0
        n += c * h * w if self.has_valid else 0
        return int(n + len(self.target_names) * h * w * 4)

    def region_bytes(self, regions: Iterable[int]) -> int:
        """Uncompressed bytes of the chips of ``regions``."""
        chips = sum(self.region_slice(r).stop - self.region_slice(r).start for r in regions)
        return int(chips * self.chip_bytes())

    def region_slice(self, region: int) -> slice:
        """Chip index range of ``region``."""
        start = region * self.shard_chips
        return slice(start, min(start + self.shard_chips, self.num_chips))


def _build_dir(path: Path) -> Path:
    return path / BUILD_DIR


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, sort_keys=True))
    os.replace(tmp, path)


def load_spec(path: str | Path) -> StoreSpec | None:
    """The spec of an unfinished build at ``path``, or None if there is none."""
    f = _build_dir(Path(path)) / "spec.json"
    if not f.exists():
        return None
    d = json.loads(f.read_text())
    d["chip_size"] = tuple(d["chip_size"])
    return StoreSpec(**d)


def check_store_output(path: str | Path, fingerprint: str | None = None) -> StoreSpec | None:
    """Refuse an output path that holds anything but an unfinished build, checked before a
    build reads its inputs.

    Args:
        path: Output ``.zarr`` directory.
        fingerprint: The build's inputs (:attr:`StoreSpec.fingerprint`); an unfinished build of
            other inputs is refused. ``None`` accepts any unfinished build.

    Returns:
        The unfinished build's spec, or None when nothing is at ``path``.

    Raises:
        StoreError: ``path`` holds something else, a finished store, or an unfinished build of
            other inputs.
    """
    path = Path(path)
    if not path.exists():
        return None
    old = load_spec(path)
    if old is None:
        raise StoreError("output already exists", path, "choose a new path or pass --overwrite")
    if fingerprint is not None and old.fingerprint != fingerprint:
        raise StoreError("holds an unfinished build of different inputs", path,
                         "delete it or pass --overwrite")
    return old


def create_store(path: str | Path, spec: StoreSpec, *, resume: bool = True) -> bool:
    """Create an empty store for ``spec``, or recognise an unfinished build of the same spec.

    Args:
        path: Output ``.zarr`` directory.
        spec: The build's description.
        resume: Accept an unfinished build with the same fingerprint.

    Returns:
        True if a new store was created, False if an unfinished one is resumed.

    Raises:
        StoreError: The path holds something else, a finished store, or is not writable.
        DiskFullError: The file system cannot hold the chips still to write, even compressed
            (:func:`geofm.io.space.check_free_space`), or fills up while the arrays are laid out.
    """
    path = Path(path)
    if check_store_output(path, spec.fingerprint) is not None:
        if not resume:
            raise StoreError("holds an unfinished build", path, "delete it or pass --overwrite")
        todo = set(range(spec.num_regions)) - completed_regions(path)
        check_free_space(path, spec.region_bytes(todo), f"the {len(todo)} regions left")
        return False
    check_free_space(path, spec.region_bytes(range(spec.num_regions)),
                     f"the store ({spec.num_chips} chips)")
    try:
        path.mkdir(parents=True)
    except OSError as e:
        raise StoreError(f"cannot create the output directory ({e.strerror})", path,
                         "choose a writable location") from None
    with reporting_full_disk(path, spec.region_bytes(range(spec.num_regions))):
        _lay_out(path, spec)
    return True


def _lay_out(path: Path, spec: StoreSpec) -> None:
    """The empty arrays, the group's attributes and the build's spec."""
    root = zarr.open_group(str(path), mode="w", zarr_format=3)
    n, (h, w), c = spec.num_chips, spec.chip_size, len(spec.bands)
    s = spec.shard_chips
    compressor = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")

    def array(name: str, shape: tuple[int, ...], dtype: str, fill: Any, sharded: bool) -> None:
        chunks = (1, *shape[1:]) if sharded else (s, *shape[1:])
        root.create_array(
            name, shape=shape, dtype=dtype, chunks=chunks,
            shards=(s, *shape[1:]) if sharded else None, compressors=compressor,
            fill_value=fill, dimension_names=DIMS[name],
        )

    array("image", (n, c, h, w), spec.dtype, 0, True)
    if spec.has_label:
        array("label", (n, len(spec.classes)), "uint8", 0, False)
    if spec.has_mask:
        array("mask", (n, h, w), "uint8", MASK_IGNORE, True)
    if spec.has_valid:
        array("valid", (n, c, h, w), "bool", False, True)
    if spec.target_names:
        array("target", (n, len(spec.target_names), h, w), "float32", float("nan"), True)
    root.attrs[ATTRS_KEY] = {"schema_version": SCHEMA_VERSION, "complete": False}
    _build_dir(path).mkdir()
    _write_json_atomic(_build_dir(path) / "spec.json", asdict(spec))


def completed_regions(path: str | Path) -> set[int]:
    """Regions of an unfinished build whose marker exists."""
    d = _build_dir(Path(path))
    return {int(f.stem.split("-")[1]) for f in d.glob("region-*.json")}


def write_region(
    path: str | Path,
    region: int,
    image: np.ndarray,
    rows: pd.DataFrame,
    *,
    label: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    target: np.ndarray | None = None,
) -> None:
    """Write one shard-aligned region of chips, then mark it done.

    Args:
        path: The store.
        region: Region number; chips ``region*shard_chips`` onward.
        image: ``[n, C, H, W]`` pixels of the region's chips.
        rows: One chip-table row per chip, in the same order (GeoDataFrame, EPSG:4326).
        label: ``[n, K]`` multi-hot labels.
        mask: ``[n, H, W]`` class indices.
        valid: ``[n, C, H, W]`` validity.
        target: ``[n, T, H, W]`` regression targets.

    Raises:
        DiskFullError: The file system filled up; the region gets no marker, so a rerun
            rewrites it.
    """
    path = Path(path)
    spec = load_spec(path)
    if spec is None:
        raise StoreError("is not an unfinished build", path)
    sl = spec.region_slice(region)
    if image.shape[0] != sl.stop - sl.start or len(rows) != image.shape[0]:
        raise ValueError(f"region {region} needs {sl.stop - sl.start} chips, got {image.shape[0]}")
    left = set(range(spec.num_regions)) - completed_regions(path)
    with reporting_full_disk(path, spec.region_bytes(left | {region})):
        _write_region(path, spec, region, sl, image, rows,
                      {"label": label, "mask": mask, "valid": valid, "target": target})


def _write_region(path: Path, spec: StoreSpec, region: int, sl: slice, image: np.ndarray,
                  rows: pd.DataFrame, extra: dict[str, np.ndarray | None]) -> None:
    root = zarr.open_group(str(path), mode="r+")
    cast(zarr.Array, root["image"])[sl] = image
    for name, arr in extra.items():
        if arr is not None:
            cast(zarr.Array, root[name])[sl] = arr
    stats = BandStats.of(image, extra["valid"])
    d = _build_dir(path)
    rows_path = d / f"rows-{region:06d}.parquet"
    tmp = rows_path.with_suffix(".tmp")
    gpd.GeoDataFrame(rows, geometry="geometry", crs="EPSG:4326").to_parquet(tmp, index=False)
    os.replace(tmp, rows_path)
    _write_json_atomic(d / f"region-{region:06d}.json", {"stats": stats.to_json()})


def finalize_store(path: str | Path, extra_attrs: dict[str, Any] | None = None) -> None:
    """Merge the regions' statistics and chip rows, and mark the store complete.

    Raises:
        StoreError: Some region has not been written.
        DiskFullError: The file system filled up (the store stays unfinished).
    """
    path = Path(path)
    spec = load_spec(path)
    if spec is None:
        raise StoreError("is not an unfinished build", path)
    done = completed_regions(path)
    missing = sorted(set(range(spec.num_regions)) - done)
    if missing:
        raise StoreError(f"{len(missing)} regions are not written yet (first: {missing[0]})", path,
                         "rerun the build to complete it")
    with reporting_full_disk(path):
        _finalize(path, spec, extra_attrs)


def _finalize(path: Path, spec: StoreSpec, extra_attrs: dict[str, Any] | None) -> None:
    d = _build_dir(path)
    stats = BandStats.empty(len(spec.bands))
    frames = []
    for r in range(spec.num_regions):
        part = json.loads((d / f"region-{r:06d}.json").read_text())
        stats = stats.merge(BandStats.from_json(part["stats"]))
        frames.append(gpd.read_parquet(d / f"rows-{r:06d}.parquet"))
    chips = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry",
                             crs="EPSG:4326")
    chips.insert(0, "index", np.arange(len(chips), dtype=np.int64))
    tmp = path / (CHIP_TABLE + ".tmp")
    chips.to_parquet(tmp, index=False)
    os.replace(tmp, path / CHIP_TABLE)
    attrs: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "num_chips": spec.num_chips,
        "bands": spec.bands,
        "band_info": bands_info(spec.bands),
        "chip_size": list(spec.chip_size),
        "dtype": spec.dtype,
        "gsd_m": spec.gsd_m,
        "classes": spec.classes,
        "class_colors": spec.class_colors,
        "target_names": spec.target_names,
        "mask_ignore_index": MASK_IGNORE,
        "stats": stats.to_json(),
        "split": {"method": "none", "params": {}},
        "provenance": {
            **spec.provenance,
            "geofm_version": __version__,
            "fingerprint": spec.fingerprint,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        },
    }
    if extra_attrs:
        attrs.update(extra_attrs)
    root = zarr.open_group(str(path), mode="r+")
    root.attrs[ATTRS_KEY] = attrs
    shutil.rmtree(d)
