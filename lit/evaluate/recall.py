"""Recall@k for place-recognition / instance-retrieval style benchmarks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import UsageError

__all__ = ["recall_at_k"]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def recall_at_k(
    neighbours: Any,
    query_labels: Any,
    db_labels: Any,
    ks: Sequence[int] = (1, 10, 100, 1000),
) -> dict[int, float]:
    """Fraction of queries with at least one database item of the same label in the top k.

    Args:
        neighbours: database indices of each query's neighbours, sorted from the most to the
            least similar. ``-1`` marks a missing neighbour (e.g. padding from an
            approximate search) and never counts as a hit.
        query_labels: label of each query (ints, strings, ...).
        db_labels: label of each database item.
        ks: the k values. A k larger than the number of neighbour columns is evaluated on
            all the columns given (a lower bound of the true recall), with a warning.

    Returns:
        ``{k: recall}`` with recalls as fractions in ``[0, 1]``.

    Shape:
        - neighbours: :math:`(Q, K)` integers.
        - query_labels: :math:`(Q,)`; db_labels: :math:`(N,)`.

    Example:
        >>> recall_at_k([[2, 0], [1, 2]], [7, 8], [7, 9, 9], ks=(1, 2))
        {1: 0.0, 2: 0.5}
    """
    nbrs = _to_numpy(neighbours)
    q_lab = _to_numpy(query_labels).reshape(-1)
    db_lab = _to_numpy(db_labels).reshape(-1)
    if nbrs.ndim != 2:
        raise UsageError(f"neighbours must be a (queries x k) array, got shape {nbrs.shape}")
    if nbrs.size and not np.issubdtype(nbrs.dtype, np.integer):
        raise TypeError(f"neighbours must hold integer database indices, got dtype {nbrs.dtype}")
    n_q, n_cols = nbrs.shape
    if q_lab.shape[0] != n_q:
        raise UsageError(f"{q_lab.shape[0]} query labels for {n_q} rows of neighbours")
    if nbrs.size and (nbrs.min() < -1 or nbrs.max() >= db_lab.shape[0]):
        raise UsageError(f"neighbour indices must lie in [0, {db_lab.shape[0]}) (or be -1 for none)")
    ks = [int(k) for k in ks]
    if any(k < 1 for k in ks):
        raise UsageError(f"ks must be positive integers, got {tuple(ks)}")
    if n_q == 0:
        raise UsageError("recall_at_k needs at least one query")
    too_large = [k for k in ks if k > n_cols]
    if too_large:
        warnings.warn(
            f"recall@{too_large} asked with only {n_cols} neighbours per query: computed on "
            f"those {n_cols} (a lower bound)", stacklevel=2)
    if n_cols == 0:
        return {k: 0.0 for k in ks}
    valid = nbrs >= 0
    hits = (db_lab[np.where(valid, nbrs, 0)] == q_lab[:, None]) & valid
    # position of the first hit of each query (n_cols when there is none)
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), n_cols)
    return {k: float(np.mean(first < k)) for k in ks}
