"""Recall@k of global descriptors: pytorch-metric-learning's ``AccuracyCalculator`` with a
Recall@k metric and lit's exact kNN.

Recall@k as the metric-learning literature defines it for Stanford Online Products, CUB and
Cars: the share of queries with at least one item of their own class among their ``k``
nearest neighbours, every item querying all the others (itself excluded), or separate
queries searching a database. ``AccuracyCalculator`` drives the evaluation (labels, the
``knn_func`` call, the metrics); :class:`RecallAtK` adds the metric ``recall_at_k`` (one value
per ``k``) and searches with :class:`lit.metric.ExactKNN` by default, which is faster than
PML's default ``FaissKNN`` wherever torch has a GPU (PML's faiss search runs on the CPU with
``faiss-cpu``) and on the CPU gives the same lists up to ties; ``knn_func`` takes another.

Two details differ from PML's own metrics: ``recall_at_k`` counts every query (a query whose
class has no other item counts as a miss), where PML's ``precision_at_1`` leaves such
"lone" queries out; and labels are compared as class codes (any hashable labels, mapped to
``0..C-1`` first), since ``AccuracyCalculator`` turns labels into float32, which is exact
only up to 2^24.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from torch import Tensor

from .._checks import check_matrix
from .._device import resolve_device
from ..errors import UsageError
from .exact_knn import ExactKNN, clip_ks
from .options import DEFAULT_KS


class RecallAtK(AccuracyCalculator):
    """``AccuracyCalculator`` with the metric ``recall_at_k``: ``{k: recall}`` for each ``k``.

    Args:
        ks: the k values (each at most the number of candidates of the data it is run on).
        knn_func: the neighbour search; default :class:`~lit.metric.ExactKNN` on ``device``
            with ``backend`` and ``chunk_size``.
        device: where ``AccuracyCalculator`` puts embeddings and labels, and where
            :class:`~lit.metric.ExactKNN` searches (default: CUDA when available).
        backend, chunk_size: see :func:`lit.metric.knn`.
        include: the metrics to compute (default ``recall_at_k`` only; PML's
            ``precision_at_1``, ``mean_average_precision``, ... can be added).

    Example:
        >>> calc = RecallAtK((1, 2), device="cpu")
        >>> x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
        >>> calc.get_accuracy(x, torch.tensor([0, 0, 1, 2]))["recall_at_k"]
        {1: 0.5, 2: 0.5}
    """

    def __init__(self, ks: Sequence[int] = DEFAULT_KS, *, knn_func: Any = None, device: str | torch.device | None = None,
                 backend: str = "torch", chunk_size: int | None = None,
                 include: Sequence[str] = ("recall_at_k",)) -> None:
        self.ks = clip_ks(ks, 1 << 62)  # sorted, unique, positive
        dev = resolve_device(device)
        if knn_func is None:
            knn_func = ExactKNN(device=dev, backend=backend, chunk_size=chunk_size)
        super().__init__(include=tuple(include), k=self.ks[-1], device=dev, knn_func=knn_func)

    def requires_knn(self) -> list[str]:
        return [*super().requires_knn(), "recall_at_k"]

    def calculate_recall_at_k(self, knn_labels: Tensor, query_labels: Tensor, **kwargs: Any) -> dict[int, float]:
        """Share of all queries with a same-label item among their first ``k`` neighbours."""
        hits = (knn_labels == query_labels[:, None]).cummax(dim=1).values  # hit within the first j + 1
        return {k: float(hits[:, k - 1].double().mean()) for k in self.ks}


def _labels(labels: Any) -> np.ndarray:
    if isinstance(labels, Tensor):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).reshape(-1)


def recall_at_ks(
    embeddings: Tensor | np.ndarray,
    labels: Tensor | np.ndarray | Sequence[Any],
    ks: Sequence[int] = DEFAULT_KS,
    *,
    query_embeddings: Tensor | np.ndarray | None = None,
    query_labels: Tensor | np.ndarray | Sequence[Any] | None = None,
    chunk_size: int | None = None,
    device: str | torch.device | None = None,
    backend: str = "torch",
    knn_func: Any = None,
) -> dict[int, float]:
    """Recall@k of descriptors: share of queries with a same-label item among their k nearest.

    Without ``query_embeddings`` every item queries all the others (itself excluded), the
    Stanford Online Products / CUB / Cars protocol. Each ``k`` is clipped to the number of
    candidates (:func:`~lit.metric.clip_ks`), so the keys of the result are the ``k``
    actually used. Runs :class:`RecallAtK` (PML's ``AccuracyCalculator``).

    Args:
        embeddings: database descriptors (L2-normalised).
        labels: their labels (integers, strings, ...).
        ks: the k values (default 1, 10, 100, 1000).
        query_embeddings: separate queries (their own label list in ``query_labels``).
        query_labels: labels of ``query_embeddings``.
        chunk_size, device, backend: see :func:`lit.metric.knn`.
        knn_func: another PML ``knn_func`` (e.g. PML's ``FaissKNN()``) instead of lit's.

    Returns:
        ``{k: recall}`` with recalls in ``[0, 1]``.

    Shape:
        - embeddings: :math:`(N, D)`; labels: :math:`(N,)`.
        - query_embeddings: :math:`(Q, D)`; query_labels: :math:`(Q,)`.
    """
    emb = check_matrix(embeddings, "embeddings")
    db_labels = _labels(labels)
    n = emb.shape[0]
    if db_labels.size != n:
        raise UsageError(f"{db_labels.size} labels for {n} embeddings")
    if query_embeddings is None:
        if query_labels is not None:
            raise UsageError("query_labels given without query_embeddings")
        queries, q_labels, candidates = None, None, n - 1
    else:
        if query_labels is None:
            raise UsageError("query_embeddings need query_labels")
        queries = check_matrix(query_embeddings, "query_embeddings", dim=emb.shape[1], dim_of="the embeddings")
        q_labels = _labels(query_labels)
        if q_labels.size != queries.shape[0]:
            raise UsageError(f"{q_labels.size} query labels for {queries.shape[0]} queries")
        candidates = n
    ks = clip_ks(ks, candidates)
    # class codes 0..C-1 shared by queries and database (labels of any hashable kind)
    if q_labels is None:
        _, codes = np.unique(db_labels, return_inverse=True)
        db_codes, q_codes = torch.from_numpy(codes.reshape(-1)), None
    else:
        _, codes = np.unique(np.concatenate([q_labels, db_labels]), return_inverse=True)
        codes = torch.from_numpy(codes.reshape(-1))
        q_codes, db_codes = codes[:len(q_labels)], codes[len(q_labels):]
    calc = RecallAtK(ks, knn_func=knn_func, device=device, backend=backend, chunk_size=chunk_size)
    if queries is None:
        result = calc.get_accuracy(emb, db_codes)
    else:
        result = calc.get_accuracy(queries, q_codes, emb, db_codes, ref_includes_query=False)
    return result["recall_at_k"]


__all__ = ["RecallAtK", "recall_at_ks"]
