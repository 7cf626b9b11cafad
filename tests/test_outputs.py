"""Output paths checked before work starts: files (predict, export), run directories (training)
and chip stores (builders), each refused in one line."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from geofm.errors import GeofmError, StoreError
from geofm.io.outputs import check_output, check_writable, require_suffix
from geofm.io.writer import StoreSpec, check_store_output, create_store

needs_permissions = pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0,
                                       reason="needs a non-root POSIX user")


def _one_line(e: pytest.ExceptionInfo[GeofmError], *parts: str) -> None:
    text = str(e.value)
    assert "\n" not in text and all(p in text for p in parts), text


def test_output_file_is_checked(tmp_path: Path) -> None:
    src = tmp_path / "in.tif"
    src.write_bytes(b"x")
    check_output(tmp_path / "new.tif", overwrite=False, inputs=[src])  # nothing there: accepted
    with pytest.raises(GeofmError) as e:
        check_output(src, overwrite=True, inputs=[src])
    _one_line(e, "in.tif", "would overwrite the input")
    with pytest.raises(GeofmError) as e:
        check_output(src, overwrite=False)
    _one_line(e, "already exists", "--overwrite")
    check_output(src, overwrite=True)
    with pytest.raises(GeofmError) as e:
        check_output(tmp_path, overwrite=True)
    _one_line(e, "is a directory")
    with pytest.raises(GeofmError) as e:
        check_output(tmp_path / "missing" / "o.tif", overwrite=False)
    _one_line(e, "missing", "does not exist")
    with pytest.raises(GeofmError) as e:
        require_suffix(tmp_path / "o.png", (".tif", ".tiff"), "a GeoTIFF")
    _one_line(e, "'.png'", "name it o.tif")


def test_run_directory_is_created_or_refused(tmp_path: Path) -> None:
    run = tmp_path / "a" / "run"
    check_writable(run)
    assert run.is_dir()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(GeofmError) as e:
        check_writable(blocker / "run")
    _one_line(e, "cannot create the output directory", "--output")


@needs_permissions
def test_read_only_directories_are_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(GeofmError) as e:
            check_writable(locked)
        _one_line(e, "not writable", "--output")
        with pytest.raises(GeofmError) as e:
            check_output(locked / "o.tif", overwrite=False)
        _one_line(e, "not writable")
    finally:
        locked.chmod(0o700)


def test_store_output_holds_nothing_or_the_same_unfinished_build(tmp_path: Path) -> None:
    out = tmp_path / "s.zarr"
    assert check_store_output(out, "abc") is None
    spec = StoreSpec(num_chips=2, bands=["S2.B04"], chip_size=(8, 8), dtype="float32",
                     fingerprint="abc")
    assert create_store(out, spec) is True
    assert check_store_output(out, "abc") == spec
    assert check_store_output(out) == spec  # any unfinished build
    assert create_store(out, spec) is False  # resumed
    with pytest.raises(StoreError) as e:
        check_store_output(out, "other")
    _one_line(e, "unfinished build of different inputs", "--overwrite")
    with pytest.raises(StoreError) as e:
        create_store(out, dataclasses.replace(spec, fingerprint="other"))
    _one_line(e, "unfinished build of different inputs")
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(StoreError) as e:
        check_store_output(other)
    _one_line(e, "output already exists", "--overwrite")
