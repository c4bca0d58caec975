"""Brute-force references for the kNN and Recall@k tests (``from metric.neighbours import ...``)."""

from __future__ import annotations

import numpy as np
import torch


def brute_force_neighbours(queries: np.ndarray, database: np.ndarray, k: int, exclude_self: bool) -> np.ndarray:
    """Full similarity matrix (float64), self set to -inf, stable argsort of each row."""
    sims = queries.astype(np.float64) @ database.astype(np.float64).T
    if exclude_self:
        np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def naive_recall(neighbours: np.ndarray, query_labels, db_labels, ks) -> dict[int, float]:
    out = {}
    for k in ks:
        hits = 0
        for i in range(len(neighbours)):
            hits += any(db_labels[j] == query_labels[i] for j in neighbours[i][:k])
        out[k] = hits / len(neighbours)
    return out


def tied_vectors(n: int, d: int = 3, seed: int = 0) -> torch.Tensor:
    """Small-integer vectors: many exactly equal dot products, all exact in float32."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-1, 2, (n, d), generator=g).float()
