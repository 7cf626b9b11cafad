"""OpticalRS manifests: sources, build parameters, image listing and the build fingerprint."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from geofm.bands import BANDS
from geofm.errors import BuildError
from geofm.io.schema import SHARD_CHIPS

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".jp2", ".bmp", ".webp")
ROLES = ("pretrain", "eval")
REASONS = ("unreadable", "no_rgb", "too_small", "mostly_nodata", "near_constant",
           "eval_duplicate", "exact_duplicate", "near_duplicate")
CHIP_REASONS = ("mostly_nodata", "near_constant")
WHOLE_PIXELS = 2048 * 2048
PREVIEW_PX = 512
STRIP_ROWS = 256
PERCENTILES = (2.0, 98.0)
SCAN_VERSION = 1
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SOURCE_KEYS = {"name", "path", "role", "licence", "license", "gsd_m", "bands", "sensor",
                "stretch"}
_RGB = ("red", "green", "blue")


@dataclass(frozen=True)
class Source:
    """One manifest entry (its files are listed separately).

    Attributes:
        name: Unique source name, the chip table's ``source``.
        role: ``pretrain`` or ``eval``.
        licence: Licence of the source's images.
        gsd_m: Metres per pixel, if known.
        bands: Red, green, blue as band descriptions or 1-based indices, if given.
        sensor: Band-registry sensor naming the bands, if given.
        stretch: Fixed ``(lo, hi)`` range for images that are not 8-bit; None: percentiles.
    """

    name: str
    role: str
    licence: str
    gsd_m: float | None = None
    bands: tuple[str | int, ...] | None = None
    sensor: str | None = None
    stretch: tuple[float, float] | None = None


@dataclass(frozen=True)
class Params:
    """The build's settings (all of them enter the fingerprint).

    Attributes:
        chip: Chip side in pixels.
        overlap: Pixels shared by neighbouring chips.
        hash_radius: Largest perceptual-hash distance (bits of 64) of near duplicates.
        min_size: Shorter image side below which pretrain images are too small.
        min_std: Largest per-band standard deviation (0–255) below which content is constant.
        max_nodata: Nodata fraction above which an image or chip is left out.
        batch_images: Images per scan task.
        shard_chips: Chips per shard (and per write task).
    """

    chip: int = 224
    overlap: int = 0
    hash_radius: int = 4
    min_size: int = 112
    min_std: float = 2.0
    max_nodata: float = 0.5
    batch_images: int = 256
    shard_chips: int = SHARD_CHIPS

    def check(self) -> None:
        """Raise :class:`BuildError` for settings that make no sense."""
        problems = [
            (self.chip < 8, f"chip must be at least 8 px, got {self.chip}"),
            (not 0 <= self.overlap < self.chip,
             f"overlap must be in 0..{self.chip - 1} px, got {self.overlap}"),
            (not 0 <= self.hash_radius <= 16, f"hash radius must be in 0..16, got "
                                              f"{self.hash_radius}"),
            (not 1 <= self.min_size <= self.chip,
             f"minimum size must be in 1..{self.chip} px, got {self.min_size}"),
            (self.min_std < 0, f"minimum standard deviation must be >= 0, got {self.min_std}"),
            (not 0 <= self.max_nodata <= 1, f"nodata fraction must be in 0..1, got "
                                            f"{self.max_nodata}"),
            (self.batch_images < 1 or self.shard_chips < 1, "batch and shard sizes must be >= 1"),
        ]
        for bad, message in problems:
            if bad:
                raise BuildError(message)


# ---------------------------------------------------------------------------------------------
# Manifest


def _manifest_error(manifest: Path, message: str, hint: str | None = None) -> BuildError:
    return BuildError(message, manifest, hint or "see geofm.builders.opticalrs for the format")


def _parse_bands(value: Any, where: str, manifest: Path) -> tuple[str | int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 3 or \
            not all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        raise _manifest_error(manifest, f"{where}: 'bands' must list red, green and blue as "
                                        "band descriptions or 1-based indices")
    return tuple(value)


def _parse_stretch(value: Any, where: str, manifest: Path) -> tuple[float, float] | None:
    if value is None or value == "percentile":
        return None
    ok = isinstance(value, list) and len(value) == 2 and \
        all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    if not ok or value[1] <= value[0]:
        raise _manifest_error(manifest, f"{where}: 'stretch' must be 'percentile' or [lo, hi] "
                                        "with lo < hi")
    return float(value[0]), float(value[1])


def _parse_source(entry: Any, i: int, manifest: Path) -> tuple[Source, Any]:
    """A manifest entry as a :class:`Source` plus its raw ``path`` value."""
    where = f"source {i + 1}"
    if not isinstance(entry, dict):
        raise _manifest_error(manifest, f"{where} is not a mapping")
    unknown = sorted(set(entry) - _SOURCE_KEYS)
    if unknown:
        raise _manifest_error(manifest, f"{where}: unknown keys {unknown} (allowed: "
                                        f"{sorted(_SOURCE_KEYS - {'license'})})")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise _manifest_error(manifest, f"{where}: 'name' must be letters, digits, '_', '.', '-'")
    where = f"source {name!r}"
    for key in ("path", "role"):
        if not entry.get(key):
            raise _manifest_error(manifest, f"{where} has no '{key}'")
    if entry["role"] not in ROLES:
        raise _manifest_error(manifest, f"{where}: role must be one of {list(ROLES)}, "
                                        f"got {entry['role']!r}")
    licence = entry.get("licence", entry.get("license"))
    if not isinstance(licence, str) or not licence.strip():
        raise _manifest_error(manifest, f"{where} has no 'licence'",
                              "name the licence under which the images are used")
    gsd = entry.get("gsd_m")
    if gsd is not None and (isinstance(gsd, bool) or not isinstance(gsd, int | float) or gsd <= 0):
        raise _manifest_error(manifest, f"{where}: 'gsd_m' must be a positive number")
    sensor = entry.get("sensor")
    sensors = sorted({b.sensor for b in BANDS.values()})
    if sensor is not None and sensor not in sensors:
        raise _manifest_error(manifest, f"{where}: unknown sensor {sensor!r} (known: {sensors})")
    source = Source(
        name=name, role=entry["role"], licence=licence.strip(),
        gsd_m=float(gsd) if gsd is not None else None,
        bands=_parse_bands(entry.get("bands"), where, manifest), sensor=sensor,
        stretch=_parse_stretch(entry.get("stretch"), where, manifest),
    )
    return source, entry["path"]


def load_manifest(manifest: str | Path) -> list[tuple[Source, Any]]:
    """Read and check a manifest; return each source with its raw ``path`` value.

    Raises:
        BuildError: The manifest is missing, not YAML, empty or malformed.
    """
    path = Path(manifest)
    if not path.exists():
        raise BuildError("manifest not found", path, "pass the path of a YAML manifest")
    if path.is_dir():
        raise BuildError("is a directory, not a manifest", path, "pass the YAML file")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BuildError(f"not valid YAML ({str(e).splitlines()[0]})", path) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BuildError(f"cannot read the manifest ({e})", path) from None
    if doc is None or (isinstance(doc, dict) and not doc.get("sources")):
        raise BuildError("lists no sources", path, "add a 'sources:' list of image collections")
    if not isinstance(doc, dict) or not isinstance(doc["sources"], list):
        raise _manifest_error(path, "must be a mapping with a 'sources' list")
    if set(doc) - {"sources"}:
        raise _manifest_error(path, f"unknown top-level keys {sorted(set(doc) - {'sources'})}")
    sources = [_parse_source(e, i, path) for i, e in enumerate(doc["sources"])]
    names = [s.name for s, _ in sources]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise _manifest_error(path, f"source names used twice: {dupes}")
    if not any(s.role == "pretrain" for s, _ in sources):
        raise _manifest_error(path, "has no 'pretrain' source", "mark at least one role: pretrain")
    return sources


def _walk_images(folder: Path) -> list[Path]:
    found: list[Path] = []
    for parent, dirs, files in os.walk(folder):
        dirs.sort()
        found.extend(Path(parent) / f for f in files if Path(f).suffix.lower() in IMAGE_SUFFIXES)
    return found


def _resolve_entry(entry: str, source: Source, base: Path) -> list[Path]:
    """Files named by one ``path`` entry: a file, a folder or a glob."""
    target = Path(os.path.abspath(base / os.path.expanduser(entry)))
    if glob.has_magic(entry):
        hits = [Path(p) for p in sorted(glob.glob(str(target), recursive=True))]
        files = [p for p in hits if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise BuildError(f"source {source.name!r}: pattern matches no image file", target,
                             f"image files end in {' '.join(IMAGE_SUFFIXES)}")
        return files
    if not target.exists():
        raise BuildError(f"source {source.name!r}: path not found", target,
                         "fix 'path' in the manifest")
    return _walk_images(target) if target.is_dir() else [target]


def list_images(manifest: str | Path) -> tuple[list[Source], pd.DataFrame]:
    """Check the manifest and list every source's images in build order.

    Returns:
        The sources and one row per image (``source``, ``relpath``, ``path``, ``size``,
        ``mtime_ns``), sources in manifest order, paths sorted within each.

    Raises:
        BuildError: A manifest problem, a path that does not exist, a source without images.
    """
    path = Path(manifest)
    base = Path(os.path.abspath(path.parent))
    sources, frames = [], []
    for source, raw in load_manifest(path):
        entries = [raw] if isinstance(raw, str) else raw
        if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
            raise _manifest_error(path, f"source {source.name!r}: 'path' must be a path or a list "
                                        "of paths")
        files = list(dict.fromkeys(f for e in entries for f in _resolve_entry(e, source, base)))
        if not files:
            raise BuildError(f"source {source.name!r} holds no image files", base / entries[0],
                             f"image files end in {' '.join(IMAGE_SUFFIXES)}")
        first = Path(os.path.abspath(base / os.path.expanduser(entries[0])))
        single_folder = len(entries) == 1 and first.is_dir()
        root = first if single_folder else Path(os.path.commonpath([str(f.parent) for f in files]))
        rows = []
        for f in files:
            st = f.stat()
            rows.append((source.name, f.relative_to(root).as_posix(), str(f), st.st_size,
                         st.st_mtime_ns))
        frame = pd.DataFrame(rows, columns=["source", "relpath", "path", "size", "mtime_ns"])
        frames.append(frame.sort_values("relpath", kind="stable"))
        sources.append(source)
    table = pd.concat(frames, ignore_index=True)
    return sources, table


def fingerprint(sources: list[Source], files: pd.DataFrame, params: Params) -> str:
    """Hash of the sources, every file's name, size and mtime, and the build's settings."""
    h = hashlib.sha256()
    h.update(json.dumps({"builder": "opticalrs", "version": SCAN_VERSION, "params": asdict(params),
                         "sources": [asdict(s) for s in sources]}, sort_keys=True).encode())
    for row in zip(files["source"], files["path"], files["size"], files["mtime_ns"]):
        h.update("\0".join(map(str, row)).encode() + b"\n")
    return h.hexdigest()[:16]


