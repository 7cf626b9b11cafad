"""What ships with geofm: the run configs (recipes) and the embedded real reBEN sample.

In the source checkout they live at the top of the repository, ``configs/<task>/<name>.yaml`` and
``datasets/reben_mini/``; that is their only copy. Building a wheel copies both into the package
(``geofm/resources/configs/`` and ``geofm/resources/datasets/reben_mini/``, see ``setup.py``), so
an installed geofm finds them with :mod:`importlib.resources` from any working directory.

- :func:`list_configs` / :func:`resolve_config`: recipes by name (``reben_s1s2``,
  ``pretrain/reben_s1s2``, ``reben_s1s2.tiny``) as well as by path.
- :func:`sample_store`: the sample built into a chip store in the user cache on first use
  (:func:`cache_dir`: ``$GEOFM_CACHE``, else ``$XDG_CACHE_HOME/geofm``, else ``~/.cache/geofm``).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from geofm.errors import GeofmError, StoreError

TASKS = ("pretrain", "finetune", "align")
"""Config folders, in the order ``geofm configs`` lists them."""

SAMPLE = "reben_mini"
"""The embedded sample: six real reBEN Sentinel-1 + Sentinel-2 patch pairs."""

CACHE_ENV = "GEOFM_CACHE"
"""Environment variable naming the cache folder (the sample store is built there)."""


@dataclass(frozen=True)
class ConfigInfo:
    """A shipped run config.

    Attributes:
        name: What ``--config`` accepts (the file name without ``.yaml``).
        task: ``pretrain``, ``finetune`` or ``align``.
        description: The first sentence of the file's leading comment.
        path: The YAML file.
    """

    name: str
    task: str
    description: str
    path: Path


def resource_root() -> Path:
    """The folder holding ``configs/`` and ``datasets/``: inside the installed package, or the
    source checkout when geofm runs from one.

    Raises:
        GeofmError: Neither exists (a broken or zipped install).
    """
    shipped = resources.files("geofm").joinpath("resources")
    if isinstance(shipped, Path) and shipped.is_dir():
        return shipped
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "configs").is_dir() and (checkout / "datasets").is_dir():
        return checkout
    raise GeofmError("geofm's shipped configs and sample are missing from this install",
                     Path(str(shipped)), "reinstall geofm from a wheel or a source checkout")


def configs_dir() -> Path:
    """The folder of shipped configs, one sub-folder per task."""
    return resource_root() / "configs"


def sample_source() -> Path:
    """The embedded reBEN sample (a reBEN release's layout: ``metadata.parquet`` and folders)."""
    return resource_root() / "datasets" / SAMPLE


def describe(path: Path) -> str:
    """A config's one-line description: its leading comment up to the first full stop or colon
    (commands quoted in the comment are left out)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line[1:].strip()
        if not text or text.startswith("geofm ") or line.startswith("#   "):
            break
        lines.append(text)
    sentence = re.split(r"(?<=[^.]\.)\s|\.$|:\s", " ".join(lines), maxsplit=1)[0].strip()
    return sentence.rstrip(".")


def list_configs() -> list[ConfigInfo]:
    """Every shipped config, by task (pretrain, finetune, align) and name."""
    root = configs_dir()
    out = []
    for task in TASKS:
        # A recipe, then its tiny twin.
        for path in sorted((root / task).glob("*.yaml"), key=lambda p: (p.name.split(".")[0],
                                                                       p.name.count("."))):
            out.append(ConfigInfo(path.name[: -len(".yaml")], task, describe(path), path))
    return out


def configs_table(task: str | None = None) -> str:
    """The shipped configs (of ``task``, default all) as a table: name, task, description."""
    shown = [c for c in list_configs() if task in (None, c.task)]
    width = max(len(c.name) for c in shown)
    return "\n".join([f"{'name':<{width}}  {'task':<8}  description",
                      *(f"{c.name:<{width}}  {c.task:<8}  {c.description}" for c in shown)])


def config_text(spec: str) -> tuple[Path, str]:
    """A shipped config's path and YAML text, by name (see :func:`find_config`)."""
    path = find_config(spec).path
    return path, path.read_text(encoding="utf-8")


def find_config(spec: str) -> ConfigInfo:
    """A shipped config by name, of any task (``reben_s1s2`` or ``pretrain/reben_s1s2``).

    Raises:
        GeofmError: No shipped config has that name (the line lists those that exist).
    """
    stem = re.sub(r"\.ya?ml$", "", spec)
    task, _, name = stem.rpartition("/")
    shipped = list_configs()
    for c in shipped:
        if c.name == name and task in ("", c.task):
            return c
    raise GeofmError(f"no shipped config named {spec!r}",
                     hint="shipped: " + ", ".join(f"{c.task}/{c.name}" for c in shipped))


def resolve_config(spec: str, task: str) -> Path:
    """The YAML file ``--config`` means: an existing file, or a shipped config's name.

    Args:
        spec: A path, or a name (``reben_s1s2``, ``reben_s1s2.yaml``, ``pretrain/reben_s1s2``).
        task: The command asking (``pretrain``, ``finetune`` or ``align``).

    Raises:
        GeofmError: In one line: the path does not exist, or the name is unknown (with the names
            that exist), or it names another command's config.
    """
    given = Path(spec).expanduser()
    if given.is_file():
        return given
    stem = re.sub(r"\.ya?ml$", "", spec)
    wanted, _, name = stem.rpartition("/")
    shipped = list_configs()
    if wanted in ("", *TASKS):
        same_name = [c for c in shipped if c.name == name]
        for c in same_name:
            if c.task == (wanted or task) == task:
                return c.path
        elsewhere = [c for c in same_name if c.task == (wanted or c.task)]
        if elsewhere:
            other = elsewhere[0].task
            raise GeofmError(f"{spec!r} is a shipped {other} config, not a {task} one",
                             hint=f"run it with 'geofm {other} --config {name}'")
    if wanted not in ("", *TASKS) or stem != spec:  # a path, not a name
        same = [c.name for c in shipped if c.task == task and c.name == Path(stem).name]
        hint = (f"the shipped config of that name is '--config {same[0]}'" if same
                else "give an existing file, or a shipped config's name (see 'geofm configs')")
        raise GeofmError("config file not found", spec, hint)
    names = ", ".join(c.name for c in shipped if c.task == task)
    raise GeofmError(f"no config file or shipped {task} config named {spec!r}",
                     hint=f"shipped {task} configs: {names}")


def cache_dir() -> Path:
    """geofm's cache folder: ``$GEOFM_CACHE``, else ``$XDG_CACHE_HOME/geofm``, else
    ``~/.cache/geofm`` (``%LOCALAPPDATA%\\geofm`` on Windows)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():  # the XDG spec ignores relative paths
        return Path(xdg) / "geofm"
    if os.name == "nt" and os.environ.get("LOCALAPPDATA"):
        return Path(os.environ["LOCALAPPDATA"]) / "geofm"
    return Path.home() / ".cache" / "geofm"


def _say(message: str) -> None:
    print(f"geofm: {message}", file=sys.stderr, flush=True)


def _built_from(store: Path, src: Path) -> bool:
    """Whether ``store`` is a complete store of this geofm's schema built from ``src``."""
    import pandas as pd

    from geofm.builders.reben import fingerprint
    from geofm.io.store import open_store

    try:
        attrs = open_store(store).attrs
        meta = pd.read_parquet(src / "metadata.parquet")
        return attrs["provenance"].get("fingerprint") == fingerprint(src, meta)
    except (GeofmError, OSError, KeyError, ValueError):
        return False


def sample_store(cache: str | Path | None = None, quiet: bool = False) -> Path:
    """The embedded reBEN sample as a chip store, built into the cache on first use.

    The store is built under a temporary name and renamed when complete, so an interrupted
    build or two processes building at once never leave a half-written store in its place. A
    cached store that is incomplete, of another schema version or built from other files is
    rebuilt.

    Args:
        cache: Folder to keep the store in (default :func:`cache_dir`).
        quiet: Do not say which store is used when it is already built (a build is always
            announced on stderr, with its location).

    Returns:
        ``<cache>/reben_mini.zarr``.

    Raises:
        GeofmError: The sample is missing from the install, or the cache is not writable.
    """
    from geofm.builders.reben import build_reben

    src = sample_source()
    if not (src / "metadata.parquet").is_file():
        raise GeofmError("no --data given and the embedded sample is not available", src,
                         "pass --data STORE")
    folder = Path(cache) if cache is not None else cache_dir()
    out = folder / f"{SAMPLE}.zarr"
    if _built_from(out, src):
        if not quiet:
            _say(f"using the embedded reBEN sample store {out}")
        return out
    _say(f"building the embedded reBEN sample store in {out} (first use; set {CACHE_ENV} to "
         "keep it elsewhere)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot create the cache folder ({e.strerror})", folder,
                         f"set {CACHE_ENV} to a writable folder, or pass --data STORE") from None
    if not os.access(folder, os.W_OK):
        raise StoreError("the cache folder is not writable", folder,
                         f"set {CACHE_ENV} to a writable folder, or pass --data STORE")
    tmp = folder / f".{SAMPLE}.{os.getpid()}.zarr"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        build_reben(src, tmp, scheduler="synchronous", progress=False)
        if out.exists() and not _built_from(out, src):
            shutil.rmtree(out, ignore_errors=True)  # stale: another version's or unfinished
        try:
            tmp.rename(out)
        except OSError:  # another process finished first; its store is as good as ours
            if not _built_from(out, src):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
