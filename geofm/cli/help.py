"""How every ``geofm`` command explains itself: help text, defaults and examples."""

from __future__ import annotations

import argparse
from typing import Any

Commands = Any
"""The sub-command group of an argument parser (``parser.add_subparsers()``)."""

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


def examples(*lines: str) -> str:
    """An epilog listing example commands."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


def default_of(defaults: dict, dotted: str) -> str:
    """A run config's default value, as the help shows it ("default: 120")."""
    node: object = defaults
    for key in dotted.split("."):
        node = node[key]  # type: ignore[index]
    return f"default: {'from the config' if node is None else node}"


WEIGHTS_HELP = ("a published model's weights file, as released (with --init NAME; 'geofm "
                "models' lists the names and where to get each; default: none)")


class IntermixedParser(argparse.ArgumentParser):
    """A command parser whose options may come anywhere between its positionals.

    ``predict [MODEL] INPUT... --weights FILE`` has an optional positional before a list;
    argparse's own parsing hands a lone positional before an option to the list (``predict
    MODEL --weights FILE INPUT`` would leave ``INPUT`` unrecognised), its intermixed parsing
    collects every positional first and then assigns them.
    """

    _parsing = False

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        if self._parsing:  # the intermixed parser's own two passes
            return super().parse_known_args(args, namespace)
        self._parsing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._parsing = False


def add_model_argument(parser: argparse.ArgumentParser, help: str, init_help: str,
                       inputs: str = "") -> None:
    """The model a command runs, named one of two ways: the positional ``MODEL`` (a geofm
    checkpoint, as before) or ``--init REF`` (an encoder: a geofm checkpoint, a published
    model's name or ``torchgeo:Enum.MEMBER``, as ``finetune`` and ``align`` take it), with
    ``--weights FILE`` for a published name. :func:`model_ref` reads the choice back.

    Args:
        parser: The command's parser.
        help: What ``MODEL`` is.
        init_help: What ``--init`` is.
        inputs: For a command with input files after the model (``predict MODEL INPUT...``),
            what they are (the positional ``inputs``). With ``--init`` every positional is an
            input; the parser becomes an :class:`IntermixedParser` so that options may still
            come between ``MODEL`` and the inputs.
    """
    parser.add_argument("model", nargs="?", metavar="MODEL", help=f"{help} (or --init REF)")
    if inputs:
        parser.__class__ = IntermixedParser
        parser.usage = ("%(prog)s [options] MODEL INPUT [INPUT ...]\n"
                        "       %(prog)s [options] --init REF INPUT [INPUT ...]")
        parser.add_argument("inputs", nargs="+", metavar="INPUT",
                            help=f"{inputs} (with --init REF every positional is an input)")
    parser.add_argument("--init", metavar="REF", help=init_help)
    parser.add_argument("--weights", help=WEIGHTS_HELP)


def model_ref(a: argparse.Namespace, command: str, encoder_use: str = "") -> str:
    """The model named by :func:`add_model_argument`'s arguments.

    Args:
        a: The parsed arguments; for a command with inputs and ``--init``, a positional that
            argparse assigned to ``MODEL`` is moved to the front of ``a.inputs`` here.
        command: The command, for the error lines (``"eval"``).
        encoder_use: The option under which the command runs on an encoder alone (``"--knn"``,
            ``"--embed"``), when ``--init`` needs it; ``""`` when ``--init`` always fits.

    Raises:
        GeofmError: Neither or both of ``MODEL`` and ``--init``; ``--init`` without
            ``encoder_use`` (the command needs a task head, which an encoder lacks).
    """
    from geofm.errors import GeofmError
    from geofm.published.resolve import refuse_headless

    inputs = getattr(a, "inputs", None)
    if inputs is not None and a.init is not None and a.model is not None:
        a.inputs, a.model = [a.model, *inputs], None  # argparse fills MODEL first
    if inputs is not None and a.model is None and a.init is None:
        raise GeofmError(f"{command} takes a model and at least one input, got only "
                         f"{' '.join(inputs)}", hint=f"geofm {command} MODEL INPUT..., or "
                         f"geofm {command} --init REF INPUT...")
    if (a.model is None) == (a.init is None):
        given = (f"both MODEL ({a.model}) and --init ({a.init})" if a.init is not None
                 else "neither MODEL nor --init")
        raise GeofmError(f"{command} takes one model, got {given}",
                         hint="name a geofm checkpoint as MODEL, or an encoder as --init REF "
                              "(--weights FILE for a published name)")
    if a.init is None:
        return str(a.model)
    if encoder_use and not getattr(a, encoder_use.lstrip("-")):
        refuse_headless(a.init, f"{command} (without {encoder_use})", encoder_use=encoder_use)
    return str(a.init)
