"""Building stores on the default command line: bad sources, full disks and unreadable images.

Every build here runs through the real ``geofm`` command in a subprocess, on the default local
Dask cluster (worker processes) unless a test says otherwise, and must end in exactly the line
``--scheduler synchronous`` prints: exit 2, no traceback, no log line of ``distributed``.
"""

from __future__ import annotations

import errno
import io
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import geofm
from geofm import errors
from geofm.errors import BuildError, DiskFullError, GeofmError, StoreError

from .conftest import REBEN_MINI, REPO, S2_SCENE
from .modis_fixture import write_mod021km

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

PATCH = "S2A_MSIL2A_20170617T113321_N9999_R080_T29UPU_36_85"
BAR = re.compile(r"^[\w ]+:\s+\d+%\|")  # a tqdm progress bar, on stderr like the error line
DROP_CAPS = ["setpriv", "--inh-caps=-dac_override,-dac_read_search",
             "--bounding-set=-dac_override,-dac_read_search"]


def _geofm(*argv: str | Path, prefix: list[str] | None = None,
           timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    cmd = [*(prefix or []), sys.executable, "-m", "geofm.cli", *map(str, argv)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=REPO)


def _one_line(p: subprocess.CompletedProcess[str]) -> str:
    """The run's single error line; fails on anything else it printed."""
    assert p.returncode == 2, p.stderr
    for text in (p.stdout, p.stderr):
        assert "Traceback" not in text and "Compute Failed" not in text, text
        assert "distributed." not in text and " - WARNING - " not in text, text
    assert p.stdout == ""
    lines = [seg for line in p.stderr.splitlines() for seg in line.split("\r")
             if seg.strip() and not BAR.match(seg)]
    assert len(lines) == 1 and lines[0].startswith("geofm: error: "), p.stderr
    return lines[0]


def _band(root: Path, band: str) -> Path:
    return root / "BigEarthNet-S2" / "_".join(PATCH.split("_")[:-2]) / PATCH / f"{PATCH}_{band}.tif"


def _not_complete(out: Path) -> None:
    if out.exists():
        with pytest.raises(GeofmError):
            geofm.open_store(out)


# --- errors survive pickling -------------------------------------------------------------------


def _error_classes() -> list[type[GeofmError]]:
    import geofm.training.pretrain  # noqa: F401 - defines a GeofmError of its own

    found, todo = [], [GeofmError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


class _OwnSignature(BuildError):
    """A subclass whose constructor takes other arguments than ``args`` holds."""

    def __init__(self, count: int, where: Path):
        super().__init__(f"{count} things wrong", where, "fix them")
        self.count = count


def _roundtrip(obj: object) -> Any:
    """Pickle with the classes' own reducers (distributed registers tblib's for some)."""
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf)
    pickler.dispatch_table = {}
    pickler.dump(obj)
    return pickle.loads(buf.getvalue())


def test_every_error_class_pickles_to_the_same_class_line_and_attributes() -> None:
    classes = _error_classes()
    assert {GeofmError, StoreError, BuildError, DiskFullError} <= set(classes)
    for cls in classes:
        made = _OwnSignature(3, Path("/d/x.tif")) if cls is _OwnSignature else \
            cls("cannot read raster", Path("/d/x.tif"), "re-download it")
        try:
            raise made from OSError("the error it replaced")
        except GeofmError as e:
            back = _roundtrip(e)
        assert type(back) is cls and str(back) == str(made), cls
        assert (back.path, back.hint) == (made.path, made.hint) == ("/d/x.tif", made.hint)
        assert back.__cause__ is None and back.__traceback__ is None
    assert _roundtrip(_OwnSignature(3, Path("/d"))).count == 3
    plain = _roundtrip(GeofmError("only a message"))
    assert str(plain) == "only a message" and plain.path is None and plain.hint is None


def _raise_replacing(region: int) -> None:
    try:
        raise OSError("an error that may not unpickle")
    except OSError as e:
        raise BuildError("region broken", Path(f"/d/{region}.tif"), "fix it") from e


def test_a_task_error_travels_without_its_cause_under_tblib() -> None:
    """distributed registers tblib's reducers for the exception classes it has seen; the
    runner still hands back the line alone."""
    import distributed.utils  # noqa: F401 - installs tblib's reducers
    from tblib import pickling_support

    from geofm.builders.runner import _Guarded

    pickling_support.install()
    failed = _Guarded(_raise_replacing, None)(3)
    back = pickle.loads(pickle.dumps(failed)).error
    assert type(back) is BuildError and str(back) == "/d/3.tif: region broken — fix it"
    assert back.__cause__ is None and back.__traceback__ is None


def test_error_from_a_dask_worker_keeps_its_class(tmp_path: Path) -> None:
    """The runner on a real local cluster hands back the worker's error as it was raised."""
    from geofm.builders.runner import run_regions

    with pytest.raises(BuildError) as info:
        run_regions(_FailingTask(str(tmp_path / "x.tif")), [0, 1, 2], workers=2, progress=False)
    assert str(info.value) == f"{tmp_path / 'x.tif'}: region broken — fix it"
    assert info.value.path == str(tmp_path / "x.tif")


class _FailingTask:
    def __init__(self, path: str):
        self.path = path

    def __call__(self, region: int) -> None:
        if region == 1:
            try:
                import rasterio

                rasterio.open(self.path)  # the GDAL error, whose class does not unpickle
            except Exception:
                raise BuildError("region broken", self.path, "fix it")  # noqa: B904


# --- reBEN on the default command line ---------------------------------------------------------


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:2000])


REBEN_CASES = {
    "zero_bytes": (lambda root: _band(root, "B8A").write_bytes(b""), "empty: 0 bytes"),
    "truncated": (lambda root: _truncate(_band(root, "B8A")), "cannot read raster"),
    "missing_band": (lambda root: _band(root, "B03").unlink(), "band file missing"),
}


@pytest.mark.parametrize("workers", [None, "2"], ids=["default", "workers2"])
@pytest.mark.parametrize("case", sorted(REBEN_CASES))
def test_reben_bad_band_same_line_as_synchronous(case: str, workers: str | None,
                                                 reben_copy: Path, tmp_path: Path) -> None:
    damage, needle = REBEN_CASES[case]
    damage(reben_copy)
    out = tmp_path / "o.zarr"
    sync = _one_line(_geofm("build", "reben", reben_copy, tmp_path / "s.zarr",
                            "--scheduler", "synchronous"))
    line = _one_line(_geofm("build", "reben", reben_copy, out,
                            *(["--workers", workers] if workers else [])))
    assert line == sync.replace("s.zarr", "o.zarr")
    assert needle in line and PATCH in line
    _not_complete(out)


def test_reben_failure_among_many_regions_is_quiet(reben_copy: Path, tmp_path: Path) -> None:
    """One bad region of six while others run: no warning about cancelled or killed tasks."""
    _band(reben_copy, "B8A").write_bytes(b"")
    code = ("import sys; from geofm.cli import main; import geofm.builders.reben as r; "
            "f = r.build_reben; r.build_reben = lambda *a, **k: f(*a, **k, shard_chips=1); "
            "sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, "-c", code, "build", "reben", str(reben_copy),
                        str(tmp_path / "o.zarr"), "--workers", "2"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert "empty: 0 bytes" in _one_line(p)
    _not_complete(tmp_path / "o.zarr")


def test_bad_engine_settings_refused_before_writing(tmp_path: Path) -> None:
    line = _one_line(_geofm("build", "reben", REBEN_MINI, tmp_path / "o.zarr", "--workers", "0"))
    assert "--workers must be at least 1 (got 0)" in line
    line = _one_line(_geofm("build", "modis", tmp_path, tmp_path / "o.zarr", "--scheduler",
                            "bogus"))
    assert "--scheduler 'bogus' is not a Dask scheduler address" in line
    for limit in ("0", "-1"):  # -1 once built all patches but the last
        line = _one_line(_geofm("build", "reben", REBEN_MINI, tmp_path / "o.zarr", "--limit",
                                limit))
        assert f"--limit must be at least 1 (got {limit})" in line
    assert not (tmp_path / "o.zarr").exists()


def test_unreachable_scheduler_is_one_error() -> None:
    import dask

    from geofm.builders.runner import run_regions

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), \
            pytest.raises(GeofmError, match=r"cannot reach the Dask scheduler at tcp://127\.0\."):
        run_regions(print, [0], scheduler="tcp://127.0.0.1:1", progress=False)


# --- MODIS and OpticalRS on the default command line -------------------------------------------


@pytest.fixture
def granule(tmp_path: Path) -> Path:
    d = tmp_path / "modis"
    d.mkdir()
    return write_mod021km(d, lines=130, frames=140)


@pytest.mark.parametrize("workers", [None, "2"], ids=["default", "workers2"])
@pytest.mark.parametrize("damage", ["zero_bytes", "truncated"])
def test_modis_bad_granule_same_line_as_synchronous(damage: str, workers: str | None,
                                                    granule: Path, tmp_path: Path) -> None:
    granule.write_bytes(b"" if damage == "zero_bytes" else granule.read_bytes()[:500_000])
    args = ("build", "modis", granule.parent)
    sync = _one_line(_geofm(*args, tmp_path / "o.zarr", "--chip", "64",
                            "--scheduler", "synchronous"))
    line = _one_line(_geofm(*args, tmp_path / "o.zarr", "--chip", "64",
                            *(["--workers", workers] if workers else [])))
    assert line == sync and granule.name in line and "not a readable HDF4 file" in line
    _not_complete(tmp_path / "o.zarr")


def _manifest(tmp_path: Path, *images: Path) -> Path:
    m = tmp_path / "manifest.yaml"
    paths = "".join(f"      - {p}\n" for p in images)
    m.write_text(f"sources:\n  - name: a\n    path:\n{paths}    role: pretrain\n"
                 "    licence: test\n")
    return m


def _unreadable(kind: str, tmp_path: Path) -> tuple[Path, list[str], str]:
    """An image GDAL cannot decode; the command prefix that makes it so; the reason shown."""
    d = tmp_path / "imgs"
    d.mkdir(exist_ok=True)
    f = d / f"{kind}.tif"
    if kind == "zero_bytes":
        f.write_bytes(b"")
        return f, [], "empty file (0 bytes)"
    if kind == "corrupt":
        f.write_bytes(S2_SCENE.read_bytes()[:3000])
        return f, [], "failed"
    shutil.copy(S2_SCENE, f)
    f.chmod(0)
    if os.geteuid() != 0:
        return f, [], "Permission denied"
    # root reads any file; without the two DAC capabilities it cannot
    if not shutil.which("setpriv") or subprocess.run(
            [*DROP_CAPS, "cat", str(f)], capture_output=True).returncode == 0:
        pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
    return f, DROP_CAPS, "Permission denied"


@pytest.mark.parametrize("kind", ["permissions", "corrupt", "zero_bytes"])
def test_opticalrs_unreadable_image_is_named(kind: str, tmp_path: Path) -> None:
    bad, prefix, reason = _unreadable(kind, tmp_path)
    # the only image: the build fails and names it
    line = _one_line(_geofm("build", "opticalrs", _manifest(tmp_path, bad), tmp_path / "o.zarr",
                            "--chip", "64", prefix=prefix))
    assert str(bad) in line and reason in line and "1 unreadable" in line, line
    assert not (tmp_path / "o.zarr").exists()
    # beside a good image: the build succeeds and says which image it left out
    good = tmp_path / "imgs" / "good.tif"
    shutil.copy(S2_SCENE, good)
    p = _geofm("build", "opticalrs", _manifest(tmp_path, good, bad), tmp_path / "p.zarr",
               "--chip", "64", "--quiet", prefix=prefix)
    assert p.returncode == 0, p.stderr
    assert p.stderr.splitlines() == [
        f"geofm: warning: 1 unreadable image(s) left out: a/{bad.name} ({_detail(tmp_path)}); "
        "all are listed in report.md"]
    assert reason in p.stderr
    assert geofm.open_store(tmp_path / "p.zarr").chips["image_path"].str.endswith(
        "good.tif").all()


def _detail(tmp_path: Path) -> str:
    import json

    report = json.loads((tmp_path / "p.zarr" / "report.json").read_text())
    return report["unreadable"][0]["detail"]


# --- a full disk -------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[tuple[Path, object]]:
    """A tmpfs mount of a given size (root only); yields its path and a resize function."""
    mnt = tmp_path / "disk"
    mnt.mkdir()

    def mount(size: str, remount: bool = False) -> None:
        opts = f"remount,size={size}" if remount else f"size={size}"
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)],
                           capture_output=True, text=True)
        if p.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()})")

    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    yield mnt, mount
    subprocess.run(["umount", str(mnt)], capture_output=True)


def test_reben_disk_too_small_refused_before_writing(small_disk, tmp_path: Path) -> None:
    mnt, mount = small_disk
    mount("1m")
    out = mnt / "o.zarr"
    line = _one_line(_geofm("build", "reben", REBEN_MINI, out))
    assert line.startswith(f"geofm: error: {out}: not enough free space: ")
    assert "the store (6 chips) needs about 1.2 MB to 4.9 MB" in line
    assert not out.exists()


def test_reben_disk_full_while_writing_then_resumed(small_disk, tmp_path: Path) -> None:
    mnt, mount = small_disk
    mount("2m")  # passes the up-front check (1.2 MB), the store takes 2.7 MB
    out = mnt / "o.zarr"
    line = _one_line(_geofm("build", "reben", REBEN_MINI, out))
    assert re.fullmatch(rf"geofm: error: {re.escape(str(out))}: no space left on device "
                        r"\([\d.]+ [kM]?B free; the rest of the output needs up to 4.9 MB\) — "
                        r"free space there or write to another disk, then rerun the same "
                        r"command to resume", line), line
    _not_complete(out)
    mount("8m", remount=True)
    p = _geofm("build", "reben", REBEN_MINI, out, "--quiet")
    assert p.returncode == 0, p.stderr
    assert len(geofm.open_store(out)) == 6


def test_modis_disk_full_in_a_worker(small_disk, granule: Path) -> None:
    mnt, mount = small_disk
    mount("500k")  # the store takes about 800 kB
    out = mnt / "o.zarr"
    line = _one_line(_geofm("build", "modis", granule.parent, out, "--chip", "64",
                            "--workers", "2"))
    assert line.startswith(f"geofm: error: {out}: no space left on device ("), line
    _not_complete(out)


def test_opticalrs_disk_full(small_disk, tmp_path: Path) -> None:
    mnt, mount = small_disk
    mount("100k")  # the store and its scan take about 270 kB
    good = tmp_path / "good.tif"
    shutil.copy(S2_SCENE, good)
    out = mnt / "o.zarr"
    line = _one_line(_geofm("build", "opticalrs", _manifest(tmp_path, good), out, "--chip", "64"))
    assert line.startswith(f"geofm: error: {out}: no space left on device ("), line
    _not_complete(out)


def test_enospc_anywhere_in_writing_is_one_line(tmp_path: Path, monkeypatch) -> None:
    """Without a small disk to mount: the file system's ENOSPC, raised by zarr's writes."""
    import zarr.storage

    from geofm.builders.reben import build_reben

    async def full(*a: object, **k: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr.storage.LocalStore, "set", full)
    out = tmp_path / "o.zarr"
    with pytest.raises(DiskFullError, match=r"no space left on device \(.* free; the rest of "
                       r"the output needs up to 4.9 MB\)") as info:
        build_reben(REBEN_MINI, out, scheduler="synchronous", progress=False)
    assert info.value.path == str(out)
    _not_complete(out)


def test_disk_full_detection() -> None:
    from geofm.io.space import human_bytes, is_disk_full

    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    wrapped = RuntimeError("write failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "x")
    assert is_disk_full(wrapped)
    assert is_disk_full(OSError("IOError: [Errno 28] No space left on device"))  # pyarrow's
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert human_bytes(999) == "999 B" and human_bytes(4_838_400) == "4.8 MB"
    assert errors.DiskFullError.__mro__[1] is GeofmError
