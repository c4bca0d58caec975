"""k-means codebooks: reproducible for a seed, and the empty index ASMK.train returns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit.asmk import ASMK, kmeans


def test_kmeans_is_reproducible_for_a_seed():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 5)) * 5
    x = (centres[rng.integers(0, 6, 600)] + rng.normal(size=(600, 5))).astype(np.float32)
    a = kmeans(x, 6, iterations=15, seed=3, backend="torch")
    b = kmeans(torch.from_numpy(x), 6, iterations=15, seed=3, backend="torch")
    c = kmeans(x, 6, iterations=15, seed=4, backend="torch")
    assert a.shape == (6, 5) and torch.equal(a, b) and not torch.equal(a, c)
    # the centroids found are the generating centres (up to order)
    d = torch.cdist(a.double(), torch.from_numpy(centres))
    assert float(d.min(dim=0).values.max()) < 0.5
    index = ASMK.train(x, size=6, iterations=15, seed=3, backend="torch", binary=False)
    assert torch.equal(index.codebook, a) and not index.params.binary
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x[:5], 6, backend="torch")


def test_kmeans_refuses_bad_input():
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="backend"):
        kmeans(x, 4, backend="sklearn")
    with pytest.raises(TypeError, match="floating-point"):
        kmeans(x.astype(np.int64), 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(np.full_like(x, np.nan), 4)
    with pytest.raises(ValueError, match="iterations"):
        kmeans(x, 4, iterations=-1)
