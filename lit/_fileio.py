"""Writing files so that a crash never leaves half of one, and hashing them.

:func:`atomic_path` is the one way lit replaces a file (index, merged features, text
embeddings, checkpoints, results): the new content is written to a temporary file in the
same folder, flushed and ``fsync``'d, then renamed over the target (``os.replace``, atomic
on POSIX and Windows) and the folder entry is ``fsync``'d. A reader that opened the old
file keeps reading the old file; a ``kill -9`` at any moment leaves either the old file or
the new one, and at worst a stray ``.NAME.tmp-*`` file, which the next write of the same
target removes.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import stat
import uuid
from collections.abc import Iterator
from typing import IO

from ._names import display_name
from .errors import NotFoundError, UsageError

__all__ = ["atomic_path", "atomic_write", "check_output_file", "file_sha256", "fsync_folder"]

_CHUNK = 1 << 20


def file_sha256(path: str | os.PathLike, chunk_size: int = _CHUNK) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make a rename or a new file in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


_KINDS = ((stat.S_ISDIR, "is a folder"), (stat.S_ISFIFO, "is a FIFO (named pipe)"),
          (stat.S_ISCHR, "is a character device"), (stat.S_ISBLK, "is a block device"), (stat.S_ISSOCK, "is a socket"))


def check_output_file(path: str | os.PathLike) -> None:
    """Refuse an output path that exists and is not a regular file (``/dev/null``, a
    folder, a FIFO): lit's outputs are files it reads back (feature files) or replaces
    whole by a rename (:func:`atomic_path`), which would put a file in the device's place.

    Raises:
        UsageError: saying what ``path`` is.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing (created by the writer) or unreachable (the writer says why)
        return
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _KINDS if test(mode)), "is not a regular file")
        raise UsageError(f"{display_name(os.fspath(path))}: {kind}, not a regular file: give the path of a file "
                         "to write")


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stale_temporaries(target: str) -> list[str]:
    """Temporary files of ``target`` left by writers that are no longer running (on this host)."""
    folder, name = os.path.split(target)
    stale = []
    for path in glob.glob(os.path.join(glob.escape(folder or "."), f".{glob.escape(name)}.tmp-*")):
        pid = path.rsplit(".tmp-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            stale.append(path)
    return stale


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, keep_mode: bool = True) -> Iterator[str]:
    """A temporary path beside ``target`` that becomes ``target`` when the block succeeds.

    For writers that need a file name (h5py, ``torch.save``, matplotlib): write the whole
    file to the yielded path (which does not exist yet) inside the ``with`` block. On success
    it is ``fsync``'d and renamed over ``target``; on any exception it is removed and
    ``target`` is untouched. Temporary files of writers that died (``kill -9``) are removed
    by the next write of the same target.

    Args:
        target: the file to create or replace (its folder must exist).
        keep_mode: give the new file the permission bits of the file it replaces.

    Raises:
        UsageError: ``target`` exists and is not a regular file (:func:`check_output_file`).
        OSError: the folder is missing or not writable (before anything is written), or
            the write itself failed (``ENOSPC``...); ``target`` is then unchanged.
    """
    target = os.fspath(target)
    check_output_file(target)
    folder = os.path.dirname(os.path.abspath(target))
    for stale in _stale_temporaries(target):  # left by a writer killed earlier
        with contextlib.suppress(OSError):
            os.remove(stale)
    if not os.path.isdir(folder):
        raise NotFoundError(f"{target}: the folder {folder} does not exist")
    # a fresh name that does not exist yet: writers create it in their own mode (h5py "a"
    # refuses an empty file that is not HDF5)
    tmp = os.path.join(folder, f".{os.path.basename(target)}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        yield tmp
        _fsync_file(tmp)
        if keep_mode:
            with contextlib.suppress(FileNotFoundError):
                os.chmod(tmp, os.stat(target).st_mode & 0o7777)
        os.replace(tmp, target)
        fsync_folder(folder)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(target: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """``open(target, mode)`` whose content replaces ``target`` only when the block succeeds
    (see :func:`atomic_path`); ``mode`` is ``"w"``, ``"wb"`` or ``"wt"``."""
    if mode not in ("w", "wb", "wt"):
        raise UsageError(f"atomic_write writes whole files: mode must be 'w', 'wt' or 'wb', got {mode!r}")
    with atomic_path(target) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
