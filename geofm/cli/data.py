"""``geofm build``, ``split``, ``info``, ``validate`` and ``caption``: chip stores."""

from __future__ import annotations

import argparse
import sys

from geofm.cli.help import Commands, default_of, examples  # noqa: F401

__all__ = ["add_build", "add_caption", "add_info", "add_split", "add_validate"]


def _ratios(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("give three comma-separated numbers, e.g. 0.7,0.15,0.15")
    return parts[0], parts[1], parts[2]


def _dates(text: str) -> tuple[str, ...] | None:
    return tuple(text.split(",")) if text else None


def _build_reben(a: argparse.Namespace) -> int:
    from geofm.builders.build import build_store

    out = build_store("reben", a.src, a.out, overwrite=a.overwrite, scheduler=a.scheduler,
                      workers=a.workers, limit=a.limit, progress=not a.quiet)
    print(f"wrote {out}")
    return 0


def _build_modis(a: argparse.Namespace) -> int:
    from geofm.builders.build import build_store

    out = build_store("modis", a.src, a.out, overwrite=a.overwrite, geolocation=a.geolocation,
                      chip=a.chip, split=a.split, block_km=a.block_km, buffer_km=a.buffer_km,
                      ratios=a.ratios, seed=a.seed, time_cutoffs=a.time_cutoffs,
                      scheduler=a.scheduler, workers=a.workers, progress=not a.quiet)
    print(f"wrote {out}")
    return 0


def _build_opticalrs(a: argparse.Namespace) -> int:
    from geofm.builders.build import build_store

    out = build_store("opticalrs", a.manifest, a.out, overwrite=a.overwrite, chip=a.chip,
                      overlap=a.overlap, hash_radius=a.hash_radius, min_size=a.min_size,
                      min_std=a.min_std, max_nodata=a.max_nodata, scheduler=a.scheduler,
                      workers=a.workers, progress=not a.quiet)
    print(f"wrote {out} (report: {out / 'report.md'})")
    return 0


def _split(a: argparse.Namespace) -> int:
    from geofm.curation.split_store import split_store

    counts = split_store(a.store, a.method, seed=a.seed, ratios=a.ratios, block_km=a.block_km,
                         buffer_km=a.buffer_km, column=a.column, vector=a.vector)
    print(f"{a.store}: {a.method} split — " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _info(a: argparse.Namespace) -> int:
    from geofm.curation.describe import store_report

    report = store_report(a.store, a.distance_km, a.map)
    print(report.to_json() if a.json else report.text())
    return 0


def _validate(a: argparse.Namespace) -> int:
    from geofm.io.store import validate_store

    problems = validate_store(a.store, deep=a.deep)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    print(f"{a.store}: ok")
    return 0


def _caption(a: argparse.Namespace) -> int:
    from geofm.curation.captions import caption_store_file

    r = caption_store_file(a.store, seed=a.seed, per_chip=a.per_chip)
    print(f"{a.store}: captioned {r['captioned']} chips ({r['uncaptioned']} without classes), "
          f"{r['per_chip']} per chip, seed {r['seed']}; method: {r['method']}")
    if r["example"]:
        print(f"e.g. {r['example']!r}")
    return 0


def _build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", help="Dask scheduler address, or 'synchronous' "
                   "(default: a local cluster with one worker per core)")
    p.add_argument("--workers", type=int, help="local worker processes (default: CPU count)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_build(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm build reben|modis|opticalrs``."""
    b = sub.add_parser("build", help="build a chip store from a source dataset",
                       description="Build a chip store (Zarr + GeoParquet) from a source "
                       "dataset; 'geofm build SOURCE --help' for each source.",
                       epilog=examples(
                           "geofm build reben datasets/reben_mini outputs/reben_mini.zarr",
                           "geofm build modis /data/MOD021KM out/modis.zarr --geolocation "
                           "/data/MOD03",
                           "geofm build opticalrs datasets/opticalrs_sample/manifest.yaml "
                           "out/rgb.zarr"), formatter_class=fmt)
    bsub = b.add_subparsers(dest="source", metavar="SOURCE", required=True)
    r = bsub.add_parser("reben", help="reBEN / BigEarthNet v2 (Sentinel-1 + Sentinel-2, 14 bands)",
                        description="Build a 14-band s1s2 chip store from a reBEN release.",
                        epilog=examples(
                            "geofm build reben datasets/reben_mini outputs/reben_mini.zarr "
                            "--workers 2",
                            "geofm build reben /data/reBEN out/reben.zarr --scheduler "
                            "tcp://head:8786"), formatter_class=fmt)
    r.add_argument("src", help="reBEN root (holding metadata.parquet)")
    r.add_argument("out", help="output store, e.g. reben.zarr")
    _build_options(r)
    r.add_argument("--limit", type=int, help="build only the first N patches (by patch id; "
                   "default: all)")
    r.set_defaults(func=_build_reben)
    m = bsub.add_parser("modis", help="MODIS L1B 1 km granules → SatVision-TOA's 14 bands",
                        description="Build a 14-band MODIS TOA store (reflectance and brightness "
                        "temperature) from MOD021KM/MYD021KM HDF4 granules.",
                        epilog=examples(
                            "geofm build modis /data/MOD021KM out/modis.zarr --geolocation "
                            "/data/MOD03",
                            "geofm build modis /data/MOD021KM out/modis.zarr --split time "
                            "--time-cutoffs 2023-07-01,2023-10-01"), formatter_class=fmt)
    m.add_argument("src", help="folder of MOD021KM/MYD021KM .hdf granules")
    m.add_argument("out", help="output store, e.g. modis.zarr")
    m.add_argument("--geolocation", help="folder of matching MOD03/MYD03 files (default: the "
                   "granules' own 5 km Latitude/Longitude)")
    m.add_argument("--chip", type=int, default=128, help="chip size in pixels")
    m.add_argument("--split", choices=("blocks", "time"), default="blocks",
                   help="blocks: spatial blocks; time: by acquisition date (--time-cutoffs)")
    m.add_argument("--block-km", type=float, default=512.0, help="block side in km")
    m.add_argument("--buffer-km", type=float, default=0.0,
                   help="drop chips this close to another split's block (km)")
    m.add_argument("--ratios", type=_ratios, default=(0.7, 0.15, 0.15),
                   help="train,validation,test fractions")
    m.add_argument("--seed", type=int, default=0, help="seed of the block assignment")
    m.add_argument("--time-cutoffs", type=_dates,
                   help="two UTC dates START_VAL,START_TEST (needed by --split time; default: "
                   "none)")
    _build_options(m)
    m.set_defaults(func=_build_modis)
    o = bsub.add_parser("opticalrs", help="OpticalRS-13M-style RGB collection from a manifest",
                        description="Build an RGB pretraining store from many image sources: "
                        "exclusion (eval sources and their near-duplicates, blank, tiny, "
                        "mostly-nodata images), slicing, exact and perceptual-hash dedup.",
                        epilog=examples(
                            "geofm build opticalrs datasets/opticalrs_sample/manifest.yaml "
                            "out/rgb.zarr",
                            "geofm build opticalrs manifest.yaml out/rgb.zarr --chip 256 "
                            "--hash-radius 6"), formatter_class=fmt)
    o.add_argument("manifest", help="YAML manifest of sources (see datasets/opticalrs_sample)")
    o.add_argument("out", help="output store, e.g. opticalrs.zarr")
    o.add_argument("--chip", type=int, default=224, help="chip size in px")
    o.add_argument("--overlap", type=int, default=0, help="chip overlap in px")
    o.add_argument("--hash-radius", type=int, default=4,
                   help="near-duplicate Hamming radius on 64-bit pHash")
    o.add_argument("--min-size", type=int, help="smallest image side kept (default: chip/2)")
    o.add_argument("--min-std", type=float, default=2.0,
                   help="images whose pixel standard deviation is below this are dropped as "
                   "near-constant")
    o.add_argument("--max-nodata", type=float, default=0.5,
                   help="images with a larger nodata fraction are dropped")
    _build_options(o)
    o.set_defaults(func=_build_opticalrs)


def add_split(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm split``."""
    s = sub.add_parser("split", help="assign chips to train/validation/test by geography",
                       description="Geography-aware splits, recorded in the store.",
                       epilog=examples(
                           "geofm split outputs/reben_mini.zarr --method reben",
                           "geofm split out/reben.zarr --method blocks --block-km 50 "
                           "--buffer-km 2 --seed 0",
                           "geofm split out/rgb.zarr --method polygons --vector regions.gpkg"),
                       formatter_class=fmt)
    s.add_argument("store", help="chip store to split (rewritten in place)")
    s.add_argument("--method", choices=("reben", "blocks", "region", "polygons"), required=True,
                   help="reben: S2 tile-border rule; blocks: spatial blocks with a buffer; "
                   "region: whole values of --column; polygons: split column of --vector")
    s.add_argument("--seed", type=int, default=0, help="seed of the block/region assignment")
    s.add_argument("--ratios", type=_ratios, default=(0.7, 0.15, 0.15),
                   help="train,validation,test fractions")
    s.add_argument("--block-km", type=float, default=50.0, help="block side in km (blocks)")
    s.add_argument("--buffer-km", type=float, default=0.0,
                   help="drop chips this close to another split's block (km)")
    s.add_argument("--column", default="country", help="chip-table column (region)")
    s.add_argument("--vector", help="vector file with polygons and a 'split' column (needed "
                   "by --method polygons; default: none)")
    s.set_defaults(func=_split)


def add_info(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm info``."""
    i = sub.add_parser("info", help="describe a store and audit its split for leakage",
                       description="Bands and their statistics, classes, split counts, and the "
                       "distance between chips of different splits.",
                       epilog=examples(
                           "geofm info outputs/reben_mini.zarr",
                           "geofm info out/reben.zarr --distance-km 2 --map split.png",
                           "geofm info out/reben.zarr --json > reben.json"),
                       formatter_class=fmt)
    i.add_argument("store", help="chip store")
    i.add_argument("--distance-km", type=float, default=2.0,
                   help="count chips within this distance of another split (km)")
    i.add_argument("--map", help="write a PNG map of the split here (default: no map)")
    i.add_argument("--json", action="store_true", help="print everything as JSON")
    i.set_defaults(func=_info)


def add_validate(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm validate``."""
    v = sub.add_parser("validate", help="check a store's integrity",
                       description="Check a store's metadata, arrays and chip table; exit 1 "
                       "with one line per problem.",
                       epilog=examples("geofm validate outputs/reben_mini.zarr",
                                        "geofm validate out/reben.zarr --deep"),
                       formatter_class=fmt)
    v.add_argument("store", help="chip store")
    v.add_argument("--deep", action="store_true", help="also decode every chip")
    v.set_defaults(func=_validate)


def add_caption(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm caption``."""
    c = sub.add_parser("caption", help="caption a labelled store for image–text alignment",
                       description="Write captions made from each chip's labels (ordered by "
                       "area, and Mask-to-Box captions, where reference maps exist) into the "
                       "store's chip table, with the seed and templates in its attributes.",
                       epilog=examples(
                           "geofm caption outputs/reben_mini.zarr --seed 0 --per-chip 3"),
                       formatter_class=fmt)
    c.add_argument("store", help="labelled chip store (captions are added to it)")
    c.add_argument("--seed", type=int, default=0, help="seed of the caption templates")
    c.add_argument("--per-chip", type=int, default=1, help="captions per chip")
    c.set_defaults(func=_caption)
