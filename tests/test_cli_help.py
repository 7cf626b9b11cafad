"""Every --help teaches: help and defaults for every option, examples for every command."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from geofm.cli import (
    HelpFormatter,
    _finetune_summary,
    build_parser,
    main,
    query_arguments,
)
from geofm.errors import GeofmError


def _commands(parser: argparse.ArgumentParser, name: str = "geofm"
              ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command and sub-command parser with its full name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield f"{name} {sub_name}", sub
                yield from _commands(sub, f"{name} {sub_name}")


COMMANDS = list(_commands(build_parser()))


def test_every_command_is_walked() -> None:
    names = {n for n, _ in COMMANDS}
    assert {"geofm build reben", "geofm pretrain", "geofm plot", "geofm query",
            "geofm predict", "geofm export"} <= names


@pytest.mark.parametrize(("name", "parser"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_each_option_has_help_and_its_default(name: str, parser: argparse.ArgumentParser
                                              ) -> None:
    formatter = HelpFormatter(name)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        label = "/".join(action.option_strings) or action.dest
        assert action.help and len(action.help) > 5, f"{name} {label}: no help text"
        switch = isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction)
        if action.option_strings and not switch and not action.required:
            shown = formatter._get_help_string(action)
            assert "default" in shown or "required" in shown, \
                f"{name} {label}: the help does not say its default"


@pytest.mark.parametrize(("name", "parser"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_each_command_has_examples(name: str, parser: argparse.ArgumentParser) -> None:
    epilog = parser.epilog or ""
    assert epilog.startswith("examples:"), f"{name}: no examples"
    assert f"{name} " in epilog or name == "geofm build", f"{name}: examples of another command"
    assert parser.description, f"{name}: no description"


def test_defaults_shown_are_the_config_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.training.config import FINETUNE_DEFAULTS, PRETRAIN_DEFAULTS

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"optimizer steps (default: {PRETRAIN_DEFAULTS['trainer']['max_steps']})" in text
    assert "(default: runs/pretrain)" in text
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"peak learning rate (default: {FINETUNE_DEFAULTS['optim']['lr']})" in text


def test_predict_help_says_how_single_band_files_are_matched(
        capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "single-band file without a description is named by its file name" in text
    assert "B04.tif" in text


def test_query_takes_several_inputs_then_texts(tmp_path: Path) -> None:
    files = []
    for name in ("B02.tif", "B03.tif"):
        (tmp_path / name).write_bytes(b"")
        files.append(str(tmp_path / name))
    assert query_arguments([*files, "salt marsh", "forest"], []) == (
        files, ["salt marsh", "forest"])
    assert query_arguments(files[:1], ["water"]) == (files[:1], ["water"])
    # A missing raster is still an input (and fails as one), not a query text.
    assert query_arguments(["missing.tif", "marsh"], []) == (["missing.tif"], ["marsh"])
    with pytest.raises(GeofmError, match="no query text"):
        query_arguments(files, [])
    with pytest.raises(GeofmError, match="no input raster"):
        query_arguments(["salt marsh"], [])


def test_query_with_two_files_stacks_them(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    # Before, the second file was read as a query text; now it is a missing input.
    code = main(["query", str(tmp_path / "m.safetensors"), str(tmp_path / "a.tif"),
                 str(tmp_path / "b.tif"), "marsh", "-o", str(tmp_path / "o.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "not found" in err and "b.tif" not in err.split("not found")[1]


def test_finetune_summary_never_prints_an_empty_selection() -> None:
    line = _finetune_summary({"steps": 5, "val_metrics": {}, "selected_on": None})
    assert "None" not in line and "validation:" not in line
    assert "last step" in line
    line = _finetune_summary({"steps": 5, "val_metrics": {"miou": 0.25, "per_class": [1]},
                              "selected_on": "validation:miou"})
    assert line == "finetuned 5 steps; selected on validation:miou; validation: miou 0.2500"


def test_the_model_is_named_once_as_model_or_init(capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import one_line_error

    one_line_error(["eval", "--knn", "--data", "x.zarr"], capsys,
                   "eval takes one model, got neither MODEL nor --init")
    one_line_error(["export", "a.safetensors", "--init", "b.safetensors", "--onnx", "x.onnx"],
                   capsys, "export takes one model, got both MODEL (a.safetensors) and --init "
                   "(b.safetensors)")
    # --init names an encoder: the commands that need a task head say so, and what to add
    one_line_error(["predict", "--init", "dofa_base", "scene.tif", "-o", "x.tif"], capsys,
                   "predict (without --embed) needs a model with a task head",
                   "dofa_base is a published encoder", "add --embed")
    one_line_error(["eval", "--init", "pretrain.safetensors", "--data", "x.zarr"], capsys,
                   "eval (without --knn) needs a model with a task head", "--init names an "
                   "encoder (pretrain.safetensors)", "give a finetuned checkpoint as MODEL",
                   "add --knn")


def test_predict_options_may_come_between_model_and_inputs(
        capsys: pytest.CaptureFixture[str]) -> None:
    from geofm.cli.help import model_ref

    parser = build_parser()
    a = parser.parse_args(["predict", "m.safetensors", "--weights", "w.pth", "a.tif", "-o",
                           "x.tif", "b.tif"])
    assert (model_ref(a, "predict"), a.inputs) == ("m.safetensors", ["a.tif", "b.tif"])
    a = parser.parse_args(["predict", "a.tif", "--init", "dofa_base", "b.tif", "-o", "x.tif",
                           "--embed"])
    assert (model_ref(a, "predict", "--embed"), a.inputs) == ("dofa_base", ["a.tif", "b.tif"])
    a = parser.parse_args(["predict", "--init", "dofa_base", "a.tif", "-o", "x.tif", "--embed"])
    assert (model_ref(a, "predict", "--embed"), a.inputs) == ("dofa_base", ["a.tif"])
    from tests.conftest import one_line_error

    one_line_error(["predict", "m.safetensors", "-o", "x.tif"], capsys,
                   "predict takes a model and at least one input, got only m.safetensors")
