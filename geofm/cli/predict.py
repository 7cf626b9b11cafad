"""``geofm predict`` and ``query``: maps from rasters."""

from __future__ import annotations

import argparse

from geofm.cli.help import Commands, add_model_argument, examples, model_ref

__all__ = ["add_predict", "add_query"]


def _predict(a: argparse.Namespace) -> int:
    from geofm.predict import predict_raster

    model = model_ref(a, "predict", "--embed")
    r = predict_raster(model, a.inputs, a.output, bands=a.bands, probabilities=a.probabilities,
                       embed=a.embed, vector=a.vector, min_area=a.min_area, tile=a.tile,
                       overlap=a.overlap, batch_size=a.batch_size,
                       resample_to_model_gsd=a.resample_to_model_gsd, overwrite=a.overwrite,
                       device=a.device, gpus=a.devices, progress=not a.quiet, strict=a.strict,
                       weights=a.weights, data_units=a.data_units)
    print(r["message"])
    extra = [r[k] for k in ("probabilities", "vector") if r.get(k)]
    print(f"wrote {a.output}" + (f" (+ {', '.join(extra)})" if extra else "")
          + f" in {r['seconds']:.1f} s, {r['pixels_per_second']:,.0f} px/s")
    return 0


def _query(a: argparse.Namespace) -> int:
    from geofm.predict import query_raster
    from geofm.predict.query import query_arguments

    inputs, texts = query_arguments(a.items, a.texts or [])
    r = query_raster(a.model, inputs, texts, a.output, bands=a.bands, tile=a.tile,
                     overlap=a.overlap, batch_size=a.batch_size,
                     resample_to_model_gsd=a.resample_to_model_gsd, overwrite=a.overwrite,
                     device=a.device, progress=not a.quiet, strict=a.strict)
    print(r["message"])
    print("\n".join(f"similarity to {text.strip()!r}: {low:.3f} to {high:.3f}"
                    for text, (low, high) in zip(texts, r["ranges"])))
    print(f"wrote {a.output} (+ {r['qml']}) in {r['seconds']:.1f} s, "
          f"{r['pixels_per_second']:,.0f} px/s")
    return 0


def add_predict(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm predict``."""
    pr = sub.add_parser(
        "predict", help="predict a map from a GeoTIFF (Cloud-Optimized GeoTIFF out)",
        description="Streaming tiled prediction over rasters of any size. Bands are matched by "
        "name, never by position: the file's band descriptions (B02, red, S2.B04), or --bands. "
        "Several files are stacked in the order given on the finest grid; a single-band file "
        "without a description is named by its file name without the extension (B04.tif, "
        "red.tif), so name such files after their band or pass --bands. Normalisation comes "
        "from the checkpoint, and the output is a COG with the input's grid, a colour table, "
        "class names and a QGIS .qml style, written under a temporary name and renamed when "
        "complete.",
        epilog=examples(
            "geofm predict runs/finetune/finetune.safetensors "
            "datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif -o landcover.tif",
            "geofm predict finetune.safetensors B02.tif B03.tif B04.tif B08.tif -o map.tif",
            "geofm predict finetune.safetensors scene.tif --bands B02,B03,B04,B08 -o map.tif "
            "--vector map.gpkg --min-area 500",
            "geofm predict pretrain.safetensors scene.tif --embed -o embeddings.tif",
            "geofm predict --embed --init dofa_base --weights dofa_base_patch16_224-a0275954.pth "
            "scene.tif -o embeddings.tif"),
        formatter_class=fmt)
    add_model_argument(pr, "finetuned (or, with --embed, any geofm) checkpoint",
                       "with --embed: the encoder to run, a geofm checkpoint, a published "
                       "model's name (dofa_base) or torchgeo:Enum.MEMBER (default: MODEL)",
                       inputs="GeoTIFF(s) or a VRT; several files are stacked band after "
                       "band")
    pr.add_argument("-o", "--output", required=True, help="output .tif")
    pr.add_argument("--bands", help="the input's bands in order: names (B02,B03,...) or a set "
                    "(s2, s2l2a, l8, ...) (default: the band descriptions / file names)")
    pr.add_argument("--probabilities", action="store_true",
                    help="also write per-class probabilities (uint8, scale 1/255)")
    pr.add_argument("--embed", action="store_true", help="embedding raster at patch resolution")
    pr.add_argument("--vector", help="also write class polygons to this GeoPackage (default: "
                    "no vectors)")
    pr.add_argument("--min-area", type=float, default=0.0,
                    help="drop polygons smaller than this, in squared CRS units (m² in UTM)")
    pr.add_argument("--tile", type=int, help="tile side in px (default: the model's)")
    pr.add_argument("--overlap", type=int, help="tile overlap in px (default: a quarter tile)")
    pr.add_argument("--batch-size", type=int, default=8, help="tiles per model call")
    pr.add_argument("--resample-to-model-gsd", action="store_true",
                    help="warp the input to the model's pixel size first")
    pr.add_argument("--device", default="cpu",
                    help="cpu, cuda, cuda:1, or several: cuda:0,cuda:1 (one model per device)")
    pr.add_argument("--devices", type=int, help="use the first N GPUs, one model each "
                    "(default: --device)")
    pr.add_argument("--strict", action="store_true", help="refuse an input at another "
                    "resolution or processing level (L1C/L2A) than the model's, instead of "
                    "warning")
    pr.add_argument("--overwrite", action="store_true", help="replace an existing output")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.add_argument("--data-units", choices=("native", "physical"), default="native",
                    help="what the input holds: the products' stored numbers (native: S2 "
                    "reflectance × 10,000, Landsat DN) or physical values (reflectance 0–1, dB, "
                    "K); converted for the model either way, refused if the values disagree")
    pr.set_defaults(func=_predict)


def add_query(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm query``."""
    q = sub.add_parser(
        "query", help="map where a GeoTIFF looks like a text (similarity COG out)",
        description="Text-to-map query with an aligned image-text checkpoint: the cosine "
        "similarity of every patch with the text, streamed tile by tile like 'geofm predict "
        "--embed', written as a float32 COG at patch resolution (input CRS, one band per "
        "text) with a QGIS .qml colour ramp. After the model come the input files (existing "
        "files, or names ending in .tif/.tiff/.vrt/.jp2; several are stacked as in 'geofm "
        "predict'), then the texts; --text adds a text explicitly (e.g. one that is also a "
        "file name).",
        epilog=examples(
            'geofm query runs/align/align.safetensors scene.tif "flooded fields" '
            "-o similarity.tif",
            'geofm query align.safetensors B02.tif B03.tif B04.tif B08.tif "salt marsh" '
            '"arable land" -o similarity.tif',
            'geofm query align.safetensors scene.tif --text "forest" --text "water" '
            "-o similarity.tif"), formatter_class=fmt)
    q.add_argument("model", help="aligned checkpoint (geofm align)")
    q.add_argument("items", nargs="+", metavar="INPUT_OR_TEXT",
                   help="input raster(s), then query text(s), one output band per text")
    q.add_argument("--text", action="append", dest="texts", metavar="TEXT",
                   help="a query text, repeatable (default: the positional texts)")
    q.add_argument("-o", "--output", required=True, help="output .tif")
    q.add_argument("--bands", help="the input's bands in order: names (B02,B03,...) or a set "
                   "(s2, s2l2a, l8, ...) (default: the band descriptions / file names)")
    q.add_argument("--tile", type=int, help="tile side in px (default: the model's)")
    q.add_argument("--overlap", type=int, help="tile overlap in px, a multiple of the patch "
                   "(default: a quarter tile)")
    q.add_argument("--batch-size", type=int, default=8, help="tiles per model call")
    q.add_argument("--resample-to-model-gsd", action="store_true",
                   help="warp the input to the model's pixel size first")
    q.add_argument("--device", default="cpu",
                   help="cpu, cuda, cuda:1, or several: cuda:0,cuda:1 (one model per device)")
    q.add_argument("--strict", action="store_true", help="refuse an input at another "
                   "resolution or processing level (L1C/L2A) than the model's, instead of "
                   "warning")
    q.add_argument("--overwrite", action="store_true", help="replace an existing output")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=_query)
