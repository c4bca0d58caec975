"""The ASMK part of an index file: an ASMK index to and from an open HDF5 group.

Layout (``type`` :data:`FORMAT_TYPE`, ``version`` :data:`FORMAT_VERSION`), in one group
(the file root in the files :meth:`lit.asmk.ASMK.save` writes):

- attributes ``type``, ``version``, ``n_images`` (largest image id + 1) and
  ``params.<name>`` for every field of :class:`lit.asmk.ASMKParams`, plus the caller's own
  (``shard.rank``, ``shard.world``, ``shard.lo``, ``shard.hi`` for a part of a sharded
  index, :mod:`lit.asmk.sharded`);
- datasets ``codebook`` :math:`(K, D)` float32, ``offsets`` :math:`(K + 1,)` int64 (CSR:
  the entries of word ``w`` are rows ``offsets[w]:offsets[w + 1]``), ``image_ids``
  :math:`(E,)` int32 and ``vectors``: :math:`(E, B)` uint8 packed bits (binary,
  ``numpy.packbits`` order, ``B = 8 ceil(D / 64)``) or :math:`(E, D)` float32 (real).

Readers ignore groups, datasets and attributes they do not know, so the owner of the
index file adds its own (``/pipeline``, ``/text``) beside these. Vectors are written and
read :data:`IO_ROWS` rows at a time, straight from and into the in-memory layout of the
inverted file (no second full copy).

This module sits below :class:`lit.asmk.ASMK` (it does not import it): :func:`write_asmk`
takes any index with the attributes of :class:`_Index`, and :func:`read_state` gives the
state that :meth:`lit.asmk.ASMK.from_state` (or :meth:`lit.asmk.ASMK.from_group`, which
does both) turns into an index. Every problem of a file is one
:class:`lit.errors.IndexFileError` that names it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import asdict
from typing import Any, NamedTuple, Protocol

import numpy as np
from torch import Tensor

from .._hdf5 import checked, describe
from ..errors import IndexFileError
from .ivf import InvertedFile

__all__ = ["FORMAT_TYPE", "FORMAT_VERSION", "IO_ROWS", "Header", "RowSource", "open_file", "read_header", "read_state",
           "reading", "source_name", "write_asmk"]

FORMAT_TYPE = "lit.asmk.ASMK"
FORMAT_VERSION = 1
#: Inverted-file rows read or written per HDF5 call.
IO_ROWS = 1 << 20
_DATASETS = ("codebook", "offsets", "image_ids", "vectors")


class _Index(Protocol):
    """What :func:`write_asmk` reads of an index (:class:`lit.asmk.ASMK` has it)."""

    params: Any  # a dataclass of the ASMK parameters
    codebook: Tensor
    ivf: InvertedFile

    @property
    def n_images(self) -> int: ...

    def flush(self) -> None: ...


def write_asmk(group: Any, index: _Index, *, attrs: dict[str, Any] | None = None) -> None:
    """Write an index (codebook, parameters, inverted file) into an open, empty HDF5 group.

    Pending entries are merged first (``index.flush()``).

    Args:
        group: a writable ``h5py.Group`` (or ``h5py.File``) without these datasets.
        index: the index.
        attrs: extra attributes (numbers or strings), e.g. the id range of a part of a
            sharded index.
    """
    index.flush()
    ivf = index.ivf
    offsets, image_ids = ivf.arrays()
    group.attrs["type"] = FORMAT_TYPE
    group.attrs["version"] = FORMAT_VERSION
    group.attrs["n_images"] = index.n_images
    for key, value in asdict(index.params).items():
        group.attrs[f"params.{key}"] = value
    for key, value in (attrs or {}).items():
        group.attrs[key] = value
    group.create_dataset("codebook", **checked(index.codebook.cpu().numpy()))  # Fletcher32: damage detected
    group.create_dataset("offsets", **checked(offsets))
    group.create_dataset("image_ids", **checked(image_ids))
    dtype = np.uint8 if ivf.binary else np.float32
    ds = group.create_dataset("vectors", **checked(shape=(int(image_ids.shape[0]), ivf.width), dtype=dtype))
    for start, stop, rows in ivf.row_chunks(IO_ROWS):
        ds[start:stop] = rows


def open_file(path: str | os.PathLike) -> Any:
    """An index file opened for reading (an ``h5py.File``; close it, or use ``with``).

    Raises:
        FileNotFoundError: no such file.
        IndexFileError: not an HDF5 file, or one that cannot be opened (truncated, corrupt).
    """
    import h5py

    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such ASMK index file")
    if not h5py.is_hdf5(path):
        raise IndexFileError(f"{path}: not an HDF5 file (an ASMK index is saved as HDF5)")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise IndexFileError(f"{path}: cannot open the ASMK index: {describe(err)}") from None


@contextlib.contextmanager
def reading(source: str) -> Iterator[None]:
    """Turn the errors of reading a damaged file (HDF5's ``OSError``, ``KeyError``,
    ``RuntimeError``) into one :class:`~lit.errors.IndexFileError` naming ``source``."""
    try:
        yield
    except (OSError, KeyError, RuntimeError, ValueError, TypeError) as err:
        if isinstance(err, IndexFileError):
            raise
        raise IndexFileError(f"{source}: ASMK index {describe(err)}: rebuild it") from None


def source_name(group: Any) -> str:
    """The file name of an HDF5 group, with the group's path unless it is the root."""
    name = os.fspath(group.file.filename)
    return name if group.name in ("/", None) else f"{name}:{group.name}"


class RowSource:
    """Rows of an HDF5 dataset read on demand (``shape``, ``dtype``, slicing)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.shape = tuple(dataset.shape)
        self.dtype = dataset.dtype

    def __getitem__(self, item: Any) -> np.ndarray:
        return self.dataset[item]


def _check_kind(group: Any, source: str) -> int:
    """The format version, after checking that the group holds an ASMK index this lit reads."""
    import h5py

    kind = _attr_str(group.attrs.get("type"))
    if kind != FORMAT_TYPE:
        raise IndexFileError(f"{source}: not an ASMK index (type {kind!r}, expected {FORMAT_TYPE!r})")
    version = _attr_value(group.attrs.get("version"))
    if not isinstance(version, int) or version != FORMAT_VERSION:
        raise IndexFileError(
            f"{source}: ASMK format version {version!r} is not supported (this lit reads version {FORMAT_VERSION})"
        )
    for key in _DATASETS:
        if key not in group or not isinstance(group[key], h5py.Dataset):
            raise IndexFileError(f"{source}: ASMK index lacks the dataset {key!r}")
    return version


def read_state(group: Any, *, source: str | None = None) -> dict[str, Any]:
    """The state of the index in ``group``, in the form of :meth:`lit.asmk.ASMK.state_dict`
    except ``vectors``, which are read from the open group on demand (row slices).

    Args:
        group: an open ``h5py.Group``/``h5py.File`` (keep it open until the state is used).
        source: the name messages give the file (default: the group's file name).

    Raises:
        IndexFileError: not an ASMK index, another format version, a dataset missing, or
            unreadable.
    """
    source = source or source_name(group)
    with reading(source):
        version = _check_kind(group, source)
        params = {key[len("params."):]: _attr_value(value) for key, value in group.attrs.items()
                  if key.startswith("params.")}
        return {
            "type": FORMAT_TYPE, "version": version, "n_images": int(group.attrs["n_images"]),
            "params": params, "codebook": group["codebook"][()], "offsets": group["offsets"][()],
            "image_ids": group["image_ids"][()].astype(np.int32, copy=False),
            "vectors": RowSource(group["vectors"]),
        }


class Header(NamedTuple):
    """What an index holds, without its vectors (:func:`read_header`).

    Shape:
        - entries_per_word: :math:`(K,)` int64, database images holding each word.
        - codebook: :math:`(K, D)`.
    """

    n_images: int
    entries_per_word: np.ndarray
    codebook: np.ndarray
    attrs: dict[str, Any]


def read_header(group: Any, *, source: str | None = None) -> Header:
    """The image count, word statistics, codebook and attributes of the index in ``group``
    (reads the offsets and the codebook, not the vectors).

    Raises:
        IndexFileError: as :func:`read_state`.
    """
    source = source or source_name(group)
    with reading(source):
        _check_kind(group, source)
        attrs = {key: _attr_value(value) for key, value in group.attrs.items()}
        offsets = group["offsets"][()].astype(np.int64)
        return Header(int(group.attrs["n_images"]), np.diff(offsets), group["codebook"][()], attrs)


def _attr_str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _attr_value(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
