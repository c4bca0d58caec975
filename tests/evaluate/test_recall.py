"""lit.evaluate.recall: recall@k against a brute-force count."""

import numpy as np
import pytest

from lit.evaluate import (
    recall_at_k,
)


# --------------------------------------------------------------------------- recall@k
def brute_force_recall(nbrs, qlab, dblab, k):
    hits = 0
    for q in range(len(qlab)):
        if any(n >= 0 and dblab[n] == qlab[q] for n in nbrs[q][:k]):
            hits += 1
    return hits / len(qlab)


def test_recall_at_k_matches_brute_force():
    rng = np.random.default_rng(1)
    n_q, n_db, k_max = 40, 200, 30
    dblab = rng.integers(0, 25, n_db)
    qlab = rng.integers(0, 30, n_q)  # some labels absent from the database
    nbrs = np.stack([rng.permutation(n_db)[:k_max] for _ in range(n_q)])
    nbrs[::7, -5:] = -1  # padding
    ks = (1, 2, 5, 10, 30)
    rec = recall_at_k(nbrs, qlab, dblab, ks=ks)
    assert set(rec) == set(ks)
    for k in ks:
        assert rec[k] == pytest.approx(brute_force_recall(nbrs, qlab, dblab, k))
    assert all(rec[a] <= rec[b] for a, b in zip(ks[:-1], ks[1:], strict=True))


def test_recall_at_k_with_string_labels_and_too_large_k():
    nbrs = np.array([[1, 0], [2, 1]])
    with pytest.warns(UserWarning, match="lower bound"):
        rec = recall_at_k(nbrs, ["a", "b"], ["a", "c", "b"], ks=(1, 2, 100))
    assert rec == {1: 0.5, 2: 1.0, 100: 1.0}
    with pytest.raises(ValueError):
        recall_at_k(nbrs, ["a"], ["a", "c", "b"])
    with pytest.raises(ValueError):
        recall_at_k(np.array([[5]]), [0], [0])
