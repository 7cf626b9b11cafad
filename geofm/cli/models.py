"""``geofm export``: models for other tools."""

from __future__ import annotations

import argparse

from geofm.cli.help import Commands, examples

__all__ = ["add_export"]


def _export(a: argparse.Namespace) -> int:
    from geofm.export import export_onnx, raster_band_order, read_metadata

    if a.weights is not None:
        from geofm.published.resolve import refuse_headless

        refuse_headless(a.model, "export")
    out = export_onnx(a.model, a.onnx, tile_size=a.tile_size, opset=a.opset,
                      overwrite=a.overwrite, bands=a.bands)
    meta = read_metadata(out)
    print(f"wrote {out} (QGIS Deepness plugin metadata included)")
    print(f"raster bands, in this order: {raster_band_order(meta)}")
    if meta.get("geofm_bands_missing"):
        print(f"model bands the rasters lack: {', '.join(meta['geofm_bands_missing'])}")
    return 0


def add_export(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm export``."""
    x = sub.add_parser("export", help="export a finetuned model to ONNX for QGIS (Deepness)",
                       description="ONNX model taking raw pixels (normalisation inside), with "
                       "the metadata the Deepness QGIS plugin reads.",
                       epilog=examples(
                           "geofm export runs/finetune/finetune.safetensors --onnx "
                           "landcover.onnx",
                           "geofm export finetune.safetensors --onnx model.onnx --tile-size 256"),
                       formatter_class=fmt)
    x.add_argument("model", help="finetuned checkpoint (finetune.safetensors)")
    x.add_argument("--onnx", required=True, help="output .onnx path")
    x.add_argument("--tile-size", type=int, help="tile side in px (default: the model's)")
    x.add_argument("--bands", help="the bands of the rasters it will run on, in their order "
                   "(B01,B02,... or a set: s2, s2l2a, ...); Deepness feeds bands by position "
                   "(default: the checkpoint's bands)")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output")
    x.add_argument("--weights", help="a published model's weights file (refused: export needs "
                   "a task head; finetune it first; default: none)")
    x.set_defaults(func=_export)


def _models(a: argparse.Namespace) -> int:
    from geofm.published.resolve import models_text

    print(models_text(verbose=a.verbose))
    return 0


def add_models(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm models``."""
    mo = sub.add_parser("models", help="list the published encoders geofm loads (name, bands, "
                        "units, licence, where the weights are)",
                        description="The published foundation models geofm loads through its "
                        "band contract: each one's bands, the input units its weights expect, "
                        "licence and how to get the weights (--init NAME --weights FILE, or "
                        "--init torchgeo:Enum.MEMBER).",
                        epilog=examples(
                            "geofm models                 # one line each",
                            "geofm models -v              # with sources, URLs and checks",
                            "geofm finetune --init dofa_base --weights "
                            "dofa_base_patch16_224-a0275954.pth --data reben.zarr"),
                        formatter_class=fmt)
    mo.add_argument("-v", "--verbose", action="store_true",
                    help="also each model's source, weights URL and what geofm checks")
    mo.set_defaults(func=_models)
