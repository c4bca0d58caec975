"""HDF5 plumbing shared by the owners of lit's HDF5 files (:mod:`lit.features`,
:mod:`lit.index_file`, :mod:`lit.asmk.io`): opening a file with errors that say what is
wrong, checksummed datasets, and one line for any failure while reading or writing.

**Checksums.** Files written once (index files) are in the HDF5 1.10 format
(``libver=("v110", "v110")``), whose superblock, object headers and chunk indexes carry
checksums; every numeric dataset gets a Fletcher32 checksum per chunk (:func:`checked`), so
a flipped byte is an error when it is read, not a silently different result. Feature files,
appended to in place, keep HDF5's default format (see :func:`open_file`) and cross-check
what its metadata does not protect (their owner keeps the names twice and the commit
counts in a checksummed dataset). Variable-length strings live in a heap without
checksums: the owners cross-check them (index files keep a CRC of their names). Files
written before the checksums are read as before.

**Errors.** HDF5 reports every problem as an ``OSError``/``RuntimeError`` with a long
message; :func:`describe` turns it into a few words ("truncated (2.1 MB of 9.3 MB)",
"damaged (checksum mismatch)", "in use by another process" only when the lock's errno says
so, "disk full"), and :func:`translating` raises the owner's :class:`~lit.errors.LitError`
subclass naming the file.
"""

from __future__ import annotations

import atexit
import contextlib
import errno as _errno
import os
import re
import sys
from collections.abc import Iterator

import h5py
import numpy as np

from ._image import display_name
from .errors import LitError, StorageError

__all__ = ["LIBVER", "checked", "describe", "detach", "open_file", "note_exit_status", "quiet_after_write_failure", "stored_eof", "translating",
           "write_errno"]

#: The HDF5 format lit writes: 1.10 (checksummed metadata), readable by HDF5 >= 1.10.
LIBVER = ("v110", "v110")
#: errno values of a failed write that the user fixes by freeing space or changing disk.
WRITE_ERRNOS = {_errno.ENOSPC: "disk full", _errno.EDQUOT: "disk quota exceeded", _errno.EFBIG: "file too large",
                _errno.EIO: "input/output error", _errno.EROFS: "read-only file system"}
_ERRNO_IN_TEXT = re.compile(r"errno = (\d+)")


def checked(data: np.ndarray | None = None, shape: tuple | None = None, **kwargs) -> dict:
    """``create_dataset`` keyword arguments with a Fletcher32 checksum per chunk.

    Give ``data`` or ``shape``; ``chunks``/``maxshape`` pass through. Empty datasets that
    cannot grow are stored without checksum (nothing to check), vlen data too (HDF5 does
    not filter it).
    """
    out = dict(kwargs)
    if data is not None:
        out["data"] = data
    else:
        out["shape"] = shape
    shape = tuple(np.shape(data)) if data is not None else tuple(shape or ())
    dtype = kwargs.get("dtype", getattr(data, "dtype", None))
    vlen = dtype is not None and h5py.check_vlen_dtype(np.dtype(dtype)) is not None
    if vlen or not shape or (0 in shape and "maxshape" not in kwargs):
        return out
    out["fletcher32"] = True
    if "chunks" not in out or out["chunks"] is None:
        out["chunks"] = True
    return out


def write_errno(err: BaseException) -> int | None:
    """The errno of a failed write (``ENOSPC``, ``EIO``...), also when HDF5 only names it in
    its message; ``None`` for other errors."""
    code = getattr(err, "errno", None)
    if code in WRITE_ERRNOS:
        return code
    m = _ERRNO_IN_TEXT.search(str(err))
    if m and int(m.group(1)) in WRITE_ERRNOS:
        return int(m.group(1))
    return None


def stored_eof(err: BaseException) -> int | None:
    """The size HDF5 expected of a file it refused as truncated (``None`` for other errors)."""
    m = re.search(r"truncated file: eof = \d+.*stored_eof = (\d+)", str(err))
    return int(m.group(1)) if m else None


def _released_after_failure(err: BaseException | None) -> bool:
    return isinstance(err, RuntimeError) and "ref count" in str(err) and write_errno(err) is not None


def _quiet_unraisable(unraisable) -> None:
    if _released_after_failure(unraisable.exc_value):
        return  # HDF5 releasing an object of a file whose write failed: already reported
    (_PREVIOUS["unraisable"] or sys.__unraisablehook__)(unraisable)


def _quiet_except(kind, value, tb) -> None:
    if _released_after_failure(value):
        return
    if not isinstance(value, SystemExit):
        _EXIT["status"] = 1  # an uncaught exception ends the process with 1
    (_PREVIOUS["except"] or sys.__excepthook__)(kind, value, tb)


_PREVIOUS: dict = {"unraisable": None, "except": None}


def quiet_after_write_failure() -> None:
    """After a failed write, HDF5 fails again each time h5py releases an object of that
    file, and Cython prints each failure (through ``sys.excepthook`` and
    ``sys.unraisablehook``): silence those (only those: a ``RuntimeError`` about a
    reference count that names a write errno); the failure itself is reported as one line."""
    if sys.unraisablehook is not _quiet_unraisable:
        _PREVIOUS["unraisable"] = sys.unraisablehook
        sys.unraisablehook = _quiet_unraisable
    if sys.excepthook is not _quiet_except:
        _PREVIOUS["except"] = sys.excepthook
        sys.excepthook = _quiet_except


def detach(f: h5py.File) -> None:
    """After a failed write: point the file's descriptor at an in-memory file
    (``memfd_create``; ``/dev/null`` where there is none), so that HDF5's remaining writes,
    its resizing of the file and its flushes (closing, interpreter exit) succeed without
    touching the file, which keeps what it held when the write failed (HDF5 otherwise fails
    on every release and crashes at exit)."""
    try:
        fd = f.id.get_vfd_handle()
    except Exception:  # noqa: BLE001 - not the sec2 driver, or the id is gone
        return
    if not isinstance(fd, int) or fd < 0:
        return
    _end_without_hdf5_shutdown()
    try:  # in memory: HDF5's last writes and its resizing of the file succeed there
        null = os.memfd_create("lit-detached")
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, fd)
    finally:
        os.close(null)
    # objects whose release failed before (HDF5 keeps them open): release them now
    try:
        leaked = h5py.h5f.get_obj_ids(f.id, h5py.h5f.OBJ_DATASET | h5py.h5f.OBJ_GROUP | h5py.h5f.OBJ_DATATYPE
                                      | h5py.h5f.OBJ_ATTR)
    except Exception:  # noqa: BLE001
        return
    for obj in leaked:
        for _ in range(64):  # down to zero: HDF5 closes it (its flushes now go nowhere)
            try:
                if not obj.valid:
                    break
                h5py.h5i.dec_ref(obj)
            except Exception:  # noqa: BLE001
                break


def _end_without_hdf5_shutdown() -> None:
    """After a failed write HDF5 cannot close that file, and its own shutdown at exit
    crashes (SIGSEGV/SIGBUS) on it: end such a process at Python's exit, after flushing
    Python's streams and logs, without HDF5's shutdown (the file holds what was
    committed), with the status the process was ending with (``sys.exit``'s, 1 after an
    uncaught exception, else 0)."""
    if _EXIT["registered"]:
        return
    _EXIT["registered"] = True
    real_exit = sys.exit

    def recording_exit(code=0):
        _EXIT["status"] = 0 if code is None else code if isinstance(code, int) else 1
        real_exit(code)

    sys.exit = recording_exit
    atexit.register(_exit_now)


_EXIT: dict = {"registered": False, "status": 0}


def note_exit_status(status: int) -> None:
    """The status this process is about to exit with (the command line says it before
    ``sys.exit``, which the ``python -m`` and console-script wrappers look up early)."""
    _EXIT["status"] = int(status)


def _exit_now() -> None:  # pragma: no cover - runs at exit
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(_EXIT["status"])


def _size(n: int) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


def describe(err: BaseException, path: str | os.PathLike | None = None) -> str:
    """A few words for what an HDF5 error says about the file."""
    text = str(err)
    low = text.lower()
    code = write_errno(err)
    if code is not None:
        return WRITE_ERRNOS[code]
    if isinstance(err, BlockingIOError) or getattr(err, "errno", None) in (_errno.EAGAIN, _errno.EWOULDBLOCK) or (
            "unable to lock file" in low and "errno = 11" in low):
        return "in use by another process"
    if isinstance(err, PermissionError) or getattr(err, "errno", None) == _errno.EACCES:
        return "permission denied"
    m = re.search(r"truncated file: eof = (\d+).*stored_eof = (\d+)", text)
    if m:
        return f"truncated ({_size(int(m.group(1)))} of {_size(int(m.group(2)))}: an interrupted copy or write)"
    if "checksum" in low or "filter returned failure" in low:  # Fletcher32 is the only filter lit uses
        return "damaged (checksum mismatch)"
    if "file signature not found" in low:
        return "not an HDF5 file"
    if isinstance(err, UnicodeDecodeError):
        return "damaged (a name is not valid text)"
    first = text.splitlines()[0] if text else type(err).__name__
    inner = re.search(r"\(([^()]*)\)\s*$", first)  # HDF5: "Unable to ... (what is wrong)"
    detail = inner.group(1) if inner else re.sub(r"\s*\(.*", "", first)
    return f"damaged ({detail[:80] or type(err).__name__})"


def open_file(path: str | os.PathLike, mode: str, error: type[LitError], what: str,
              libver: tuple[str, str] | None = LIBVER) -> h5py.File:
    """``h5py.File(path, mode)`` with one-line errors (``error``) naming the file.

    Files created here (``"w"``, ``"a"`` of a missing file) get the checksummed format
    (:data:`LIBVER`) unless ``libver`` is ``None`` (HDF5's default, for files appended to in
    place: a writer killed with the 1.10 format leaves the file marked "open for write",
    which HDF5 then refuses to open). ``what``: the kind of file, for messages
    ("feature file").
    """
    path = os.fspath(path)
    shown = display_name(path)
    if os.path.isdir(path):
        raise error(f"{shown}: a folder, not {_article(what)}")
    if mode == "r":
        _check_readable(path, shown, error, what)
    new = mode in ("w", "w-", "x") or (mode == "a" and not os.path.exists(path))
    try:
        return h5py.File(path, mode, libver=libver) if new and libver else h5py.File(path, mode)
    except OSError as err:
        reason = describe(err, path)
        if reason == "in use by another process":
            raise error(f"{shown}: in use by another process (another lit command writing it?); wait for it to "
                        "finish or use another file") from None
        if reason == "not an HDF5 file" or (mode != "r" and os.path.isfile(path) and not h5py.is_hdf5(path)):
            raise error(f"{shown}: not {_article(what)} (not an HDF5 file: damaged, truncated or another kind "
                        "of file)") from None
        if write_errno(err) is not None:
            raise StorageError(f"{shown}: {reason} while writing it") from None
        raise error(f"{shown}: {reason}: not a readable {what}") from None


def _check_readable(path: str, shown: str, error: type[LitError], what: str) -> None:
    import stat

    try:
        st = os.stat(path)
    except OSError as err:
        if err.errno == _errno.ELOOP:
            raise error(f"{shown}: a symbolic link loop, not {_article(what)}") from None
        if err.errno == _errno.EACCES:
            raise error(f"{shown}: permission denied") from None
        return  # the owner reports a missing file in its own words
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{shown}: not a regular file (a FIFO, device or socket), not {_article(what)}")
    if st.st_size == 0:
        raise error(f"{shown}: an empty file (0 bytes), not {_article(what)}")


def _article(what: str) -> str:
    return ("an " if what[:1] in "aeiou" else "a ") + what


@contextlib.contextmanager
def translating(path: str | os.PathLike, error: type[LitError], what: str, advice: str = "",
                on_write: str = "") -> Iterator[None]:
    """Turn any failure of HDF5 inside the block into one ``error`` (or a
    :class:`~lit.errors.StorageError` for a failed write) that names ``path``
    ("``F: feature file damaged (checksum mismatch): ADVICE``"); lit's own errors pass
    through. ``on_write``: what a failed write leaves ("the file it replaces is unchanged")."""
    try:
        yield
    except LitError:
        raise
    except (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError) as err:
        shown = display_name(os.fspath(path))
        if write_errno(err) is not None:
            raise StorageError(f"{shown}: {describe(err)} while writing it" + (f"; {on_write}" if on_write else "")) from None
        raise error(f"{shown}: {what} {describe(err)}" + (f": {advice}" if advice else "")) from None
