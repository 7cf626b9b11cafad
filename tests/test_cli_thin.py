"""The command line is a thin shell over the API: every command parses its arguments, calls
the API and prints what it returns, without loops, file checks or checkpoint-header reads."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CLI = Path(__file__).resolve().parents[1] / "geofm" / "cli"
COMMAND_MODULES = ["data.py", "train.py", "evaluate.py", "predict.py", "models.py"]
FILE_METHODS = {"exists", "is_file", "is_dir", "read_text", "read_bytes", "write_text",
                "iterdir", "glob", "rglob", "mkdir", "unlink", "rmtree", "stat"}


def _commands(module: str) -> list[ast.FunctionDef]:
    """The functions of ``module`` that run a command (they take the parsed arguments)."""
    tree = ast.parse((CLI / module).read_text(encoding="utf-8"))
    return [node for node in tree.body if isinstance(node, ast.FunctionDef)
            and [arg.arg for arg in node.args.args] == ["a"]]


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_commands_only_call_the_api(module: str) -> None:
    commands = _commands(module)
    assert commands, module
    for fn in commands:
        where = f"{module}:{fn.name}"
        imports = [n for n in ast.walk(fn) if isinstance(n, ast.ImportFrom)]
        assert imports and all((n.module or "").startswith("geofm.") for n in imports), where
        for node in ast.walk(fn):
            assert not isinstance(node, ast.For | ast.While | ast.AsyncFor), where
            if isinstance(node, ast.Call):
                name = (node.func.attr if isinstance(node.func, ast.Attribute)
                        else getattr(node.func, "id", ""))
                assert name not in FILE_METHODS | {"open", "Path"}, f"{where} calls {name}"
            if isinstance(node, ast.Name | ast.Attribute):
                assert "header" not in (getattr(node, "id", "") or getattr(node, "attr", "")), \
                    where


def test_every_command_has_a_runner() -> None:
    from geofm.cli import build_parser

    runners = {fn.name for m in COMMAND_MODULES for fn in _commands(m)}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, command in sub.choices.items():
        nested = [a for a in command._actions if a.__class__.__name__ == "_SubParsersAction"]
        for leaf in (nested[0].choices.values() if nested else [command]):
            assert leaf.get_default("func").__name__ in runners, name
