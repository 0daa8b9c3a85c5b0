"""Atomic files and folders (secondthoughts.atomic) under faults from its own hook
(``SECONDTHOUGHTS_FAULT``): a kill or a full disk leaves the old version or the new one."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

from secondthoughts import atomic


def test_write_atomic_replaces_whole_files_or_nothing(tmp_path: Path, fault: Any) -> None:
    path = tmp_path / "sub" / "f.json"
    atomic.write_atomic(path, "old")
    atomic.write_atomic(path, b"new")
    assert path.read_bytes() == b"new"
    fault("enospc@write:1")
    with pytest.raises(OSError) as e:
        atomic.write_atomic(path, "never")
    assert e.value.errno == errno.ENOSPC
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["f.json"]  # no temp file left
    with pytest.raises(ZeroDivisionError), atomic.open_atomic(path) as f:
        f.write("half")
        1 / 0  # noqa: B018
    assert path.read_text() == "new"
    with pytest.raises(ValueError, match="whole files"), atomic.open_atomic(path, "a"):
        pass


def test_write_dir_swaps_folders_and_keeps_the_old_one_on_failure(tmp_path: Path) -> None:
    final = tmp_path / "model"

    def write(text: str) -> Any:
        def fn(p: Path) -> None:
            (p / "a.txt").write_text(text)
            (p / "sub").mkdir()
            (p / "sub" / "b.txt").write_text(text)
        return fn

    atomic.write_dir(final, write("one"))
    atomic.write_dir(final, write("two"))
    assert (final / "sub" / "b.txt").read_text() == "two"

    def broken(p: Path) -> None:
        (p / "a.txt").write_text("three")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic.write_dir(final, broken)
    assert (final / "a.txt").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # replace=False (a shared cache): a complete copy already there wins, ours is dropped
    atomic.write_dir(final, write("four"), replace=False)
    assert (final / "a.txt").read_text() == "two" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_new_files_get_the_mode_open_would_give_and_replaced_ones_keep_theirs(tmp_path: Path) -> None:
    umask = os.umask(0o027)  # a umask other than the usual 0o022, so the mode is the umask's doing
    try:
        atomic._umask.cache_clear()
        new = atomic.write_atomic(tmp_path / "new.txt", "x")
        assert new.stat().st_mode & 0o777 == 0o640  # mkstemp alone: 0o600
        new.chmod(0o604)
        atomic.write_atomic(new, "y")
        assert new.stat().st_mode & 0o777 == 0o604
        cache = atomic.write_dir(tmp_path / "cache", lambda p: (p / "a.txt").write_text("a"), replace=False)
        assert cache.stat().st_mode & 0o777 == 0o750  # mkdtemp alone: 0o700
    finally:
        os.umask(umask)
        atomic._umask.cache_clear()


def test_fault_hook_spec_is_checked(fault: Any) -> None:
    fault("explode@write:1")
    with pytest.raises(ValueError, match="SECONDTHOUGHTS_FAULT"):
        atomic.fault_point("write")
    fault("enospc@write:2")
    atomic.fault_point("checkpoint-file")  # another point: not counted
    atomic.fault_point("write")
    with pytest.raises(OSError):
        atomic.fault_point("write")
    atomic.fault_point("write")  # the third time passes again


