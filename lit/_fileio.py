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
import tempfile
from collections.abc import Iterator
from typing import IO

__all__ = ["atomic_path", "atomic_write", "file_sha256", "fsync_folder"]

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


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _stale_temporaries(target: str) -> list[str]:
    folder, name = os.path.split(target)
    return glob.glob(os.path.join(glob.escape(folder or "."), f".{glob.escape(name)}.tmp-*"))


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, keep_mode: bool = True) -> Iterator[str]:
    """A temporary path beside ``target`` that becomes ``target`` when the block succeeds.

    For writers that need a file name (h5py, ``torch.save``, matplotlib): write the whole
    file to the yielded path inside the ``with`` block. On success it is ``fsync``'d and
    renamed over ``target``; on any exception it is removed and ``target`` is untouched.

    Args:
        target: the file to create or replace (its folder must exist).
        keep_mode: give the new file the permission bits of the file it replaces.

    Raises:
        OSError: the folder is missing or not writable (before anything is written), or
            the write itself failed (``ENOSPC``...); ``target`` is then unchanged.
    """
    target = os.fspath(target)
    folder = os.path.dirname(os.path.abspath(target))
    for stale in _stale_temporaries(target):  # left by a writer killed earlier
        with contextlib.suppress(OSError):
            os.remove(stale)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.tmp-", dir=folder)
    os.close(fd)
    try:
        yield tmp
        _fsync_file(tmp)
        try:
            mode = os.stat(target).st_mode & 0o7777 if keep_mode else None
        except FileNotFoundError:
            mode = None
        if mode is None:  # mkstemp makes 0600; a plain new file is 0666 minus the umask
            umask = os.umask(0)
            os.umask(umask)
            mode = 0o666 & ~umask
        os.chmod(tmp, mode)
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
        raise ValueError(f"atomic_write writes whole files: mode must be 'w', 'wt' or 'wb', got {mode!r}")
    with atomic_path(target) as tmp:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
