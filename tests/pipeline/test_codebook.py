"""lit.pipeline.codebook: the codebook-size policy, the small-set warning, k-means restarts and determinism."""

import math

import numpy as np
import pytest
import torch

from lit import pipeline
from lit.asmk import ASMK


def test_codebook_size_is_sixteen_square_roots_capped():
    assert pipeline.codebook_size(5120) == round(12 * math.sqrt(5120)) == 859
    assert pipeline.codebook_size(10**9) == 65536
    assert pipeline.codebook_size(30_000_000) == 65536 and pipeline.codebook_size(20_000_000) == 53666
    assert pipeline.codebook_size(100) == 50  # at least two descriptors per word (12 x 10 = 120)
    assert pipeline.codebook_size(10) == 8 and pipeline.codebook_size(3) == 3  # room for multiple assignment
    with pytest.raises(ValueError):
        pipeline.codebook_size(0)


def test_small_set_warning_names_train_features():
    assert "--train-features" in pipeline.small_set_warning(5000, 20)
    assert pipeline.small_set_warning(200_000, 1000) is None


def test_quantisation_error_against_a_loop():
    rng = np.random.default_rng(0)
    x, cb = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(6, 4)).astype(np.float32)
    expected = np.mean([min(((xi - c) ** 2).sum() for c in cb) for xi in x])
    assert pipeline.quantisation_error(torch.from_numpy(x), torch.from_numpy(cb), chunk=7) == pytest.approx(expected, rel=1e-5)


def test_small_sets_keep_the_best_of_several_kmeans_runs():

    assert pipeline.kmeans_restarts(5000) == 4 and pipeline.kmeans_restarts(10**6) == 1
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(400, 8)).astype(np.float32))
    best = pipeline.train_codebook(x, 20, seed=1, restarts=3)
    errs = [pipeline.quantisation_error(x, ASMK.train(x, size=20, seed=3 + r).codebook) for r in range(3)]
    assert pipeline.quantisation_error(x, best) == pytest.approx(min(errs), rel=1e-6)


def test_codebook_is_deterministic_for_a_seed():
    x = torch.from_numpy(np.random.default_rng(3).normal(size=(600, 8)).astype(np.float32))
    a = pipeline.train_codebook(x, 30, seed=2)
    b = pipeline.train_codebook(x, 30, seed=2)
    assert a.shape == (30, 8) and torch.equal(a, b)  # same seed, same codebook (the CLI's --seed)
    assert not torch.equal(a, pipeline.train_codebook(x, 30, seed=3))
