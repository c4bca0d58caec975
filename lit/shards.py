"""Sharded feature collections and sharded ASMK indexes.

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
codebook; part ``r`` holds the database images of the id range ``[lo_r, hi_r)`` (file
attributes ``shard.lo``, ``shard.hi``) and ranks only that range. :class:`ShardedIndex`
searches every part and merges the per-part top-k lists by (score, then image id): the
ranks and scores are exactly those of one index holding every image, because a part
computes every score of its images with the same arithmetic as the single index and
idf (when on) uses the statistics of all parts together.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .asmk import ASMK
from .asmk import functional as F
from .asmk.index import SearchResult

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


def part_attrs(rank: int, world: int, lo: int, hi: int) -> dict[str, int]:
    return {"shard.rank": rank, "shard.world": world, "shard.lo": lo, "shard.hi": hi}


def build_part(codebook: Tensor | np.ndarray, features: FeatureCollection, out: str, rank: int, world: int, *,
               device: str | torch.device = "cpu", **params: Any) -> ASMK:
    """Build and save part ``rank`` of a sharded index of ``world`` parts (its id range of
    the collection, :func:`split_range`) to ``shard_path(out, rank, world)``."""
    lo, hi = split_range(len(features), rank, world)
    index = ASMK(codebook, device=device, **params)
    add_collection(index, features, lo, hi)
    index.save(shard_path(out, rank, world), attrs=part_attrs(rank, world, lo, hi))
    return index


class ShardedIndex:
    """An ASMK index split into parts by image-id range, searched as one.

    Parts are loaded once (``keep=True``, the default) or one at a time for every search
    (``keep=False``: memory of one part only). Search results equal those of one index
    holding every image (module docstring).

    Args:
        files: the part files (:func:`find_shards`), each with ``shard.lo``/``shard.hi``.
        device: where parts are loaded and searched.
        keep: keep the parts in memory between searches.
    """

    def __init__(self, files: Sequence[str], device: str | torch.device = "cpu", keep: bool = True) -> None:
        import h5py

        self.files, self.device, self.keep = list(files), torch.device(device), keep
        self.ranges: list[tuple[int, int]] = []
        entries = None
        n_images = 0
        codebook_sum, codebook_shape = None, None
        for f in self.files:
            try:
                with h5py.File(f, "r") as h:
                    lo, hi = int(h.attrs["shard.lo"]), int(h.attrs["shard.hi"])
                    offsets = h["offsets"][()]
                    n_images = max(n_images, int(h.attrs["n_images"]))
                    cb = h["codebook"][()]
            except (OSError, KeyError) as err:
                raise ValueError(f"{f}: not a part of a sharded ASMK index ({err})") from None
            e = np.diff(offsets.astype(np.int64))
            entries = e if entries is None else entries + e
            digest = hashlib.sha256(np.ascontiguousarray(cb).tobytes()).hexdigest()
            if codebook_sum is not None and (cb.shape != codebook_shape or digest != codebook_sum):
                raise ValueError(f"{f}: its codebook differs from {self.files[0]}'s (parts of different indexes?)")
            codebook_sum, codebook_shape = digest, cb.shape
            self.ranges.append((lo, hi))
        for (_, hi), (lo, _) in zip(self.ranges[:-1], self.ranges[1:], strict=True):
            if hi != lo:
                raise ValueError(f"{self.files[0]}...: part id ranges are not contiguous ({self.ranges})")
        self._entries = torch.from_numpy(entries)
        self._n_images = n_images
        self._parts: dict[int, ASMK] = {}
        self.home = 0  # the part whose codebook quantises queries (all parts share it)

    @property
    def n_images(self) -> int:
        """Largest database image id + 1 over all parts."""
        return self._n_images

    def _part(self, p: int) -> ASMK:
        if p in self._parts:
            return self._parts[p]
        part = ASMK.load(self.files[p], device=self.device)
        if part.params.use_idf:  # the statistics of all parts together, as one index
            part._statistics.set_global_idf(F.inverse_document_frequency(self._entries.to(self.device), self._n_images))
        if self.keep or p == self.home:
            self._parts[p] = part
        return part

    @property
    def params(self):
        return self._part(self.home).params

    @property
    def codebook(self) -> Tensor:
        return self._part(self.home).codebook

    def quantize(self, descriptors, m: int | None = None) -> Tensor:
        return self._part(self.home).quantize(descriptors, m)

    def prepare(self, qdescriptors, words=None) -> tuple[Tensor, Tensor]:
        """Checked query descriptors and their words (quantised once for all parts)."""
        home = self._part(self.home)
        x = home._descriptors(qdescriptors, "qdescriptors")
        if words is None:
            words = home.quantize(x, home.params.query_multiple_assignment)
        return x, words

    def part_search(self, p: int, qdescriptors, qimage_ids, topk: int | None, words) -> SearchResult:
        """Top-k of part ``p`` over its own id range (clipped to :attr:`n_images`)."""
        lo, hi = self.ranges[p]
        hi = min(hi, self._n_images)
        return self._part(p).search(qdescriptors, qimage_ids, topk=topk, words=words, columns=(min(lo, hi), hi))

    def search(self, qdescriptors, qimage_ids, topk: int | None = None, *, words=None) -> SearchResult:
        """Same contract as :meth:`lit.asmk.ASMK.search`: best ``topk`` per query, ties by id."""
        x, words = self.prepare(qdescriptors, words)
        results = [self.part_search(p, x, qimage_ids, topk, words) for p in range(len(self.files))]
        return merge_results(results, topk)


def merge_results(results: Sequence[SearchResult], topk: int | None) -> SearchResult:
    """Merge per-part top-k lists (disjoint id ranges) into the top-k of the union, by
    decreasing score then increasing image id (:func:`lit.asmk.functional.topk_stable`)."""
    ranks = torch.cat([r.ranks for r in results], dim=1)
    scores = torch.cat([r.scores for r in results], dim=1)
    k = ranks.shape[1] if topk is None else min(int(topk), ranks.shape[1])
    if k == 0 or ranks.shape[0] == 0:
        return SearchResult(ranks[:, :k], scores[:, :k])
    out_ids, out_scores = F.topk_stable(scores, ranks, k)
    return SearchResult(out_ids, out_scores)


def open_index(path: str | os.PathLike, device: str | torch.device = "cpu") -> ASMK | ShardedIndex:
    """An index file, or a sharded index (its base name, a folder or a glob of parts)."""
    path = os.fspath(path)
    if os.path.isfile(path):
        return ASMK.load(path, device=device)
    return ShardedIndex(find_shards(path), device=device)
