"""``geofm export`` and ``models``: models for other tools, and the published ones geofm
loads."""

from __future__ import annotations

import argparse

from geofm.cli.help import Commands, add_model_argument, examples, model_ref

__all__ = ["add_export"]


def _export(a: argparse.Namespace) -> int:
    from geofm.export import export_onnx, raster_band_order, read_metadata

    model = model_ref(a, "export")
    out = export_onnx(model, a.onnx, tile_size=a.tile_size, opset=a.opset,
                      overwrite=a.overwrite, bands=a.bands, embed=a.embed or a.init is not None,
                      weights=a.weights)
    meta = read_metadata(out)
    if meta.get("geofm_output") == "embeddings":
        side = meta["tile_size"] // meta["geofm_patch_size"]
        print(f"wrote {out}: embeddings [N, {meta['geofm_embed_dim']}, {side}, {side}] of "
              f"{meta['tile_size']} px tiles (for onnxruntime; Deepness has no model type for "
              "embeddings)")
    else:
        print(f"wrote {out} (QGIS Deepness plugin metadata included)")
    print(f"raster bands, in this order: {raster_band_order(meta)}")
    if meta.get("geofm_bands_missing"):
        print(f"model bands the rasters lack: {', '.join(meta['geofm_bands_missing'])}")
    return 0


def add_export(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm export``."""
    x = sub.add_parser("export", help="export a finetuned model to ONNX for QGIS (Deepness), "
                       "or an encoder's embeddings",
                       description="ONNX model taking raw pixels (normalisation inside). A "
                       "finetuned model gives class scores, with the metadata the Deepness "
                       "QGIS plugin reads; an encoder (--init REF, or MODEL --embed) gives its "
                       "patch embeddings [N, D, T/p, T/p] as 'geofm predict --embed' writes "
                       "them, for onnxruntime (Deepness has no model type for embeddings).",
                       epilog=examples(
                           "geofm export runs/finetune/finetune.safetensors --onnx "
                           "landcover.onnx",
                           "geofm export finetune.safetensors --onnx model.onnx --tile-size 256",
                           "geofm export --init dofa_base --weights "
                           "dofa_base_patch16_224-a0275954.pth --onnx dofa.onnx",
                           "geofm export runs/pretrain/pretrain.safetensors --embed --onnx "
                           "encoder.onnx --bands s2"),
                       formatter_class=fmt)
    add_model_argument(x, "finetuned checkpoint (finetune.safetensors); with --embed any geofm "
                       "checkpoint", "an encoder whose embeddings to export: a geofm "
                       "checkpoint, a published model's name (dofa_base) or "
                       "torchgeo:Enum.MEMBER (implies --embed; default: MODEL)")
    x.add_argument("--onnx", required=True, help="output .onnx path")
    x.add_argument("--embed", action="store_true", help="export MODEL's encoder: patch "
                   "embeddings instead of class scores")
    x.add_argument("--tile-size", type=int, help="tile side in px (default: the model's)")
    x.add_argument("--bands", help="the bands of the rasters it will run on, in their order "
                   "(B01,B02,... or a set: s2, s2l2a, ...); Deepness feeds bands by position "
                   "(default: the checkpoint's bands)")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    x.add_argument("--overwrite", action="store_true", help="replace an existing output")
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
