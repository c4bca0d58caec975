"""Index files: what ``lit index`` writes and ``lit search`` reads. This module is their only
reader and writer (as :mod:`lit.features` is for feature files).

An index file is one self-contained HDF5 file:

====================  ==========================================================================
part                  content
====================  ==========================================================================
root                  the ASMK index (codebook, parameters, inverted file), written by
                      :mod:`lit.asmk` (attribute ``type = "lit.asmk.ASMK"``)
``/pipeline``         :class:`IndexInfo`: ``names`` (vlen bytes, row i = image id i, relative to
                      ``image_root``), attributes ``format = "lit-index-pipeline"``, ``version``
                      1, ``image_root``, ``fingerprint`` (model + extraction settings),
                      ``features``, ``codebook_source``, ``codebook_size``,
                      ``codebook_descriptors``, ``descriptors``
``/text``             :class:`TextEmbeddings` for search by words: ``names``, ``embeddings``
                      (n, D) float32, ``valid`` (n,) uint8; attributes ``format = "lit-text"``,
                      ``version`` 1, ``tower``, ``features``
====================  ==========================================================================

A **sharded index** is a set of such files ``NAME.RRRRR-of-NNNNN.h5``
(:func:`lit.distributed.shard_path`): part ``r`` holds the images of one id range (ASMK
attributes ``shard.lo``, ``shard.hi``) and, in its ``/pipeline`` and ``/text`` groups, their
names and embeddings; read together the parts give one index. Older files are still read:
names in a ``NAME.names.json`` sidecar (single indexes of an early lit, and sharded ones).

**Writing** replaces a file atomically (:func:`lit._fileio.atomic_path`): a reader that
opened the old file keeps reading it, and a crash leaves the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import h5py
import numpy as np
import torch

from ._fileio import atomic_path
from ._hdf5 import LIBVER, checked, describe, translating
from ._image import display_name
from .asmk import ASMK
from .asmk.io import reading, write_asmk
from .asmk.sharded import ShardedIndex
from .distributed import find_shards
from .errors import IndexFileError, NotFoundError

log = logging.getLogger(__name__)

_ADVICE = "rebuild it with `lit index` (or restore a copy)"
PIPELINE_GROUP = "pipeline"
PIPELINE_FORMAT = "lit-index-pipeline"
PIPELINE_VERSION = 1
TEXT_GROUP = "text"
TEXT_FORMAT = "lit-text"
TEXT_VERSION = 1
_ASMK_TYPE = "lit.asmk.ASMK"

__all__ = [
    "IndexFileError", "IndexInfo", "Part", "TextEmbeddings", "file_kind", "load_index", "part_info", "read_info",
    "read_part", "read_text", "text_part", "update_text", "write_index",
]


@dataclass(frozen=True)
class IndexInfo:
    """What the index knows about its database (the ``/pipeline`` group).

    Args:
        names: database image names, relative to ``image_root``; name i has image id i.
        image_root: absolute folder of the images, ``None`` if unknown.
        fingerprint: the database feature file's fingerprint (model + extraction settings).
        features: path of that feature file.
        codebook_source: ``"database"``, a feature file or a codebook file.
        codebook_size: visual words.
        codebook_descriptors: descriptors the codebook was learned on (0 if given).
        descriptors: database descriptors indexed.
        legacy: read from an old ``.names.json`` sidecar (no fingerprint).
    """

    names: tuple[str, ...]
    image_root: str | None = None
    fingerprint: str | None = None
    features: str = ""
    codebook_source: str = "database"
    codebook_size: int = 0
    codebook_descriptors: int = 0
    descriptors: int = 0
    legacy: bool = field(default=False, compare=False)


class Part(NamedTuple):
    """Where a part of a sharded index stands: ``rank`` of ``world`` parts, image ids ``lo..hi-1``."""

    rank: int
    world: int
    lo: int
    hi: int

    def attrs(self) -> dict[str, int]:
        return {"shard.rank": self.rank, "shard.world": self.world, "shard.lo": self.lo, "shard.hi": self.hi}


class TextEmbeddings(NamedTuple):
    """Global image embeddings for search by words (``/text``).

    Shape:
        - embeddings: :math:`(n, D)` float32; valid: :math:`(n,)` bool (False: none stored).
    """

    tower: str
    names: list[str]
    embeddings: np.ndarray
    valid: np.ndarray
    features: str = ""


def _names_crc(raw: list[bytes]) -> int:
    crc = 0
    for name in raw:
        crc = zlib.crc32(name + b"\0", crc)
    return crc


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------- kinds
def file_kind(path: str | os.PathLike) -> str:
    """``"index"``, ``"features"``, ``"hdf5"`` (another HDF5 file), ``"damaged"`` (HDF5 that
    cannot be opened), ``"other"`` or ``"missing"``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        return "missing"
    try:
        if not h5py.is_hdf5(path):
            return "other"
        with h5py.File(path, "r") as f:
            if _str(f.attrs.get("type", "")) == _ASMK_TYPE:
                return "index"
            if _str(f.attrs.get("format", "")) == "lit-features":
                return "features"
    except (OSError, RuntimeError, KeyError, ValueError):
        return "damaged"
    return "hdf5"


def _check_is_index(path: str) -> None:
    kind = file_kind(path)
    if kind == "index":
        return
    shown = display_name(path)
    if kind == "missing":
        raise NotFoundError(f"{shown}: no such index file")
    if kind == "features":
        raise IndexFileError(f"{shown}: this is a feature file (from `lit extract`), not an index: "
                             f"run `lit index {shown} --out INDEX.h5` first")
    if kind == "hdf5":
        raise IndexFileError(f"{shown}: an HDF5 file, but not a lit index (no ASMK index in it)")
    if kind == "damaged":
        try:
            h5py.File(path, "r").close()
        except OSError as err:
            raise IndexFileError(f"{shown}: index file {describe(err)}: {_ADVICE}") from None
    raise IndexFileError(f"{shown}: not an index file (not HDF5: damaged, truncated or another kind of file)")


def _parts(path: str) -> list[str]:
    """The files of an index: ``[path]`` for a file, else the parts of a sharded index."""
    if os.path.isfile(path):
        return [path]
    try:
        return find_shards(path)
    except NotFoundError:
        raise NotFoundError(f"{display_name(path)}: no such index file (nor the parts of a sharded index)") from None


# ---------------------------------------------------------------------------- writing
def _reading(path: str):
    return translating(path, IndexFileError, "index file", _ADVICE)


def _write_groups(f: h5py.File, info: IndexInfo, text: TextEmbeddings | None) -> None:
    g = f.create_group(PIPELINE_GROUP)
    g.attrs.update({"format": PIPELINE_FORMAT, "version": PIPELINE_VERSION, "image_root": info.image_root or "",
                    "fingerprint": info.fingerprint or "", "features": info.features,
                    "codebook_source": info.codebook_source, "codebook_size": info.codebook_size,
                    "codebook_descriptors": info.codebook_descriptors, "descriptors": info.descriptors})
    raw = [os.fsencode(n) for n in info.names]  # bytes: names that are not valid UTF-8 survive
    g.create_dataset("names", data=np.array(raw, dtype=object), dtype=h5py.special_dtype(vlen=bytes))
    g.attrs["names_crc32"] = _names_crc(raw)  # the names live in HDF5's heap, which has no checksum
    if text is not None:
        _write_text(f, text)


def _write_text(f: h5py.File, text: TextEmbeddings) -> None:
    if TEXT_GROUP in f:
        del f[TEXT_GROUP]
    g = f.create_group(TEXT_GROUP)
    g.attrs.update({"format": TEXT_FORMAT, "version": TEXT_VERSION, "tower": text.tower, "features": text.features})
    g.create_dataset("names", data=np.array([os.fsencode(n) for n in text.names], dtype=object),
                     dtype=h5py.special_dtype(vlen=bytes))
    g.create_dataset("embeddings", **checked(np.asarray(text.embeddings, np.float32)))
    g.create_dataset("valid", **checked(np.asarray(text.valid).astype(np.uint8)))
    g.attrs["names_crc32"] = _names_crc([os.fsencode(n) for n in text.names])


def write_index(path: str | os.PathLike, index: ASMK, info: IndexInfo, *, text: TextEmbeddings | None = None,
                part: Part | None = None) -> str:
    """Write ``index``, ``info`` and optionally ``text`` to one file, atomically.

    Args:
        path: the index file (its folder must exist).
        info: for a part of a sharded index, the names of its id range only.
        part: where a part of a sharded index stands (its ids ``part.lo..part.hi-1``).

    Returns:
        ``path``.
    """
    path = os.fspath(path)
    _check_names(path, info, index, part)
    index.flush()
    with _writing(path), atomic_path(path) as tmp, h5py.File(tmp, "w", libver=LIBVER) as f:
        write_asmk(f, index, attrs=part.attrs() if part is not None else None)
        _write_groups(f, info, text)
    return path


def _writing(path: str):
    """A failed write (disk full...) is one line; the file being replaced is unchanged."""
    return translating(path, IndexFileError, "index file", on_write="the file it replaces is unchanged")


def update_text(path: str | os.PathLike, text: TextEmbeddings) -> None:
    """Replace the ``/text`` group of an index file (a copy is written and renamed over it)."""
    import shutil

    path = os.fspath(path)
    _check_is_index(path)
    with _writing(path), atomic_path(path) as tmp:
        shutil.copyfile(path, tmp)
        with h5py.File(tmp, "a") as f:
            _write_text(f, text)


def _check_names(path: str, info: IndexInfo, index, part: Part | None) -> None:
    want = index.n_images if part is None else part.hi - part.lo
    ok = len(info.names) >= want if part is None else len(info.names) == want
    if not ok:
        raise IndexFileError(f"{display_name(path)}: {len(info.names)} names for {want} indexed images")


# ---------------------------------------------------------------------------- reading
def read_part(path: str | os.PathLike) -> Part | None:
    """Where an index file stands in a sharded index, ``None`` for a whole index."""
    path = os.fspath(path)
    _check_is_index(path)
    with _reading(path), h5py.File(path, "r") as f:
        a = f.attrs
        if "shard.lo" not in a:
            return None
        return Part(int(a.get("shard.rank", 0)), int(a.get("shard.world", 1)), int(a["shard.lo"]), int(a["shard.hi"]))

def _read_pipeline(f: h5py.File, path: str) -> IndexInfo | None:
    if PIPELINE_GROUP not in f:
        return None
    g = f[PIPELINE_GROUP]
    fmt, version = _str(g.attrs.get("format", "")), g.attrs.get("version")
    if fmt != PIPELINE_FORMAT or version is None or int(version) != PIPELINE_VERSION:
        raise IndexFileError(f"{display_name(path)}: index metadata of format {fmt!r} version {version} "
                             f"(this lit reads {PIPELINE_FORMAT!r} {PIPELINE_VERSION})")
    a = g.attrs
    try:
        raw = [bytes(n) for n in g["names"][()]]
        if "names_crc32" in a and int(a["names_crc32"]) != _names_crc(raw):
            raise IndexFileError(f"{display_name(path)}: index file damaged (its image names fail their checksum): "
                                 f"{_ADVICE}")
        names = tuple(os.fsdecode(n) for n in raw)
        return IndexInfo(names=names, image_root=_str(a["image_root"]) or None,
                         fingerprint=_str(a["fingerprint"]) or None, features=_str(a["features"]),
                         codebook_source=_str(a["codebook_source"]), codebook_size=int(a["codebook_size"]),
                         codebook_descriptors=int(a["codebook_descriptors"]), descriptors=int(a["descriptors"]))
    except (KeyError, OSError, ValueError, TypeError) as err:
        raise IndexFileError(f"{display_name(path)}: damaged index metadata ({err})") from None


def _read_sidecar(path: str) -> IndexInfo | None:
    side = path + ".names.json"
    if not os.path.isfile(side):
        return None
    try:
        with open(side, encoding="utf-8") as f:
            data = json.load(f)
        names = tuple(data["names"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise IndexFileError(f"{display_name(side)}: not a readable names file ({err})") from None
    if data.get("sharded"):  # the parts of a sharded index of an earlier lit
        return IndexInfo(names=names, image_root=data.get("image_root"), fingerprint=data.get("fingerprint"),
                         features=str(data.get("features", "")))
    log.info(f"note: {display_name(path)} is an index of an older lit: names read from {display_name(side)}, "
             "no fingerprint check; rebuild it with `lit index` to make it self-contained")
    return IndexInfo(names=names, features=str(data.get("features", "")), legacy=True)


def read_info(path: str | os.PathLike) -> IndexInfo:
    """The :class:`IndexInfo` of an index file or of a sharded index (its parts' together).

    Raises:
        NotFoundError: no such file or parts.
        IndexFileError: not an index, damaged metadata, or no names (an ASMK file written
            by ``ASMK.save`` alone).
    """
    path = os.fspath(path)
    parts = _parts(path)
    infos = []
    for part in parts:
        _check_is_index(part)
        with _reading(part), h5py.File(part, "r") as f:
            infos.append(_read_pipeline(f, part))
    if any(i is None for i in infos):
        info = _read_sidecar(path)
        if info is None:
            raise IndexFileError(f"{display_name(path)}: an ASMK index without image names (written by ASMK.save, "
                                 "not `lit index`): rebuild it with `lit index`")
        return info
    if len(infos) == 1:
        return infos[0]
    first = infos[0]
    if any(i.fingerprint != first.fingerprint or i.image_root != first.image_root for i in infos[1:]):
        raise IndexFileError(f"{display_name(path)}: parts of different indexes (fingerprints or image roots differ)")
    names = tuple(n for i in infos for n in i.names)
    return replace(first, names=names, descriptors=sum(i.descriptors for i in infos))


def load_index(path: str | os.PathLike, device: str | torch.device = "cpu", *, keep_parts: bool = True):
    """Read an index file (or the parts of a sharded one) for searching.

    Returns:
        ``(index, info)``: an :class:`lit.asmk.ASMK` (a :class:`lit.asmk.sharded.ShardedIndex`
        for a sharded index, parts loaded once or, with ``keep_parts=False``, one at a
        time) and its :class:`IndexInfo`.

    Raises:
        NotFoundError, IndexFileError: as :func:`read_info`, or a damaged ASMK index.
    """
    path = os.fspath(path)
    info = read_info(path)
    parts = _parts(path)
    if len(parts) == 1:
        with _reading(parts[0]), reading(parts[0]), h5py.File(parts[0], "r") as f:
            index = ASMK.from_group(f, device, source=parts[0])
    else:
        index = ShardedIndex(parts, device=device, keep=keep_parts)
    _check_names(path, info, index, read_part(parts[0]) if len(parts) == 1 else None)
    return index, info


def read_text(path: str | os.PathLike) -> TextEmbeddings:
    """The ``/text`` group of an index (of every part of a sharded one, in order).

    Raises:
        IndexFileError: the index holds no embeddings (with how to add them).
    """
    path = os.fspath(path)
    parts = []
    for part in _parts(path):
        _check_is_index(part)
        with _reading(part), h5py.File(part, "r") as f:
            if TEXT_GROUP not in f or _str(f[TEXT_GROUP].attrs.get("format", "")) != TEXT_FORMAT:
                raise IndexFileError(
                    f"{display_name(path)}: no global image embeddings for text search (the index was made "
                    "before lit stored them, or from a feature file without them): run `lit text embed "
                    f"FEATURES.h5 --root IMAGE_FOLDER --index {display_name(path)}`")
            g = f[TEXT_GROUP]
            raw = [bytes(n) if not isinstance(n, str) else os.fsencode(n) for n in g["names"][()]]
            if "names_crc32" in g.attrs and int(g.attrs["names_crc32"]) != _names_crc(raw):
                raise IndexFileError(f"{display_name(part)}: index file damaged (its text-search names fail their "
                                     f"checksum): {_ADVICE}")
            names = [os.fsdecode(n) for n in raw]
            parts.append(TextEmbeddings(_str(g.attrs["tower"]), names, g["embeddings"][()],
                                        g["valid"][()].astype(bool), _str(g.attrs.get("features", ""))))
    if len(parts) == 1:
        return parts[0]
    return TextEmbeddings(parts[0].tower, [n for p in parts for n in p.names],
                          np.concatenate([p.embeddings for p in parts]), np.concatenate([p.valid for p in parts]),
                          parts[0].features)


def part_info(info: IndexInfo, lo: int, hi: int) -> IndexInfo:
    """The :class:`IndexInfo` of one part of a sharded index: its id range's names."""
    return replace(info, names=tuple(info.names[lo:hi]))


def text_part(text: TextEmbeddings | None, lo: int, hi: int) -> TextEmbeddings | None:
    """The embeddings of one part's id range."""
    if text is None:
        return None
    return TextEmbeddings(text.tower, list(text.names[lo:hi]), text.embeddings[lo:hi], text.valid[lo:hi], text.features)

