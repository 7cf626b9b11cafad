"""A fresh environment holding geofm's wheel, as a user installs it (used by test_wheel.py and
scripts/bench_headline.py).

The wheel is built without build isolation (nothing is downloaded) from the files a source
distribution carries, and installed with ``--no-deps`` into a new venv. Its dependencies come
from this interpreter's site-packages through a folder of links that leaves out geofm itself
(an editable install here) and, by default, the optional extras' packages, so what runs there is
the wheel with the core dependencies only.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from geofm.extras import EXTRAS

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "geofm",
           "configs", "datasets/reben_mini")
"""What a wheel is built from (the source distribution's contents)."""


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 900
        ) -> subprocess.CompletedProcess[str]:
    """Run ``cmd``; a non-zero exit raises with the tail of its output."""
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise RuntimeError(f"{cmd}: exit {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r


def clean_env() -> dict[str, str]:
    """This process's environment without ``PYTHON*`` and ``VIRTUAL_ENV`` settings (a
    ``PYTHONPATH`` to a checkout would make geofm look installed already)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    return env | {"PYTHONNOUSERSITE": "1"}


def build_wheel(tmp: Path) -> Path:
    """geofm's wheel, built in ``tmp`` from a copy of :data:`SOURCES`."""
    src = tmp / "src"
    for name in SOURCES:
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp / "dist"), str(src)], tmp, clean_env())
    (wheel,) = (tmp / "dist").glob("geofm-*.whl")
    return wheel


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _hidden_entries(folder: str, hide_extras: bool) -> set[str]:
    """Entries of the site-packages ``folder`` that belong to geofm (an editable install) or,
    with ``hide_extras``, to the extras' packages."""
    hide = {"geofm"} | ({_normal(p) for _, packages in EXTRAS.values() for p in packages}
                        if hide_extras else set())
    hidden: set[str] = set()
    for dist in metadata.distributions(path=[folder]):
        if _normal(dist.metadata["Name"] or "") in hide:
            hidden.update(f.parts[0] for f in dist.files or [] if f.parts[0] != "..")
            hidden.add(Path(str(dist._path)).name)  # its .dist-info folder, listed or not
    return hidden


def install(tmp: Path, wheel: Path, hide_extras: bool = True) -> tuple[Path, dict[str, str]]:
    """A venv in ``tmp/venv`` with ``wheel`` installed.

    Returns:
        Its bin folder, and an environment for subprocesses that sees neither the source tree
        (no ``PYTHONPATH``, no user site) nor another venv, with the bin folder first on
        ``PATH``.
    """
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp)
    deps = tmp / "deps"
    deps.mkdir()
    for folder in dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib")):
        hidden = _hidden_entries(folder, hide_extras)
        for entry in os.listdir(folder):
            skip = entry in hidden or entry.endswith(".pth") or entry == "__pycache__"
            if not skip and not (deps / entry).exists():
                (deps / entry).symlink_to(Path(folder) / entry)
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / "python"
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
               tmp).stdout.strip()
    Path(site, "geofm_deps.pth").write_text(f"{deps}\n")  # a path line: nothing is executed
    env = clean_env()
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
         str(wheel)], tmp, env)
    return bindir, env | {"PATH": f"{bindir}{os.pathsep}{env.get('PATH', '')}"}
