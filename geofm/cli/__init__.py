"""The ``geofm`` command: a thin shell over the Python API.

Each command parses its arguments, calls one function of the API and prints what it returns;
the commands live in one module per group: :mod:`~geofm.cli.data` (build, split, info,
validate, caption), :mod:`~geofm.cli.train` (pretrain, finetune, align, plot, configs),
:mod:`~geofm.cli.evaluate` (eval, zeroshot, retrieval), :mod:`~geofm.cli.predict` (predict,
query) and :mod:`~geofm.cli.models` (export, models).

Every user error is a :class:`~geofm.errors.GeofmError`, printed as one line on stderr with a
non-zero exit and no traceback; warnings are one ``geofm: warning: ...`` line each.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from geofm.cli.help import EXAMPLES, HelpFormatter
from geofm.cli.train import _finetune_summary

__all__ = ["HelpFormatter", "_finetune_summary", "build_parser", "main", "query_arguments"]


def __getattr__(name: str) -> Any:
    # geofm.predict pulls in torch and GDAL; the command loads them only when it runs.
    if name == "query_arguments":
        from geofm.predict.query import query_arguments

        return query_arguments
    raise AttributeError(f"module 'geofm.cli' has no attribute {name!r}")


def build_parser() -> argparse.ArgumentParser:
    """The ``geofm`` argument parser with every subcommand."""
    from geofm.cli import data, evaluate, models, predict, train

    fmt = HelpFormatter
    p = argparse.ArgumentParser(
        prog="geofm", description="Remote-sensing foundation models: build chip stores, "
        "pretrain band-aware encoders, finetune and map.", epilog=EXAMPLES, formatter_class=fmt)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for add in (data.add_build, data.add_split, data.add_info, data.add_validate,
                train.add_pretrain, train.add_finetune, data.add_caption, train.add_align,
                train.add_plot, evaluate.add_zeroshot, evaluate.add_retrieval, evaluate.add_eval,
                predict.add_predict, predict.add_query, models.add_export, models.add_models,
                train.add_configs):
        add(sub, fmt)
    return p


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
        from geofm._version import __version__

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
