"""Sharded feature collections, and the naming of sharded ASMK indexes.

A *shard set* is what ``torchrun --nproc_per_node N -m lit extract ... --out feats.h5``
writes: one resumable feature file per rank, ``feats.00000-of-00004.h5`` ...
``feats.00003-of-00004.h5`` (:func:`shard_path`). Rank ``r`` extracts the ``r``-th
contiguous block of the image list (:func:`split_range`), so reading the shards in rank
order gives the images in the order of a single-process run.

:class:`FeatureCollection` reads a single feature file, a shard set (named by its base
``feats.h5``, by a folder holding the shards, or by a glob such as ``"feats.*.h5"``) as one
collection: global image ids run over the shards in order, and descriptors can be
streamed in bounded chunks (:meth:`FeatureCollection.iter_descriptors`).

A sharded index is a set of ASMK files, ``index.00000-of-00004.h5`` ..., all with the same
codebook, one per id range: :mod:`lit.asmk.sharded` (:class:`ShardedIndex`,
:func:`merge_results`, :func:`part_attrs`, re-exported here until their callers import
them from there). :func:`build_part` and :func:`open_index` name and split the parts with
this module's shard naming.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .asmk import ASMK
from .asmk.sharded import ShardedIndex as ShardedIndex  # re-exported (moved to lit.asmk.sharded)
from .asmk.sharded import build_part as _build_part
from .asmk.sharded import merge_results as merge_results  # re-exported
from .asmk.sharded import part_attrs as part_attrs  # re-exported

_SHARD_RE = re.compile(r"^(?P<stem>.*)\.(?P<rank>\d{5})-of-(?P<world>\d{5})(?P<ext>\.[^.]+)$")
#: Descriptors per chunk when streaming a collection into an index.
STREAM_ROWS = 1 << 20


def shard_path(path: str | os.PathLike, rank: int, world_size: int) -> str:
    """Name of shard ``rank`` of ``world_size``: ``feats.h5`` -> ``feats.00001-of-00004.h5``."""
    path = os.fspath(path)
    stem, ext = os.path.splitext(path)
    return f"{stem}.{rank:05d}-of-{world_size:05d}{ext or '.h5'}"


def split_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block ``[lo, hi)`` of ``n`` items for ``rank``; sizes differ by at most 1."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in 0..{world_size - 1}, got {rank}")
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


def find_shards(path: str | os.PathLike) -> list[str]:
    """Files of a collection: an existing file, a folder of ``.h5`` files, a glob, or the base
    name of a shard set (``feats.h5`` when only ``feats.*-of-*.h5`` exist).

    Shards named ``*.RRRRR-of-WWWWW.h5`` are ordered by rank and must be complete (every
    rank of one world size); other files are ordered by name.

    Raises:
        FileNotFoundError: nothing matches.
        ValueError: an incomplete or mixed shard set.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(glob.escape(path), "*.h5")))
        what = f"{path}: no .h5 files in this folder"
    elif any(c in path for c in "*?["):
        files = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        what = f"{path}: no file matches this pattern"
    else:
        stem, ext = os.path.splitext(path)
        files = sorted(glob.glob(f"{glob.escape(stem)}.[0-9]*-of-[0-9]*{ext or '.h5'}"))
        what = f"{path}: no such file, and no shards {os.path.basename(shard_path(path, 0, 2)).replace('00000-of-00002', 'RRRRR-of-WWWWW')}"
    if not files:
        raise FileNotFoundError(what)
    matches = [_SHARD_RE.match(os.path.basename(f)) for f in files]
    if all(matches):
        keys = {(m["stem"], m["ext"], int(m["world"])) for m in matches}
        if len(keys) > 1:
            raise ValueError(f"{path}: files of several shard sets ({', '.join(sorted({k[0] + k[1] for k in keys}))} "
                             f"or several world sizes): name one set")
        world = next(iter(keys))[2]
        ranks = sorted(int(m["rank"]) for m in matches)
        if ranks != list(range(world)):
            missing = sorted(set(range(world)) - set(ranks))
            raise ValueError(f"{path}: incomplete shard set of {world}: missing rank(s) {missing}")
        files = [f for _, f in sorted((int(m["rank"]), f) for m, f in zip(matches, files, strict=True))]
    return files


class FeatureCollection:
    """Several feature files read as one (``lit.features.FeatureStore`` each).

    Image ``i`` of the collection is image ``i - start[s]`` of shard ``s``; all shards
    must have the same fingerprint (model and extraction settings) and dimension.

    Args:
        path: a feature file, a folder, a glob, or the base name of a shard set
            (:func:`find_shards`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        from .features import FeatureFileError, FeatureStore

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
            raise FeatureFileError(f"{self.path}: shards made by different models or extraction settings (fingerprints differ)")
        dims = {int(s.h5.attrs["descriptor_dim"]) for s in self.stores}
        if len(dims) > 1:
            self.close()
            raise FeatureFileError(f"{self.path}: shards of different descriptor dimensions {sorted(dims)}")
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
        return sum(int(s.h5.attrs["num_features"]) for s in self.stores)

    def _locate(self, i: int) -> tuple[Any, int]:
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
            raise KeyError(f"{key!r} is not in {self.path}")
        store, j = self._locate(int(key))
        return store[j]

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
            offsets = store.h5["offsets"][a - base : b - base + 1].astype(np.int64)
            i = 0
            while i < b - a:
                # whole images, at least one, about max_rows descriptors
                j = int(np.searchsorted(offsets, offsets[i] + max_rows, side="right")) - 1
                j = min(max(j, i + 1), b - a)
                r0, r1 = int(offsets[i]), int(offsets[j])
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


# ----------------------------------------------------------------------------- building


def add_collection(index: ASMK, features: FeatureCollection, lo: int = 0, hi: int | None = None,
                   max_rows: int = STREAM_ROWS) -> None:
    """Stream the images ``lo..hi-1`` of a collection into an index (global ids), in chunks:
    at most about ``max_rows`` descriptors are held at a time."""
    for desc, ids in features.iter_descriptors(lo, hi, max_rows=max_rows):
        index.add(desc, ids)


def build_part(codebook: Tensor | np.ndarray, features: FeatureCollection, out: str, rank: int, world: int, *,
               device: str | torch.device = "cpu", **params: Any) -> ASMK:
    """Build and save part ``rank`` of a sharded index of ``world`` parts (its id range of
    the collection, :func:`split_range`) to ``shard_path(out, rank, world)``: the naming and
    the split of this module around :func:`lit.asmk.sharded.build_part`."""
    lo, hi = split_range(len(features), rank, world)
    return _build_part(codebook, features.iter_descriptors(lo, hi), shard_path(out, rank, world), rank=rank,
                       world=world, lo=lo, hi=hi, device=device, **params)


def open_index(path: str | os.PathLike, device: str | torch.device = "cpu") -> ASMK | ShardedIndex:
    """An index file, or a sharded index (its base name, a folder or a glob of parts)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return ASMK.load(path, device=device)
    return ShardedIndex(find_shards(path), device=device)
