"""Synthetic data of the ASMK tests: small random sets and clustered ones."""

from __future__ import annotations

import numpy as np
import pytest


def random_set(seed=0, k=12, dim=12, n_db=(9, 14, 6, 11, 8), db_image_ids=(0, 1, 3, 4, 6), n_q=(10, 7, 12)):
    """``(codebook, db_x, db_ids, q_x, q_ids)``: Gaussian codebook and descriptors, database
    ids with gaps (2 and 5 never added), unsorted non-contiguous query ids 7, 2, 5."""
    rng = np.random.default_rng(seed)
    codebook = rng.normal(size=(k, dim)).astype(np.float32)
    db_x = rng.normal(size=(sum(n_db), dim)).astype(np.float32) * 1.3
    db_ids = np.repeat(np.array(db_image_ids), n_db)
    q_x = rng.normal(size=(sum(n_q), dim)).astype(np.float32) * 1.3
    q_ids = np.repeat(np.array([7, 2, 5]), n_q)  # unsorted, non-contiguous query ids
    return codebook, db_x, db_ids, q_x, q_ids


def clustered_set(seed=0, k=64, dim=16, images=60, per=25, queries=9):
    """``(codebook, x, ids, qx, qids)``: descriptors near codebook words, ``images`` images of
    ``per`` descriptors, and queries that are noisy halves of database images."""
    rng = np.random.default_rng(seed)
    codebook = rng.normal(size=(k, dim)).astype(np.float32)
    words = rng.integers(0, k, size=images * per)
    x = (codebook[words] + 0.4 * rng.normal(size=(images * per, dim))).astype(np.float32)
    ids = np.repeat(np.arange(images), per)
    src = rng.choice(images, size=queries, replace=False)
    qx = np.concatenate([x[ids == s][: per // 2] + 0.2 * rng.normal(size=(per // 2, dim)) for s in src]).astype(np.float32)
    qids = np.repeat(np.arange(queries), per // 2)
    return codebook, x, ids, qx, qids


@pytest.fixture
def random_data():
    """:func:`random_set` (call it with its keyword arguments)."""
    return random_set


@pytest.fixture
def clustered():
    """:func:`clustered_set` (call it with its keyword arguments)."""
    return clustered_set
