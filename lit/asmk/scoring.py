"""Scoring of ASMK queries against an inverted file (SPEC section 3): word statistics,
blocks of scores, top-k.

A query gathers all (query vector, database entry) pairs of its words by slicing the
posting lists (``repeat_interleave``, :func:`lit.asmk.functional.posting_pairs`), computes
their similarities in one go (XOR and popcount on int64 words in binary mode, a dot
product in real mode), applies the selective kernel (a lookup table over the D + 1
Hamming distances in binary mode) and idf, and ``index_add_``\\ s them into the query's
row of a dense block of scores. No Python loop runs per descriptor, word or database
image; the only loops are over query images, segments of the inverted file and chunks
that bound memory.

Memory: one chunk of (query entry, database entry) pairs (about :data:`_PAIR_BYTES`,
16 MB, on CPU and :data:`_PAIR_BYTES_ACCELERATOR`, 256 MB, on GPU) and one block of score
rows (about :data:`_BLOCK_BYTES`, 128 MB of float32, plus the same again twice for the
top-k key) at a time: :func:`top_k` never holds the dense (queries x database) matrix,
only the top-k of each block; :func:`dense_scores` is that matrix by definition.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

import torch
from torch import Tensor

from . import functional as F
from .ivf import InvertedFile

__all__ = ["SearchResult", "WordStatistics", "dense_scores", "score_blocks", "top_k"]

_PAIR_BYTES = 1 << 24  # memory target of one chunk of (query, database) pairs on CPU
_PAIR_BYTES_ACCELERATOR = 1 << 28  # and on GPU, where fewer, larger kernels pay
_BLOCK_BYTES = 1 << 27  # memory target of one block of query scores (rows x database images)


class SearchResult(NamedTuple):
    """Ranked database images per query (rows follow the sorted distinct query ids).

    Shape:
        - ranks: :math:`(Q, k)` int64 database image ids, best first.
        - scores: :math:`(Q, k)` float32 scores, non-increasing along each row.
    """

    ranks: Tensor
    scores: Tensor


class WordStatistics:
    """The idf of every word and ``1 / sqrt(norm)`` of every database image, computed when
    first asked for and kept until the inverted file changes (its ``version``).

    ``idf(w) = log(n_images / entries(w)) ** 2`` for words with entries and 1 for the others
    (:func:`lit.asmk.functional.inverse_document_frequency`), or 1 everywhere without idf;
    ``norm(i)`` is the sum of idf over the words of image ``i``. A part of a sharded index
    scores with the idf of all parts together (:meth:`set_global_idf`).

    Args:
        ivf: the inverted file, flushed before the statistics are read.
        use_idf: weight words by idf.
    """

    def __init__(self, ivf: InvertedFile, use_idf: bool) -> None:
        self.ivf, self.use_idf = ivf, use_idf
        self.global_idf: Tensor | None = None
        self._version: int | None = None
        self._idf: Tensor | None = None
        self._inv_norm: Tensor | None = None

    def set_global_idf(self, idf: Tensor | None) -> None:
        """Score with this idf (``(K,)`` float32; ``None``: the file's own) instead of the
        inverted file's own statistics."""
        self.global_idf = idf
        self._version = None

    def _fresh(self) -> None:
        if self._version != self.ivf.version:
            self._idf = self._inv_norm = None
            self._version = self.ivf.version

    def idf(self) -> Tensor:
        """Shape: :math:`(K,)` float32."""
        if self.global_idf is not None:
            return self.global_idf
        self._fresh()
        if self._idf is None:
            ivf = self.ivf
            if self.use_idf:
                # removed images (tombstones) are no database images: n counts the others
                self._idf = F.inverse_document_frequency(ivf.entries_per_word(), ivf.n_images - ivf.num_removed)
            else:
                self._idf = torch.ones(ivf.num_words, dtype=torch.float32, device=ivf.device)
        return self._idf

    def inv_sqrt_norms(self) -> Tensor:
        """``1 / sqrt(norm)`` of every database image, 0 for empty ones.

        Shape: :math:`(n\\_images,)` float32.
        """
        self._fresh()
        if self._inv_norm is None:
            self._inv_norm = F.inverse_sqrt(self.ivf.image_sums(self.idf()))
        return self._inv_norm


def score_blocks(
    ivf: InvertedFile,
    statistics: WordStatistics,
    codebook: Tensor,
    x: Tensor,
    rows: Tensor,
    words: Tensor,
    lo: int,
    hi: int,
    *,
    alpha: float,
    threshold: float,
) -> Iterator[tuple[int, Tensor]]:
    """Scores of blocks of whole query images against the database ids ``lo..hi-1``.

    Args:
        ivf: the flushed inverted file.
        statistics: its word statistics.
        codebook: centroids (residuals of the queries).
        x: float32 query descriptors on the index device.
        rows: query row of every descriptor (``0..Q-1``: the rank of its query id).
        words: their ``m_q`` words.
        lo, hi: database id range (``hi > lo``).
        alpha, threshold: the selective kernel.

    Yields:
        ``(first_row, block)``: ``block`` is a float32 ``(R, hi - lo)`` tensor of the rows
        ``first_row..first_row + R - 1``. At most about :data:`_BLOCK_BYTES` of scores
        exist at a time, whatever the number of queries.

    Shape:
        - x: :math:`(N, D)`.
        - rows: :math:`(N,)` int64.
        - words: :math:`(N, m_q)`.
    """
    device = ivf.device
    width = hi - lo
    idf = statistics.idf()
    binary = ivf.binary
    segments = ivf.segments()
    n_images = ivf.n_images
    inv_db = torch.zeros(width, dtype=torch.float32, device=device)
    top = min(hi, n_images)
    if top > lo:
        inv_db[: top - lo] = statistics.inv_sqrt_norms()[lo:top]
    if binary:  # similarities take D + 1 values: tabulate the kernel over Hamming distances
        lut = F.selective_kernel(
            F.binary_similarity_from_hamming(torch.arange(ivf.dim + 1, device=device), ivf.dim), alpha, threshold
        )
    bytes_per_pair = 2 * ivf.bytes_per_vector + 64
    budget = _PAIR_BYTES if device.type == "cpu" else _PAIR_BYTES_ACCELERATOR
    max_pairs = max(1, budget // bytes_per_pair)
    block_rows = max(1, _BLOCK_BYTES // (4 * width))
    for q_rows, q_words, q_vectors in F.aggregate_images(x, words, rows, codebook, binary=binary):
        q_idf = idf[q_words]
        q_vectors = ivf.internal(q_vectors)
        seg_lengths = [seg.offsets[q_words + 1] - seg.offsets[q_words] for seg in segments]
        # entries are sorted by query row: one query image at a time (its own score row)
        row_values, row_counts = torch.unique_consecutive(q_rows, return_counts=True)
        row_values, row_counts = row_values.tolist(), row_counts.tolist()
        row_end = 0
        for g in range(0, len(row_values), block_rows):
            group, counts = row_values[g : g + block_rows], row_counts[g : g + block_rows]
            first = group[0]
            block = torch.zeros((group[-1] - first + 1, width), dtype=torch.float32, device=device)
            qnorm = torch.zeros(block.shape[0], dtype=torch.float32, device=device)
            for row, count in zip(group, counts, strict=True):
                row_start, row_end = row_end, row_end + count
                qnorm[row - first] = q_idf[row_start:row_end].sum()
                out_row = block[row - first]
                for (offsets, db_images, db_vectors), lengths in zip(segments, seg_lengths, strict=True):
                    for a, b, total in F.pair_chunks(lengths[row_start:row_end], max_pairs):
                        a, b = a + row_start, b + row_start
                        qi, di = F.posting_pairs(q_words[a:b], offsets, total=total)
                        if binary:
                            xor = [
                                torch.index_select(db_col, 0, di).bitwise_xor_(torch.index_select(q_col[a:b], 0, qi))
                                for db_col, q_col in zip(db_vectors, q_vectors, strict=True)
                            ]
                            weight = torch.index_select(lut, 0, F.popcount_sum(xor))
                        else:
                            dbv = torch.index_select(db_vectors, 0, di)
                            qv = torch.index_select(q_vectors[a:b], 0, qi)
                            weight = F.selective_kernel(F.real_similarity(dbv, qv), alpha, threshold)
                        if statistics.use_idf:
                            weight *= torch.index_select(q_idf[a:b], 0, qi)
                        images = torch.index_select(db_images, 0, di).to(torch.int64)
                        if lo or top < n_images:  # a column range: drop entries outside
                            keep = (images >= lo) & (images < hi)
                            images, weight = images[keep] - lo, weight[keep]
                        out_row.index_add_(0, images, weight)
            block *= inv_db.unsqueeze(0)
            block *= F.inverse_sqrt(qnorm).unsqueeze(1)
            yield first, block


def dense_scores(blocks: Iterable[tuple[int, Tensor]], n_queries: int, width: int, device: torch.device) -> Tensor:
    """The blocks of :func:`score_blocks` as one ``(n_queries, width)`` float32 matrix
    (rows no block covers are 0)."""
    out = torch.zeros((n_queries, width), dtype=torch.float32, device=device)
    for first, block in blocks:
        out[first : first + block.shape[0]] = block
    return out


def top_k(blocks: Iterable[tuple[int, Tensor]], n_queries: int, k: int, lo: int, hi: int,
          device: torch.device, excluded: Tensor | None = None) -> SearchResult:
    """The best ``k`` database ids of every row of the blocks (columns ``lo..hi-1``), by
    decreasing score then increasing id (:func:`lit.asmk.functional.topk_stable`); only
    one block of scores exists at a time. Rows no block covers keep ids and scores 0.
    ``excluded``: ``(hi - lo,)`` bool, columns never ranked (removed images; ``k`` must not
    exceed the others).

    Shape:
        - output: two :math:`(n\\_queries, k)` tensors, ``k <= hi - lo``.
    """
    ranks = torch.zeros((n_queries, k), dtype=torch.int64, device=device)
    values = torch.zeros((n_queries, k), dtype=torch.float32, device=device)
    if k == 0:
        return SearchResult(ranks, values)
    col_ids = torch.arange(lo, hi, device=device)
    if excluded is None or not bool(excluded.any()):
        excluded = None
    for first, block in blocks:
        if excluded is not None:  # in place (the block is ours): below every score, never among the k
            block.masked_fill_(excluded, float("-inf"))
        r, v = F.topk_stable(block, col_ids, k)
        ranks[first : first + block.shape[0]] = r
        values[first : first + block.shape[0]] = v
    return SearchResult(ranks, values)
