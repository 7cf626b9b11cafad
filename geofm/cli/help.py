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
