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
                      ``codebook_descriptors``, ``descriptors``; since live collections also
                      ``settings`` (JSON: the extraction settings new photos are extracted
                      with), ``codebook_error`` (mean squared quantisation error of the
                      database) and ``generation`` (a fresh id per written file); files
                      without them are read with defaults
``/text``             :class:`TextEmbeddings` for search by words: ``names``, ``embeddings``
                      (n, D) float32, ``valid`` (n,) uint8; attributes ``format = "lit-text"``,
                      ``version`` 1, ``tower``, ``features``
====================  ==========================================================================

A **sharded index** is a set of such files ``NAME.RRRRR-of-NNNNN.h5``
(:func:`lit.distributed.shard_path`): part ``r`` holds the images of one id range (ASMK
attributes ``shard.lo``, ``shard.hi``) and, in its ``/pipeline`` and ``/text`` groups, their
names and embeddings; read together the parts give one index. Older files are still read:
names in a ``NAME.names.json`` sidecar (single indexes of an early lit, and sharded ones).

A **live index** (``lit add``, ``lit remove``: :mod:`lit.pipeline.live`) is such a file (its
*base*) and a journal beside it, ``INDEX.live/``: segment files of added photos, a manifest
(the commit record: segments and removed ids) and a writer lock; the readers here
(:func:`load_index`, :func:`read_info`, :func:`read_text`) apply a journal that names the
base's generation, so every reader sees the added and removed photos at once (the layout,
commit and compaction protocol: the "live journal" section below).

**Writing** replaces a file atomically (:func:`lit._fileio.atomic_path`): a reader that
opened the old file keeps reading it, and a crash leaves the old file or the new one,
never half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
import zlib
from collections.abc import Iterable, Sequence
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
from .asmk.ivf import Segment
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
_NAMES_PER_BUCKET = 8  # mean names per bucket of the name lookup table
_TABLE_CHUNK = 4096  # values per chunk of its datasets: a lookup reads a few chunks, not the table
_ASMK_TYPE = "lit.asmk.ASMK"

__all__ = [
    "BaseNames", "IndexFileError", "IndexInfo", "Journal", "Manifest", "Part", "SegmentData", "TextEmbeddings", "WriterBusy",
    "apply_journal", "clean_journal", "compact_live", "file_kind", "journal_slots", "live_folder", "load_index",
    "load_index_base", "part_info", "read_info", "read_info_base", "read_journal", "read_manifest", "read_part", "read_segment",
    "read_text", "text_part", "update_text", "write_index", "write_manifest", "write_segment", "writer_lock",
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
    #: extraction settings of the database (scales, features_num, image_size, half, model),
    #: what `lit add` extracts new photos with; ``None`` in indexes of an earlier lit
    settings: dict | None = field(default=None, compare=False)
    #: mean squared distance of database descriptors to their nearest word (0: unknown)
    codebook_error: float = field(default=0.0, compare=False)
    #: identity of this base file: a live journal (``INDEX.live/``) applies to it only
    generation: str = field(default="", compare=False)


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
                    "codebook_descriptors": info.codebook_descriptors, "descriptors": info.descriptors,
                    "settings": json.dumps(info.settings or {}, sort_keys=True),
                    "codebook_error": float(info.codebook_error), "generation": uuid.uuid4().hex})
    raw = [os.fsencode(n) for n in info.names]  # bytes: names that are not valid UTF-8 survive
    g.create_dataset("names", data=np.array(raw, dtype=object), dtype=h5py.special_dtype(vlen=bytes))
    g.attrs["names_crc32"] = _names_crc(raw)  # the names live in HDF5's heap, which has no checksum
    _write_name_table(g, raw)
    if text is not None:
        _write_text(f, text)


def _name_hashes(raw: list[bytes]) -> np.ndarray:
    """64-bit hashes of names (blake2b), as uint64."""
    return np.array([int.from_bytes(hashlib.blake2b(n, digest_size=8).digest(), "little") for n in raw],
                    dtype=np.uint64).reshape(-1)


def _hash_buckets(hashes: np.ndarray, bits: int) -> np.ndarray:
    """The bucket of each hash: its top ``bits`` bits."""
    if bits == 0:
        return np.zeros(hashes.shape, np.int64)
    return (hashes >> np.uint64(64 - bits)).astype(np.int64)


def _write_name_table(g: h5py.Group, raw: list[bytes]) -> None:
    """The name lookup table of ``/pipeline`` (:class:`BaseNames`): the names' hashes sorted,
    the id of each, and where each bucket (top ``name_hash_bits`` bits) starts."""
    hashes = _name_hashes(raw)
    order = np.argsort(hashes, kind="stable")
    bits = max(0, int(np.ceil(np.log2(max(1, len(raw)) / _NAMES_PER_BUCKET))))
    starts = np.searchsorted(_hash_buckets(hashes[order], bits), np.arange((1 << bits) + 1)).astype(np.int64)
    chunks = {"chunks": (_TABLE_CHUNK,)} if len(raw) > _TABLE_CHUNK else {}
    g.create_dataset("name_hashes", **checked(hashes[order], **chunks))
    g.create_dataset("name_ids", **checked(order.astype(np.int64), **chunks))
    g.create_dataset("name_buckets", **checked(starts, **({"chunks": (_TABLE_CHUNK,)} if len(starts) > _TABLE_CHUNK
                                                          else {})))
    g.attrs["name_hash_bits"] = bits


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

def _read_names(g: h5py.Group, path: str) -> tuple[str, ...]:
    raw = [bytes(n) for n in g["names"][()]]
    if "names_crc32" in g.attrs and int(g.attrs["names_crc32"]) != _names_crc(raw):
        raise IndexFileError(f"{display_name(path)}: index file damaged (its image names fail their checksum): "
                             f"{_ADVICE}")
    return tuple(os.fsdecode(n) for n in raw)


class BaseNames(Sequence):
    """The image names of a base file, read from it when first needed (:func:`read_info_base`
    with ``names=False``): its length is known at once, and :meth:`lookup` finds the ids of
    a few names by the file's name table without reading the others (a change of a live
    index costs its own names, not the collection's).

    The file must still be the base it was opened as (its generation): a writer holds the
    journal's lock, which a compaction needs too; else :class:`IndexFileError` says the
    index changed.
    """

    def __init__(self, path: str, count: int, generation: str) -> None:
        self.path, self._count, self.generation = path, int(count), generation
        self._names: tuple[str, ...] | None = None
        self._ids: dict[str, int] | None = None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i):
        return self.names()[i]

    def __iter__(self):
        return iter(self.names())

    def __eq__(self, other) -> bool:
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.names())

    def __repr__(self) -> str:
        return f"BaseNames({display_name(self.path)!r}, {self._count})"

    @contextlib.contextmanager
    def _group(self):
        with _reading(self.path), h5py.File(self.path, "r") as f:
            g = f[PIPELINE_GROUP]
            if _str(g.attrs.get("generation", "")) != self.generation:
                raise IndexFileError(f"{display_name(self.path)}: the index file was replaced while it was read "
                                     "(compacted or rebuilt): open it again")
            yield g

    def names(self) -> tuple[str, ...]:
        """Every name (read once)."""
        if self._names is None:
            with self._group() as g:
                self._names = _read_names(g, self.path)
        return self._names

    def know(self, names: Sequence[str]) -> None:
        """Take the names once read by other means (with the inverted file, or just written):
        reads and :meth:`lookup` use them from then on instead of the file."""
        if len(names) != self._count:
            raise ValueError(f"{len(names)} names for a base of {self._count} images")
        self._names, self._ids = tuple(names), None

    def lookup(self, names: Iterable[str]) -> dict[str, int]:
        """The id of each of ``names`` that the base holds (the others are left out)."""
        names = list(dict.fromkeys(names))
        if self._names is not None or not names:
            if self._ids is None and names:
                self._ids = {n: i for i, n in enumerate(self._names)}
            return {n: self._ids[n] for n in names if n in self._ids} if names else {}
        with self._group() as g:
            if "name_hashes" not in g:  # a file of an earlier lit: read every name
                self._names = _read_names(g, self.path)
                return self.lookup(names)
            raw = [os.fsencode(n) for n in names]
            hashes = _name_hashes(raw)
            buckets = _hash_buckets(hashes, int(g.attrs["name_hash_bits"]))
            wanted = np.unique(np.concatenate([buckets, buckets + 1]))
            starts = dict(zip(wanted.tolist(), g["name_buckets"][wanted.tolist()].tolist(), strict=True))
            spans = [(starts[b], starts[b + 1]) for b in buckets.tolist()]
            rows = np.unique(np.concatenate([np.arange(a, c, dtype=np.int64) for a, c in spans]))
            if not rows.size:
                return {}
            table_hashes = g["name_hashes"][rows.tolist()]
            table_ids = g["name_ids"][rows.tolist()]
            candidates = {}
            for name, b, h in zip(names, raw, hashes.tolist(), strict=True):
                ids = table_ids[table_hashes == np.uint64(h)]
                if ids.size:
                    candidates[name] = (b, ids.tolist())
            slots = sorted({i for _, ids in candidates.values() for i in ids})
            if not slots:
                return {}
            stored = dict(zip(slots, (bytes(n) for n in g["names"][slots]), strict=True))  # no hash collision
        return {n: i for n, (b, ids) in candidates.items() for i in ids if stored[i] == b}


def _read_pipeline(f: h5py.File, path: str, *, names: bool = True) -> IndexInfo | None:
    if PIPELINE_GROUP not in f:
        return None
    g = f[PIPELINE_GROUP]
    fmt, version = _str(g.attrs.get("format", "")), g.attrs.get("version")
    if fmt != PIPELINE_FORMAT or version is None or int(version) != PIPELINE_VERSION:
        raise IndexFileError(f"{display_name(path)}: index metadata of format {fmt!r} version {version} "
                             f"(this lit reads {PIPELINE_FORMAT!r} {PIPELINE_VERSION})")
    a = g.attrs
    try:
        generation = _str(a.get("generation", ""))
        if names or not generation:
            read = _read_names(g, path)
            generation = generation or _legacy_generation(f, read)
            if names:
                names = read
            else:  # a file of an earlier lit (no name table): its names are read already
                names = BaseNames(path, len(read), generation)
                names.know(read)
        else:
            names = BaseNames(path, g["names"].shape[0], generation)
        return IndexInfo(names=names, image_root=_str(a["image_root"]) or None,
                         fingerprint=_str(a["fingerprint"]) or None, features=_str(a["features"]),
                         codebook_source=_str(a["codebook_source"]), codebook_size=int(a["codebook_size"]),
                         codebook_descriptors=int(a["codebook_descriptors"]), descriptors=int(a["descriptors"]),
                         settings=json.loads(_str(a["settings"])) or None if "settings" in a else None,
                         codebook_error=float(a.get("codebook_error", 0.0)),
                         generation=generation)
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
        journal = read_journal(path, vectors=False, generation=infos[0].generation) if len(parts) == 1 else None
        if journal is not None and journal.manifest.base != infos[0].generation:
            return read_info(path)  # compacted while we read: the journal is the new base's, read that base
        return _live_info(infos[0], journal) if journal is not None else infos[0]
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
    parts = _parts(path)
    if len(parts) == 1 and os.path.isdir(live_folder(path)):
        return _load_live(path, device)
    info = read_info(path)
    if len(parts) == 1:
        with _reading(parts[0]), reading(parts[0]), h5py.File(parts[0], "r") as f:
            index = ASMK.from_group(f, device, source=parts[0])
    else:
        index = ShardedIndex(parts, device=device, keep=keep_parts)
    _check_names(path, info, index, read_part(parts[0]) if len(parts) == 1 else None)
    return index, info


def _load_live(path: str, device) -> tuple[ASMK, IndexInfo]:
    """An index with its journal applied, renumbered like one built from scratch."""
    for _ in range(20):
        _check_is_index(path)
        with reading(path), h5py.File(path, "r") as f:
            info = _read_pipeline(f, path)
            if info is None:
                break
            index = ASMK.from_group(f, device, source=path)
        journal = read_journal(path, generation=info.generation)
        if journal is not None and journal.manifest.base != info.generation:
            continue  # compacted while we read: this journal belongs to the new base, read it
        if journal is None:
            if _base_generation(path) != info.generation:
                continue  # compacted while we read: read the new base
            _check_names(path, info, index, None)
            return index, info
        names, removed = journal_slots(info.names, journal)
        apply_journal(index, len(info.names), journal)
        compact_live(index, len(names), removed)
        return index, _live_info(info, journal)
    info = read_info(path)
    with reading(path), h5py.File(path, "r") as f:
        index = ASMK.from_group(f, device, source=path)
    return index, info


def read_text(path: str | os.PathLike, *, journal: bool = True) -> TextEmbeddings:
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
        files = _parts(path)
        if journal and len(files) == 1 and os.path.isdir(live_folder(path)):
            info = read_info_base(path)
            live = read_journal(path, generation=info.generation)
            if live is not None:
                return _journal_text(parts[0], info.names, live)
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



# ---------------------------------------------------------------------------- live journal
# An index file changed in place by `lit add` / `lit remove` (lit.pipeline.live) is its *base*
# file plus a journal in the folder ``INDEX.live/`` beside it:
#
# - ``seg-*.h5``: one file per add, written whole and renamed into place (atomic_path): the
#   new images' names, their ASMK entries as a CSR segment over the codebook's words (image
#   ids local to the file), their file digests and descriptor counts, and their text-search
#   embeddings when the base has some;
# - ``manifest.json``: the commit record, replaced atomically: the base's generation, the
#   committed segment files in order, and the removed *slots* (slot = position in the base
#   names followed by every segment's names, in order). A change is committed when the
#   manifest naming it is renamed into place, and only then;
# - ``lock``: writers hold an exclusive ``flock`` on it (one writer at a time).
#
# A journal applies to the base whose generation it names: a compaction writes a new base
# (new generation) and then an empty manifest, so a crash between the two leaves a manifest
# of the old generation, which is stale and ignored (the new base holds everything), and a
# base rebuilt by `lit index` ignores the journal of the old one the same way.
LIVE_SUFFIX = ".live"
MANIFEST_NAME = "manifest.json"
JOURNAL_FORMAT = "lit-live-journal"
JOURNAL_VERSION = 1
SEGMENT_FORMAT = "lit-live-segment"
SEGMENT_VERSION = 1


def _legacy_generation(f: h5py.File, names) -> str:
    """The identity of a base written before generations were recorded: a digest of its size
    attributes and names (stable across copies of the file)."""
    h = hashlib.sha256()
    h.update(str(int(f.attrs.get("n_images", 0))).encode())
    for n in names:
        h.update(os.fsencode(n) + b"\0")
    return "legacy-" + h.hexdigest()[:24]


def live_folder(path: str | os.PathLike) -> str:
    """The journal folder of an index file: ``INDEX.live`` beside it."""
    return os.fspath(path) + LIVE_SUFFIX


@dataclass(frozen=True)
class Manifest:
    """The committed state of a live journal (``INDEX.live/manifest.json``).

    Args:
        base: generation of the base file it applies to.
        commit: number of commits since the base was written.
        segments: ``(file name, images)`` of every committed segment file, in order.
        removed: removed slots (positions in the base names, then each segment's).
        notes: small facts kept with the journal (``model``: the model that extracted the
            added photos; ``segment_error``: their mean quantisation error).
    """

    base: str
    commit: int = 0
    segments: tuple[tuple[str, int], ...] = ()
    removed: tuple[int, ...] = ()
    notes: dict = field(default_factory=dict, compare=False)

    @property
    def added(self) -> int:
        """Images in the segment files."""
        return sum(n for _, n in self.segments)


class SegmentData(NamedTuple):
    """One segment file of a live journal: new images and their ASMK entries.

    Shape:
        - offsets: :math:`(K + 1,)` int64 CSR over the words; image_ids: :math:`(E,)` int32,
          ``0..len(names) - 1``; vectors: :math:`(E, B)` uint8 or :math:`(E, D)` float32 rows.
        - descriptors: :math:`(n,)` int64 per image; text_embeddings: :math:`(n, D_t)` float32
          or ``None``; text_valid: :math:`(n,)` bool or ``None``.
    """

    names: list[str]
    offsets: np.ndarray
    image_ids: np.ndarray
    vectors: np.ndarray
    descriptors: np.ndarray
    digests: list[str]
    text_embeddings: np.ndarray | None = None
    text_valid: np.ndarray | None = None
    error: float = 0.0


def read_manifest(path: str | os.PathLike) -> Manifest | None:
    """The journal's manifest, ``None`` when there is none.

    Raises:
        IndexFileError: a manifest that is not one (damaged or of another version).
    """
    file = os.path.join(live_folder(path), MANIFEST_NAME)
    try:
        with open(file, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise IndexFileError(f"{display_name(file)}: not a readable journal manifest ({err})") from None
    if data.get("format") != JOURNAL_FORMAT or data.get("version") != JOURNAL_VERSION:
        raise IndexFileError(f"{display_name(file)}: journal of format {data.get('format')!r} version "
                             f"{data.get('version')!r} (this lit reads {JOURNAL_FORMAT!r} {JOURNAL_VERSION})")
    try:
        return Manifest(str(data["base"]), int(data["commit"]), tuple((str(f), int(n)) for f, n in data["segments"]),
                        tuple(int(i) for i in data["removed"]), dict(data.get("notes", {})))
    except (KeyError, TypeError, ValueError) as err:
        raise IndexFileError(f"{display_name(file)}: damaged journal manifest ({err})") from None


def write_manifest(path: str | os.PathLike, manifest: Manifest) -> None:
    """Commit: replace the journal's manifest atomically (the folder is created)."""
    folder = live_folder(path)
    os.makedirs(folder, exist_ok=True)
    data = {"format": JOURNAL_FORMAT, "version": JOURNAL_VERSION, "base": manifest.base, "commit": manifest.commit,
            "segments": [list(s) for s in manifest.segments], "removed": list(manifest.removed),
            "notes": manifest.notes}
    with atomic_path(os.path.join(folder, MANIFEST_NAME)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)


def write_segment(path: str | os.PathLike, data: SegmentData, *, base: str, text_tower: str = "") -> str:
    """Write a segment file into the journal (atomically; not committed until a manifest
    names it).

    Returns:
        Its file name (inside :func:`live_folder`).
    """
    folder = live_folder(path)
    os.makedirs(folder, exist_ok=True)
    name = f"seg-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:10]}.h5"
    with atomic_path(os.path.join(folder, name)) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({"format": SEGMENT_FORMAT, "version": SEGMENT_VERSION, "base": base,
                        "error": float(data.error), "text_tower": text_tower})
        vlen = h5py.special_dtype(vlen=bytes)
        f.create_dataset("names", data=np.array([os.fsencode(n) for n in data.names], dtype=object), dtype=vlen)
        f.create_dataset("digests", data=np.array([d.encode() for d in data.digests], dtype=object), dtype=vlen)
        f.create_dataset("offsets", data=np.asarray(data.offsets, np.int64))
        f.create_dataset("image_ids", data=np.asarray(data.image_ids, np.int32))
        f.create_dataset("vectors", data=data.vectors)
        f.create_dataset("descriptors", data=np.asarray(data.descriptors, np.int64))
        if data.text_embeddings is not None:
            f.create_dataset("text_embeddings", data=np.asarray(data.text_embeddings, np.float32))
            f.create_dataset("text_valid", data=np.asarray(data.text_valid).astype(np.uint8))
    return name


def read_segment(path: str | os.PathLike, name: str, *, vectors: bool = True) -> SegmentData:
    """A segment file of the journal (``vectors=False``: names, digests and counts only).

    Raises:
        NotFoundError: the file is gone (a compaction removed it: read the manifest again).
        IndexFileError: damaged.
    """
    file = os.path.join(live_folder(path), name)
    if not os.path.isfile(file):
        raise NotFoundError(f"{display_name(file)}: journal segment missing")
    try:
        with h5py.File(file, "r") as f:
            if _str(f.attrs.get("format", "")) != SEGMENT_FORMAT or int(f.attrs.get("version", 0)) != SEGMENT_VERSION:
                raise IndexFileError(f"{display_name(file)}: not a journal segment this lit reads")
            names = [os.fsdecode(bytes(n)) for n in f["names"][()]]
            text = f["text_embeddings"][()] if "text_embeddings" in f else None
            valid = f["text_valid"][()].astype(bool) if "text_valid" in f else None
            return SegmentData(
                names, f["offsets"][()] if vectors else np.zeros(0, np.int64),
                f["image_ids"][()] if vectors else np.zeros(0, np.int32),
                f["vectors"][()] if vectors else np.zeros((0, 0), np.uint8), f["descriptors"][()],
                [_str(d) for d in f["digests"][()]], text, valid, float(f.attrs.get("error", 0.0)))
    except (OSError, KeyError, ValueError) as err:
        if not os.path.isfile(file):  # removed by a compaction between the check and the read
            raise NotFoundError(f"{display_name(file)}: journal segment missing") from None
        raise IndexFileError(f"{display_name(file)}: damaged journal segment ({err})") from None


class Journal(NamedTuple):
    """A base file's valid journal, read consistently (:func:`read_journal`)."""

    manifest: Manifest
    segments: list[SegmentData]


def _base_generation(path: str) -> str:
    _check_is_index(path)
    with h5py.File(path, "r") as f:
        info = _read_pipeline(f, path)
    return info.generation if info is not None else ""


def read_journal(path: str | os.PathLike, *, vectors: bool = True, generation: str | None = None) -> Journal | None:
    """The committed journal of an index file, consistent with its base, or ``None``.

    A writer may commit or compact meanwhile: the manifest is read before the base's
    generation and the segments after it; when they disagree (a compaction replaced the
    base, or removed a segment) it is all read again. A manifest that still names another
    base after that is stale (a crashed compaction, or a base rebuilt by ``lit index``) and
    is ignored.

    Args:
        vectors: read the segments' ASMK entries too (else names and counts only).
        generation: the base's generation when the caller has it open already.
    """
    path = os.fspath(path)
    if not os.path.isdir(live_folder(path)):
        return None
    last = None
    for _ in range(20):
        manifest = read_manifest(path)
        if manifest is None:
            return None
        gen = generation if generation is not None else _base_generation(path)
        if manifest.base != gen:
            if last == (manifest.commit, manifest.base, gen):
                return None  # stale: the same disagreement twice
            last = (manifest.commit, manifest.base, gen)
            generation = None
            time.sleep(0.01)
            continue
        try:
            segments = [read_segment(path, name, vectors=vectors) for name, _ in manifest.segments]
        except NotFoundError:  # compacted meanwhile
            generation = None
            time.sleep(0.01)
            continue
        return Journal(manifest, segments)
    raise IndexFileError(f"{display_name(path)}: the index keeps changing while it is read; try again")


class WriterBusy(IndexFileError):
    """Another process is changing the index (its journal's lock is held)."""


@contextlib.contextmanager
def writer_lock(path: str | os.PathLike, *, wait: float = 0.0):
    """Hold the index's writer lock (an exclusive ``flock`` on ``INDEX.live/lock``).

    Args:
        wait: seconds to wait for another writer to finish (0: refuse at once).

    Raises:
        WriterBusy: still held by another writer after ``wait`` seconds.
    """
    folder = live_folder(path)
    lock_file = os.path.join(folder, "lock")
    try:
        os.makedirs(folder, exist_ok=True)
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise IndexFileError(f"{display_name(path)}: cannot change this index: its journal folder "
                             f"{display_name(folder)} cannot be written ({err.strerror})") from None
    try:
        deadline = time.monotonic() + max(0.0, float(wait))
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    try:
                        holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
                    except OSError:
                        holder = ""
                    raise WriterBusy(
                        f"{display_name(path)} is being changed by another process{f' ({holder})' if holder else ''}: "
                        "try again when it has finished, or wait for it") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}, since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def clean_journal(path: str | os.PathLike, manifest: Manifest | None) -> None:
    """Remove journal files no committed manifest names (segments of a writer that died
    before its commit, or of a compacted journal). Call it holding :func:`writer_lock`."""
    folder = live_folder(path)
    keep = {name for name, _ in manifest.segments} if manifest is not None else set()
    try:
        entries = os.listdir(folder)
    except FileNotFoundError:
        return
    for name in entries:
        if name.startswith("seg-") and name.endswith(".h5") and name not in keep:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))


def journal_slots(base_names, journal: Journal | None) -> tuple[list[str], set[int]]:
    """Every slot's name (base names, then each segment's) and the removed slots."""
    names = list(base_names)
    if journal is None:
        return names, set()
    for seg in journal.segments:
        names.extend(seg.names)
    return names, set(journal.manifest.removed)


def apply_journal(index: ASMK, n_base: int, journal: Journal) -> None:
    """Add a journal's segments (ids = slots) and tombstones to the base's index, in memory."""
    slot = n_base
    index.ivf.reserve(n_base)
    for seg in journal.segments:
        offsets = torch.from_numpy(np.asarray(seg.offsets, np.int64))
        ids = torch.from_numpy(np.asarray(seg.image_ids, np.int32)) + slot
        rows = torch.from_numpy(np.ascontiguousarray(seg.vectors))
        index.append_segment(Segment(offsets, ids.to(torch.int32), index.ivf.internal(rows.to(index.device))),
                             torch.unique(ids.to(torch.int64)))
        slot += len(seg.names)
        index.ivf.reserve(slot)
    if journal.manifest.removed:
        index.remove(torch.tensor(journal.manifest.removed, dtype=torch.int64))


def _live_info(info: IndexInfo, journal: Journal) -> IndexInfo:
    """The base's info with the journal applied: the present names, in slot order."""
    names, removed = journal_slots(info.names, journal)
    kept = tuple(n for i, n in enumerate(names) if i not in removed)
    added = sum(int(np.sum(s.descriptors)) for s in journal.segments)
    return replace(info, names=kept, descriptors=info.descriptors + added)


def compact_live(index: ASMK, n_slots: int, removed: set[int]) -> None:
    """Renumber an index with tombstones to contiguous ids (slots in order, removed dropped):
    the index an index built from scratch on the present images would be."""
    keep = torch.ones(n_slots, dtype=torch.bool)
    if removed:
        keep[torch.tensor(sorted(removed), dtype=torch.int64)] = False
    new_ids = torch.where(keep, torch.cumsum(keep.to(torch.int64), 0) - 1, torch.full_like(keep, -1, dtype=torch.int64))
    index.compact(new_ids, n_images=int(keep.sum()))


def _journal_text(text: TextEmbeddings, base_names, journal: Journal) -> TextEmbeddings:
    names, removed = journal_slots(base_names, journal)
    emb = [np.asarray(text.embeddings, np.float32)]
    valid = [np.asarray(text.valid, bool)]
    for seg in journal.segments:
        n = len(seg.names)
        if seg.text_embeddings is not None and seg.text_embeddings.shape[1:] == emb[0].shape[1:]:
            emb.append(seg.text_embeddings)
            valid.append(seg.text_valid)
        else:
            emb.append(np.zeros((n, *emb[0].shape[1:]), np.float32))
            valid.append(np.zeros(n, bool))
    keep = np.array([i not in removed for i in range(len(names))], bool)
    emb_all, valid_all = np.concatenate(emb)[keep], np.concatenate(valid)[keep]
    return TextEmbeddings(text.tower, [n for n, k in zip(names, keep, strict=True) if k], emb_all, valid_all,
                          text.features)


def read_info_base(path: str | os.PathLike, *, names: bool = True) -> IndexInfo:
    """The :class:`IndexInfo` of an index file's base, without its journal.

    Args:
        names: read the names now; ``False``: they are a :class:`BaseNames`, read when
            first needed (files of an earlier lit without generation: read now).
    """
    path = os.fspath(path)
    _check_is_index(path)
    with h5py.File(path, "r") as f:
        info = _read_pipeline(f, path, names=names)
    if info is None:
        return read_info(path)
    return info


def load_index_base(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[ASMK, IndexInfo]:
    """An index file's base (without its journal) and its :class:`IndexInfo`, from one read."""
    path = os.fspath(path)
    _check_is_index(path)
    with reading(path), h5py.File(path, "r") as f:
        info = _read_pipeline(f, path)
        index = ASMK.from_group(f, device, source=path)
    if info is None:
        info = read_info(path)
    _check_names(path, info, index, None)
    return index, info
