"""A restricted unpickler for the data files of the retrieval benchmarks.

The ground-truth files of Revisited Oxford/Paris (``gnd_*.pkl``) and the SfM-120k/30k
database files (``retrieval-SfM-*.pkl``) are pickles. Unpickling runs arbitrary code in
general, so these files are read with an unpickler whose ``find_class`` resolves only a
small allow-list: builtin containers and numbers, ``collections.OrderedDict`` and what
numpy needs to rebuild arrays, dtypes and scalars. Anything else (``os.system``,
``builtins.eval``, ``subprocess.Popen``, ``functools.partial``, ...) raises
:class:`UnsafePickleError` before it is imported, let alone called.

Python 2 pickles are read with ``encoding="latin1"`` (byte strings become ``str``; numpy
arrays pickled by Python 2 need exactly this).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import collections
import importlib
import io
import os
import pickle
from typing import Any, BinaryIO

from .errors import UnsafePickleError

__all__ = ["UnsafePickleError", "restricted_load", "restricted_loads"]


# Codecs that ``_codecs.encode`` may be asked for: Python 3 pickles at protocol < 3 store
# ``bytes`` objects as ``_codecs.encode(text, "latin1")``.
_SAFE_CODECS = frozenset({"latin1", "latin_1", "latin-1", "iso8859-1", "iso-8859-1", "ascii", "utf-8", "utf8"})


def _safe_codecs_encode(obj: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` restricted to text codecs (what pickled ``bytes`` need)."""
    if not isinstance(obj, str) or not isinstance(encoding, str):
        raise UnsafePickleError("_codecs.encode is only allowed on text with a text codec")
    if encoding.lower() not in _SAFE_CODECS:
        raise UnsafePickleError(f"_codecs.encode with codec {encoding!r} is not allowed")
    return codecs.encode(obj, encoding, errors)


_BUILTINS = {
    name: getattr(__import__("builtins"), name)
    for name in (
        "dict", "list", "tuple", "set", "frozenset", "int", "float", "complex", "str",
        "bytes", "bytearray", "bool", "slice", "range",
    )
}

# (module, name) -> object, resolved without importing anything for the non-numpy entries.
_ALLOWED: dict[tuple[str, str], Any] = {("builtins", k): v for k, v in _BUILTINS.items()}
_ALLOWED[("builtins", "NoneType")] = type(None)
_ALLOWED[("collections", "OrderedDict")] = collections.OrderedDict
_ALLOWED[("_codecs", "encode")] = _safe_codecs_encode

# numpy globals, by the names numpy 1.x (``numpy.core``) and 2.x (``numpy._core``) write.
_NUMPY_ALLOWED: dict[tuple[str, str], tuple[str, str]] = {}
for _core in ("numpy.core", "numpy._core"):
    _NUMPY_ALLOWED[(f"{_core}.multiarray", "_reconstruct")] = ("multiarray", "_reconstruct")
    _NUMPY_ALLOWED[(f"{_core}.multiarray", "scalar")] = ("multiarray", "scalar")
    _NUMPY_ALLOWED[(f"{_core}.numeric", "_frombuffer")] = ("numeric", "_frombuffer")
_NUMPY_ALLOWED[("numpy", "ndarray")] = ("numpy", "ndarray")
_NUMPY_ALLOWED[("numpy", "dtype")] = ("numpy", "dtype")


def _numpy_global(where: str, name: str) -> Any:
    """Resolve an allowed numpy global from whichever core module this numpy has."""
    import numpy as np

    if where == "numpy":
        return getattr(np, name)
    for core in ("numpy._core", "numpy.core"):  # numpy 2 first: numpy.core is a deprecated shim
        try:
            module = importlib.import_module(f"{core}.{where}")
        except ImportError:
            continue
        if hasattr(module, name):
            return getattr(module, name)
    raise pickle.UnpicklingError(f"numpy has no {where}.{name}")


def _normalise(module: str, name: str) -> tuple[str, str]:
    """Map Python 2 names (``__builtin__.set``, ``copy_reg``...) to Python 3 ones."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: BinaryIO, source: str, encoding: str = "latin1"):
        super().__init__(file, encoding=encoding, fix_imports=True)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        key = _normalise(module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        if key in _NUMPY_ALLOWED:
            return _numpy_global(*_NUMPY_ALLOWED[key])
        raise UnsafePickleError(
            f"{self._source}: refusing to unpickle global '{module}.{name}' (only containers, "
            "numbers, strings and numpy arrays are allowed; this file may be malicious or not "
            "a data file)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self._source}: persistent ids are not allowed in data pickles")


def restricted_load(path_or_file: str | os.PathLike | BinaryIO, encoding: str = "latin1") -> Any:
    """Unpickle a data file, refusing every global outside a small allow-list.

    Args:
        path_or_file: a path, or a binary file object open for reading.
        encoding: how Python 2 byte strings are decoded (``"latin1"`` keeps numpy arrays
            pickled by Python 2 readable).

    Returns:
        The unpickled object (dicts, lists, tuples, sets, numbers, strings, numpy arrays).

    Raises:
        UnsafePickleError: the pickle refers to a global that is not allowed (the message
            names the file and the global). Nothing it refers to is called.
        ValueError: the file is not a readable pickle (truncated, corrupt, empty).
        FileNotFoundError: the path does not exist.
    """
    if isinstance(path_or_file, (str, os.PathLike)):
        path = os.fspath(path_or_file)
        with open(path, "rb") as f:
            return _load(f, path, encoding)
    if not hasattr(path_or_file, "read"):
        raise TypeError(f"expected a path or a binary file object, got {type(path_or_file).__name__}")
    source = getattr(path_or_file, "name", None)
    return _load(path_or_file, str(source) if source is not None else "<stream>", encoding)


def restricted_loads(data: bytes, encoding: str = "latin1") -> Any:
    """Like :func:`restricted_load`, from bytes in memory."""
    return _load(io.BytesIO(data), "<bytes>", encoding)


def _load(file: BinaryIO, source: str, encoding: str) -> Any:
    try:
        return _RestrictedUnpickler(file, source, encoding=encoding).load()
    except UnsafePickleError as err:
        if str(err).startswith(f"{source}:"):
            raise
        raise UnsafePickleError(f"{source}: {err}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError,
            TypeError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{source}: not a readable pickle data file ({type(err).__name__}: {err})") from err
