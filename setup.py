"""Build hook: the repository's ``configs/`` and embedded reBEN sample ship inside the wheel.

Both stay where the repository keeps them (``configs/<task>/*.yaml``, ``datasets/reben_mini/``,
their only copy, used by the README, the tests and ``make demo``); building a wheel copies them
into ``geofm/resources/``, where :mod:`geofm.packaged` finds them in an installed geofm.
Everything else is declared in ``pyproject.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED = ("configs", "datasets/reben_mini")
"""Repository folders copied into ``geofm/resources/`` under the same relative paths."""


class BuildPyWithResources(build_py):
    """``build_py`` that also copies :data:`SHIPPED` into the built package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads them from the checkout
            return
        dest = Path(self.build_lib) / "geofm" / "resources"
        shutil.rmtree(dest, ignore_errors=True)  # no file deleted from the checkout lingers
        for folder in SHIPPED:
            for src in sorted((HERE / folder).rglob("*")):
                if src.is_file() and "__pycache__" not in src.parts:
                    target = dest / src.relative_to(HERE)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.copy_file(str(src), str(target))


setup(cmdclass={"build_py": BuildPyWithResources})
