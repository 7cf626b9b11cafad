"""geofm imports one way: no cycles, lower layers never import upper ones, and only training
loads Lightning.

Imports are read from the source with :mod:`ast`, at any depth: an import inside a function is
still a dependency (it only runs later), so it counts.
"""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "geofm"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imported(node: ast.AST) -> list[str]:
    """The geofm modules (or, for ``from geofm import name``, the root) one statement imports."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "geofm"]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
            node.module.split(".")[0] == "geofm":
        submodules = [f"{node.module}.{a.name}" for a in node.names]
        if all(m in MODULES for m in submodules):  # from geofm.io import store
            return submodules
        return [node.module]
    return []


def _imports() -> dict[str, set[str]]:
    """Each geofm module and the geofm modules it imports (itself excluded)."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = {m for node in ast.walk(tree) for m in _imported(node)} - {name}
    return graph


def _unit(module: str) -> str:
    """The top-level package or module of geofm that ``module`` belongs to."""
    return ".".join(module.split(".")[:2])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    try:
        tuple(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        return list(reversed(e.args[1]))  # importer first
    return None


GRAPH = _imports()

# What each layer may never import (a prefix covers the package and everything in it).
FORBIDDEN = {
    "geofm.io": ("geofm.builders", "geofm.curation", "geofm.data", "geofm.models",
                 "geofm.objectives", "geofm.loading", "geofm.checkpoint", "geofm.training",
                 "geofm.evaluation", "geofm.predict", "geofm.export", "geofm.api", "geofm.cli"),
    "geofm.curation": ("geofm.builders", "geofm.models", "geofm.training", "geofm.evaluation",
                       "geofm.predict", "geofm.api", "geofm.cli"),
    "geofm.data": ("geofm.builders", "geofm.models", "geofm.training", "geofm.evaluation",
                   "geofm.predict", "geofm.api", "geofm.cli"),
    "geofm.models": ("geofm.loading", "geofm.objectives", "geofm.training", "geofm.evaluation",
                     "geofm.predict", "geofm.export", "geofm.api", "geofm.cli"),
    "geofm.evaluation": ("geofm.builders", "geofm.training", "geofm.predict", "geofm.api",
                         "geofm.cli"),
    "geofm.predict": ("geofm.builders", "geofm.training", "geofm.evaluation", "geofm.api",
                      "geofm.cli"),
}


def test_no_import_cycle_between_modules() -> None:
    # The root package's lazy ``geofm.load`` is the only import of it; nothing imports it back.
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH) or [])


def test_no_import_cycle_between_top_level_packages() -> None:
    units: dict[str, set[str]] = {}
    for module, imported in GRAPH.items():
        if module != "geofm":
            units.setdefault(_unit(module), set()).update(
                _unit(m) for m in imported if _unit(m) != _unit(module))
    assert _cycle(units) is None, " -> ".join(_cycle(units) or [])


def test_nothing_imports_upward_from_the_root_package() -> None:
    # ``from geofm import __version__`` in a writer made the root package a dependency of
    # modules it imports; names come from the module that defines them.
    upward = sorted(m for m, imported in GRAPH.items() if m != "geofm" and "geofm" in imported)
    assert not upward, upward


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_upper_ones(layer: str) -> None:
    bad = sorted(f"{m} imports {t}" for m, imported in GRAPH.items()
                 if _unit(m) == layer for t in imported if t.startswith(FORBIDDEN[layer]))
    assert not bad, bad


def test_the_open_clip_text_and_align_modules_import_one_way() -> None:
    # openclip builds on text and align; they read open_clip weights without it.
    for module in ("geofm.models.text", "geofm.models.align", "geofm.models.openclip_weights"):
        assert "geofm.models.openclip" not in GRAPH[module], module


def test_only_training_imports_lightning() -> None:
    outside = []
    for name, path in MODULES.items():
        if name.startswith("geofm.training"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n.split(".")[0] in ("lightning", "pytorch_lightning") for n in names):
                outside.append(name)
    assert not outside, outside


@pytest.mark.slow
def test_evaluation_prediction_and_the_api_do_not_load_lightning() -> None:
    # A fresh interpreter: this test process may have loaded Lightning already.
    code = (
        "import json, sys\n"
        "seen = {}\n"
        "for name in ('geofm.evaluation.finetuned', 'geofm.evaluation.aligned', "
        "'geofm.predict', 'geofm.api'):\n"
        "    __import__(name)\n"
        "    seen[name] = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('lightning', 'pytorch_lightning', 'lightning_fabric'))\n"
        "print(json.dumps(seen))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    seen = json.loads(r.stdout.splitlines()[-1])
    assert len(seen) == 4 and not any(seen.values()), {k: v[:3] for k, v in seen.items()}
