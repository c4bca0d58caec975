"""Pure tensor functions behind ASMK (SPEC section 3), vectorised and device-agnostic.

Every function takes and returns :class:`torch.Tensor` on one device (CPU or CUDA) and
keeps nothing between calls: this module holds no mutable state (the constants below
are memory targets). The nearest-word search, which does keep a prepared codebook and a
workspace, is :mod:`lit.asmk.quantize`; :class:`lit.asmk.ASMK` composes both with the
inverted file (:mod:`lit.asmk.ivf`) and the scoring (:mod:`lit.asmk.scoring`).

Binary vectors are packed most-significant-bit first within each byte (the layout of
``numpy.packbits``) and padded with zero bits to a whole number of 64-bit words, so that
a packed ``(G, B)`` uint8 tensor can be viewed as ``(G, B // 8)`` int64 for the Hamming
distance. Zero padding is the same in every vector, so it never adds to a distance.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

#: Memory target (bytes) of one chunk of residuals; small enough to stay in the
#: allocator's free lists instead of fresh pages on every chunk.
CHUNK_BYTES = 1 << 24

_M1 = 0x5555555555555555
_M2 = 0x3333333333333333
_M4 = 0x0F0F0F0F0F0F0F0F
_LOW63 = 0x7FFFFFFFFFFFFFFF
_B1 = 0x00FF00FF00FF00FF
_B2 = 0x0000FFFF0000FFFF
_HAS_NP_BITCOUNT = hasattr(np, "bitwise_count")  # numpy >= 2.0


def smallest_stable(values: Tensor, m: int) -> Tensor:
    """Column indices of the ``m`` smallest values of every row, in stable-sort order.

    The same as ``torch.sort(values, dim=1, stable=True).indices[:, :m]`` (equal values in
    increasing index order), at the cost of a ``topk``: rows where equal values straddle
    the ``m``-th place are redone with a full stable sort.

    Shape:
        - values: :math:`(N, K)`.
        - output: :math:`(N, m)` int64.
    """
    k = values.shape[1]
    kk = min(m + 1, k)
    vals, idx = values.topk(kk, dim=1, largest=False, sorted=True)
    # order the kept ones by (value, index): sort by index, then stably by value
    by_index = idx.sort(dim=1)
    vals_by_index = vals.gather(1, by_index.indices)
    order = vals_by_index.sort(dim=1, stable=True).indices
    idx = by_index.values.gather(1, order)
    if kk > m:
        vals = vals_by_index.gather(1, order)
        tied = torch.nonzero(vals[:, m - 1] == vals[:, m]).flatten()
        if tied.numel():
            idx[tied] = torch.sort(values[tied], dim=1, stable=True).indices[:, :kk]
    return idx[:, :m]


def topk_stable(scores: Tensor, ids: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best ``(id, score)`` of every row: decreasing score, then increasing id.

    Exactly the first ``k`` of a stable descending sort when ``ids`` increase along the
    row, at the cost of one ``topk``: score and id are packed into one int64 key (the
    float32 bits mapped to an order-preserving int32 in the high half, ``2**32 - 1 - id``
    in the low half), which is unique, so the selection is exact and deterministic on
    every device. ``-0.0`` counts as ``0.0``; scores must not be NaN.

    Args:
        scores: float32 scores.
        ids: int64 ids in ``0..2**32 - 1``: one per column (shared by all rows) or one per
            element.
        k: ``1 <= k <= W``.

    Returns:
        ``(ids, scores)`` of the kept elements, best first.

    Shape:
        - scores: :math:`(R, W)`.
        - ids: :math:`(W,)` or :math:`(R, W)`.
        - output: two :math:`(R, k)` tensors.
    """
    bits = (scores.to(torch.float32) + 0.0).view(torch.int32)  # + 0.0 turns -0.0 into 0.0
    ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).to(torch.int64)  # monotonic in the score
    key = (ordered << 32) | (0xFFFFFFFF - ids.to(torch.int64))
    top = key.topk(k, dim=1, largest=True, sorted=True).values
    out_ids = 0xFFFFFFFF - (top & 0xFFFFFFFF)
    high = (top >> 32).to(torch.int32)
    out_scores = (high ^ ((high >> 31) & 0x7FFFFFFF)).view(torch.float32)
    return out_ids, out_scores


def aggregate_residuals(
    descriptors: Tensor,
    words: Tensor,
    image_ids: Tensor,
    codebook: Tensor,
    *,
    chunk_size: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sum of residuals ``x - c_w`` per (image, visual word) pair.

    A descriptor assigned to ``m`` words (a row of ``words``) adds its residual to each
    of them. Residuals are accumulated in descriptor order, in chunks.

    Args:
        descriptors: float descriptors.
        words: word assignments, e.g. from :func:`nearest_words`.
        image_ids: int64 image id of every descriptor (any non-negative ints).
        codebook: centroids.
        chunk_size: assignments (descriptor, word) per chunk; ``None`` picks one from
            :data:`CHUNK_BYTES`.

    Returns:
        ``(agg_image_ids, agg_words, sums)``, sorted by image then word; one row per
        distinct (image, word) pair.

    Shape:
        - descriptors: :math:`(N, D)`.
        - words: :math:`(N, m)`.
        - image_ids: :math:`(N,)`.
        - codebook: :math:`(K, D)`.
        - output: :math:`(G,)`, :math:`(G,)` int64 and :math:`(G, D)` float.
    """
    n, d = descriptors.shape
    k = codebook.shape[0]
    m = words.shape[1]
    device = descriptors.device
    flat_words = words.reshape(-1)
    flat_images = image_ids.repeat_interleave(m) if m > 1 else image_ids
    keys = flat_images * k + flat_words
    uniq, inverse = torch.unique(keys, sorted=True, return_inverse=True)
    g, total = uniq.shape[0], n * m
    if chunk_size is None:
        chunk_size = max(1, CHUNK_BYTES // (4 * max(d, 1)))
    sums = torch.zeros((g, d), dtype=descriptors.dtype, device=device)
    for start in range(0, total, chunk_size):
        stop = min(start + chunk_size, total)
        if m == 1:
            x = descriptors[start:stop]
        else:
            x = torch.index_select(descriptors, 0, torch.arange(start, stop, device=device) // m)
        residuals = torch.index_select(codebook, 0, flat_words[start:stop])
        torch.sub(x, residuals, out=residuals)
        sums.index_add_(0, inverse[start:stop], residuals)
    group_words = uniq % k
    return uniq // k, group_words, sums


def aggregate_images(
    descriptors: Tensor, words: Tensor, image_ids: Tensor, codebook: Tensor, *, binary: bool
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Aggregated vectors of whole images, in batches of about :data:`CHUNK_BYTES` of
    residuals.

    Rows are put in image order first (a stable sort, so descriptors of an image keep
    their order); each batch of whole images is aggregated (:func:`aggregate_residuals`)
    and binarised (:func:`binarize`) or L2-normalised (:func:`l2_normalize`).

    Args:
        descriptors: float32 descriptors.
        words: their word assignments.
        image_ids: int64 image id of every descriptor.
        codebook: centroids.
        binary: binarise (packed bits) instead of L2-normalising.

    Yields:
        ``(agg_image_ids, agg_words, vectors)`` of one batch, sorted by image then word.

    Shape:
        - descriptors: :math:`(N, D)`.
        - words: :math:`(N, m)`.
        - image_ids: :math:`(N,)`.
        - output: :math:`(G,)`, :math:`(G,)` int64 and :math:`(G, B)` uint8 (binary) or
          :math:`(G, D)` float32.
    """
    if image_ids.shape[0] > 1 and not bool((image_ids[1:] >= image_ids[:-1]).all()):
        order = torch.sort(image_ids, stable=True).indices
        descriptors, words, image_ids = descriptors[order], words[order], image_ids[order]
    m = words.shape[1]
    budget = max(1, CHUNK_BYTES // (4 * codebook.shape[1] * m))
    for start, stop in image_batches(image_ids, budget):
        images, agg_words, sums = aggregate_residuals(
            descriptors[start:stop], words[start:stop], image_ids[start:stop], codebook
        )
        yield images, agg_words, binarize(sums) if binary else l2_normalize(sums)


def image_batches(sorted_ids: Tensor, budget: int) -> list[tuple[int, int]]:
    """Split rows sorted by image id into ``(start, stop)`` runs of whole images with
    about ``budget`` rows each (one image larger than the budget is a run of its own).

    Shape:
        - sorted_ids: :math:`(N,)`, non-decreasing.
    """
    n = sorted_ids.shape[0]
    if n <= budget:
        return [(0, n)]
    _, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    ends = torch.cumsum(counts, 0)
    targets = torch.arange(budget, n, budget, device=ends.device)
    cut = torch.searchsorted(ends, targets, right=True)  # images fully within the target
    cut = torch.unique(cut.clamp_min(1))  # at least one image per batch
    bounds = [0] + ends[cut - 1].tolist() + [n]
    bounds = sorted(set(bounds))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def pair_chunks(lengths: Tensor, max_pairs: int) -> list[tuple[int, int, int]]:
    """Split query entries into ``(start, stop, pairs)`` runs of about ``max_pairs`` pairs.

    ``lengths[i]`` is the number of (query entry ``i``, database entry) pairs (the length
    of its posting list); a run holds whole entries, at least one.

    Shape:
        - lengths: :math:`(Q,)` int64.
    """
    ends = torch.cumsum(lengths, 0)
    total = int(ends[-1]) if ends.numel() else 0
    if total <= max_pairs:
        return [(0, lengths.shape[0], total)] if total else []
    targets = torch.arange(max_pairs, total, max_pairs, device=ends.device)
    cut = torch.unique(torch.searchsorted(ends, targets, right=True).clamp_min(1)).tolist()
    bounds = sorted(set([0] + cut + [lengths.shape[0]]))
    ends_list = [0] + ends.tolist()
    return [(a, b, ends_list[b] - ends_list[a]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def packed_width(dim: int) -> int:
    """Bytes of one packed binary vector of ``dim`` bits (padded to whole 64-bit words)."""
    return 8 * ((dim + 63) // 64)


def pack_bits(bits: Tensor) -> Tensor:
    """Pack boolean rows into bytes, most significant bit first, zero-padded to 64 bits.

    Args:
        bits: boolean (or 0/1) matrix.

    Returns:
        uint8 packed rows; ``pack_bits(b)[:, :ceil(D / 8)]`` equals ``numpy.packbits(b, axis=1)``.

    Shape:
        - bits: :math:`(G, D)`.
        - output: :math:`(G, B)` with ``B = 8 * ceil(D / 64)``.
    """
    g, d = bits.shape
    width = packed_width(d)
    if bits.device.type == "cpu":
        packed = np.packbits(bits.detach().numpy().astype(bool, copy=False), axis=1)
        out = np.zeros((g, width), dtype=np.uint8)
        out[:, : packed.shape[1]] = packed
        return torch.from_numpy(out)
    return _pack_bits_torch(bits)


def _pack_bits_torch(bits: Tensor) -> Tensor:
    """:func:`pack_bits` with torch operations only (any device)."""
    g, d = bits.shape
    width = packed_width(d)
    padded = torch.zeros((g, width * 8), dtype=torch.uint8, device=bits.device)
    padded[:, :d] = bits.to(torch.uint8)
    groups = padded.view(g, width, 8)
    out = groups[..., 0] << 7
    for j in range(1, 8):
        out |= groups[..., j] << (7 - j)
    return out


def unpack_bits(packed: Tensor, dim: int) -> Tensor:
    """Inverse of :func:`pack_bits`.

    Shape:
        - packed: :math:`(G, B)` uint8.
        - output: :math:`(G, dim)` bool.
    """
    shifts = torch.arange(7, -1, -1, device=packed.device, dtype=torch.uint8)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(packed.shape[0], -1)[:, :dim].bool()


def binarize(vectors: Tensor) -> Tensor:
    """Binary aggregated vectors: bit set where the residual sum is ``> 0``, packed.

    Shape:
        - vectors: :math:`(G, D)`.
        - output: :math:`(G, B)` uint8, see :func:`pack_bits`.
    """
    if vectors.device.type == "cpu":  # numpy compares and packs in one fast pass each
        return pack_bits(torch.from_numpy(vectors.detach().numpy() > 0))
    return pack_bits(vectors > 0)


def l2_normalize(vectors: Tensor, eps: float = 1e-6) -> Tensor:
    """Real aggregated vectors: ``v / (||v|| + eps)`` row by row.

    Shape:
        - vectors: :math:`(G, D)`; output the same.
    """
    return vectors / (torch.linalg.vector_norm(vectors, dim=1, keepdim=True) + eps)


def popcount64(x: Tensor) -> Tensor:
    """Number of set bits of every int64 element.

    On CPU this is ``numpy.bitwise_count`` (hardware popcount) on an unsigned view;
    elsewhere a SWAR bit count made of shifts, masks and additions that never overflows.

    Shape:
        - x: any shape, int64; output the same, int64 in ``0..64``.
    """
    if x.device.type == "cpu" and _HAS_NP_BITCOUNT:
        bits = np.bitwise_count(x.detach().contiguous().numpy().view(np.uint64))
        return torch.from_numpy(bits.astype(np.int64))
    return _swar(x)


def _swar_byte_counts(x: Tensor) -> Tensor:
    """Per-byte bit counts (each byte 0..8) of the low 63 bits of int64 ``x``."""
    x = x & _LOW63  # non-negative from here on: shifts and sums stay in range
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    return (x + (x >> 4)) & _M4


def _sum_bytes(x: Tensor) -> Tensor:
    """Sum of the 8 bytes of non-negative int64 ``x`` whose bytes are at most 127."""
    x = (x & _B1) + ((x >> 8) & _B1)
    x = (x & _B2) + ((x >> 16) & _B2)
    return (x & 0xFFFFFFFF) + (x >> 32)


def _swar(x: Tensor) -> Tensor:
    return _sum_bytes(_swar_byte_counts(x)) + (x < 0).to(torch.int64)


def popcount_rows(x: Tensor) -> Tensor:
    """Number of set bits in every row of an int64 matrix (a packed bit vector per row).

    Shape:
        - x: :math:`(P, W)` int64.
        - output: :math:`(P,)` int64.
    """
    p, w = x.shape
    if x.device.type == "cpu" and _HAS_NP_BITCOUNT:
        bits = np.bitwise_count(x.detach().contiguous().numpy().view(np.uint64))
        total = bits[:, 0].astype(np.int64) if w else np.zeros(p, np.int64)
        for j in range(1, w):
            total += bits[:, j]
        return torch.from_numpy(total)
    total = torch.zeros(p, dtype=torch.int64, device=x.device)
    for start in range(0, w, 15):  # 15 words of byte counts <= 8 keep every byte <= 120
        acc = None
        for j in range(start, min(start + 15, w)):
            col = x[:, j]
            counts = _swar_byte_counts(col)
            acc = counts if acc is None else acc.add_(counts)
            total += (col < 0).to(torch.int64)
        total += _sum_bytes(acc)
    return total


def popcount_sum(columns: list[Tensor]) -> Tensor:
    """Total number of set bits of several int64 columns, element by element.

    A packed vector of ``W`` 64-bit words stored column-major is ``W`` such columns.

    Shape:
        - columns: ``W`` tensors of shape :math:`(P,)`, int64.
        - output: :math:`(P,)` int64.
    """
    if columns[0].device.type == "cpu" and _HAS_NP_BITCOUNT:
        total = None
        for col in columns:
            bits = np.bitwise_count(col.detach().contiguous().numpy().view(np.uint64))
            total = bits.astype(np.int64) if total is None else np.add(total, bits, out=total)
        return torch.from_numpy(total)
    return popcount_rows(torch.stack(columns, dim=1))


def hamming_packed(a: Tensor, b: Tensor) -> Tensor:
    """Hamming distance between paired packed binary vectors (row ``i`` of ``a`` and ``b``).

    Args:
        a: packed vectors, uint8 from :func:`pack_bits` or their int64 view.
        b: same layout as ``a``.

    Returns:
        int64 distances.

    Shape:
        - a, b: :math:`(P, B)` uint8 or :math:`(P, B / 8)` int64.
        - output: :math:`(P,)`.
    """
    if a.dtype == torch.uint8:
        a = a.view(torch.int64)
        b = b.view(torch.int64)
    return popcount_rows(a ^ b)


def binary_similarity(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """``1 - 2 * hamming / dim`` between paired packed vectors of ``dim`` bits.

    Shape:
        - a, b: :math:`(P, B)` (see :func:`hamming_packed`).
        - output: :math:`(P,)` float32 in ``[-1, 1]``.
    """
    return binary_similarity_from_hamming(hamming_packed(a, b), dim)


def binary_similarity_from_hamming(hamming: Tensor, dim: int) -> Tensor:
    """``1 - 2 * hamming / dim`` in float32 (the formula of :func:`binary_similarity`).

    Shape:
        - hamming: any shape, int; output the same, float32.
    """
    return 1.0 - hamming.to(torch.float32) * (2.0 / dim)


def real_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Dot product between paired rows.

    Shape:
        - a, b: :math:`(P, D)`.
        - output: :math:`(P,)`.
    """
    return (a * b).sum(dim=1)


def selective_kernel(similarity: Tensor, alpha: float = 3.0, threshold: float = 0.0) -> Tensor:
    """ASMK selective function: ``s ** alpha`` where ``s >= threshold``, else 0.

    Args:
        similarity: word similarities.
        alpha: exponent.
        threshold: tau; similarities below it are discarded.

    Shape:
        - similarity: any shape; output the same.
    """
    kept = similarity >= threshold
    return torch.where(kept, similarity.pow(alpha), torch.zeros_like(similarity))


def inverse_document_frequency(entries: Tensor, n_images: int) -> Tensor:
    """``log(n_images / entries(w)) ** 2`` for words with entries, 1 for the others.

    Computed in float64 and returned as float32.

    Args:
        entries: number of database images holding each word.
        n_images: largest database image id + 1.

    Shape:
        - entries: :math:`(K,)`; output :math:`(K,)` float32.
    """
    e = entries.to(torch.float64)
    idf = torch.log(n_images / e.clamp_min(1.0)).pow(2)
    return torch.where(entries > 0, idf, torch.ones_like(idf)).to(torch.float32)


def inverse_sqrt(norms: Tensor) -> Tensor:
    """``1 / sqrt(norm)`` where the norm is positive, 0 elsewhere (empty images score 0)."""
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    return torch.where(norms > 0, safe.rsqrt(), torch.zeros_like(norms))


def posting_pairs(
    query_words: Tensor, offsets: Tensor, *, total: int | None = None
) -> tuple[Tensor, Tensor]:
    """All (query entry, database entry) pairs sharing a word, from a CSR inverted file.

    Args:
        query_words: word of every query aggregated vector.
        offsets: CSR offsets of the inverted file: entries of word ``w`` are
            ``offsets[w]:offsets[w + 1]``.
        total: number of pairs if already known (saves a device synchronisation).

    Returns:
        ``(query_index, db_index)``, grouped by query entry in order.

    Shape:
        - query_words: :math:`(Q,)`.
        - offsets: :math:`(K + 1,)`.
        - output: two :math:`(P,)` int64 tensors, ``P = sum of posting-list lengths``.
    """
    starts = offsets[query_words]
    lengths = offsets[query_words + 1] - starts
    if total is None:
        total = int(lengths.sum())
    device = query_words.device
    qidx = torch.repeat_interleave(
        torch.arange(query_words.shape[0], device=device), lengths, output_size=total
    )
    before = torch.cumsum(lengths, 0) - lengths
    didx = torch.repeat_interleave(starts - before, lengths, output_size=total)
    didx += torch.arange(total, device=device)
    return qidx, didx


def is_integral(value: float) -> bool:
    """Whether a float exponent is a whole number (negative bases are then fine)."""
    return math.isfinite(value) and float(value).is_integer()
