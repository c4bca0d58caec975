"""Exact k-nearest-neighbour search on global descriptors.

Similarity is the dot product, i.e. the cosine for L2-normalised descriptors (as
:class:`lit.metric.GlobalModel` produces); neighbours are sorted by decreasing similarity.

**Ties.** Results are *stable*: among equal similarities the lower database index comes
first, both in the order of the returned list and in the choice of which items make the
top ``k`` when a tie straddles the ``k``-th place: exactly
``argsort(-similarity, kind="stable")[:k]`` of each row of similarities as computed. (Float32
products on another device, or with another chunk size, may round differently in the last
bit, which can reorder similarities that are equal only up to rounding; exactly
representable ones, such as small-integer vectors, give identical results everywhere.)

**Self-exclusion.** When the database *is* the query set (``database is None``, or the same
object as ``queries``) and ``exclude_self`` is true, query ``i`` never gets database item
``i`` (by index: exact duplicates of it at other indices stay). This is the Stanford
Online Products protocol: every test image queries all the others.

Backends: ``"torch"`` (chunks of queries against the whole database, on the GPU when
available) and ``"faiss"`` (``faiss.IndexFlatIP``, exact search, when the optional
``faiss-cpu`` / ``faiss-gpu`` package is installed; not a dependency of lit). faiss computes
the similarities with its own BLAS calls, so they may differ from torch's in the last bit;
rows where faiss's list is ambiguous under the tie rule (a tie at the ``k``-th place, or a
self-match faiss did not return) are recomputed with the torch backend.

:class:`ExactKNN` is the same search as a pytorch-metric-learning ``knn_func``, the form
``AccuracyCalculator`` takes (:mod:`lit.metric.accuracy` computes Recall@k with it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._checks import check_choice, check_int, check_matrix
from .._device import resolve_device
from ..errors import UsageError, missing_dependency
from .options import BACKENDS

_CHUNK_ELEMENTS = 1 << 25  # default chunk: about 32M similarities (128 MB float32)


class KNNResult(NamedTuple):
    """Nearest neighbours of each query, most similar first.

    Shape:
        - indices: :math:`(Q, k)` int64 database indices.
        - similarities: :math:`(Q, k)` float32.
    """

    indices: Tensor
    similarities: Tensor


def faiss_available() -> bool:
    """Whether ``import faiss`` works."""
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def topk_stable(similarities: Tensor, k: int) -> KNNResult:
    """Top ``k`` of each row by decreasing value, ties broken by lower column index first.

    Equivalent to ``argsort(-similarities, stable)[:, :k]`` at about the cost of one
    ``topk(k + 1)``: the ``(k+1)``-th value tells whether a tie straddles the ``k``-th
    place, and only such rows (exact path: all greater values plus the lowest-index equal
    ones) and rows with equal values inside their top ``k`` (each run of equal values
    re-sorted by index) cost more.

    Shape:
        - similarities: :math:`(Q, N)` without NaN, ``k <= N``.
        - Output: :math:`(Q, k)` indices and values.
    """
    n = similarities.shape[1]
    vals, idx = similarities.topk(min(k + 1, n), dim=1, largest=True, sorted=True)
    if vals.shape[1] > k:
        straddle = vals[:, k] == vals[:, k - 1]
        vals, idx = vals[:, :k], idx[:, :k]
        if bool(straddle.any()):
            rows = straddle.nonzero().squeeze(1)
            s, t = similarities[rows], vals[rows, k - 1:]
            greater, equal = s > t, s == t
            need = k - greater.sum(1, keepdim=True)
            take = greater | (equal & (equal.cumsum(1, dtype=torch.int32) <= need))
            chosen = take.nonzero()[:, 1].view(len(rows), k)  # ascending column per row
            r_vals, order = s.gather(1, chosen).sort(dim=1, descending=True, stable=True)
            idx[rows], vals[rows] = chosen.gather(1, order), r_vals
    # rows with equal values inside their top k: sort each run of equal values by index
    tied = (vals[:, 1:] == vals[:, :-1]).any(1)
    if bool(tied.any()):
        rows = tied.nonzero().squeeze(1)
        r_vals, r_idx = vals[rows], idx[rows]
        new_run = torch.ones_like(r_idx)
        new_run[:, 1:] = (r_vals[:, 1:] != r_vals[:, :-1]).long()
        key = new_run.cumsum(1) * n + r_idx  # run number first, then index
        idx[rows] = r_idx.gather(1, key.argsort(dim=1))
    return KNNResult(idx, vals)


def _torch_knn(queries: Tensor, database: Tensor, k: int, self_index: Tensor | None, chunk_size: int, device: torch.device) -> KNNResult:
    db = database.to(device, torch.float32)
    out_idx, out_sim = [], []
    for start in range(0, queries.shape[0], chunk_size):
        q = queries[start:start + chunk_size].to(device, torch.float32)
        sims = q @ db.T
        if self_index is not None:
            own = self_index[start:start + chunk_size].to(device)
            rows = (own >= 0).nonzero().squeeze(1)
            sims[rows, own[rows]] = float("-inf")
        res = topk_stable(sims, k)
        out_idx.append(res.indices.cpu())
        out_sim.append(res.similarities.cpu())
    return KNNResult(torch.cat(out_idx), torch.cat(out_sim))


def _faiss_knn(queries: Tensor, database: Tensor, k: int, self_index: Tensor | None, chunk_size: int, device: torch.device) -> KNNResult:
    import faiss

    n = database.shape[0]
    index = faiss.IndexFlatIP(database.shape[1])
    index.add(np.ascontiguousarray(database.cpu().numpy(), dtype=np.float32))
    extra = 1 if self_index is not None else 0
    kk = min(k + extra + 1, n)  # one more than needed, to see ties at the k-th place
    q = np.ascontiguousarray(queries.cpu().numpy(), dtype=np.float32)
    sims, idx = index.search(q, kk)
    sims, idx = torch.from_numpy(sims), torch.from_numpy(idx).long()
    ambiguous = (idx < 0).any(1)
    if self_index is not None:
        own = idx == self_index[:, None]
        found = own.any(1)
        ambiguous |= ~found
        # drop the self-match (or, where faiss did not return it, the last column)
        drop = torch.where(found, own.int().argmax(1), torch.full_like(found, kk - 1, dtype=torch.long))
        keep = torch.ones_like(idx, dtype=torch.bool)
        keep[torch.arange(len(idx)), drop] = False
        idx, sims = idx[keep].view(len(idx), kk - 1), sims[keep].view(len(idx), kk - 1)
    if idx.shape[1] > k:
        ambiguous |= sims[:, k] == sims[:, k - 1]
    idx, perm = idx[:, :k].sort(dim=1)  # ties: lower database index first
    sims, order = sims[:, :k].gather(1, perm).sort(dim=1, descending=True, stable=True)
    idx = idx.gather(1, order)
    if bool(ambiguous.any()):
        rows = ambiguous.nonzero().squeeze(1)
        fix = _torch_knn(queries[rows], database, k, None if self_index is None else self_index[rows], chunk_size, device)
        idx[rows], sims[rows] = fix.indices, fix.similarities
    return KNNResult(idx, sims.float())


def knn(
    queries: Tensor | np.ndarray,
    database: Tensor | np.ndarray | None,
    k: int,
    *,
    exclude_self: bool = True,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    backend: str = "torch",
) -> KNNResult:
    """Exact ``k`` nearest neighbours by dot product (cosine on unit vectors).

    Args:
        queries: query descriptors (L2-normalise them for cosine similarity).
        database: database descriptors; ``None`` (or ``queries`` itself) for all-vs-all.
        k: neighbours per query; at most the database size (minus one with self-exclusion).
        exclude_self: in all-vs-all mode, never return a query as its own neighbour.
        chunk_size: queries per matrix product (default: about 32M similarities per chunk).
        device: ``"auto"`` (default, CUDA when available), ``"cpu"``, ``"cuda[:N]"``...
            (torch backend; :func:`lit._device.resolve_device`).
        backend: ``"torch"``, ``"faiss"`` (needs the optional faiss package) or ``"auto"``
            (faiss when importable and the device is the CPU, else torch).

    Returns:
        :class:`KNNResult` on the CPU, most similar first, ties lower index first.

    Raises:
        UsageError: bad shapes, non-finite values, ``k`` out of range, unknown backend.
        TypeError: descriptors that are not floating-point arrays.
        MissingDependencyError: ``backend="faiss"`` without faiss.

    Shape:
        - queries: :math:`(Q, D)`; database: :math:`(N, D)`.
        - Output: :math:`(Q, k)` indices and similarities.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.8, 0.6]])
        >>> knn(x, None, 1).indices.tolist()
        [[2], [2], [1]]
    """
    same = database is None or database is queries
    q = check_matrix(queries, "queries")
    db = q if same else check_matrix(database, "database", dim=q.shape[1], dim_of="the queries")
    return _search(q, db, k, self_excluded=bool(exclude_self and same), chunk_size=chunk_size, device=device,
                   backend=backend)


def _search(q: Tensor, db: Tensor, k: int, *, self_excluded: bool, chunk_size: int | None,
            device: str | torch.device | None, backend: str) -> KNNResult:
    """:func:`knn` on checked matrices; with ``self_excluded``, query ``i`` is database item
    ``i`` (the first ``Q`` database rows are the queries) and never its own neighbour."""
    available = db.shape[0] - int(self_excluded)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= available:
        raise UsageError(
            f"k must be an integer in [1, {available}] (the database size"
            f"{' minus the query itself' if self_excluded else ''}), got {k!r}"
        )
    check_choice(backend, "backend", BACKENDS)
    dev = resolve_device(device)
    if backend == "auto":
        backend = "faiss" if dev.type == "cpu" and faiss_available() else "torch"
    if chunk_size is None:
        chunk_size = max(1, _CHUNK_ELEMENTS // max(1, db.shape[0]))
    chunk_size = check_int(chunk_size, "chunk_size", minimum=1)
    self_index = torch.arange(q.shape[0]) if self_excluded else None
    if q.shape[0] == 0:
        return KNNResult(torch.empty(0, k, dtype=torch.int64), torch.empty(0, k))
    if backend == "faiss":
        if not faiss_available():
            raise missing_dependency("the faiss kNN backend", "faiss-cpu")
        return _faiss_knn(q, db, int(k), self_index, chunk_size, dev)
    return _torch_knn(q, db, int(k), self_index, chunk_size, dev)


class ExactKNN:
    """lit's exact kNN as a pytorch-metric-learning ``knn_func`` (what ``AccuracyCalculator``
    and ``InferenceModel`` call).

    Called as ``knn_func(query, k, reference, ref_includes_query)``. With
    ``ref_includes_query`` the first ``len(query)`` references are the queries themselves
    (PML's convention) and query ``i`` never gets reference ``i``, by index, as in
    :func:`knn`'s all-vs-all mode. Unlike PML's ``FaissKNN`` (L2 distances, ties in faiss's
    order), the neighbours are those of :func:`knn`: by dot product, ties lower index first.

    Args:
        device: where the similarities are computed (see :func:`knn`).
        backend: ``"torch"``, ``"faiss"`` or ``"auto"`` (see :func:`knn`).
        chunk_size: queries per matrix product (see :func:`knn`).

    Returns:
        ``(similarities, indices)``, each :math:`(Q, k)`, on the device of ``query``, most
        similar first.
    """

    def __init__(self, *, device: str | torch.device | None = None, backend: str = "torch",
                 chunk_size: int | None = None) -> None:
        self.device = resolve_device(device)
        self.backend = check_choice(backend, "backend", BACKENDS)
        self.chunk_size = chunk_size

    def __call__(self, query: Tensor, k: int, reference: Tensor | None = None,
                 ref_includes_query: bool = False) -> tuple[Tensor, Tensor]:
        q = check_matrix(query, "query")
        db = q if reference is None else check_matrix(reference, "reference", dim=q.shape[1], dim_of="the queries")
        self_excluded = bool(ref_includes_query) or reference is None
        res = _search(q, db, int(k), self_excluded=self_excluded, chunk_size=self.chunk_size, device=self.device,
                      backend=self.backend)
        return res.similarities.to(query.device), res.indices.to(query.device)


def clip_ks(ks: Sequence[int], n: int) -> list[int]:
    """``ks`` capped at ``n`` (the number of candidates), sorted, duplicates removed.

    Example:
        >>> clip_ks((1, 10, 100, 1000), 50)
        [1, 10, 50]
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise UsageError(f"ks must be positive integers, got {tuple(ks)}")
    if n < 1:
        raise UsageError("need at least one database item")
    return sorted({min(k, n) for k in ks})


__all__ = ["ExactKNN", "KNNResult", "clip_ks", "faiss_available", "knn", "topk_stable"]
