"""Feature files: per-image super-features in one HDF5 file, written resumably.

Layout (``format = "lit-features"``, ``version = 1``):

=====================  ==========================  ==========================================
dataset                shape / dtype               content
=====================  ==========================  ==========================================
``names``              (n,) utf-8 str              image name, printable (:func:`display_name`)
``names_raw``          (n,) vlen uint8             the exact bytes of each name (``os.fsencode``)
``offsets``            (n + 1,) int64              features of image i: rows offsets[i]:offsets[i+1]
``descriptors``        (M, d) float32 or float16   reduced descriptors (not L2-normalised)
``strengths``          (M,) float32                strengths
``scales``             (M,) float32                extraction scale
``superfeature_ids``   (M,) int16                  template index n
``positions``          (M, 2) float32              attention centroid (x, y) in the resized image
``failed``             (f,) utf-8 str              "name<TAB>error" of images that could not be read
``failed_raw``         (f,) vlen uint8             the exact bytes of each failed name
``global/<tower>/``    ``embeddings`` (n, D) f32,  global embedding of each image by an image
                       ``valid`` (n,) uint8        tower (text search); valid 0: none stored
=====================  ==========================  ==========================================

Attributes: ``num_images`` and ``num_features`` (the committed counts: rows past them are
ignored), ``fingerprint`` (model weights + extraction settings), ``descriptor_dim``,
``root`` (bytes: the folder that names are relative to) and ``settings`` (JSON: scales,
features_num, image_size). Files written before ``names_raw``/``root`` existed are read
as before.

**Names.** Every stored name is the path of the image relative to a root folder, with
``/`` separators: ``--root`` when given, else the deepest folder that holds every input
(the folder itself for one folder; a file's own folder for one file). Names that are not
valid UTF-8 (``caf\\xe9.jpg`` on a Latin-1 disk) are kept byte for byte in
``names_raw`` and read back as the ``str`` Python uses for that file (surrogate escapes);
:func:`display_name` gives their printable form (``caf\\xe9.jpg``) for messages, JSON and
CSV.

**Resuming.** Datasets grow by doubling and the file is flushed after every image, so a
run killed at any moment (even ``kill -9``) loses at most the image in flight.

**Shard sets.** ``torchrun ... lit extract`` writes one file per rank
(``feats.00000-of-00004.h5`` ..., :func:`lit.distributed.shard_path`); a
:class:`FeatureCollection` reads a file, a shard set (its base name, a folder or a glob) as
one collection, in rank order.

**Owner.** This module is the only reader and writer of feature files (the pipeline,
text search and the benchmarks go through :class:`FeatureStore` and
:class:`FeatureCollection`). Extraction into a file is :func:`lit.pipeline.extract_to_file`.

**Reading** checks the descriptors: a file whose values are not finite or beyond
:data:`MAX_DESCRIPTOR_ABS` (a damaged or overwritten file) raises
:class:`FeatureFileError` naming it.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import logging
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence

import h5py
import numpy as np
import torch

from ._fileio import atomic_path
from ._hdf5 import (
    checked,
    describe,
    detach,
    open_file,
    quiet_after_write_failure,
    stored_eof,
    translating,
    write_errno,
)
from ._names import decode_name, display_name, encode_name, escape_undecodable
from .distributed import find_shards
from .errors import FeatureFileError, LitError, StorageError, UsageError
from .types import LocalFeatures

log = logging.getLogger(__name__)

FORMAT = "lit-features"
VERSION = 1
_STR = h5py.string_dtype("utf-8")
_RAW = h5py.vlen_dtype(np.uint8)
#: group of the global embeddings (text search), one sub-group per image tower
GLOBAL_GROUP = "global"
#: Descriptors per chunk when streaming a collection (:meth:`FeatureCollection.iter_descriptors`).
STREAM_ROWS = 1 << 20

#: Largest absolute descriptor value accepted when reading a feature file. Real
#: descriptors (PCA-whitened super-features) stay within a few hundred; a damaged file
#: (bytes overwritten: 0x7F7F7F7F is 3.4e38) would overflow the squared distances of
#: k-means and ASMK.
MAX_DESCRIPTOR_ABS = 1e4
#: Bytes kept free beyond an image's own data before it is appended (HDF5 metadata, a
#: new chunk of each dataset): below that, the run stops with "disk full" before writing.
SPACE_MARGIN = 4 << 20
_MAX_PAD = 1 << 30  # a resume pads a feature file cut short by a failed write by at most this much
_WRITING = "writing"  # attribute: 1 while a writer has the file open (left at 1 by a crash)
_ADVICE = "extract it again, or restore a copy (a file cut short by a failed write: `lit extract` into it recovers it)"

__all__ = [
    "FeatureCollection", "FeatureFileError", "FeatureStore", "GLOBAL_GROUP", "MAX_DESCRIPTOR_ABS", "STREAM_ROWS",
    "feature_file_info", "open_features",
]


def _open_h5(path: str, mode: str) -> h5py.File:
    """``h5py.File`` with one-line errors that say what is wrong (:func:`lit._hdf5.open_file`)."""
    shown = display_name(path)
    folder = os.path.dirname(os.path.abspath(path))
    if mode != "r" and not os.path.isdir(folder):
        raise FeatureFileError(f"{shown}: the folder {display_name(folder)} does not exist")
    return open_file(path, mode, FeatureFileError, "feature file", libver=None)


def _reads(method):
    """Read through :func:`lit._hdf5.translating`: HDF5 errors of a damaged file become one
    :class:`FeatureFileError` naming it."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self._broken:  # HDF5 cannot be touched after a failed write
            raise StorageError(self._broken)
        with translating(self.path, FeatureFileError, "feature file", _ADVICE):
            return method(self, *args, **kwargs)

    return wrapper


def _writes(method):
    """Write through :meth:`FeatureStore._fail`: a failed write (disk full, I/O error) stops
    the store with one :class:`StorageError`."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if self._broken:
            raise StorageError(self._broken)
        n = len(self)
        try:
            return method(self, *args, **kwargs)
        except (OSError, RuntimeError) as err:
            if isinstance(err, LitError):
                raise
            self._fail(err, n)

    return wrapper


def _raw_bytes(value) -> bytes:
    return value.tobytes() if isinstance(value, np.ndarray) else bytes(value)


def _bad_rows(values: np.ndarray) -> str:
    """What is wrong with descriptor rows (non-finite, beyond :data:`MAX_DESCRIPTOR_ABS`,
    all zero: a write that failed), ``""`` when nothing."""
    if not values.size:
        return ""
    peak = np.abs(values).max(axis=1)
    if np.isfinite(peak).all() and peak.max() <= MAX_DESCRIPTOR_ABS and peak.min() > 0:
        return ""
    if not np.isfinite(peak).all():
        return f"{int((~np.isfinite(values)).sum())} non-finite values"
    if peak.max() > MAX_DESCRIPTOR_ABS:
        return f"values up to {float(peak.max()):.3g}, beyond ±{MAX_DESCRIPTOR_ABS:g}"
    return f"{int((peak == 0).sum())} all-zero rows"


class FeatureStore:
    """Read (and append to) a feature file.

    Args:
        path: the HDF5 file.
        mode: ``"r"`` to read, ``"a"`` to append (created if missing; its folder must exist).
        descriptor_dim, fingerprint: required to create a file; checked when appending.
        half: store descriptors as float16 (halves the size; default float32).
        root: the folder names are relative to (recorded when the file is created).
        settings: extraction settings recorded when the file is created (JSON-able).

    Raises:
        FeatureFileError: missing, in use by another process, not a lit feature file, made
            by another model, or (when reading) damaged descriptors; the message names the
            file.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r", descriptor_dim: int | None = None,
                 fingerprint: str | None = None, half: bool = False, root: str | os.PathLike | None = None,
                 settings: dict | None = None) -> None:
        self.path = os.fspath(path)
        shown = display_name(self.path)
        if mode not in ("r", "a"):
            raise UsageError(f"mode must be 'r' or 'a', got {mode!r}")
        if mode == "r" and not os.path.isfile(self.path):
            raise FeatureFileError(f"{shown}: no such feature file")
        self._names: list[str] | None = None
        self._lookup: dict[str, int] | None = None
        self._checked = False
        self._broken: str | None = None  # why appending stopped (a failed write)
        if mode == "a":
            quiet_after_write_failure()
            _recover(self.path)
        self.h5 = _open_h5(self.path, mode)
        try:
            with translating(self.path, FeatureFileError, "feature file", _ADVICE):
                self._setup(mode, descriptor_dim, fingerprint, half, root, settings)
        except BaseException as err:
            if isinstance(err, StorageError):  # a failed write: HDF5 cannot flush on close
                self._broken = str(err)
            self.close()
            raise

    def _setup(self, mode: str, descriptor_dim, fingerprint, half, root, settings) -> None:
        shown = display_name(self.path)
        if "format" not in self.h5.attrs:
            if mode == "r" or len(self.h5.keys()):
                kind = "an index file (from `lit index`), not a feature file" if "type" in self.h5.attrs else \
                    "not a lit feature file (no 'format' attribute)"
                raise FeatureFileError(f"{shown}: {kind}")
            if descriptor_dim is None:
                raise UsageError("descriptor_dim is needed to create a feature file")
            self._create(int(descriptor_dim), fingerprint or "", half, root, settings)
        fmt, ver = self.h5.attrs.get("format"), int(self.h5.attrs.get("version", -1))
        if fmt != FORMAT or ver != VERSION:
            raise FeatureFileError(f"{shown}: format {fmt!r} version {ver}, expected {FORMAT!r} version {VERSION}")
        for key in ("num_images", "num_features", "descriptor_dim", "fingerprint"):
            if key not in self.h5.attrs:
                raise FeatureFileError(f"{shown}: damaged feature file (no {key!r} attribute): {_ADVICE}")
        self._check_header(mode)
        if mode == "a" and fingerprint is not None and self.h5.attrs["fingerprint"] != fingerprint:
            raise FeatureFileError(
                f"{shown} was written by another model or with other extraction settings "
                "(scales, features, image size, --amp or --half: fingerprint differs): use another output file"
            )
        if mode == "a" and "names_raw" not in self.h5:  # a file of an earlier lit: add the raw names
            n = len(self)
            ds = self.h5.create_dataset("names_raw", (n,), maxshape=(None,), dtype=_RAW, chunks=(1024,))
            for j, name in enumerate(self._display_names()):
                ds[j] = np.frombuffer(encode_name(name), np.uint8)
        if mode == "a" and "failed_raw" not in self.h5:
            ds = self.h5.create_dataset("failed_raw", (self.h5["failed"].shape[0],), maxshape=(None,), dtype=_RAW, chunks=(256,))
            for j, s in enumerate(self.h5["failed"][:]):
                s = s.decode() if isinstance(s, bytes) else s
                ds[j] = np.frombuffer(encode_name(s.partition("\t")[0]), np.uint8)
        if mode == "a":
            self._check_committed()
            self.h5.attrs[_WRITING] = 1  # cleared by close(): set at the next open, the run did not end cleanly
            self.h5.flush()

    def _create(self, dim: int, fingerprint: str, half: bool, root, settings) -> None:
        h = self.h5
        h.attrs.update({"format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
                        "descriptor_dim": dim, "num_images": 0, "num_features": 0})
        if root is not None:
            h.attrs["root"] = encode_name(os.path.abspath(os.fspath(root)))  # read back as str by h5py
        if settings is not None:
            h.attrs["settings"] = json.dumps(settings, sort_keys=True)
        h.attrs["header_crc"] = self._header_crc()
        h.create_dataset("commit", **checked(np.zeros(2, np.int64), chunks=(2,)))
        cap = 1024
        h.create_dataset("names", (0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        h.create_dataset("names_raw", (0,), maxshape=(None,), dtype=_RAW, chunks=(1024,))
        h.create_dataset("offsets", **checked(np.zeros(1, np.int64), maxshape=(None,), chunks=(1024,)))
        h.create_dataset("descriptors", **checked(shape=(cap, dim), maxshape=(None, dim),
                                                  dtype=np.float16 if half else np.float32, chunks=(1024, dim)))
        h.create_dataset("strengths", **checked(shape=(cap,), maxshape=(None,), dtype=np.float32, chunks=(4096,)))
        h.create_dataset("scales", **checked(shape=(cap,), maxshape=(None,), dtype=np.float32, chunks=(4096,)))
        h.create_dataset("superfeature_ids", **checked(shape=(cap,), maxshape=(None,), dtype=np.int16, chunks=(4096,)))
        h.create_dataset("positions", **checked(shape=(cap, 2), maxshape=(None, 2), dtype=np.float32, chunks=(4096, 2)))
        h.create_dataset("failed", (0,), maxshape=(None,), dtype=_STR, chunks=(256,))
        h.create_dataset("failed_raw", (0,), maxshape=(None,), dtype=_RAW, chunks=(256,))
        h.flush()

    # ------------------------------------------------------------------ reading
    @_reads
    def __len__(self) -> int:
        return int(self.h5.attrs["num_images"])

    def __repr__(self) -> str:
        return f"FeatureStore({display_name(self.path)!r}, {len(self)} images, {self.num_features} features)"

    @property
    @_reads
    def num_features(self) -> int:
        return int(self.h5.attrs["num_features"])

    @property
    @_reads
    def fingerprint(self) -> str:
        return str(self.h5.attrs["fingerprint"])

    @property
    @_reads
    def descriptor_dim(self) -> int:
        return int(self.h5.attrs["descriptor_dim"])

    @property
    @_reads
    def root(self) -> str | None:
        """The absolute folder the names are relative to (``None`` in older files)."""
        for key in ("root", "image_root"):  # image_root: files of an early lit
            value = self.h5.attrs.get(key)
            if value is not None and len(value):
                path = value if isinstance(value, str) else decode_name(_raw_bytes(value))
                return os.path.abspath(path)
        return None

    @property
    @_reads
    def settings(self) -> dict:
        """Extraction settings (scales, features_num, image_size); ``{}`` in older files."""
        value = self.h5.attrs.get("settings")
        return json.loads(value) if value is not None else {}

    @property
    @_reads
    def half(self) -> bool:
        return self.h5["descriptors"].dtype == np.float16

    @property
    def display_names(self) -> list[str]:
        """Printable names (:func:`lit.display_name` of :attr:`names`)."""
        return [display_name(n) for n in self.names]

    def _display_names(self) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else s for s in self.h5["names"][: len(self)]]

    @property
    @_reads
    def names(self) -> list[str]:
        """Stored image names (``str``; exact bytes kept, see the module docstring).

        Raises:
            FeatureFileError: the two copies of the names disagree (a damaged file).
        """
        if self._names is None:
            n = len(self)
            shown = self._display_names()
            if len(shown) != n:
                raise FeatureFileError(f"{display_name(self.path)}: feature file damaged ({len(shown)} names for "
                                       f"{n} images): {_ADVICE}")
            if "names_raw" in self.h5 and self.h5["names_raw"].shape[0] >= n:
                names = [decode_name(_raw_bytes(r)) for r in self.h5["names_raw"][:n]]
                # the shown copy: display_name's form, or (files of earlier versions) the name
                # with only its undecodable bytes escaped
                bad = next((i for i, (a, b) in enumerate(zip(names, shown, strict=True))
                            if b != display_name(a) and b != escape_undecodable(a)), None)
                if bad is not None:
                    raise FeatureFileError(f"{display_name(self.path)}: feature file damaged (the name of image {bad} "
                                           f"differs between its two copies): {_ADVICE}")
                self._names = names
            else:
                self._names = shown
        return self._names

    @property
    @_reads
    def failed(self) -> dict[str, str]:
        """``name -> error`` of the images that could not be read (and not extracted since)."""
        rows = self.h5["failed"][:]
        raws = self.h5["failed_raw"][:] if "failed_raw" in self.h5 else [None] * len(rows)
        out = {}
        for s, raw in zip(rows, raws, strict=False):
            s = s.decode() if isinstance(s, bytes) else s
            name, _, err = s.partition("\t")
            out[decode_name(_raw_bytes(raw)) if raw is not None else name] = err
        return out

    def index(self, name: str) -> int:
        if self._lookup is None:
            self._lookup = {n: i for i, n in enumerate(self.names)}
        try:
            return self._lookup[name]
        except KeyError:
            raise KeyError(f"{display_name(name)!r} is not in {display_name(self.path)}") from None

    def _check(self, values: np.ndarray, what: str) -> np.ndarray:
        detail = _bad_rows(values)
        if detail:
            raise FeatureFileError(
                f"{display_name(self.path)}: damaged feature file ({what}: {detail}); extract it again"
            )
        return values

    @_reads
    def _check_offsets(self) -> np.ndarray:
        n, m = len(self), self.num_features
        offsets = self.h5["offsets"][: n + 1]
        if (len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != m or (np.diff(offsets) < 0).any()
                or self.h5["descriptors"].shape[0] < m or self.h5["names"].shape[0] < n):
            raise FeatureFileError(f"{display_name(self.path)}: damaged feature file (inconsistent offsets or counts)")
        return offsets

    def __getitem__(self, key: int | str) -> LocalFeatures:
        i = self.index(key) if isinstance(key, str) else int(key)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        i %= n
        with translating(self.path, FeatureFileError, "feature file", _ADVICE):
            return self._read_image(i)

    def _read_image(self, i: int) -> LocalFeatures:
        a, b = (int(v) for v in self.h5["offsets"][i:i + 2])
        if not 0 <= a <= b <= self.num_features:
            raise FeatureFileError(f"{display_name(self.path)}: damaged feature file (offsets of image {i})")
        desc = self._check(self.h5["descriptors"][a:b].astype(np.float32), f"descriptors of {display_name(self.names[i])}")
        return LocalFeatures(
            descriptors=torch.from_numpy(desc),
            strengths=torch.from_numpy(self.h5["strengths"][a:b]),
            scales=torch.from_numpy(self.h5["scales"][a:b]),
            superfeature_ids=torch.from_numpy(self.h5["superfeature_ids"][a:b].astype(np.int64)),
            positions=torch.from_numpy(self.h5["positions"][a:b]),
        )

    @_reads
    def all_descriptors(self) -> tuple[np.ndarray, np.ndarray]:
        """All committed descriptors with the image index of each row: ``(M, d)``, ``(M,)``.

        Raises:
            FeatureFileError: inconsistent offsets, or descriptors that are not finite or
                beyond :data:`MAX_DESCRIPTOR_ABS` (a damaged file).
        """
        n, m = len(self), self.num_features
        offsets = self._check_offsets()
        ids = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        return self._check(self.h5["descriptors"][:m].astype(np.float32), "descriptors"), ids

    # ------------------------------------------------------------------ global embeddings
    @property
    @_reads
    def towers(self) -> list[str]:
        """Image towers whose global embeddings the file holds (text search)."""
        return sorted(self.h5[GLOBAL_GROUP]) if GLOBAL_GROUP in self.h5 else []

    @_reads
    def embeddings(self, tower: str | None = None) -> tuple[str, np.ndarray, np.ndarray]:
        """``(tower, embeddings (n, D) float32, valid (n,) bool)``, row i for image i.

        Args:
            tower: which tower's embeddings (default: the only, or first, one stored).

        Raises:
            FeatureFileError: the file has none (of that tower).
        """
        towers = self.towers
        if not towers or (tower is not None and tower not in towers):
            what = f"{tower} embeddings" if tower else "global image embeddings"
            raise FeatureFileError(f"{display_name(self.path)}: no {what} for text search ({self._why_no_embeddings()}): "
                                   "`lit text embed` adds them")
        tower = tower or towers[0]
        g = self.h5[f"{GLOBAL_GROUP}/{tower}"]
        n = len(self)
        emb = np.zeros((n, g["embeddings"].shape[1]), np.float32)
        valid = np.zeros(n, bool)
        m = min(n, g["embeddings"].shape[0], g["valid"].shape[0])
        emb[:m] = g["embeddings"][:m]
        valid[:m] = g["valid"][:m].astype(bool)
        return tower, emb, valid

    def _why_no_embeddings(self) -> str:
        """The likely cause of a file without global embeddings, from what it records."""
        settings = self.settings
        if self.towers:
            return f"it holds {', '.join(self.towers)} embeddings only"
        if "text_tower" in settings:
            if settings["text_tower"] is None:
                return "extracted without a text model (--text-model none)"
            return (f"extracted with the {settings['text_tower']} tower, but the embeddings were lost, "
                    "e.g. by `lit features merge` of an earlier lit")
        return "extracted or merged by a lit that did not record them, or with --text-model none"

    @_writes
    def write_embeddings(self, rows: Sequence[int], tower: str, embeddings) -> None:
        """Store the global embeddings ``(len(rows), D)`` of ``tower`` for images ``rows`` and flush.

        Rows may run ahead of the committed images (extraction writes an image's embedding
        just before committing its features).
        """
        emb = np.asarray(embeddings.detach().cpu() if isinstance(embeddings, torch.Tensor) else embeddings, np.float32)
        if emb.ndim != 2 or emb.shape[0] != len(rows):
            raise UsageError(f"embeddings must be ({len(rows)}, D), got {emb.shape}")
        if not len(rows):
            return
        g = self.h5.require_group(f"{GLOBAL_GROUP}/{tower}")
        dim = emb.shape[1]
        if "embeddings" not in g:
            g.create_dataset("embeddings", (0, dim), maxshape=(None, dim), dtype=np.float32, chunks=(256, dim))
            g.create_dataset("valid", (0,), maxshape=(None,), dtype=np.uint8, chunks=(1024,))
        e, v = g["embeddings"], g["valid"]
        if e.shape[1] != dim:
            raise FeatureFileError(f"{display_name(self.path)}: {tower} embeddings are {e.shape[1]}-d, got {dim}")
        top = max(rows) + 1
        if e.shape[0] < top:
            n = max(top, 2 * e.shape[0])
            e.resize(n, axis=0)
            v.resize(n, axis=0)
        for row, value in zip(rows, emb, strict=True):
            e[row] = value
            v[row] = 1
        self.h5.flush()

    # ------------------------------------------------------------------ writing
    def _ensure(self, name: str, rows: int) -> None:
        ds = self.h5[name]
        if ds.shape[0] < rows:
            ds.resize(max(rows, 2 * ds.shape[0]), axis=0)

    def append(self, name: str, feats: LocalFeatures) -> None:
        """Add one image's features and commit it.

        The image counts (``num_images``) only once its rows are written and flushed
        without error, so a failed write never leaves a partial image in the file.

        Raises:
            StorageError: too little free space for the image (nothing written), or the
                write failed (disk full, I/O error); the images committed before stay,
                and the store takes no more (rerun to continue).
            UsageError: wrong descriptor dimension, or descriptors that are not finite.
        """
        if self._broken:
            raise StorageError(self._broken)
        h, n, m = self.h5, len(self), self.num_features
        k = len(feats)
        if feats.descriptors.shape[1:] != (self.descriptor_dim,):
            raise UsageError(f"descriptor dim {tuple(feats.descriptors.shape[1:])} != file's {self.descriptor_dim}")
        desc = feats.descriptors.detach().cpu().numpy()
        if not np.isfinite(desc).all():
            raise UsageError(f"{display_name(name)}: descriptors that are not finite (NaN or inf); not stored")
        self._check_space(k)
        try:
            for ds in ("descriptors", "strengths", "scales", "superfeature_ids", "positions"):
                self._ensure(ds, m + k)
            self._ensure("names", n + 1)
            self._ensure("names_raw", n + 1)
            self._ensure("offsets", n + 2)
            h["descriptors"][m:m + k] = desc
            h["strengths"][m:m + k] = feats.strengths.numpy()
            h["scales"][m:m + k] = feats.scales.numpy()
            h["superfeature_ids"][m:m + k] = feats.superfeature_ids.numpy().astype(np.int16)
            pos = feats.positions if feats.positions is not None and len(feats.positions) == k else torch.full((k, 2), float("nan"))
            h["positions"][m:m + k] = pos.numpy()
            h["names"][n] = display_name(name)
            h["names_raw"][n] = np.frombuffer(encode_name(name), np.uint8)
            h["offsets"][n + 1] = m + k
            h.flush()  # the image's data on disk, without error, before it counts
            self._commit(n + 1, m + k)  # commit point
            h.flush()
        except (OSError, RuntimeError) as err:
            if isinstance(err, LitError):
                raise
            self._fail(err, n)
        if self._names is not None:
            self._names.append(name)
        if self._lookup is not None:
            self._lookup.setdefault(name, n)

    def _commit(self, n: int, m: int) -> None:
        """Set the committed counts (attributes, and their checksummed copy ``commit``)."""
        self.h5.attrs["num_features"] = m
        self.h5.attrs["num_images"] = n
        if "commit" in self.h5:
            self.h5["commit"][:] = (n, m)

    def _header_crc(self) -> int:
        """CRC32 of the attributes that say what the file holds (a flipped byte in them is
        detected, not read as another model or root)."""
        a = self.h5.attrs
        keys = ("format", "version", "fingerprint", "descriptor_dim", "root", "settings")
        text = json.dumps([_raw_bytes(a[k]).hex() if isinstance(a.get(k), (bytes, np.ndarray)) else str(a.get(k))
                           for k in keys])
        return zlib.crc32(text.encode())

    def _check_header(self, mode: str) -> None:
        """The header CRC and the committed counts agree with their copies (files written
        since they exist); in append mode, counts left unequal by a kill during a commit
        fall back to the smaller, consistent pair."""
        shown = display_name(self.path)
        if "header_crc" in self.h5.attrs and int(self.h5.attrs["header_crc"]) != self._header_crc():
            raise FeatureFileError(f"{shown}: feature file damaged (its header attributes fail their checksum): "
                                   f"{_ADVICE}")
        if "commit" not in self.h5:
            return
        pair = tuple(int(v) for v in self.h5["commit"][:2])
        attrs = (len(self), self.num_features)
        if pair == attrs:
            return
        offsets = self.h5["offsets"]
        fits = [p for p in (pair, attrs) if 0 <= p[0] < offsets.shape[0] and int(offsets[p[0]]) == p[1]]
        if mode == "a" and fits:
            n, m = min(fits)
            log.warning(f"{shown}: the image count was being written when the writer stopped; {n} images kept")
            self._commit(n, m)
            self.h5.flush()
            return
        raise FeatureFileError(f"{shown}: feature file damaged (its image counts {attrs[0]} and {pair[0]} disagree): "
                               f"{_ADVICE}")

    def _check_space(self, rows: int) -> None:
        """Refuse (before writing) an image whose rows and a margin do not fit on the disk."""
        try:
            st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        except (OSError, AttributeError):  # pragma: no cover - no statvfs (Windows)
            return
        item = self.h5["descriptors"].dtype.itemsize
        need = rows * (self.descriptor_dim * item + 4 + 4 + 2 + 8) + SPACE_MARGIN + 1024 * self.descriptor_dim * item
        free = st.f_bavail * st.f_frsize
        if free < need:
            raise StorageError(f"disk full while writing {display_name(self.path)} ({free / 1e6:.1f} MB free): "
                               f"{len(self)} images kept, free some space and rerun to continue")

    def _fail(self, err: BaseException, n: int) -> None:
        """A write failed: stop taking images, close what can be closed quietly, raise one line."""
        quiet_after_write_failure()
        detach(self.h5)
        reason = describe(err) if write_errno(err) is not None else f"write failed ({describe(err)})"
        self._broken = (f"{reason} while writing {display_name(self.path)}: {n} images kept, "
                        "rerun to continue (after freeing space)")
        self.close()
        raise StorageError(self._broken) from None

    def _check_committed(self) -> None:
        """Before appending: drop committed images whose descriptors are damaged (all-zero or
        non-finite rows, unreadable chunks: a write that failed, by a lit before the commit
        rule or under a disk full), from the first such image on; they are extracted again.
        Rows checked once are not read again (attribute ``checked_features``)."""
        n, m = len(self), self.num_features
        start = int(self.h5.attrs.get("checked_features", 0))
        if start >= m or n == 0:
            return
        offsets = self._check_offsets()
        ds = self.h5["descriptors"]
        bad_row, step = None, 1024
        for r0 in range(start - start % step, m, step):
            r1 = min(m, r0 + step)
            try:
                rows = ds[r0:r1].astype(np.float32)
            except (OSError, RuntimeError):
                bad_row = max(r0, start)
                break
            peak = np.abs(rows[max(0, start - r0):]).max(axis=1)
            wrong = ~(np.isfinite(peak) & (peak > 0) & (peak <= MAX_DESCRIPTOR_ABS))
            if wrong.any():
                bad_row = max(r0, start) + int(np.argmax(wrong))
                break
        if bad_row is not None:
            first = int(np.searchsorted(offsets, bad_row, side="right")) - 1
            first_name = display_name(self.names[first])
            log.warning(f"{display_name(self.path)}: {n - first} images from {first_name} on have damaged descriptors "
                        "(a write that failed); they are dropped and will be extracted again")
            self._commit(first, int(offsets[first]))
            self._names = self._lookup = None
        self.h5.attrs["checked_features"] = self.num_features
        self.h5.flush()

    @_writes
    def _write_failures(self, failures: dict[str, str]) -> None:
        rows = [f"{display_name(k)}\t{display_name(v)}" for k, v in failures.items()]
        for ds_name, values in (("failed", rows), ("failed_raw", [np.frombuffer(encode_name(k), np.uint8) for k in failures])):
            ds = self.h5[ds_name]
            ds.resize(len(values), axis=0)
            for j, v in enumerate(values):
                ds[j] = v
        self.h5.flush()

    @_writes
    def add_failure(self, name: str, error: str) -> None:
        """Record (or update) that ``name`` could not be read."""
        failures = self.failed
        if name in failures:  # a retried file failed again: rewrite its entry
            failures[name] = error
            self._write_failures(failures)
            return
        for ds_name, value in (("failed", f"{display_name(name)}\t{display_name(error)}"),
                               ("failed_raw", np.frombuffer(encode_name(name), np.uint8))):
            ds = self.h5[ds_name]
            ds.resize(ds.shape[0] + 1, axis=0)
            ds[-1] = value
        self.h5.flush()

    def clear_failures(self, names: Iterable[str]) -> None:
        """Forget recorded failures of ``names`` (e.g. after they were extracted; nothing
        after a failed write)."""
        if self._broken:
            return
        failures = self.failed
        drop = [n for n in names if n in failures]
        if drop:
            for n in drop:
                del failures[n]
            self._write_failures(failures)

    def close(self) -> None:
        if getattr(self, "h5", None) is None or getattr(self, "_closed", False) or not self.h5.id.valid:
            return
        self._closed = True
        if not self._broken:
            if self.h5.mode != "r" and self.h5.attrs.get(_WRITING):
                try:
                    self.h5.attrs[_WRITING] = 0
                    self.h5.flush()
                except (OSError, RuntimeError):  # disk full at the very end: the next run recovers
                    self._broken = "closing failed"
                    quiet_after_write_failure()
                    detach(self.h5)
                    with contextlib.suppress(Exception):
                        self.h5.close()
                    return
            self.h5.close()
            return
        # after a failed write HDF5 cannot flush its caches: its last flushes go nowhere
        # (what is committed is on disk already; the next run recovers the file)
        quiet_after_write_failure()
        detach(self.h5)
        with contextlib.suppress(Exception):
            self.h5.close()
        gc.collect()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()



# ---------------------------------------------------------------------- recovery
def _recover(path: str) -> None:
    """Before appending to ``path``: if its last writer did not end cleanly (killed, disk
    full: attribute ``writing`` left set, or the file cut short of its recorded size),
    copy its committed, undamaged images into a fresh file that replaces it (atomically).
    HDF5 does not promise a consistent file after a crash in the middle of a write; the
    committed rows themselves are intact, and reading them is what the copy does."""
    if not (os.path.isfile(path) and h5py.is_hdf5(path)):
        return
    shown = display_name(path)
    padded = False
    try:
        h5py.File(path, "r").close()
    except OSError as err:  # a failed write can leave the file short of its end
        eof = stored_eof(err)
        if eof is None or eof - os.path.getsize(path) > _MAX_PAD:
            return  # open_file reports it
        os.truncate(path, eof)
        padded = True
    try:
        with h5py.File(path, "r") as f:
            if not padded and not int(f.attrs.get(_WRITING, 0)):
                return
            if f.attrs.get("format") != FORMAT:
                return
            kept, total = _copy_committed(f, path)
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as err:
        if isinstance(err, LitError):
            raise
        raise FeatureFileError(f"{shown}: feature file damaged beyond repair ({describe(err)}): {_ADVICE}") from None
    dropped = f"; {total - kept} damaged images dropped (extracted again)" if kept < total else ""
    log.warning(f"{shown}: its last run did not end cleanly (killed or disk full): its {kept} committed images were "
                f"checked and copied to a fresh file{dropped}")


def _copy_committed(f: h5py.File, path: str) -> tuple[int, int]:
    """Copy the committed images of the open file ``f`` that read back undamaged (up to the
    first damaged one) into a fresh file replacing ``path``; ``(kept, committed)``."""
    a = f.attrs
    n, m = int(a["num_images"]), int(a["num_features"])
    if "commit" in f:
        with contextlib.suppress(OSError, RuntimeError, ValueError):
            c = tuple(int(v) for v in f["commit"][:2])
            n, m = min((n, m), c)
    offsets = f["offsets"][: n + 1].astype(np.int64)
    if len(offsets) != n + 1 or offsets[0] != 0 or (np.diff(offsets) < 0).any():
        raise FeatureFileError(f"{display_name(path)}: feature file damaged (inconsistent offsets): {_ADVICE}")
    keep = n  # images 0..keep-1 read back whole
    arrays = {k: [] for k in ("descriptors", "strengths", "scales", "superfeature_ids", "positions")}
    step = 1024
    for r0 in range(0, int(offsets[keep]), step):
        r1 = min(int(offsets[keep]), r0 + step)
        try:
            block = {k: f[k][r0:r1] for k in arrays}
            peak = np.abs(block["descriptors"].astype(np.float32)).max(axis=1)
            wrong = ~(np.isfinite(peak) & (peak > 0) & (peak <= MAX_DESCRIPTOR_ABS))
            bad_row = r0 + int(np.argmax(wrong)) if wrong.any() else None
        except (OSError, RuntimeError):
            block, bad_row = None, r0
        if bad_row is not None:
            keep = int(np.searchsorted(offsets, bad_row, side="right")) - 1
            if block is not None:
                for k in arrays:
                    arrays[k].append(block[k])
            break
        for k in arrays:
            arrays[k].append(block[k])
    rows = int(offsets[keep])
    data = {k: (np.concatenate(v)[:rows] if v else f[k][:0]) for k, v in arrays.items()}
    names_raw, names = [], []
    for i in range(keep):
        try:
            raw = _raw_bytes(f["names_raw"][i]) if "names_raw" in f else encode_name(f["names"][i].decode())
        except (OSError, RuntimeError, UnicodeDecodeError):
            keep = i
            break
        names_raw.append(raw)
        names.append(display_name(decode_name(raw)))
    rows = int(offsets[keep])
    failed: list[tuple[bytes, str]] = []
    with contextlib.suppress(OSError, RuntimeError, UnicodeDecodeError):
        raws = f["failed_raw"][:] if "failed_raw" in f else None
        for j, s in enumerate(f["failed"][:]):
            s = s.decode() if isinstance(s, bytes) else s
            failed.append((_raw_bytes(raws[j]) if raws is not None else encode_name(s.partition("\t")[0]), s))
    towers = {}
    if GLOBAL_GROUP in f:
        for tower in f[GLOBAL_GROUP]:
            with contextlib.suppress(OSError, RuntimeError, KeyError):
                g = f[f"{GLOBAL_GROUP}/{tower}"]
                towers[tower] = (g["embeddings"][:keep], g["valid"][:keep])
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as out:
        for key, value in a.items():
            if key not in (_WRITING, "checked_features"):
                out.attrs[key] = value
        dim = int(a["descriptor_dim"])
        cap = max(1024, rows)
        for k, v in data.items():
            shape = (cap,) + v.shape[1:]
            chunks = (1024, dim) if k == "descriptors" else ((4096, 2) if k == "positions" else (4096,))
            ds = out.create_dataset(k, **checked(shape=shape, maxshape=(None,) + v.shape[1:], dtype=v.dtype, chunks=chunks))
            ds[:rows] = v[:rows]
        out.create_dataset("offsets", **checked(offsets[: keep + 1], maxshape=(None,), chunks=(1024,)))
        out.create_dataset("names", data=np.array(names, dtype=object), maxshape=(None,), dtype=_STR, chunks=(1024,))
        ds = out.create_dataset("names_raw", (keep,), maxshape=(None,), dtype=_RAW, chunks=(1024,))
        for i, raw in enumerate(names_raw[:keep]):
            ds[i] = np.frombuffer(raw, np.uint8)
        out.create_dataset("failed", data=np.array([s for _, s in failed], dtype=object), maxshape=(None,), dtype=_STR,
                           chunks=(256,))
        ds = out.create_dataset("failed_raw", (len(failed),), maxshape=(None,), dtype=_RAW, chunks=(256,))
        for j, (raw, _) in enumerate(failed):
            ds[j] = np.frombuffer(raw, np.uint8)
        for tower, (emb, valid) in towers.items():
            g = out.require_group(f"{GLOBAL_GROUP}/{tower}")
            g.create_dataset("embeddings", data=emb, maxshape=(None, emb.shape[1]), chunks=(256, emb.shape[1]))
            g.create_dataset("valid", data=valid, maxshape=(None,), chunks=(1024,))
        out.attrs["num_images"], out.attrs["num_features"] = keep, rows
        out.create_dataset("commit", **checked(np.array([keep, rows], np.int64), chunks=(2,)))
        out.attrs["checked_features"] = rows
    return keep, n


# ---------------------------------------------------------------------- collections
class FeatureCollection:
    """Several feature files read as one (``lit.features.FeatureStore`` each).

    Image ``i`` of the collection is image ``i - start[s]`` of shard ``s``; all shards
    must have the same fingerprint (model and extraction settings) and dimension.

    Args:
        path: a feature file, a folder, a glob, or the base name of a shard set
            (:func:`find_shards`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        self.files = find_shards(path)
        self.stores = []
        try:
            for f in self.files:
                self.stores.append(FeatureStore(f))
        except BaseException:
            self.close()
            raise
        prints = {s.fingerprint for s in self.stores}
        if len(prints) > 1:
            self.close()
            raise FeatureFileError(f"{display_name(self.path)}: shards made by different models or extraction settings "
                                   "(fingerprints differ)")
        dims = {s.descriptor_dim for s in self.stores}
        if len(dims) > 1:
            self.close()
            raise FeatureFileError(f"{display_name(self.path)}: shards of different descriptor dimensions {sorted(dims)}")
        self.descriptor_dim = dims.pop()
        self.fingerprint = prints.pop()
        sizes = [len(s) for s in self.stores]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def names(self) -> list[str]:
        return [n for s in self.stores for n in s.names]

    @property
    def failed(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for s in self.stores:
            out.update(s.failed)
        return out

    @property
    def num_features(self) -> int:
        return sum(s.num_features for s in self.stores)

    @property
    def root(self) -> str | None:
        """The folder the names are relative to (the first shard's; shards of one run share it)."""
        return self.stores[0].root

    @property
    def settings(self) -> dict:
        return self.stores[0].settings

    def embeddings(self, tower: str | None = None) -> tuple[str, np.ndarray, np.ndarray]:
        """:meth:`FeatureStore.embeddings` of every shard, in image order."""
        tower = tower or (self.stores[0].towers or [None])[0]
        parts = [s.embeddings(tower) for s in self.stores]
        return tower, np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])

    def _locate(self, i: int) -> tuple[FeatureStore, int]:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        i %= n
        s = int(np.searchsorted(self.starts, i, side="right")) - 1
        return self.stores[s], i - int(self.starts[s])

    def __getitem__(self, key: int | str):
        if isinstance(key, str):
            for s in self.stores:
                if key in s.names:
                    return s[key]
            raise KeyError(f"{display_name(key)!r} is not in {display_name(self.path)}")
        store, j = self._locate(int(key))
        return store[j]

    def count_features(self, lo: int = 0, hi: int | None = None) -> int:
        """Descriptors of images ``lo..hi-1`` (from the offsets, nothing else read)."""
        hi = len(self) if hi is None else hi
        total = 0
        for s, store in enumerate(self.stores):
            a, b = max(lo, int(self.starts[s])), min(hi, int(self.starts[s + 1]))
            if a < b:
                base = int(self.starts[s])
                offsets = store._check_offsets()[a - base : b - base + 1]
                total += int(offsets[-1] - offsets[0])
        return total

    def iter_descriptors(self, lo: int = 0, hi: int | None = None, max_rows: int = STREAM_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Descriptors of images ``lo..hi-1`` in chunks of whole images of about ``max_rows``.

        Yields:
            ``(descriptors, image_ids)``: float32 :math:`(M, d)` and int64 :math:`(M,)`
            global image ids, in image order.
        """
        hi = len(self) if hi is None else hi
        for s, store in enumerate(self.stores):
            a, b = max(lo, int(self.starts[s])), min(hi, int(self.starts[s + 1]))
            if a >= b:
                continue
            base = int(self.starts[s])
            with translating(store.path, FeatureFileError, "feature file", _ADVICE):
                offsets = store._check_offsets()[a - base : b - base + 1].astype(np.int64)
            i = 0
            while i < b - a:
                # whole images, at least one, about max_rows descriptors
                j = int(np.searchsorted(offsets, offsets[i] + max_rows, side="right")) - 1
                j = min(max(j, i + 1), b - a)
                r0, r1 = int(offsets[i]), int(offsets[j])
                with translating(store.path, FeatureFileError, "feature file", _ADVICE):
                    desc = store._check(store.h5["descriptors"][r0:r1].astype(np.float32, copy=False),
                                        f"images {a + i}..{a + j - 1}")  # finite, within range
                ids = np.repeat(np.arange(a + i, a + j, dtype=np.int64), np.diff(offsets[i : j + 1]))
                yield desc, ids
                i = j

    def all_descriptors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every descriptor and its global image id (holds them all: prefer
        :meth:`iter_descriptors` for large collections)."""
        parts = list(self.iter_descriptors(max_rows=1 << 62))
        if not parts:
            return np.zeros((0, self.descriptor_dim), np.float32), np.zeros(0, np.int64)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def close(self) -> None:
        for s in self.stores:
            s.close()

    def __enter__(self) -> FeatureCollection:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_features(path: str | os.PathLike) -> FeatureCollection:
    """A feature file or a set of shards as one :class:`FeatureCollection`."""
    return FeatureCollection(path)




# ---------------------------------------------------------------------- inspection
def feature_file_info(path: str | os.PathLike) -> dict:
    """What a feature file holds: counts, model (name and fingerprint), settings, the
    global embeddings for text search (image tower -> images that have one), root and
    failures.

    Returns:
        A JSON-able dict (names in their printable form, :func:`display_name`).
    """
    with FeatureStore(path) as store:
        offsets = store._check_offsets()
        per_image = np.diff(offsets)
        return {
            "path": display_name(os.path.abspath(store.path)),
            "format": f"{FORMAT} v{VERSION}",
            "images": len(store),
            "features": store.num_features,
            "features_per_image": {"min": int(per_image.min()) if len(per_image) else 0,
                                   "mean": float(per_image.mean()) if len(per_image) else 0.0,
                                   "max": int(per_image.max()) if len(per_image) else 0},
            "descriptor_dim": int(store.h5.attrs["descriptor_dim"]),
            "dtype": "float16" if store.half else "float32",
            "fingerprint": store.fingerprint,
            "settings": store.settings,
            "model": store.settings.get("model"),
            "text_embeddings": {t: int(store.embeddings(t)[2].sum()) for t in store.towers},
            "root": display_name(store.root) if store.root is not None else None,
            "failed": {display_name(k): display_name(v) for k, v in store.failed.items()},
            "size_bytes": os.path.getsize(store.path),
        }
