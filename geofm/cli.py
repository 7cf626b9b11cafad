"""The ``geofm`` command: a thin shell over the Python API.

Every user error is a :class:`~geofm.errors.GeofmError`, printed as one line on stderr with a
non-zero exit and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

EXAMPLES = """examples:
  geofm build reben /data/reBEN out/reben.zarr           # all cores, local Dask cluster
  geofm build reben /data/reBEN out/reben.zarr --scheduler tcp://head:8786
  geofm split out/reben.zarr --method blocks --block-km 50 --buffer-km 2 --seed 0
  geofm info out/reben.zarr --distance-km 2 --map split.png
  geofm pretrain --bands 14                               # embedded sample, small ChannelViT
  geofm pretrain --data reben.zarr --data modis.zarr      # one ChannelViT, two sensors
  geofm plot runs/pretrain                                # loss / lr / probe curves to a PNG
  geofm predict runs/finetune/finetune.safetensors scene.tif -o landcover.tif

'geofm COMMAND --help' explains each command's options, with examples.
"""


class HelpFormatter(argparse.HelpFormatter):
    """Wraps descriptions but keeps the examples' layout, and shows each option's default after
    its help, except where the help already states it or there is none to show (a switch, an
    unset optional value)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text or default is None or default is False
                or default == argparse.SUPPRESS
                or action.required or not action.option_strings):
            return text
        if isinstance(default, tuple | list):
            default = ",".join(str(v) for v in default)
        return f"{text} (default: {default})"


def _examples(*lines: str) -> str:
    """An epilog listing example commands."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def _cfg(defaults: dict, dotted: str) -> str:
    """A run config's default value, as the help shows it ("default: 120")."""
    node: object = defaults
    for key in dotted.split("."):
        node = node[key]  # type: ignore[index]
    return f"default: {'from the config' if node is None else node}"



def _ratios(text: str) -> tuple[float, float, float]:
    parts = [float(x) for x in text.split(",")]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("give three comma-separated numbers, e.g. 0.7,0.15,0.15")
    return parts[0], parts[1], parts[2]


def _cmd_build_reben(a: argparse.Namespace) -> int:
    from geofm.builders.reben import build_reben

    _prepare_output(Path(a.out), a.overwrite)
    out = build_reben(a.src, a.out, scheduler=a.scheduler, workers=a.workers, limit=a.limit,
                      progress=not a.quiet)
    print(f"wrote {out}")
    return 0


def _cmd_build_modis(a: argparse.Namespace) -> int:
    from geofm.builders.modis import build_modis

    _prepare_output(Path(a.out), a.overwrite)
    cutoffs = tuple(a.time_cutoffs.split(",")) if a.time_cutoffs else None
    out = build_modis(a.src, a.out, geolocation=a.geolocation, chip=a.chip, split=a.split,
                      block_km=a.block_km, buffer_km=a.buffer_km, ratios=a.ratios, seed=a.seed,
                      time_cutoffs=cutoffs, scheduler=a.scheduler, workers=a.workers,
                      progress=not a.quiet)
    print(f"wrote {out}")
    return 0


def _cmd_build_opticalrs(a: argparse.Namespace) -> int:
    import shutil

    from geofm.builders.opticalrs import build_opticalrs

    scan = Path(str(a.out) + ".scan")
    if a.overwrite and scan.exists():
        shutil.rmtree(scan)
    _prepare_output(Path(a.out), a.overwrite)
    out = build_opticalrs(a.manifest, a.out, chip=a.chip, overlap=a.overlap,
                          hash_radius=a.hash_radius, min_size=a.min_size, min_std=a.min_std,
                          max_nodata=a.max_nodata, scheduler=a.scheduler, workers=a.workers,
                          progress=not a.quiet)
    from geofm.builders.opticalrs_report import unreadable_note

    note = unreadable_note(json.loads((Path(out) / "report.json").read_text()))
    if note:
        print(f"geofm: warning: {note}", file=sys.stderr)
    print(f"wrote {out} (report: {Path(out) / 'report.md'})")
    return 0


def _prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse or clear an existing output; an unfinished build of the same inputs resumes."""
    import shutil

    from geofm.io.writer import load_spec

    if out.exists() and overwrite:
        shutil.rmtree(out)
    elif out.exists() and load_spec(out) is None:
        from geofm.errors import StoreError

        raise StoreError("output already exists", out, "choose a new path or pass --overwrite")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        from geofm.errors import StoreError

        raise StoreError("output directory is not writable", parent, "choose a writable location")


def _cmd_split(a: argparse.Namespace) -> int:
    from geofm.curation.split_store import split_store
    from geofm.io.store import open_store

    store = open_store(a.store)
    counts = split_store(store, a.method, seed=a.seed, ratios=a.ratios, block_km=a.block_km,
                         buffer_km=a.buffer_km, column=a.column, vector=a.vector)
    print(f"{a.store}: {a.method} split — " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from geofm.curation.split_store import audit_store
    from geofm.io.store import open_store

    store = open_store(a.store)
    audit = audit_store(store, a.distance_km, a.map)
    if a.json:
        print(json.dumps({"attrs": store.attrs, "audit": audit}, indent=2, default=str))
        return 0
    at = store.attrs
    print(f"store      {store.path}")
    print(f"chips      {len(store)} of {store.chip_size[0]}×{store.chip_size[1]} px, "
          f"{at.get('gsd_m')} m, dtype {at['dtype']}, arrays {', '.join(store.arrays)}")
    print(f"builder    {at['provenance'].get('builder')} from {at['provenance'].get('source')}")
    print(f"classes    {len(store.classes)}")
    sp = at["split"]
    print(f"split      {sp['method']} {json.dumps(sp.get('params', {}))}")
    print("           " + ", ".join(f"{k} {v}" for k, v in sp.get("counts", {}).items()))
    print(f"{'band':<10}{'mean':>12}{'std':>12}{'min':>12}{'max':>12}")
    st = store.stats
    for i, b in enumerate(store.bands):
        print(f"{b:<10}{st.mean[i]:>12.2f}{st.std[i]:>12.2f}{st.minimum[i]:>12.2f}"
              f"{st.maximum[i]:>12.2f}")
    print(f"leakage audit (chips within {a.distance_km} km of another split):")
    for pair, row in audit.get("pairs", {}).items():
        d = row.get("min_distance_km")
        near = ", ".join(f"{k} {v}" for k, v in row.get("within", {}).items())
        shown = "—" if d is None else f"{d:,.2f} km"
        print(f"  {pair:<22} closest {shown:>14}   within {a.distance_km} km: {near}")
    if a.map:
        print(f"split map  {a.map}")
    return 0


def _cmd_validate(a: argparse.Namespace) -> int:
    from geofm.io.store import validate_store

    problems = validate_store(a.store, deep=a.deep)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"{a.store}: ok")
    return 0


def _cmd_pretrain(a: argparse.Namespace) -> int:
    from geofm.training.config import PRETRAIN_DEFAULTS
    from geofm.training.pretrain import run_pretrain

    cfg = _config(PRETRAIN_DEFAULTS, _recipe(a.config, "pretrain"), {
        "data.store": _one_or_list(a.data or [], str),
        "data.bands": _one_or_list(a.bands or [], _store_bands),
        "model.name": a.model,
        "objective.name": a.objective, "trainer.max_steps": a.max_steps,
        "data.batch_size": a.batch_size, "trainer.devices": a.devices,
        "trainer.num_nodes": a.num_nodes, "trainer.strategy": a.strategy,
        "trainer.precision": a.precision, "trainer.compile": a.compile or None,
        "probe.store": a.probe, "resume": a.resume, "output": a.output,
        "init": a.init, "weights": a.weights,
        "trainer.logger": a.logger}, a.set)
    result = run_pretrain(cfg, progress=not a.quiet)
    if "checkpoint" not in result:  # another rank of a distributed run: rank 0 reports
        return 0
    print(f"pretrained {result['steps']} steps, final loss {result['final_loss']:.4f}")
    out = Path(result["output"])
    # Only what the run wrote: a run shorter than the log interval writes no metrics.csv.
    listed = [shown for shown, rel in (
        ("pretrain.safetensors (checkpoint)", "pretrain.safetensors"),
        ("config.yaml", "config.yaml"), ("metrics.csv", "metrics.csv"),
        ("previews/", "previews"), ("checkpoints/last.ckpt", "checkpoints/last.ckpt"))
        if (out / rel).exists()]
    print(f"outputs in {result['output']}: {', '.join(listed)}")
    return 0


def _store_bands(text: str) -> object:
    """One store's ``--bands`` among several: a count, a named set, or its band names as a list
    (so that one name is not read as one name for every store)."""
    from geofm.bands import BAND_SETS
    from geofm.training.config import parse_value

    value = parse_value(text)
    if isinstance(value, str) and value.lower() not in BAND_SETS:
        return [name.strip() for name in value.split(",") if name.strip()]
    return value


def _one_or_list(values: list[str], parse: Callable[[str], object]) -> str | None:
    """A repeatable flag's values as one override value: None, the value, or a JSON list."""
    if len(values) < 2:
        return values[0] if values else None
    return json.dumps([parse(v) for v in values])


def _recipe(spec: str | None, task: str) -> Path | None:
    """``--config``: a YAML path, or the name of a shipped config (``geofm configs``)."""
    from geofm.packaged import resolve_config

    return None if spec is None else resolve_config(spec, task)


def _cmd_models(a: argparse.Namespace) -> int:
    from geofm.published.resolve import models_table

    rows = models_table()
    cols = ("name", "bands", "units", "licence", "get")
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols[:-1]}
    print("  ".join(f"{c:<{width[c]}}" for c in cols[:-1]) + "  weights")
    for r in rows:
        print("  ".join(f"{r[c]:<{width[c]}}" for c in cols[:-1]) + f"  {r['get']}")
        if a.verbose:
            print(f"    {r['title']}; {r['source']}\n    {r['weights']}\n    {r['checks']}")
    print("\nuse one: geofm finetune --init NAME --weights FILE --data STORE "
          "(geofm models -v: sources and URLs)")
    return 0


def _cmd_configs(a: argparse.Namespace) -> int:
    from geofm.packaged import find_config, list_configs

    if a.name:
        path = find_config(a.name).path
        print(f"# {path}", file=sys.stderr)
        sys.stdout.write(path.read_text(encoding="utf-8"))
        return 0
    shown = [c for c in list_configs() if a.task in (None, c.task)]
    width = max(len(c.name) for c in shown)
    print(f"{'name':<{width}}  {'task':<8}  description")
    for c in shown:
        print(f"{c.name:<{width}}  {c.task:<8}  {c.description}")
    print("\nuse one: geofm pretrain --config reben_s1s2.tiny   (a tiny twin: a few steps on "
          "the embedded sample)\ncopy one to edit: geofm configs reben_s1s2 > my_recipe.yaml")
    return 0


def _config(defaults: dict, path: str | Path | None, flags: dict,
            sets: list[str] | None) -> dict:
    from geofm.training.config import apply_overrides, check_keys, check_values, load_yaml, merge

    cfg = merge(defaults, {})
    if path:
        loaded = load_yaml(path)
        check_keys(defaults, loaded, path)
        cfg = merge(defaults, loaded)
    given = [f"{k}={v}" for k, v in flags.items() if v is not None]
    cfg = apply_overrides(cfg, given + list(sets or []))
    check_values(defaults, cfg)
    return cfg


def _cmd_finetune(a: argparse.Namespace) -> int:
    from geofm.training.config import FINETUNE_DEFAULTS
    from geofm.training.finetune import run_finetune

    cfg = _config(FINETUNE_DEFAULTS, _recipe(a.config, "finetune"), {
        "init": a.init, "weights": a.weights, "data.store": a.data, "task": a.task,
        "head.kind": a.probe,
        "head.freeze": a.freeze, "head.unfreeze_last": a.unfreeze_last,
        "optim.layer_decay": a.layer_decay, "optim.lr": a.lr, "trainer.max_steps": a.max_steps,
        "data.batch_size": a.batch_size, "output": a.output, "trainer.logger": a.logger}, a.set)
    if cfg["data"]["store"] is None:
        from geofm.errors import GeofmError

        raise GeofmError("no chip store given", hint="pass --data STORE")
    r = run_finetune(cfg, progress=not a.quiet)
    print(_finetune_summary(r))
    print(f"model: {r['checkpoint']}")
    return 0


def _finetune_summary(r: dict) -> str:
    """One line: steps, and the validation scores the model was selected on, if any."""
    shown = ", ".join(f"{k} {v:.4f}" for k, v in r["val_metrics"].items()
                      if isinstance(v, float))
    if r.get("selected_on") and shown:
        return f"finetuned {r['steps']} steps; selected on {r['selected_on']}; validation: {shown}"
    return (f"finetuned {r['steps']} steps; no validation scores (no validation split or an "
            "empty one), so the last step's model is kept")


def _cmd_plot(a: argparse.Namespace) -> int:
    from geofm.plot import plot_run

    out, panels = plot_run(a.run, a.output)
    print(f"wrote {out} ({', '.join(panels)})")
    return 0


def _cmd_caption(a: argparse.Namespace) -> int:
    from geofm.curation.captions import caption_store, write_captions
    from geofm.io.store import open_store

    store = open_store(a.store)
    captions = caption_store(store, seed=a.seed, per_chip=a.per_chip)
    write_captions(store, captions, seed=a.seed)
    done = sum(1 for c in captions if c)
    print(f"{a.store}: captioned {done} chips ({len(captions) - done} without classes), "
          f"{a.per_chip} per chip, seed {a.seed}; method: {store.attrs['captions']['method']}")
    example = next((c[0] for c in captions if c), None)
    if example:
        print(f"e.g. {example!r}")
    return 0


def _cmd_align(a: argparse.Namespace) -> int:
    from geofm.training.align import run_align
    from geofm.training.config import ALIGN_DEFAULTS

    cfg = _config(ALIGN_DEFAULTS, _recipe(a.config, "align"), {
        "init": a.init, "weights": a.weights, "data.store": a.data, "data.bands": a.bands,
        "data.split": a.split,
        "text.model": a.text_model, "text.locked": False if a.unlock_text else None,
        "optim.lr": a.lr, "optim.freeze_encoder": True if a.freeze_encoder else None,
        "trainer.max_steps": a.max_steps, "data.batch_size": a.batch_size,
        "trainer.devices": a.devices, "trainer.precision": a.precision, "resume": a.resume,
        "output": a.output, "trainer.logger": a.logger}, a.set)
    r = run_align(cfg, progress=not a.quiet)
    if "checkpoint" not in r:  # another rank of a distributed run: rank 0 reports
        return 0
    cap = r["captions"]
    print(f"aligned {r['steps']} steps on {r['num_chips']} captioned chips, final loss "
          f"{r['final_loss']:.4f}; captions from {cap.get('source')} (seed {cap.get('seed')})")
    print(f"model: {r['checkpoint']}")
    return 0


def _cmd_zeroshot(a: argparse.Namespace) -> int:
    from geofm.evaluation.aligned import zeroshot

    r = zeroshot(a.model, a.data, split=a.split, templates=a.templates, output=a.output)
    m = r["metrics"]
    print(f"zero-shot on {r['split']} ({r['num_chips']} chips, {m['classes_evaluated']} classes "
          f"present, {len(r['templates'])} templates): top-1 {m['top1']:.4f} "
          f"(chance {m['chance_top1']:.4f}), mAP {m['map_macro']:.4f} "
          f"(chance {m['chance_map']:.4f})")
    print(_duplicate_summary(r))
    print(f"reports: {r['output']}, {r['markdown']}")
    return 0


def _cmd_retrieval(a: argparse.Namespace) -> int:
    from geofm.evaluation.aligned import retrieval

    r = retrieval(a.model, a.data, split=a.split, output=a.output, seed=a.seed,
                  per_chip=a.per_chip)
    m = r["metrics"]
    print(f"retrieval on {r['split']} ({r['num_chips']} images, {r['num_captions']} captions): "
          + ", ".join(f"{k} {m[k]:.4f}" for k in ("i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1",
                                                  "t2i_R@5", "t2i_R@10"))
          + f"; mean recall {m['mean_recall']:.4f}")
    print("random ranking: " + ", ".join(f"{k} {m['chance_' + k]:.4f}" for k in (
        "i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@1", "t2i_R@5", "t2i_R@10")))
    print(_duplicate_summary(r))
    print(f"reports: {r['output']}, {r['markdown']}")
    return 0


def _duplicate_summary(r: dict) -> str:
    d = r["duplicate_check"]
    if not d.get("checked"):
        return f"near-duplicate check: not run ({d['reference']['what']})"
    line = (f"near-duplicate check against {d['reference']['split'] or 'all'} chips: "
            f"{d['shared_chips']} shared, {d['near_duplicate_pairs']} near-duplicate pairs")
    if d["shared_chips"]:
        line += " (the model trained on evaluated chips)"
    return line


def _cmd_eval(a: argparse.Namespace) -> int:
    from geofm.evaluation.finetuned import evaluate, knn_evaluate

    if a.knn:
        r = knn_evaluate(a.model, a.data, split=a.split, train_split=a.train_split, k=a.k,
                         task=a.knn_task, weights=a.weights)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in r["metrics"].items() if isinstance(v, float))
        print(f"kNN (k={r['k']}, {r['num_train']} {r['train_split']} chips vote for "
              f"{r['num_query']} {r['split']} chips): {shown}")
        return 0

    r = evaluate(a.model, a.data, split=a.split, output=a.output)
    p = r["primary_metric"]
    print(f"{r['task']} on {r['split']} ({r['num_chips']} chips): {p} {r['metrics'][p]:.4f}")
    print(f"reports: {r['output']}/report.json, report.md")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    from geofm.predict import predict_raster

    tile = None if a.tile is None else int(a.tile)
    device = a.device
    if a.devices is not None:
        import torch

        from geofm.errors import GeofmError

        if a.devices < 1:
            raise GeofmError(f"--devices must be at least 1, got {a.devices}",
                             hint="give a GPU count, or leave it out to run on --device")
        have = torch.cuda.device_count()
        if a.devices > have:
            raise GeofmError(f"{a.devices} GPUs requested but {have} available",
                             hint="lower --devices, or name devices with --device")
        device = ",".join(f"cuda:{i}" for i in range(a.devices))
    r = predict_raster(a.model, a.inputs, a.output, bands=a.bands, probabilities=a.probabilities,
                       embed=a.embed, vector=a.vector, min_area=a.min_area, tile=tile,
                       overlap=a.overlap, batch_size=a.batch_size,
                       resample_to_model_gsd=a.resample_to_model_gsd, overwrite=a.overwrite,
                       device=device, progress=not a.quiet, strict=a.strict,
                       weights=a.weights, data_units=a.data_units)
    print(r["message"])
    extra = [r[k] for k in ("probabilities", "vector") if r.get(k)]
    print(f"wrote {a.output}" + (f" (+ {', '.join(extra)})" if extra else "")
          + f" in {r['seconds']:.1f} s, {r['pixels_per_second']:,.0f} px/s")
    return 0


def _cmd_query(a: argparse.Namespace) -> int:
    from geofm.predict import query_raster

    inputs, texts = query_arguments(a.items, a.texts or [])
    r = query_raster(a.model, inputs, texts, a.output, bands=a.bands, tile=a.tile,
                     overlap=a.overlap, batch_size=a.batch_size,
                     resample_to_model_gsd=a.resample_to_model_gsd, overwrite=a.overwrite,
                     device=a.device, progress=not a.quiet, strict=a.strict)
    print(r["message"])
    for text, (low, high) in zip(texts, r["ranges"]):
        print(f"similarity to {text.strip()!r}: {low:.3f} to {high:.3f}")
    print(f"wrote {a.output} (+ {r['qml']}) in {r['seconds']:.1f} s, "
          f"{r['pixels_per_second']:,.0f} px/s")
    return 0


RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".nc", ".hdf")
"""Names taken as input files by ``geofm query`` even when the file does not exist (so a
mistyped path is an error, not a query text)."""


def query_arguments(items: Sequence[str], texts: Sequence[str]) -> tuple[list[str], list[str]]:
    """Split ``geofm query``'s positionals into input files and texts.

    The leading items that are existing files or end in a raster extension are inputs; the
    rest, then every ``--text``, are texts.

    Raises:
        GeofmError: No input file, or no text.
    """
    from geofm.errors import GeofmError

    inputs: list[str] = []
    for item in items:
        if Path(item).is_file() or item.lower().endswith(RASTER_SUFFIXES):
            inputs.append(item)
        else:
            break
    rest = list(items[len(inputs):]) + list(texts)
    if not inputs:
        raise GeofmError(f"no input raster given ({items[0]!r} is not a file)",
                         hint="geofm query MODEL SCENE.tif [MORE.tif ...] \"TEXT\" [\"TEXT\" ...]")
    if not rest:
        raise GeofmError("no query text given",
                         hint='add texts after the input files, or --text "salt marsh"')
    return inputs, rest


def _cmd_export(a: argparse.Namespace) -> int:
    from geofm.export import export_onnx, read_metadata

    if a.weights is not None:
        from geofm.published.resolve import refuse_headless

        refuse_headless(a.model, "export")
    out = export_onnx(a.model, a.onnx, tile_size=a.tile_size, opset=a.opset,
                      overwrite=a.overwrite, bands=a.bands)
    meta = read_metadata(out)
    used = {int(v.split()[1]) for v in meta["geofm_bands_used"].values()}  # "band 3 (B03)"
    order = ", ".join(f"{i} {b}" + ("" if i in used else " (unused)")
                      for i, b in enumerate(meta["geofm_bands"], start=1))
    print(f"wrote {out} (QGIS Deepness plugin metadata included)")
    print(f"raster bands, in this order: {order}")
    if meta.get("geofm_bands_missing"):
        print(f"model bands the rasters lack: {', '.join(meta['geofm_bands_missing'])}")
    return 0


def _add_step_run_options(p: argparse.ArgumentParser, defaults: dict) -> None:
    """Devices, precision and resuming: the options of step-based Lightning runs."""
    p.add_argument("--devices", help="devices per node (e.g. 1, 8, auto; "
                   f"{_cfg(defaults, 'trainer.devices')})")
    p.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed (default: bf16-mixed on "
                   "a GPU, 32-true on CPUs)")
    p.add_argument("--resume", help="Lightning checkpoint to resume (<output>/checkpoints/"
                   "last.ckpt; default: start afresh)")


_EXAMPLE_CONFIG = {"pretrain": "reben_s1s2", "finetune": "reben_multilabel",
                   "align": "reben_align"}


def _add_config_options(p: argparse.ArgumentParser, kind: str, defaults: dict) -> None:
    """``--config``, ``--output``, ``--set``, ``--logger`` and ``--quiet`` of a configured
    training run."""
    p.add_argument("--config", metavar="NAME|PATH",
                   help=f"YAML config: a file, or a shipped {kind} config's name (e.g. "
                   f"{_EXAMPLE_CONFIG[kind]}; 'geofm configs' lists them; default: geofm's "
                   f"{kind} defaults); flags and --set override it")
    p.add_argument("--output", help=f"run directory ({_cfg(defaults, 'output')})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, repeatable (e.g. optim.lr=3e-4; default: none)")
    p.add_argument("--logger", choices=("csv", "tensorboard"),
                   help="metrics.csv only, or TensorBoard event files in <output>/tensorboard "
                   "too (needs the tensorboard extra; default: csv)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines (progress goes to stderr, the summary to stdout)")


def build_parser() -> argparse.ArgumentParser:
    """The ``geofm`` argument parser with every subcommand."""
    from geofm.training.config import ALIGN_DEFAULTS, FINETUNE_DEFAULTS, PRETRAIN_DEFAULTS

    fmt = HelpFormatter
    p = argparse.ArgumentParser(
        prog="geofm", description="Remote-sensing foundation models: build chip stores, "
        "pretrain band-aware encoders, finetune and map.", epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    b = sub.add_parser("build", help="build a chip store from a source dataset",
                       description="Build a chip store (Zarr + GeoParquet) from a source "
                       "dataset; 'geofm build SOURCE --help' for each source.",
                       epilog=_examples(
                           "geofm build reben datasets/reben_mini outputs/reben_mini.zarr",
                           "geofm build modis /data/MOD021KM out/modis.zarr --geolocation "
                           "/data/MOD03",
                           "geofm build opticalrs datasets/opticalrs_sample/manifest.yaml "
                           "out/rgb.zarr"), formatter_class=fmt)
    bsub = b.add_subparsers(dest="source", metavar="SOURCE", required=True)
    r = bsub.add_parser("reben", help="reBEN / BigEarthNet v2 (Sentinel-1 + Sentinel-2, 14 bands)",
                        description="Build a 14-band s1s2 chip store from a reBEN release.",
                        epilog=_examples(
                            "geofm build reben datasets/reben_mini outputs/reben_mini.zarr "
                            "--workers 2",
                            "geofm build reben /data/reBEN out/reben.zarr --scheduler "
                            "tcp://head:8786"), formatter_class=fmt)
    r.add_argument("src", help="reBEN root (holding metadata.parquet)")
    r.add_argument("out", help="output store, e.g. reben.zarr")
    _build_options(r)
    r.add_argument("--limit", type=int, help="build only the first N patches (by patch id; "
                   "default: all)")
    r.set_defaults(func=_cmd_build_reben)
    m = bsub.add_parser("modis", help="MODIS L1B 1 km granules → SatVision-TOA's 14 bands",
                        description="Build a 14-band MODIS TOA store (reflectance and brightness "
                        "temperature) from MOD021KM/MYD021KM HDF4 granules.",
                        epilog=_examples(
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
    m.add_argument("--time-cutoffs", help="two UTC dates START_VAL,START_TEST (needed by "
                   "--split time; default: none)")
    _build_options(m)
    m.set_defaults(func=_cmd_build_modis)
    o = bsub.add_parser("opticalrs", help="OpticalRS-13M-style RGB collection from a manifest",
                        description="Build an RGB pretraining store from many image sources: "
                        "exclusion (eval sources and their near-duplicates, blank, tiny, "
                        "mostly-nodata images), slicing, exact and perceptual-hash dedup.",
                        epilog=_examples(
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
    o.set_defaults(func=_cmd_build_opticalrs)

    s = sub.add_parser("split", help="assign chips to train/validation/test by geography",
                       description="Geography-aware splits, recorded in the store.",
                       epilog=_examples(
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
    s.set_defaults(func=_cmd_split)

    i = sub.add_parser("info", help="describe a store and audit its split for leakage",
                       description="Bands and their statistics, classes, split counts, and the "
                       "distance between chips of different splits.",
                       epilog=_examples(
                           "geofm info outputs/reben_mini.zarr",
                           "geofm info out/reben.zarr --distance-km 2 --map split.png",
                           "geofm info out/reben.zarr --json > reben.json"),
                       formatter_class=fmt)
    i.add_argument("store", help="chip store")
    i.add_argument("--distance-km", type=float, default=2.0,
                   help="count chips within this distance of another split (km)")
    i.add_argument("--map", help="write a PNG map of the split here (default: no map)")
    i.add_argument("--json", action="store_true", help="print everything as JSON")
    i.set_defaults(func=_cmd_info)

    v = sub.add_parser("validate", help="check a store's integrity",
                       description="Check a store's metadata, arrays and chip table; exit 1 "
                       "with one line per problem.",
                       epilog=_examples("geofm validate outputs/reben_mini.zarr",
                                        "geofm validate out/reben.zarr --deep"),
                       formatter_class=fmt)
    v.add_argument("store", help="chip store")
    v.add_argument("--deep", action="store_true", help="also decode every chip")
    v.set_defaults(func=_cmd_validate)

    t = sub.add_parser(
        "pretrain", help="self-supervised pretraining (ChannelViT + SelectiveMAE by default)",
        description="Pretrain a band-aware encoder on a chip store. With no arguments it trains "
        "the default small ChannelViT with SelectiveMAE on the embedded real reBEN sample. "
        "Progress (step / max steps, ETA) goes to stderr; metrics.csv and previews/ to the "
        "run directory.",
        epilog=_examples(
            "geofm pretrain --bands 14                      # embedded sample, 120 steps",
            "geofm pretrain --data outputs/reben_mini.zarr --max-steps 500 --logger tensorboard",
            "geofm pretrain --data reben.zarr --data modis.zarr   # one ChannelViT, two sensors",
            "geofm pretrain --config configs/pretrain/reben_s1s2.yaml --set optim.lr=3e-4",
            "geofm plot runs/pretrain                       # loss and lr curves to a PNG"),
        formatter_class=fmt)
    t.add_argument("--data", action="append",
                   help="chip store (default: the embedded reBEN sample); repeat it to "
                   "pretrain a band-token model across sensors")
    t.add_argument("--bands", action="append",
                   help="a count (14), a named set (s1s2, modis14, s2) or names (default: "
                   "every band of the store); with several --data, once for all or once each")
    t.add_argument("--model", help="encoder name (channelvit_tiny, vit_small, ...; "
                   f"{_cfg(PRETRAIN_DEFAULTS, 'model.name')})")
    t.add_argument("--objective", help="selective_mae, mae or simmim "
                   f"({_cfg(PRETRAIN_DEFAULTS, 'objective.name')})")
    t.add_argument("--max-steps", type=int, help="optimizer steps "
                   f"({_cfg(PRETRAIN_DEFAULTS, 'trainer.max_steps')})")
    t.add_argument("--batch-size", type=int, help="chips per device and step "
                   f"({_cfg(PRETRAIN_DEFAULTS, 'data.batch_size')})")
    t.add_argument("--num-nodes", type=int, help="machines of a distributed run "
                   f"({_cfg(PRETRAIN_DEFAULTS, 'trainer.num_nodes')})")
    t.add_argument("--strategy", help="auto, ddp or fsdp "
                   f"({_cfg(PRETRAIN_DEFAULTS, 'trainer.strategy')})")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks (faster steps on a GPU)")
    t.add_argument("--probe", metavar="STORE",
                   help="labelled store whose chips score the features with a kNN vote while "
                   "training (probe.csv; see --set probe.every_n_steps=, probe.split=; "
                   "default: no probe)")
    t.add_argument("--init", help="an encoder to continue pretraining (published encoders run "
                   "their own tokenizer, which geofm's objectives cannot mask, and are"
                   " refused; default: none)")
    t.add_argument("--weights", help="a published model's weights file, as released "
                   "(with --init NAME; 'geofm models' lists the names and where"
                   " to get each; default: none)")
    _add_step_run_options(t, PRETRAIN_DEFAULTS)
    _add_config_options(t, "pretrain", PRETRAIN_DEFAULTS)
    t.set_defaults(func=_cmd_pretrain)

    f = sub.add_parser(
        "finetune", help="finetune a pretrained encoder with a head",
        description="Probe or finetune a pretrained geofm encoder on a store's labels; the "
        "model is selected on the validation split only.",
        epilog=_examples(
            "geofm finetune --init runs/pretrain/pretrain.safetensors --data "
            "outputs/reben_mini.zarr",
            "geofm finetune --init runs/pretrain/pretrain.safetensors --data "
            "outputs/reben_mini.zarr --task segmentation --max-steps 60 --output runs/seg",
            "geofm finetune --init pretrain.safetensors --data reben.zarr --freeze partial "
            "--unfreeze-last 2 --lr 3e-4"), formatter_class=fmt)
    f.add_argument("--init", help="pretrained checkpoint (pretrain.safetensors), a published "
                   "model's name (dofa_base) or torchgeo:Enum.MEMBER (required)")
    f.add_argument("--weights", help="a published model's weights file, as released "
                   "(with --init NAME; 'geofm models' lists the names and where"
                   " to get each; default: none)")
    f.add_argument("--data", help="chip store with labels, masks or targets (required)")
    f.add_argument("--task", choices=("multilabel", "classification", "segmentation",
                                      "regression"),
                   help=f"what to learn ({_cfg(FINETUNE_DEFAULTS, 'task')})")
    f.add_argument("--probe", choices=("linear", "attentive", "mlp", "segmentation"),
                   help="head (default: linear for scene tasks, segmentation for pixel tasks)")
    f.add_argument("--freeze", choices=("frozen", "partial", "full"),
                   help="frozen: train the head only; partial: also the last blocks; full: "
                   f"everything ({_cfg(FINETUNE_DEFAULTS, 'head.freeze')})")
    f.add_argument("--unfreeze-last", type=int, help="blocks trained with --freeze partial "
                   f"({_cfg(FINETUNE_DEFAULTS, 'head.unfreeze_last')})")
    f.add_argument("--layer-decay", type=float, help="layer-wise lr decay "
                   f"({_cfg(FINETUNE_DEFAULTS, 'optim.layer_decay')})")
    f.add_argument("--lr", type=float, help="peak learning rate "
                   f"({_cfg(FINETUNE_DEFAULTS, 'optim.lr')})")
    f.add_argument("--max-steps", type=int, help="optimizer steps "
                   f"({_cfg(FINETUNE_DEFAULTS, 'trainer.max_steps')})")
    f.add_argument("--batch-size", type=int, help="chips per step "
                   f"({_cfg(FINETUNE_DEFAULTS, 'data.batch_size')})")
    _add_config_options(f, "finetune", FINETUNE_DEFAULTS)
    f.set_defaults(func=_cmd_finetune)

    c = sub.add_parser("caption", help="caption a labelled store for image–text alignment",
                       description="Write captions made from each chip's labels (ordered by "
                       "area, and Mask-to-Box captions, where reference maps exist) into the "
                       "store's chip table, with the seed and templates in its attributes.",
                       epilog=_examples(
                           "geofm caption outputs/reben_mini.zarr --seed 0 --per-chip 3"),
                       formatter_class=fmt)
    c.add_argument("store", help="labelled chip store (captions are added to it)")
    c.add_argument("--seed", type=int, default=0, help="seed of the caption templates")
    c.add_argument("--per-chip", type=int, default=1, help="captions per chip")
    c.set_defaults(func=_cmd_caption)

    al = sub.add_parser(
        "align", help="align a pretrained encoder with a text tower (contrastive)",
        description="CLIP-style image–text training: the pretrained geofm encoder and a locked "
        "offline sentence encoder (all-MiniLM-L6-v2) meet in a shared space. Only the training "
        "split's captions train; a store without captions is captioned from its labels.",
        epilog=_examples(
            "geofm align --init runs/pretrain/pretrain.safetensors --data "
            "outputs/reben_mini.zarr --max-steps 40 --set data.crop=64",
            "geofm align --init pretrain.safetensors --data reben.zarr --unlock-text "
            "--set optim.encoder_lr=1e-5"), formatter_class=fmt)
    al.add_argument("--init", help="pretrained checkpoint (pretrain.safetensors), a published "
                    "model's name (dofa_base) or torchgeo:Enum.MEMBER (required)")
    al.add_argument("--weights", help="a published model's weights file, as released "
                    "(with --init NAME; 'geofm models' lists the names and where"
                   " to get each; default: none)")
    al.add_argument("--data", help="chip store with captions or labels (required)")
    al.add_argument("--bands", help="bands to train on (default: the pretrained model's)")
    al.add_argument("--split", help="training split ('all': every chip; "
                    f"{_cfg(ALIGN_DEFAULTS, 'data.split')})")
    al.add_argument("--text-model", help="local Hugging Face or open_clip text model folder "
                    "(default: the bundled all-MiniLM-L6-v2)")
    al.add_argument("--unlock-text", action="store_true", help="train the text tower too")
    al.add_argument("--freeze-encoder", action="store_true", help="train the projections only")
    al.add_argument("--lr", type=float, help="projection learning rate "
                    f"({_cfg(ALIGN_DEFAULTS, 'optim.lr')})")
    al.add_argument("--max-steps", type=int, help="optimizer steps "
                    f"({_cfg(ALIGN_DEFAULTS, 'trainer.max_steps')})")
    al.add_argument("--batch-size", type=int, help="image–text pairs per device and step "
                    f"({_cfg(ALIGN_DEFAULTS, 'data.batch_size')})")
    _add_step_run_options(al, ALIGN_DEFAULTS)
    _add_config_options(al, "align", ALIGN_DEFAULTS)
    al.set_defaults(func=_cmd_align)

    pl = sub.add_parser(
        "plot", help="draw a run's loss, learning-rate and probe curves to a PNG",
        description="Read a run directory's metrics.csv (and probe.csv) and draw the loss, "
        "learning rate, kNN probe and validation curves, one panel each, to a PNG. Works on a "
        "run that is still training.",
        epilog=_examples("geofm plot runs/pretrain",
                         "geofm plot runs/finetune -o finetune_curves.png"),
        formatter_class=fmt)
    pl.add_argument("run", help="run directory (--output of pretrain, finetune or align)")
    pl.add_argument("-o", "--output", help="PNG to write (default: <run>/curves.png)")
    pl.set_defaults(func=_cmd_plot)

    z = sub.add_parser("zeroshot", help="zero-shot classification with an aligned model",
                       description="Score every class of the store with prompts from the "
                       "checkpoint's recorded templates (or --templates); report top-1, mAP, "
                       "their chance levels and a near-duplicate check against training chips.",
                       epilog=_examples(
                           "geofm zeroshot runs/align/align.safetensors --data "
                           "outputs/reben_mini.zarr",
                           "geofm zeroshot align.safetensors --data reben.zarr --split all "
                           "--templates prompts.txt"), formatter_class=fmt)
    z.add_argument("model", help="aligned checkpoint (align.safetensors)")
    z.add_argument("--data", required=True, help="chip store with labels")
    z.add_argument("--split", default="test", help="split to evaluate ('all': every chip)")
    z.add_argument("--templates", help="file of templates, one per line with '{}' (default: "
                   "the checkpoint's)")
    z.add_argument("-o", "--output", help="report .json (default: beside the model)")
    z.set_defaults(func=_cmd_zeroshot)

    rt = sub.add_parser("retrieval", help="image↔text retrieval with an aligned model",
                        description="Recall at 1, 5 and 10 in both directions and mean recall "
                        "(the RemoteCLIP protocol) over a split's captions, with a "
                        "near-duplicate check against training chips.",
                        epilog=_examples(
                            "geofm retrieval runs/align/align.safetensors --data "
                            "outputs/reben_mini.zarr",
                            "geofm retrieval align.safetensors --data reben.zarr --split all "
                            "-o retrieval.json"), formatter_class=fmt)
    rt.add_argument("model", help="aligned checkpoint (align.safetensors)")
    rt.add_argument("--data", required=True, help="chip store with captions or labels")
    rt.add_argument("--split", default="test", help="split to evaluate ('all': every chip)")
    rt.add_argument("--seed", type=int, help="caption seed for stores without captions "
                    "(default: the checkpoint's)")
    rt.add_argument("--per-chip", type=int, help="captions per chip for stores without "
                    "captions (default: the checkpoint's)")
    rt.add_argument("-o", "--output", help="report .json (default: beside the model)")
    rt.set_defaults(func=_cmd_retrieval)

    e = sub.add_parser("eval", help="evaluate a finetuned model on a store split",
                       description="Score a finetuned checkpoint on a split (report.json and "
                       "report.md), or any checkpoint's frozen embeddings with a kNN vote.",
                       epilog=_examples(
                           "geofm eval runs/finetune/finetune.safetensors --data "
                           "outputs/reben_mini.zarr",
                           "geofm eval runs/pretrain/pretrain.safetensors --data "
                           "outputs/reben_mini.zarr --knn -k 10"), formatter_class=fmt)
    e.add_argument("model", help="finetuned checkpoint (finetune.safetensors)")
    e.add_argument("--data", required=True, help="chip store")
    e.add_argument("--split", default="test", help="split to evaluate")
    e.add_argument("--output", help="report directory (default: beside the model)")
    e.add_argument("--knn", action="store_true",
                   help="kNN evaluation of the frozen embeddings of any geofm checkpoint")
    e.add_argument("--train-split", default="train", help="kNN reference split")
    e.add_argument("-k", type=int, default=20, help="kNN neighbours")
    e.add_argument("--knn-task", default="multilabel", choices=("multilabel", "classification"),
                   help="kNN vote: several labels per chip, or one")
    e.add_argument("--weights", help="with --knn and a published model's name as MODEL: its "
                   "weights file, as released; default: none")
    e.set_defaults(func=_cmd_eval)

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
        epilog=_examples(
            "geofm predict runs/finetune/finetune.safetensors "
            "datasets/sentinel2_l1c/s2_l1c_13band_10m_256px.tif -o landcover.tif",
            "geofm predict finetune.safetensors B02.tif B03.tif B04.tif B08.tif -o map.tif",
            "geofm predict finetune.safetensors scene.tif --bands B02,B03,B04,B08 -o map.tif "
            "--vector map.gpkg --min-area 500",
            "geofm predict pretrain.safetensors scene.tif --embed -o embeddings.tif"),
        formatter_class=fmt)
    pr.add_argument("model", help="finetuned (or, with --embed, pretrained) checkpoint")
    pr.add_argument("inputs", nargs="+", help="GeoTIFF(s) or a VRT; several files are stacked "
                    "band after band")
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
    pr.add_argument("--weights", help="with --embed and a published model's name as MODEL "
                    "(dofa_base): its weights file, as released; default: none)")
    pr.add_argument("--data-units", choices=("native", "physical"), default="native",
                    help="what the input holds: the products' stored numbers (native: S2 "
                    "reflectance × 10,000, Landsat DN) or physical values (reflectance 0–1, dB, "
                    "K); converted for the model either way, refused if the values disagree")
    pr.set_defaults(func=_cmd_predict)

    q = sub.add_parser(
        "query", help="map where a GeoTIFF looks like a text (similarity COG out)",
        description="Text-to-map query with an aligned image-text checkpoint: the cosine "
        "similarity of every patch with the text, streamed tile by tile like 'geofm predict "
        "--embed', written as a float32 COG at patch resolution (input CRS, one band per "
        "text) with a QGIS .qml colour ramp. After the model come the input files (existing "
        "files, or names ending in .tif/.tiff/.vrt/.jp2; several are stacked as in 'geofm "
        "predict'), then the texts; --text adds a text explicitly (e.g. one that is also a "
        "file name).",
        epilog=_examples(
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
    q.set_defaults(func=_cmd_query)

    x = sub.add_parser("export", help="export a finetuned model to ONNX for QGIS (Deepness)",
                       description="ONNX model taking raw pixels (normalisation inside), with "
                       "the metadata the Deepness QGIS plugin reads.",
                       epilog=_examples(
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
    x.set_defaults(func=_cmd_export)

    mo = sub.add_parser("models", help="list the published encoders geofm loads (name, bands, "
                        "units, licence, where the weights are)",
                        description="The published foundation models geofm loads through its "
                        "band contract: each one's bands, the input units its weights expect, "
                        "licence and how to get the weights (--init NAME --weights FILE, or "
                        "--init torchgeo:Enum.MEMBER).",
                        epilog=_examples(
                            "geofm models                 # one line each",
                            "geofm models -v              # with sources, URLs and checks",
                            "geofm finetune --init dofa_base --weights "
                            "dofa_base_patch16_224-a0275954.pth --data reben.zarr"),
                        formatter_class=fmt)
    mo.add_argument("-v", "--verbose", action="store_true",
                    help="also each model's source, weights URL and what geofm checks")
    mo.set_defaults(func=_cmd_models)

    cf = sub.add_parser(
        "configs", help="list the shipped run configs (recipes), or print one",
        description="The run configs that ship with geofm, by name: pass a name to --config of "
        "pretrain, finetune or align instead of a path.",
        epilog="examples:\n  geofm configs\n  geofm configs --task finetune\n"
        "  geofm configs reben_s1s2 > my_recipe.yaml   # copy one to edit\n"
        "  geofm pretrain --config reben_s1s2.tiny       # a few steps on the embedded sample",
        formatter_class=fmt)
    cf.add_argument("name", nargs="?", help="print this config's YAML (e.g. reben_s1s2)")
    cf.add_argument("--task", choices=("pretrain", "finetune", "align"),
                    help="list only this command's configs (default: all)")
    cf.set_defaults(func=_cmd_configs)
    return p


def _build_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scheduler", help="Dask scheduler address, or 'synchronous' "
                   "(default: a local cluster with one worker per core)")
    p.add_argument("--workers", type=int, help="local worker processes (default: CPU count)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _show_warning(message: Warning | str, category: type[Warning], filename: str,
                  lineno: int, file: object = None, line: str | None = None) -> None:
    """Warnings as one ``geofm: warning: ...`` line on stderr, without a source line."""
    text = " ".join(str(message).split())
    print(f"geofm: warning: {text}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geofm`` console script."""
    from geofm.errors import GeofmError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from geofm import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import warnings

    from geofm.signals import handle_signals

    warnings.showwarning = _show_warning
    # SIGINT and SIGTERM unwind the command, so temporary outputs are removed on the way out.
    try:
        with handle_signals():
            return int(args.func(args))
    except GeofmError as e:
        print(f"geofm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        code = int(getattr(e, "exit_code", 130))
        name = "SIGTERM" if code == 143 else "Ctrl-C"
        print(f"geofm: stopped by {name}", file=sys.stderr)
        return _exit_now(code) if argv is None else code


def _exit_now(code: int) -> int:
    """Exit at once when a model call is still running in a worker thread (it cannot be
    interrupted, and finishing it would take as long as the call); else return ``code``."""
    import threading

    if any(t.is_alive() and t.name.startswith("geofm-") for t in threading.enumerate()):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
