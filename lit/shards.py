"""Sharded ASMK indexes: parts of one index split by image-id range, searched as one.

A sharded index is a set of ASMK files, ``index.00000-of-00004.h5`` ..., all with the same
codebook; part ``r`` holds the database images of the id range ``[lo_r, hi_r)`` (file
attributes ``shard.lo``, ``shard.hi``) and ranks only that range. :class:`ShardedIndex`
searches every part and merges the per-part top-k lists by (score, then image id): the
ranks and scores are exactly those of one index holding every image, because a part
computes every score of its images with the same arithmetic as the single index and
idf (when on) uses the statistics of all parts together.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from .asmk import ASMK
from .asmk import functional as F
from .asmk.index import SearchResult
from .distributed import find_shards
from .errors import UsageError


def part_attrs(rank: int, world: int, lo: int, hi: int) -> dict[str, int]:
    return {"shard.rank": rank, "shard.world": world, "shard.lo": lo, "shard.hi": hi}


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
                raise UsageError(f"{f}: not a part of a sharded ASMK index ({err})") from None
            e = np.diff(offsets.astype(np.int64))
            entries = e if entries is None else entries + e
            digest = hashlib.sha256(np.ascontiguousarray(cb).tobytes()).hexdigest()
            if codebook_sum is not None and (cb.shape != codebook_shape or digest != codebook_sum):
                raise UsageError(f"{f}: its codebook differs from {self.files[0]}'s (parts of different indexes?)")
            codebook_sum, codebook_shape = digest, cb.shape
            self.ranges.append((lo, hi))
        for (_, hi), (lo, _) in zip(self.ranges[:-1], self.ranges[1:], strict=True):
            if hi != lo:
                raise UsageError(f"{self.files[0]}...: part id ranges are not contiguous ({self.ranges})")
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
            part._idf_override = F.inverse_document_frequency(self._entries.to(self.device), self._n_images)
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
        x = home._check_descriptors(qdescriptors, "qdescriptors")
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
