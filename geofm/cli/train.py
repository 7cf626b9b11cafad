"""``geofm pretrain``, ``finetune``, ``align``, ``plot`` and ``configs``: training runs."""

from __future__ import annotations

import argparse
import sys

from geofm.cli.help import Commands, default_of, examples

__all__ = ["add_align", "add_configs", "add_finetune", "add_plot", "add_pretrain"]


def _pretrain(a: argparse.Namespace) -> int:
    from geofm.training.runs import one_or_list, pretrain, store_bands

    result = pretrain(a.config, {
        "data.store": one_or_list(a.data or []),
        "data.bands": one_or_list(a.bands or [], store_bands),
        "model.name": a.model,
        "objective.name": a.objective, "trainer.max_steps": a.max_steps,
        "data.batch_size": a.batch_size, "trainer.devices": a.devices,
        "trainer.num_nodes": a.num_nodes, "trainer.strategy": a.strategy,
        "trainer.precision": a.precision, "trainer.compile": a.compile or None,
        "probe.store": a.probe, "resume": a.resume, "output": a.output,
        "init": a.init, "weights": a.weights,
        "trainer.logger": a.logger}, a.set, progress=not a.quiet)
    if "checkpoint" not in result:  # another rank of a distributed run: rank 0 reports
        return 0
    print(f"pretrained {result['steps']} steps, final loss {result['final_loss']:.4f}")
    print(f"outputs in {result['output']}: {', '.join(result['files'])}")
    return 0


def _finetune(a: argparse.Namespace) -> int:
    from geofm.training.runs import finetune

    r = finetune(a.config, {
        "init": a.init, "weights": a.weights, "data.store": a.data, "task": a.task,
        "head.kind": a.probe,
        "head.freeze": a.freeze, "head.unfreeze_last": a.unfreeze_last,
        "optim.layer_decay": a.layer_decay, "optim.lr": a.lr, "trainer.max_steps": a.max_steps,
        "data.batch_size": a.batch_size, "output": a.output, "trainer.logger": a.logger},
        a.set, progress=not a.quiet)
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


def _align(a: argparse.Namespace) -> int:
    from geofm.training.runs import align

    r = align(a.config, {
        "init": a.init, "weights": a.weights, "data.store": a.data, "data.bands": a.bands,
        "data.split": a.split,
        "text.model": a.text_model, "text.locked": False if a.unlock_text else None,
        "optim.lr": a.lr, "optim.freeze_encoder": True if a.freeze_encoder else None,
        "trainer.max_steps": a.max_steps, "data.batch_size": a.batch_size,
        "trainer.devices": a.devices, "trainer.precision": a.precision, "resume": a.resume,
        "output": a.output, "trainer.logger": a.logger}, a.set, progress=not a.quiet)
    if "checkpoint" not in r:  # another rank of a distributed run: rank 0 reports
        return 0
    cap = r["captions"]
    print(f"aligned {r['steps']} steps on {r['num_chips']} captioned chips, final loss "
          f"{r['final_loss']:.4f}; captions from {cap.get('source')} (seed {cap.get('seed')})")
    print(f"model: {r['checkpoint']}")
    return 0


def _plot(a: argparse.Namespace) -> int:
    from geofm.plot import plot_run

    out, panels = plot_run(a.run, a.output)
    print(f"wrote {out} ({', '.join(panels)})")
    return 0


def _configs(a: argparse.Namespace) -> int:
    from geofm.packaged import config_text, configs_table

    if a.name:
        path, text = config_text(a.name)
        print(f"# {path}", file=sys.stderr)
        sys.stdout.write(text)
        return 0
    print(configs_table(a.task))
    print("\nuse one: geofm pretrain --config reben_s1s2.tiny   (a tiny twin: a few steps on "
          "the embedded sample)\ncopy one to edit: geofm configs reben_s1s2 > my_recipe.yaml")
    return 0


def _add_step_run_options(p: argparse.ArgumentParser, defaults: dict) -> None:
    """Devices, precision and resuming: the options of step-based Lightning runs."""
    p.add_argument("--devices", help="devices per node (e.g. 1, 8, auto; "
                   f"{default_of(defaults, 'trainer.devices')})")
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
    p.add_argument("--output", help=f"run directory ({default_of(defaults, 'output')})")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key, repeatable (e.g. optim.lr=3e-4; default: none)")
    p.add_argument("--logger", choices=("csv", "tensorboard"),
                   help="metrics.csv only, or TensorBoard event files in <output>/tensorboard "
                   "too (needs the tensorboard extra; default: csv)")
    p.add_argument("--quiet", action="store_true",
                   help="no progress lines (progress goes to stderr, the summary to stdout)")


def add_pretrain(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm pretrain``."""
    from geofm.training.config import PRETRAIN_DEFAULTS

    t = sub.add_parser(
        "pretrain", help="self-supervised pretraining (ChannelViT + SelectiveMAE by default)",
        description="Pretrain a band-aware encoder on a chip store. With no arguments it trains "
        "the default small ChannelViT with SelectiveMAE on the embedded real reBEN sample. "
        "Progress (step / max steps, ETA) goes to stderr; metrics.csv and previews/ to the "
        "run directory.",
        epilog=examples(
            "geofm pretrain --bands 14                      # embedded sample, 120 steps",
            "geofm pretrain --data outputs/reben_mini.zarr --max-steps 500 --logger tensorboard",
            "geofm pretrain --data reben.zarr --data modis.zarr   # one ChannelViT, two sensors",
            "geofm pretrain --config configs/pretrain/reben_s1s2.yaml --set optim.lr=3e-4",
            "geofm pretrain --init ssl4eo_vits16_mae --weights B13_vits16_mae_ep99_enc.pth "
            "--data l1c.zarr --objective mae",
            "geofm pretrain --init runs/pretrain/pretrain.safetensors --data more.zarr",
            "geofm plot runs/pretrain                       # loss and lr curves to a PNG"),
        formatter_class=fmt)
    t.add_argument("--data", action="append",
                   help="chip store (default: the embedded reBEN sample); repeat it to "
                   "pretrain a band-token model across sensors")
    t.add_argument("--bands", action="append",
                   help="a count (14), a named set (s1s2, modis14, s2) or names (default: "
                   "every band of the store); with several --data, once for all or once each")
    t.add_argument("--model", help="encoder name (channelvit_tiny, vit_small, ...; "
                   f"{default_of(PRETRAIN_DEFAULTS, 'model.name')})")
    t.add_argument("--objective", help="selective_mae, mae or simmim "
                   f"({default_of(PRETRAIN_DEFAULTS, 'objective.name')})")
    t.add_argument("--max-steps", type=int, help="optimizer steps "
                   f"({default_of(PRETRAIN_DEFAULTS, 'trainer.max_steps')})")
    t.add_argument("--batch-size", type=int, help="chips per device and step "
                   f"({default_of(PRETRAIN_DEFAULTS, 'data.batch_size')})")
    t.add_argument("--num-nodes", type=int, help="machines of a distributed run "
                   f"({default_of(PRETRAIN_DEFAULTS, 'trainer.num_nodes')})")
    t.add_argument("--strategy", help="auto, ddp or fsdp "
                   f"({default_of(PRETRAIN_DEFAULTS, 'trainer.strategy')})")
    t.add_argument("--compile", action="store_true",
                   help="torch.compile the transformer blocks (faster steps on a GPU)")
    t.add_argument("--probe", metavar="STORE",
                   help="labelled store whose chips score the features with a kNN vote while "
                   "training (probe.csv; see --set probe.every_n_steps=, probe.split=; "
                   "default: no probe)")
    t.add_argument("--init", help="an encoder to continue pretraining: a geofm checkpoint "
                   "(pretrain.safetensors), or a published ViT by name (ssl4eo_vits16_*, "
                   "selectivemae_vitb, channelvit_so2sat_*) with --weights; its architecture "
                   "replaces --model. Other published families run their own tokenizer, which "
                   "geofm's objectives cannot mask (finetune those); default: none")
    t.add_argument("--weights", help="a published model's weights file, as released "
                   "(with --init NAME; 'geofm models' lists the names and where"
                   " to get each; default: none)")
    _add_step_run_options(t, PRETRAIN_DEFAULTS)
    _add_config_options(t, "pretrain", PRETRAIN_DEFAULTS)
    t.set_defaults(func=_pretrain)


def add_finetune(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm finetune``."""
    from geofm.training.config import FINETUNE_DEFAULTS

    f = sub.add_parser(
        "finetune", help="finetune a pretrained encoder with a head",
        description="Probe or finetune a pretrained geofm encoder on a store's labels; the "
        "model is selected on the validation split only.",
        epilog=examples(
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
                   help=f"what to learn ({default_of(FINETUNE_DEFAULTS, 'task')})")
    f.add_argument("--probe", choices=("linear", "attentive", "mlp", "segmentation"),
                   help="head (default: linear for scene tasks, segmentation for pixel tasks)")
    f.add_argument("--freeze", choices=("frozen", "partial", "full"),
                   help="frozen: train the head only; partial: also the last blocks; full: "
                   f"everything ({default_of(FINETUNE_DEFAULTS, 'head.freeze')})")
    f.add_argument("--unfreeze-last", type=int, help="blocks trained with --freeze partial "
                   f"({default_of(FINETUNE_DEFAULTS, 'head.unfreeze_last')})")
    f.add_argument("--layer-decay", type=float, help="layer-wise lr decay "
                   f"({default_of(FINETUNE_DEFAULTS, 'optim.layer_decay')})")
    f.add_argument("--lr", type=float, help="peak learning rate "
                   f"({default_of(FINETUNE_DEFAULTS, 'optim.lr')})")
    f.add_argument("--max-steps", type=int, help="optimizer steps "
                   f"({default_of(FINETUNE_DEFAULTS, 'trainer.max_steps')})")
    f.add_argument("--batch-size", type=int, help="chips per step "
                   f"({default_of(FINETUNE_DEFAULTS, 'data.batch_size')})")
    _add_config_options(f, "finetune", FINETUNE_DEFAULTS)
    f.set_defaults(func=_finetune)


def add_align(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm align``."""
    from geofm.training.config import ALIGN_DEFAULTS

    al = sub.add_parser(
        "align", help="align a pretrained encoder with a text tower (contrastive)",
        description="CLIP-style image–text training: the pretrained geofm encoder and a locked "
        "offline sentence encoder (all-MiniLM-L6-v2) meet in a shared space. Only the training "
        "split's captions train; a store without captions is captioned from its labels.",
        epilog=examples(
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
                    f"{default_of(ALIGN_DEFAULTS, 'data.split')})")
    al.add_argument("--text-model", help="local Hugging Face or open_clip text model folder "
                    "(default: the bundled all-MiniLM-L6-v2)")
    al.add_argument("--unlock-text", action="store_true", help="train the text tower too")
    al.add_argument("--freeze-encoder", action="store_true", help="train the projections only")
    al.add_argument("--lr", type=float, help="projection learning rate "
                    f"({default_of(ALIGN_DEFAULTS, 'optim.lr')})")
    al.add_argument("--max-steps", type=int, help="optimizer steps "
                    f"({default_of(ALIGN_DEFAULTS, 'trainer.max_steps')})")
    al.add_argument("--batch-size", type=int, help="image–text pairs per device and step "
                    f"({default_of(ALIGN_DEFAULTS, 'data.batch_size')})")
    _add_step_run_options(al, ALIGN_DEFAULTS)
    _add_config_options(al, "align", ALIGN_DEFAULTS)
    al.set_defaults(func=_align)


def add_plot(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm plot``."""
    pl = sub.add_parser(
        "plot", help="draw a run's loss, learning-rate and probe curves to a PNG",
        description="Read a run directory's metrics.csv (and probe.csv) and draw the loss, "
        "learning rate, kNN probe and validation curves, one panel each, to a PNG. Works on a "
        "run that is still training.",
        epilog=examples("geofm plot runs/pretrain",
                         "geofm plot runs/finetune -o finetune_curves.png"),
        formatter_class=fmt)
    pl.add_argument("run", help="run directory (--output of pretrain, finetune or align)")
    pl.add_argument("-o", "--output", help="PNG to write (default: <run>/curves.png)")
    pl.set_defaults(func=_plot)


def add_configs(sub: Commands, fmt: type[argparse.HelpFormatter]) -> None:
    """``geofm configs``."""
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
    cf.set_defaults(func=_configs)
