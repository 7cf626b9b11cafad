"""The benchmark and check scripts import only names geofm still has.

The scripts in ``scripts/`` run outside the test suite (they take minutes), so a renamed or
moved function would otherwise only be noticed the next time someone measures.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "scripts").rglob("*.py"))


def _geofm_imports(path: Path) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from geofm... import name`` in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    return [(node.module, alias.name) for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
            and node.module.split(".")[0] == "geofm" for alias in node.names]


def test_there_are_scripts() -> None:
    assert any(p.name == "check_published.py" for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(REPO / "scripts")))
def test_every_geofm_name_a_script_imports_exists(path: Path) -> None:
    missing = []
    for module, name in _geofm_imports(path):
        mod = importlib.import_module(module)
        if not hasattr(mod, name):
            try:  # a submodule imported by name
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{module}.{name}")
    assert not missing, f"{path.name} imports names geofm no longer has: {missing}"
