"""Pure tensor functions behind ASMK (SPEC section 3), vectorised and device-agnostic.

Every function takes and returns :class:`torch.Tensor` on one device (CPU or CUDA) and
has no state. :class:`lit.asmk.ASMK` is a thin stateful wrapper around them.

Binary vectors are packed most-significant-bit first within each byte (the layout of
``numpy.packbits``) and padded with zero bits to a whole number of 64-bit words, so that
a packed ``(G, B)`` uint8 tensor can be viewed as ``(G, B // 8)`` int64 for the Hamming
distance. Zero padding is the same in every vector, so it never adds to a distance.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

try:  # the fast CPU path of quantisation and k-means; lit works without it
    import faiss as _faiss  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _faiss = None

#: Memory target (bytes) of one chunk of the nearest-centroid search (distance matrix).
SEARCH_BYTES = 1 << 27
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


def faiss_available() -> bool:
    """Whether ``faiss`` can be imported (quantisation and k-means then use it on CPU)."""
    return _faiss is not None


def nearest_words(
    descriptors: Tensor,
    codebook: Tensor,
    m: int = 1,
    *,
    chunk_size: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """Indices of the ``m`` nearest centroids (L2) of every descriptor, nearest first.

    Brute force, exact in float32: ``||x - c||^2`` is ranked as ``||c||^2 - 2 x.c`` (the
    term ``||x||^2`` is the same for every centroid). Equal distances go to the lower
    centroid index, and within the ``m`` words the order is (distance, index): the order of
    a stable sort of the distances.

    Backends:

    - ``"bf16"`` (CPU): a bfloat16 GEMM with a proven error bound picks candidates, which
      are re-ranked exactly in float64 (rows the bound cannot settle are searched by
      float64 brute force), so the result is the exact ranking; about twice the speed of
      faiss where the CPU multiplies bfloat16 natively (AVX-512 BF16, AMX). ``"auto"``
      uses it on such CPUs for codebooks of at least 1024 words and ``m <= 5``, on inputs
      within +-1e8.
    - ``"faiss"`` (``faiss.knn``, the machine's float32 GEMM speed on CPU; ``"auto"`` for
      other CPU tensors when faiss is importable).
    - ``"torch"`` (a blocked float32 GEMM kernel on any device; ``"auto"`` on CUDA and
      without faiss).

    The torch kernel keeps at
    most about :data:`SEARCH_BYTES` of distances at a time; faiss blocks internally
    (4096 descriptors x 1024 centroids). The float32 backends compute the same formula
    with different summation orders, so a descriptor almost exactly between two centroids
    (distances equal to the last float32 bits) may be assigned differently by them and by
    the exact ``"bf16"`` path; each backend is deterministic.

    Args:
        descriptors: descriptors to quantise.
        codebook: centroids.
        m: number of nearest words per descriptor (multiple assignment), ``1 <= m <= K``.
        chunk_size: descriptors per chunk of the torch kernel; ``None`` picks one from
            :data:`SEARCH_BYTES`.
        backend: ``"auto"``, ``"bf16"``, ``"faiss"`` or ``"torch"`` (``"bf16"`` runs the
            float32 torch kernel where its conditions, at least 68 words, ``m <= 5`` and
            inputs within +-1e8, do not hold).

    Returns:
        int64 word indices on the device of ``descriptors``, column 0 the nearest.

    Shape:
        - descriptors: :math:`(N, D)`.
        - codebook: :math:`(K, D)`.
        - output: :math:`(N, m)`.
    """
    n, k = descriptors.shape[0], codebook.shape[0]
    if not 1 <= m <= k:
        raise ValueError(f"m must be in 1..{k} (the codebook size), got {m}")
    if backend not in ("auto", "faiss", "torch", "bf16"):
        raise ValueError(f"backend must be 'auto', 'faiss', 'torch' or 'bf16', got {backend!r}")
    if backend == "faiss" and _faiss is None:
        raise ValueError("backend='faiss' but faiss is not importable (pip install faiss-cpu)")
    if backend == "bf16" and descriptors.device.type != "cpu":
        raise ValueError("backend='bf16' is the CPU path; on CUDA use 'torch' or 'auto'")
    if n == 0:
        return torch.empty((0, m), dtype=torch.int64, device=descriptors.device)
    auto = backend == "auto"
    if auto:
        backend = auto_backend(descriptors.device, k, m)
    if backend == "bf16":
        x32 = descriptors.detach().to(torch.float32)
        c32 = codebook.detach()
        if c32.dtype != torch.float32 or c32.device.type != "cpu":
            c32 = c32.to(device="cpu", dtype=torch.float32)
        elif not codebook.requires_grad:
            c32 = codebook  # the tensor itself: its prepared bfloat16 form is cached
        if _bf16_applies(x32, c32, m):
            return _nearest_words_bf16(x32, c32, int(m), chunk_size)
        backend = "faiss" if auto and _faiss is not None else "torch"
    use_faiss = backend == "faiss"
    if use_faiss:
        x = np.ascontiguousarray(descriptors.detach().cpu().numpy(), dtype=np.float32)
        c = np.ascontiguousarray(codebook.detach().cpu().numpy(), dtype=np.float32)
        # faiss keeps the lower index on equal distances and sorts by (distance, index)
        _, idx = _faiss.knn(x, c, int(m))
        idx = torch.from_numpy(idx)
        bad = torch.nonzero((idx < 0).any(dim=1)).flatten()  # distances overflowed to inf/NaN
        if bad.numel():
            idx[bad] = nearest_words(descriptors.cpu()[bad], codebook.cpu(), m, backend="torch")
        return idx.to(descriptors.device)
    out = torch.empty((n, m), dtype=torch.int64, device=descriptors.device)
    if chunk_size is None:
        chunk_size = max(1, SEARCH_BYTES // (4 * k))
    c_t = codebook.t().contiguous()
    c_sq = (codebook * codebook).sum(dim=1)
    for start in range(0, n, chunk_size):
        x = descriptors[start : start + chunk_size]
        dist = torch.addmm(c_sq.unsqueeze(0), x, c_t, beta=1.0, alpha=-2.0)
        if m == 1:  # min keeps the first (lowest) index of equal values
            out[start : start + x.shape[0], 0] = dist.min(dim=1).indices
        else:
            out[start : start + x.shape[0]] = smallest_stable(dist, m)
    return out


_BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
_BF16_U_OUT = _BF16_U / (1 - _BF16_U)  # |fl(a) - a| <= this x |fl(a)|: output rounding
_BF16_GROUP = 128  # centroids per group of the candidate selection
_BF16_CANDIDATES = 16  # first-pass candidates per descriptor (at least 3 m)
_BF16_SECOND = 256  # second-pass candidates, for the descriptors the first cannot settle
_BF16_MAX_ABS = 1e8  # larger inputs go to the float32 path (the bound must not overflow)
_native_bf16: bool | None = None


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (x86 AVX-512 BF16 or AMX).

    There a bfloat16 GEMM runs at two to four times the float32 speed, and
    :func:`nearest_words` uses it on CPU (``backend="auto"``), with an exact re-check.
    """
    global _native_bf16
    if _native_bf16 is None:
        flags = ""
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
                flags = next((line for line in f if line.startswith("flags")), "")
        except OSError:
            flags = ""
        has = bool(set(flags.split()) & {"avx512_bf16", "amx_bf16"})
        _native_bf16 = has and torch.backends.mkldnn.is_available()
    return _native_bf16


def auto_backend(device: torch.device | str, k: int, m: int) -> str:
    """The backend :func:`nearest_words` uses with ``backend="auto"``.

    ``"bf16"`` on CPUs with native bfloat16 for ``k >= 1024`` words and ``m <= 5`` (inputs
    beyond +-1e8 then go to ``"faiss"``), else ``"faiss"`` on CPU when faiss is importable,
    else ``"torch"``.
    """
    if torch.device(device).type != "cpu":
        return "torch"
    if native_bf16_cpu() and k >= 1024 and m <= _BF16_CANDIDATES // 3:
        return "bf16"
    return "faiss" if _faiss is not None else "torch"


_workspace = threading.local()


def _bf16_workspace(numel: int) -> Tensor:
    """A bfloat16 buffer of at least ``numel`` elements, kept per thread between calls.

    The approximate scores of a chunk (about 64 MB) are written into it:
    a fresh buffer of that size comes from new pages on every call (``mmap``), and their
    first touch costs about as much as the GEMM that fills them (a query is one call)."""
    buf = getattr(_workspace, "buf", None)
    if buf is None or buf.numel() < numel:
        buf = torch.empty(numel, dtype=torch.bfloat16)
        _workspace.buf = buf
    return buf


@dataclass(frozen=True)
class _Bf16Codebook:
    c_aug_t: Tensor  # (D + 2, Kp) bfloat16: centroids, -|c|^2/2 as hi + lo, padding
    half_sq: Tensor  # (K,) float64 |c|^2 / 2
    coef_a: float  # E0 = coef_a |x| + e_const (input rounding, norm split, float32 sums)
    e_const: float
    max_abs: float  # largest |coordinate|
    key: tuple


_prepared: dict[int, tuple[weakref.ref, _Bf16Codebook]] = {}  # id(codebook) -> (its weakref, form)


def _bf16_prepared(codebook: Tensor) -> _Bf16Codebook:
    """The bfloat16 form of a float32 CPU codebook and its error-bound constants, cached
    per codebook tensor (an index quantises every query against the same one)."""
    key = (codebook.data_ptr(), tuple(codebook.shape), codebook._version)
    hit = _prepared.get(id(codebook))
    if hit is not None and hit[0]() is codebook and hit[1].key == key:
        return hit[1]
    k, d = codebook.shape
    g = _bf16_group(k)
    kp = -(-k // g) * g
    c64 = codebook.to(torch.float64)
    half_sq = (c64 * c64).sum(dim=1) / 2
    hi = (-half_sq).to(torch.bfloat16)
    lo = (-half_sq - hi.to(torch.float64)).to(torch.bfloat16)
    c_aug = torch.zeros((kp, d + 2), dtype=torch.bfloat16)
    c_aug[:k, :d] = codebook.to(torch.bfloat16)
    c_aug[:k, d] = hi
    c_aug[:k, d + 1] = lo
    c_aug[k:, d] = -1e30  # padding centroids, far below any real score
    u = _BF16_U
    gamma = (d + 2) * 2.0**-24 / (1 - (d + 2) * 2.0**-24)
    prep = _Bf16Codebook(
        c_aug_t=c_aug.t().contiguous(),
        half_sq=half_sq,
        coef_a=(2 * u + u * u + 2 * gamma * (1 + 3 * u)) * float(c64.norm(dim=1).max()),
        # + 1e-20: subnormal inputs and products may be flushed to zero (at most 130 x 1.2e-38 x 1e8)
        e_const=(2 * u * u + 2 * gamma * (1 + 3 * u)) * float(half_sq.max()) + 1e-20,
        max_abs=float(codebook.abs().max()),
        key=key,
    )
    ident = id(codebook)
    _prepared[ident] = (weakref.ref(codebook, lambda _, i=ident: _prepared.pop(i, None)), prep)
    return prep


def _group_max(v: Tensor) -> Tensor:
    """``v.amax(dim=2)`` of a bfloat16 ``(R, G, W)`` tensor, the same values, faster.

    torch reduces bfloat16 along the last dimension slowly (about 2.5x the float32 time);
    halving the width with elementwise maxima first, while it is even and above 8, is
    faster and exact (a maximum is a maximum in any order)."""
    w = v.shape[2]
    while w % 2 == 0 and w > 8:
        w //= 2
        v = torch.maximum(v[..., :w], v[..., w : 2 * w])
    return v.amax(dim=2)


def _bf16_group(k: int) -> int:
    """Centroids per group: at most 128, and at least ``2 (L + 1)`` groups."""
    return min(_BF16_GROUP, k // (2 * (_BF16_CANDIDATES + 1)))


def _bf16_applies(x: Tensor, codebook: Tensor, m: int) -> bool:
    """Whether the bfloat16 search can run here with a sound bound."""
    k = codebook.shape[0]
    if _bf16_group(k) < 2 or m > _BF16_CANDIDATES // 3:
        return False
    big = max(float(x.abs().max()), _bf16_prepared(codebook).max_abs)
    return math.isfinite(big) and big <= _BF16_MAX_ABS


def _nearest_words_bf16(x: Tensor, codebook: Tensor, m: int, chunk_size: int | None) -> Tensor:
    """Exact ``m`` nearest centroids through a bfloat16 GEMM and a float64 re-check.

    The nearest words maximise ``s_j = x.c_j - |c_j|^2 / 2``. Per chunk of descriptors:

    1. ``S~ = bf16(x).bf16(c_j) + h_j + l_j`` in one bfloat16 GEMM (float32 accumulation,
       bfloat16 output), ``h_j + l_j`` being ``-|c_j|^2 / 2`` split into two bfloat16
       numbers (exact to 2^-16 of it).
    2. A bound on ``|S~_j - s_j|`` for every centroid of a row: ``u' |S~_j| + E0`` with
       ``E0 = (2u + u^2 + 2 gamma') |x| max|c| + (2u^2 + 2 gamma') max|c|^2/2`` (input
       rounding 2u, the norm split, float32 sums gamma' ~ gamma_(D+2)), and ``u' |S~_j|``
       the rounding of the bfloat16 output, with u = 2^-8 and u' = u / (1 - u). So
       ``s_j <= up(S~_j) = S~_j + u' |S~_j| + E0``, increasing in ``S~_j``.
    3. Candidates: the best ``L`` approximate scores (``L`` = 16), taken from the best
       ``L`` groups of (at most) 128 centroids by group maximum (which hold them). The ``m``
       best are scored exactly (float64, from the float32 inputs); the worst of those,
       ``S_m``, is at most the true ``m``-th best score, so a centroid can be a winner only
       if ``up(S~_j) >= S_m``.
    4. The row is settled when ``up`` of the ``(L + 1)``-th approximate score and of the
       best group left out are both below ``S_m``; the other candidates that may reach it are scored
       exactly too, and all are ranked by (distance, index), as a stable sort of exact
       distances would.

    Rows that step 4 cannot settle are retried with the 256 best approximate scores of the
    whole row, then by float64 brute force. The result is the exact (float64) ranking of
    the float32 inputs, ties to the lower index; the float32 backends agree with it except
    where their own rounding decides between two nearly equidistant centroids.
    """
    n, d = x.shape
    k = codebook.shape[0]
    g, lc = _bf16_group(k), _BF16_CANDIDATES
    n_groups = -(-k // g)
    kp = n_groups * g
    prep = _bf16_prepared(codebook)
    c_aug_t, half_sq, coef_a, e_const = prep.c_aug_t, prep.half_sq, prep.coef_a, prep.e_const

    def exact_scores(x64: Tensor, words: Tensor) -> Tensor:
        # one formula for every exact score (equal centroids get equal scores, bit for bit)
        return (x64 * codebook.index_select(0, words).to(torch.float64)).sum(dim=1) - half_sq[words]

    def settle(x64: Tensor, vals: Tensor, words: Tensor, beyond: Tensor) -> tuple[Tensor, Tensor]:
        # vals/words: the best approximate scores of each row, decreasing, one more than
        # the candidates; beyond: a bound on the approximate score of every other centroid
        lp = vals.shape[1] - 1
        vals = vals.to(torch.float64)
        words = words[:, :lp]
        exact = torch.full((vals.shape[0], lp), -math.inf, dtype=torch.float64)
        exact[:, :m] = exact_scores(x64.repeat_interleave(m, dim=0), words[:, :m].flatten()).view(-1, m)
        s_m = exact[:, :m].min(dim=1).values  # the worst of m real words: <= the true m-th best
        e0 = (coef_a * x64.norm(dim=1) + e_const).unsqueeze(1)

        def upper(v: Tensor) -> Tensor:  # the largest exact score an approximate v allows
            return v + _BF16_U_OUT * v.abs() + e0

        beyond = beyond.to(torch.float64).unsqueeze(1)
        ok = (upper(vals[:, lp : lp + 1]) < s_m.unsqueeze(1)).squeeze(1) & (upper(beyond) < s_m.unsqueeze(1)).squeeze(1)
        ok &= torch.isfinite(vals).all(dim=1) & torch.isfinite(s_m)
        pr, pc = ((upper(vals[:, m:lp]) >= s_m.unsqueeze(1)) & ok.unsqueeze(1)).nonzero(as_tuple=True)
        pc = pc + m
        pw = words[pr, pc]
        exact[pr, pc] = exact_scores(x64.index_select(0, pr), pw)
        by_word = words.sort(dim=1)  # rank by (exact score desc, word asc)
        order = exact.gather(1, by_word.indices).sort(dim=1, descending=True, stable=True).indices
        return by_word.values.gather(1, order[:, :m]), ok

    if chunk_size is None:  # 256..1024 rows, about 64 MB of scores: faster than larger chunks
        chunk_size = min(1024, max(256, (SEARCH_BYTES // 2) // (2 * kp)))
    chunk_size = min(chunk_size, n)
    out = torch.empty((n, m), dtype=torch.int64)
    buf = _bf16_workspace(chunk_size * kp).view(-1)[: chunk_size * kp].view(chunk_size, kp)
    x_aug = torch.ones((chunk_size, d + 2), dtype=torch.bfloat16)
    left = []
    for start in range(0, n, chunk_size):
        xb = x[start : start + chunk_size]
        r = xb.shape[0]
        x_aug[:r, :d] = xb
        s = torch.matmul(x_aug[:r], c_aug_t, out=buf[:r])
        gvals, gidx = _group_max(s.view(r, n_groups, g)).topk(lc + 1, dim=1)
        rows = (torch.arange(r).unsqueeze(1) * n_groups + gidx[:, :lc]).flatten()
        cand = s.view(r * n_groups, g).index_select(0, rows).view(r, lc * g)
        vals, pos = cand.topk(lc + 1, dim=1)
        words = gidx.gather(1, pos // g) * g + pos % g
        x64 = xb.to(torch.float64)
        got, ok = settle(x64, vals, words, gvals[:, lc])
        out[start : start + r] = got
        bad = torch.nonzero(~ok).flatten()
        if bad.numel():  # second pass over the whole rows of this chunk
            vals2, words2 = s[bad].topk(min(_BF16_SECOND, k - 1) + 1, dim=1)
            got2, ok2 = settle(x64[bad], vals2, words2, vals2[:, -1])
            out[start + bad[ok2]] = got2[ok2]
            left.append(start + bad[~ok2])
    left_rows = torch.cat(left) if left else torch.empty(0, dtype=torch.int64)
    if left_rows.numel():
        out[left_rows] = _nearest_words_exact64(x[left_rows], codebook.to(torch.float64), half_sq, m)
    return out


def _nearest_words_exact64(x: Tensor, c64: Tensor, half_sq: Tensor, m: int) -> Tensor:
    """Float64 brute force: the ``m`` largest ``x.c - |c|^2/2``, ties to the lower index."""
    k = c64.shape[0]
    out = torch.empty((x.shape[0], m), dtype=torch.int64)
    chunk = max(1, SEARCH_BYTES // (8 * k))
    ct = c64.t().contiguous()
    for start in range(0, x.shape[0], chunk):
        xb = x[start : start + chunk].to(torch.float64)
        dist = torch.addmm(2 * half_sq.unsqueeze(0), xb, ct, beta=1.0, alpha=-2.0)
        dist = torch.nan_to_num(dist, nan=math.inf)
        out[start : start + xb.shape[0]] = smallest_stable(dist, m)
    return out


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
