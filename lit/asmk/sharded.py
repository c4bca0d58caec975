"""Sharded ASMK indexes: parts by image-id range, searched as one index.

A sharded index is a set of ASMK files, all with the same codebook; part ``r`` holds the
database images of the id range ``[lo_r, hi_r)`` (attributes ``shard.lo``, ``shard.hi``,
:func:`part_attrs`, written by :func:`build_part`) and ranks only that range.
:class:`ShardedIndex` searches every part and merges the per-part top-k lists by
(score, then image id) (:func:`merge_results`): the ranks and scores are exactly those of
one index holding every image, because a part computes every score of its images with
the same arithmetic as the single index, and idf (when on) uses the statistics of all
parts together.

Parts are read through :mod:`lit.asmk.io`. How the part files are named and which images
go to which part (a feature collection split by rank) is decided above this package
(``lit.shards``): here a part is a file name, an id range and a stream of descriptors.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..errors import IndexFileError
from . import functional as F
from . import io as asmk_io
from .index import ASMK, ASMKParams
from .scoring import SearchResult

__all__ = ["ShardedIndex", "build_part", "merge_results", "part_attrs"]


def part_attrs(rank: int, world: int, lo: int, hi: int) -> dict[str, int]:
    """The attributes of part ``rank`` of ``world`` holding the image ids ``lo..hi-1``."""
    return {"shard.rank": rank, "shard.world": world, "shard.lo": lo, "shard.hi": hi}


def build_part(
    codebook: Tensor | np.ndarray,
    chunks: Iterable[tuple[Any, Any]],
    path: str | os.PathLike,
    *,
    rank: int,
    world: int,
    lo: int,
    hi: int,
    device: str | torch.device = "cpu",
    **params: Any,
) -> ASMK:
    """Build part ``rank`` of a sharded index of ``world`` parts and save it to ``path``.

    Args:
        codebook: the codebook every part shares.
        chunks: ``(descriptors, image_ids)`` of the images ``lo..hi-1`` (global ids), in
            chunks of whole images (bounded memory: one chunk at a time is held).
        path: the part file.
        rank, world: which part of how many.
        lo, hi: the image-id range of the part.
        device: where the part is built.
        **params: :class:`lit.asmk.ASMK` keyword arguments (``binary``, ``use_idf``...).

    Returns:
        the part, as saved.
    """
    index = ASMK(codebook, device=device, **params)
    for descriptors, image_ids in chunks:
        index.add(descriptors, image_ids)
    index.save(path, attrs=part_attrs(rank, world, lo, hi))
    return index


class ShardedIndex:
    """An ASMK index split into parts by image-id range, searched as one.

    Parts are loaded once (``keep=True``, the default) or one at a time for every search
    (``keep=False``: memory of one part only). Search results equal those of one index
    holding every image (module docstring).

    Args:
        files: the part files, in id order, each with ``shard.lo``/``shard.hi``.
        device: where parts are loaded and searched.
        keep: keep the parts in memory between searches.

    Raises:
        IndexFileError: a file is not a part of a sharded ASMK index, the codebooks of
            the parts differ, or their id ranges are not contiguous.
    """

    def __init__(self, files: Sequence[str], device: str | torch.device = "cpu", keep: bool = True) -> None:
        self.files, self.device, self.keep = [os.fspath(f) for f in files], torch.device(device), keep
        self.ranges: list[tuple[int, int]] = []
        entries = None
        n_images = 0
        codebook_sum, codebook_shape = None, None
        for f in self.files:
            with asmk_io.open_file(f) as h:
                header = asmk_io.read_header(h, source=f)
            if "shard.lo" not in header.attrs or "shard.hi" not in header.attrs:
                raise IndexFileError(f"{f}: not a part of a sharded ASMK index (no shard.lo/shard.hi attributes)")
            lo, hi = int(header.attrs["shard.lo"]), int(header.attrs["shard.hi"])
            n_images = max(n_images, header.n_images)
            e = header.entries_per_word
            if entries is not None and e.shape != entries.shape:
                raise IndexFileError(f"{f}: its codebook differs from {self.files[0]}'s (parts of different indexes?)")
            entries = e if entries is None else entries + e
            cb = header.codebook
            digest = hashlib.sha256(np.ascontiguousarray(cb).tobytes()).hexdigest()
            if codebook_sum is not None and (cb.shape != codebook_shape or digest != codebook_sum):
                raise IndexFileError(f"{f}: its codebook differs from {self.files[0]}'s (parts of different indexes?)")
            codebook_sum, codebook_shape = digest, cb.shape
            self.ranges.append((lo, hi))
        for (_, hi), (lo, _) in zip(self.ranges[:-1], self.ranges[1:], strict=True):
            if hi != lo:
                raise IndexFileError(f"{self.files[0]}...: part id ranges are not contiguous ({self.ranges})")
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
            part._statistics.set_global_idf(
                F.inverse_document_frequency(self._entries.to(self.device), self._n_images))
        if self.keep or p == self.home:
            self._parts[p] = part
        return part

    @property
    def params(self) -> ASMKParams:
        """The parameters of the parts (all the same)."""
        return self._part(self.home).params

    @property
    def codebook(self) -> Tensor:
        """The codebook of the parts (all the same)."""
        return self._part(self.home).codebook

    def quantize(self, descriptors: Any, m: int | None = None) -> Tensor:
        """:meth:`lit.asmk.ASMK.quantize` with the shared codebook."""
        return self._part(self.home).quantize(descriptors, m)

    def prepare(self, qdescriptors: Any, words: Any = None) -> tuple[Tensor, Tensor]:
        """Checked query descriptors and their words (quantised once for all parts)."""
        home = self._part(self.home)
        x = home._descriptors(qdescriptors, "qdescriptors")
        if words is None:
            words = home.quantize(x, home.params.query_multiple_assignment)
        return x, words

    def part_search(self, p: int, qdescriptors: Any, qimage_ids: Any, topk: int | None, words: Any) -> SearchResult:
        """Top-k of part ``p`` over its own id range (clipped to :attr:`n_images`)."""
        lo, hi = self.ranges[p]
        hi = min(hi, self._n_images)
        return self._part(p).search(qdescriptors, qimage_ids, topk=topk, words=words, columns=(min(lo, hi), hi))

    def search(self, qdescriptors: Any, qimage_ids: Any, topk: int | None = None, *, words: Any = None) -> SearchResult:
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
