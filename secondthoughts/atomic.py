"""Atomic writes: a file or a folder is replaced whole or not at all.

Every write that replaces something goes through here, so that a SIGKILL, a full disk or a power
loss at any moment leaves either the previous version or the new one, never a mix:

* :func:`open_atomic` / :func:`write_atomic` write a file under a temporary name beside it,
  fsync it, rename it into place and fsync the directory (without the two syncs a power loss can
  persist the rename before the data: the new name then points at an empty file).
* :func:`write_dir` does the same for a folder: written under ``.NAME.tmp``, every file and
  folder synced, swapped in by two renames (the previous copy waits as ``.NAME.old`` between them).

Fault hook for tests: ``SECONDTHOUGHTS_FAULT=ACTION@POINT:N`` makes this process ``kill`` itself
(SIGKILL) or fail with ``enospc`` (disk full) the N-th time it reaches POINT: ``checkpoint-file``
(a checkpoint file written), ``checkpoint-state`` (its state.json written), ``swap-NAME`` (between
the two renames of folder NAME), ``swapped-NAME`` (after them, before the old copy is removed),
``write`` (an atomic file written, before its rename).
"""

from __future__ import annotations

import errno
import functools
import os
import shutil
import signal
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

PathLike = str | os.PathLike[str]
FAULT_ENV = "SECONDTHOUGHTS_FAULT"


# ---------------------------------------------------------------- fault hook (tests)

_fault_counts: Counter[str] = Counter()
_fault_spec: list[str | None] = [None]  # the spec the counts belong to


def fault_point(point: str) -> None:
    """Count ``point`` and act when ``SECONDTHOUGHTS_FAULT`` asks for this occurrence."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    if spec != _fault_spec[0]:
        _fault_counts.clear()
        _fault_spec[0] = spec
    action, _, rest = spec.partition("@")
    where, _, n = rest.rpartition(":")
    if action not in ("kill", "enospc") or not where or not n.isdecimal():
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected kill@POINT:N or enospc@POINT:N")
    if where != point:
        return
    _fault_counts[point] += 1
    if _fault_counts[point] != int(n):
        return
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), point)


def reset_fault_counts() -> None:
    """Start counting fault points from zero (a test that runs several faults in one process)."""
    _fault_counts.clear()


# ---------------------------------------------------------------- atomic files and folders


def fsync_dir(path: PathLike) -> None:
    """Make a folder's entries (a rename into it) durable."""
    if os.name != "posix":  # Windows cannot open a folder; its renames are journaled
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _umask() -> int:
    """The process's umask: from /proc where Linux has it, else by setting it and back (briefly
    0o077, so a file another thread makes meanwhile is private rather than open)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def _set_default_mode(fd_or_path: int | Path, path: Path, folder: bool = False) -> None:
    """Give a mkstemp file (0o600) or mkdtemp folder (0o700) the mode ``open`` / ``mkdir`` would
    have given it (0o666 / 0o777 less the umask), or a replaced file's own permission bits (of its
    target, for a symlink): else saved runs and outputs are unreadable to anyone else. POSIX only,
    and best effort: a file system without modes (vfat, some network mounts) keeps its own."""
    if os.name != "posix":
        return
    try:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = (0o777 if folder else 0o666) & ~_umask()
        if isinstance(fd_or_path, int):
            os.fchmod(fd_or_path, mode)
        else:
            fd_or_path.chmod(mode)
    except OSError:
        pass


@contextmanager
def open_atomic(path: PathLike, mode: str = "w", encoding: str = "utf-8") -> Iterator[IO[Any]]:
    """A file object whose content replaces ``path`` only when the block ends without an error."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic writes whole files: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, encoding=None if mode == "wb" else encoding) as f:
            _set_default_mode(f.fileno(), path)
            yield f
            f.flush()
            os.fsync(f.fileno())
        fault_point("write")
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: PathLike, data: str | bytes) -> Path:
    """Replace ``path`` with ``data`` (text is written as UTF-8)."""
    with open_atomic(path, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    return Path(path)


def _sync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_file(os.path.join(folder, name))
        fsync_dir(folder)


def commit_dir(tmp: PathLike, final: PathLike, *, replace: bool = True) -> None:
    """Sync the finished folder ``tmp`` and rename it to ``final``.

    ``replace``: an existing ``final`` is swapped out (it waits as ``.NAME.old`` between the two
    renames, then is removed). Otherwise an existing ``final`` wins and ``tmp`` is dropped: for
    caches that several processes may fill at once, where any complete copy will do.
    """
    tmp, final = Path(tmp), Path(final)
    _sync_tree(tmp)
    if not replace:
        try:
            os.rename(tmp, final)
        except OSError:
            if not final.is_dir():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another writer's complete copy is in place
            return
        fsync_dir(final.parent)
        return
    old = final.with_name(f".{final.name}.old")
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    fault_point(f"swap-{final.name}")
    os.rename(tmp, final)
    fsync_dir(final.parent)
    fault_point(f"swapped-{final.name}")
    shutil.rmtree(old, ignore_errors=True)


def write_dir(final: PathLike, write: Callable[[Path], None], *, replace: bool = True) -> Path:
    """Call ``write(tmp_folder)``, then :func:`commit_dir` it to ``final``.

    The temporary folder is ``.NAME.tmp`` (a leftover of a killed writer is removed first) when
    ``replace``; a unique name otherwise, since several writers may then race.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if replace:
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    else:
        tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        if not replace:
            _set_default_mode(tmp, final, folder=True)
        write(tmp)
        commit_dir(tmp, final, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
