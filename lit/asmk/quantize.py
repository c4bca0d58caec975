"""Nearest visual words: the quantisation kernels of ASMK and what they keep between calls.

:class:`Quantizer` searches one codebook (an :class:`lit.asmk.ASMK` index owns one) and
holds everything that is worth keeping from one call to the next: the bfloat16 form of
the codebook with the constants of its error bound, the transposed codebook and the
squared norms of the float32 kernel, and a per-thread workspace for the approximate scores
of the bfloat16 path. :func:`nearest_words` is the same search as a plain function (a
:class:`Quantizer` made for the call, so nothing is kept). No state lives in this module:
the one process-wide fact it looks up, whether the CPU multiplies bfloat16 natively, is
read once (:func:`native_bf16_cpu`) and never changes.

Three kernels, one result contract (the ``m`` nearest centroids by L2 distance, nearest
first, ties to the lower index):

- ``"bf16"`` (CPU): a bfloat16 GEMM with a proven error bound picks candidates, which are
  re-ranked exactly in float64, so the result is the exact ranking (:func:`_bf16_kernel`);
- ``"faiss"``: ``faiss.knn`` (the machine's float32 GEMM speed on CPU);
- ``"torch"``: a blocked float32 GEMM on any device.

The float32 kernels search one word more than asked; rows where two of those distances are
closer than the float32 error bound are searched again in float64
(:func:`_settle_float32`), so every kernel gives the exact ranking, and the words of a
descriptor never depend on the other descriptors searched with it (an index grown by
``lit add`` assigns as one built from scratch).
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError, missing_dependency
from .functional import smallest_stable

try:  # the fast CPU path of quantisation and k-means; lit works without it
    import faiss as _faiss  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _faiss = None

__all__ = ["BACKENDS", "SEARCH_BYTES", "Quantizer", "auto_backend", "faiss_available", "native_bf16_cpu",
           "nearest_words"]

#: Memory target (bytes) of one chunk of the nearest-centroid search (distance matrix).
SEARCH_BYTES = 1 << 27
#: Backends of :func:`nearest_words`.
BACKENDS = ("auto", "faiss", "torch", "bf16")

_BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)
_BF16_U_OUT = _BF16_U / (1 - _BF16_U)  # |fl(a) - a| <= this x |fl(a)|: output rounding
_BF16_GROUP = 128  # centroids per group of the candidate selection
_BF16_CANDIDATES = 16  # first-pass candidates per descriptor (at least 3 m)
_BF16_SECOND = 256  # second-pass candidates, for the descriptors the first cannot settle
_BF16_MAX_ABS = 1e8  # larger inputs go to the float32 path (the bound must not overflow)


def faiss_available() -> bool:
    """Whether ``faiss`` can be imported (quantisation and k-means then use it on CPU)."""
    return _faiss is not None


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (x86 AVX-512 BF16 or AMX).

    There a bfloat16 GEMM runs at two to four times the float32 speed, and
    :func:`nearest_words` uses it on CPU (``backend="auto"``), with an exact re-check.
    A fact of the machine: read once from ``/proc/cpuinfo``.
    """
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        flags = ""
    has = bool(set(flags.split()) & {"avx512_bf16", "amx_bf16"})
    return has and torch.backends.mkldnn.is_available()


def auto_backend(device: torch.device | str, k: int, m: int, *, native_bf16: bool | None = None) -> str:
    """The backend :func:`nearest_words` uses with ``backend="auto"``.

    ``"bf16"`` on CPUs with native bfloat16 for ``k >= 1024`` words and ``m <= 5`` (inputs
    beyond +-1e8 then go to ``"faiss"``), else ``"faiss"`` on CPU when faiss is importable,
    else ``"torch"``.

    Args:
        device: device of the descriptors.
        k: codebook size.
        m: words per descriptor.
        native_bf16: whether the CPU multiplies bfloat16 natively; ``None`` asks
            :func:`native_bf16_cpu`.
    """
    if torch.device(device).type != "cpu":
        return "torch"
    native = native_bf16_cpu() if native_bf16 is None else native_bf16
    if native and k >= 1024 and m <= _BF16_CANDIDATES // 3:
        return "bf16"
    return "faiss" if _faiss is not None else "torch"


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

    The torch kernel keeps at most about :data:`SEARCH_BYTES` of distances at a time;
    faiss blocks internally (4096 descriptors x 1024 centroids). The float32 backends
    compute the same formula with different summation orders (which depend on the other
    descriptors of the call), so they search ``m + 1`` words and search the rows whose
    distances are closer than the float32 error bound again in float64: every backend
    gives the exact ranking of the float32 inputs, whatever else is searched with them.

    This function prepares the codebook on every call; an index searching the same
    codebook again and again keeps a :class:`Quantizer` instead (same results).

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
    return Quantizer(codebook)(descriptors, m, chunk_size=chunk_size, backend=backend)


# ----------------------------------------------------------------------------- the quantizer


@dataclass(frozen=True)
class _Bf16Codebook:
    """A float32 CPU codebook prepared for the bfloat16 kernel, with its error-bound constants."""

    c32: Tensor  # (K, D) float32 CPU: the centroids the exact re-check reads
    c_aug_t: Tensor  # (D + 2, Kp) bfloat16: centroids, -|c|^2/2 as hi + lo, padding
    half_sq: Tensor  # (K,) float64 |c|^2 / 2
    coef_a: float  # E0 = coef_a |x| + e_const (input rounding, norm split, float32 sums)
    e_const: float
    max_abs: float  # largest |coordinate|


@dataclass(frozen=True)
class _Float32Codebook:
    """The transposed codebook and squared norms of the float32 GEMM kernel."""

    c_t: Tensor  # (D, K)
    c_sq: Tensor  # (K,)


class Quantizer:
    """Nearest-word search against one codebook, keeping its prepared forms between calls.

    Calling it is :func:`nearest_words` with this codebook (same arguments, same results).
    What it keeps, each made on first use:

    - the bfloat16 codebook and its error-bound constants (``"bf16"``);
    - the transposed codebook and the squared norms (``"torch"``);
    - a bfloat16 workspace for the approximate scores of a chunk (about 64 MB), one per
      thread: a fresh buffer of that size comes from new pages on every call (``mmap``),
      and their first touch costs about as much as the GEMM that fills them (a query is
      one call). Threads searching the same index at once each get their own.

    The prepared forms are remade when the codebook tensor is changed in place (its
    version counter moves).

    Args:
        codebook: centroids (any float dtype, any device).
        native_bf16: whether ``backend="auto"`` may pick the bfloat16 kernel; ``None``
            asks :func:`native_bf16_cpu`.

    Shape:
        - codebook: :math:`(K, D)`.
    """

    def __init__(self, codebook: Tensor, *, native_bf16: bool | None = None) -> None:
        self.codebook = codebook
        self.native_bf16 = native_bf16_cpu() if native_bf16 is None else bool(native_bf16)
        self._bf16: tuple[tuple, _Bf16Codebook] | None = None
        self._float32: tuple[tuple, _Float32Codebook] | None = None
        self._local = threading.local()

    @property
    def num_words(self) -> int:
        """Codebook size K."""
        return int(self.codebook.shape[0])

    def __getstate__(self) -> dict:
        # pickling and copying keep the codebook and the choice; the caches are remade on use
        return {"codebook": self.codebook, "native_bf16": self.native_bf16}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["codebook"], native_bf16=state["native_bf16"])

    def auto_backend(self, device: torch.device | str, m: int) -> str:
        """The backend ``backend="auto"`` picks for ``m`` words per descriptor on ``device``."""
        return auto_backend(device, self.num_words, m, native_bf16=self.native_bf16)

    def __call__(self, descriptors: Tensor, m: int = 1, *, chunk_size: int | None = None,
                 backend: str = "auto") -> Tensor:
        """The ``m`` nearest words of every descriptor (see :func:`nearest_words`).

        Shape:
            - descriptors: :math:`(N, D)`.
            - output: :math:`(N, m)` int64, on the device of ``descriptors``.
        """
        codebook = self.codebook
        n, k = descriptors.shape[0], codebook.shape[0]
        if not 1 <= m <= k:
            raise UsageError(f"m must be in 1..{k} (the codebook size), got {m}")
        if backend not in BACKENDS:
            raise UsageError(f"backend must be 'auto', 'faiss', 'torch' or 'bf16', got {backend!r}")
        if backend == "faiss" and _faiss is None:
            raise missing_dependency("backend='faiss'", "faiss-cpu")
        if backend == "bf16" and descriptors.device.type != "cpu":
            raise UsageError("backend='bf16' is the CPU path; on CUDA use 'torch' or 'auto'")
        if n == 0:
            return torch.empty((0, m), dtype=torch.int64, device=descriptors.device)
        auto = backend == "auto"
        if auto:
            backend = self.auto_backend(descriptors.device, m)
        if backend == "bf16":
            x32 = descriptors.detach().to(torch.float32)
            prep = self._bf16_applies(x32, m)
            if prep is not None:
                return _bf16_kernel(x32, prep, int(m), chunk_size, self._workspace)
            backend = "faiss" if auto and _faiss is not None else "torch"
        q = min(int(m) + 1, k)  # one word more: the gap to it says whether float32 could err
        if backend == "faiss":
            idx, dist = _faiss_kernel(descriptors, codebook, q, values=True)  # overflowed rows: settled below
        else:
            f32 = self._float32_form()
            idx, dist = _torch_kernel(descriptors, f32.c_t, f32.c_sq, q, chunk_size, values=True)
        return _settle_float32(descriptors, codebook, idx, dist, int(m))

    # ------------------------------------------------------------------ prepared forms

    def _key(self) -> tuple:
        cb = self.codebook
        return (cb.data_ptr(), tuple(cb.shape), cb._version, cb.dtype, cb.device)

    def _float32_form(self) -> _Float32Codebook:
        key = self._key()
        if self._float32 is None or self._float32[0] != key:
            cb = self.codebook.detach()
            self._float32 = (key, _Float32Codebook(c_t=cb.t().contiguous(), c_sq=(cb * cb).sum(dim=1)))
        return self._float32[1]

    def _bf16_form(self) -> _Bf16Codebook:
        key = self._key()
        if self._bf16 is None or self._bf16[0] != key:
            # the tensor itself when it is float32 on the CPU already
            self._bf16 = (key, _prepare_bf16(self.codebook.detach().to(device="cpu", dtype=torch.float32)))
        return self._bf16[1]

    def _bf16_applies(self, x: Tensor, m: int) -> _Bf16Codebook | None:
        """The prepared codebook when the bfloat16 search can run here with a sound bound."""
        if _bf16_group(self.num_words) < 2 or m > _BF16_CANDIDATES // 3:
            return None
        prep = self._bf16_form()
        big = max(float(x.abs().max()), prep.max_abs)
        return prep if math.isfinite(big) and big <= _BF16_MAX_ABS else None

    def _workspace(self, numel: int) -> Tensor:
        """A bfloat16 buffer of at least ``numel`` elements, kept per thread between calls."""
        buf = getattr(self._local, "buf", None)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=torch.bfloat16)
            self._local.buf = buf
        return buf


# ----------------------------------------------------------------------------- float32 kernels


def _torch_kernel(descriptors: Tensor, c_t: Tensor, c_sq: Tensor, m: int, chunk_size: int | None,
                  values: bool = False):
    """Blocked float32 GEMM search: ``||c||^2 - 2 x.c`` per chunk, ties to the lower index
    (``values``: also those distances of the words, ``(idx, dist)``)."""
    n, k = descriptors.shape[0], c_t.shape[1]
    out = torch.empty((n, m), dtype=torch.int64, device=descriptors.device)
    out_dist = torch.empty((n, m), dtype=torch.float32, device=descriptors.device) if values else None
    if chunk_size is None:
        chunk_size = max(1, SEARCH_BYTES // (4 * k))
    for start in range(0, n, chunk_size):
        x = descriptors[start : start + chunk_size]
        dist = torch.addmm(c_sq.unsqueeze(0), x, c_t, beta=1.0, alpha=-2.0)
        if m == 1:  # min keeps the first (lowest) index of equal values
            best = dist.min(dim=1).indices.unsqueeze(1)
        else:
            best = smallest_stable(dist, m)
        out[start : start + x.shape[0]] = best
        if values:
            out_dist[start : start + x.shape[0]] = torch.gather(dist, 1, best)
    return (out, out_dist) if values else out


def _faiss_kernel(descriptors: Tensor, codebook: Tensor, m: int, values: bool = False):
    """``faiss.knn`` on the CPU; rows whose distances overflowed hold -1 (``values``: also
    the distances, ``(idx, dist)``)."""
    x = np.ascontiguousarray(descriptors.detach().cpu().numpy(), dtype=np.float32)
    c = np.ascontiguousarray(codebook.detach().cpu().numpy(), dtype=np.float32)
    # faiss keeps the lower index on equal distances and sorts by (distance, index)
    dist, idx = _faiss.knn(x, c, int(m))
    return (torch.from_numpy(idx), torch.from_numpy(dist)) if values else torch.from_numpy(idx)


#: Twice the error of a float32 distance ``|x|^2 + |c|^2 - 2 x.c`` (or ``|c|^2 - 2 x.c``) is
#: at most this x (D + 2) (|x| + max|c|)^2 (sums of D + 2 terms, with a margin of 2).
_F32_SLACK = 4 * 2.0**-24


def _settle_float32(descriptors: Tensor, codebook: Tensor, idx: Tensor, dist: Tensor, m: int) -> Tensor:
    """The exact ranking from a float32 search of ``m + 1`` words per row: rows where two of
    those distances are closer than the float32 error bound (a near tie the GEMM's
    summation order may decide, and which the batch a descriptor is searched with may
    change) are searched again by float64 brute force; the others are exact already.

    So the words of a descriptor do not depend on the other descriptors of its call (an
    index grown by additions assigns as one built at once), at the cost of the rows near
    a tie (a few percent of real descriptors; none of well-separated ones).

    Shape:
        - idx, dist: :math:`(N, q)`, ``q = min(m + 1, K)``; output: :math:`(N, m)` int64.
    """
    x = descriptors.detach().to(torch.float32)
    c = codebook.detach().to(x.device, torch.float32)
    idx, dist = idx.to(x.device), dist.to(x.device, torch.float64)
    tol = _F32_SLACK * (x.shape[1] + 2) * (x.norm(dim=1).to(torch.float64) + float(c.norm(dim=1).max())) ** 2
    near = ((dist[:, 1:] - dist[:, :-1]) <= tol.unsqueeze(1)).any(dim=1) if dist.shape[1] > 1 else \
        torch.zeros(len(x), dtype=torch.bool, device=x.device)
    near |= (idx < 0).any(dim=1) | ~torch.isfinite(dist).all(dim=1)  # overflowed rows too
    out = idx[:, :m].clone()
    rows = near.nonzero().flatten()
    if rows.numel():  # on the CPU: few rows
        c64 = c.cpu().to(torch.float64)
        out[rows] = _exact64_kernel(x[rows].cpu(), c64, (c64 * c64).sum(dim=1) / 2, m).to(out.device)
    return out.to(descriptors.device)


# ----------------------------------------------------------------------------- bfloat16 kernel


def _bf16_group(k: int) -> int:
    """Centroids per group: at most 128, and at least ``2 (L + 1)`` groups."""
    return min(_BF16_GROUP, k // (2 * (_BF16_CANDIDATES + 1)))


def _prepare_bf16(codebook: Tensor) -> _Bf16Codebook:
    """The bfloat16 form of a float32 CPU codebook and its error-bound constants."""
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
    return _Bf16Codebook(
        c32=codebook,
        c_aug_t=c_aug.t().contiguous(),
        half_sq=half_sq,
        coef_a=(2 * u + u * u + 2 * gamma * (1 + 3 * u)) * float(c64.norm(dim=1).max()),
        # + 1e-20: subnormal inputs and products may be flushed to zero (at most 130 x 1.2e-38 x 1e8)
        e_const=(2 * u * u + 2 * gamma * (1 + 3 * u)) * float(half_sq.max()) + 1e-20,
        max_abs=float(codebook.abs().max()),
    )


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


def _bf16_kernel(x: Tensor, prep: _Bf16Codebook, m: int, chunk_size: int | None, workspace) -> Tensor:
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
    the float32 inputs, ties to the lower index, as the float32 backends after their float64
    re-check of near ties (:func:`_settle_float32`).

    Args:
        x: float32 CPU descriptors.
        prep: the prepared codebook (:func:`_prepare_bf16`).
        m: words per descriptor.
        chunk_size: descriptors per GEMM; ``None``: 256..1024, about 64 MB of scores.
        workspace: ``workspace(numel)`` gives a bfloat16 buffer of at least ``numel``
            elements (:meth:`Quantizer._workspace`).
    """
    codebook = prep.c32
    n, d = x.shape
    k = codebook.shape[0]
    g, lc = _bf16_group(k), _BF16_CANDIDATES
    n_groups = -(-k // g)
    kp = n_groups * g
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
    buf = workspace(chunk_size * kp).view(-1)[: chunk_size * kp].view(chunk_size, kp)
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
        out[left_rows] = _exact64_kernel(x[left_rows], codebook.to(torch.float64), half_sq, m)
    return out


def _exact64_kernel(x: Tensor, c64: Tensor, half_sq: Tensor, m: int) -> Tensor:
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
