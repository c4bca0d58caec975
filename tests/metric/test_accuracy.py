"""Recall@k (PML's AccuracyCalculator with lit's exact kNN) against naive loops, and against
AccuracyCalculator with PML's own faiss search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metric.neighbours import brute_force_neighbours, naive_recall, tied_vectors
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKNN

from lit.metric import RecallAtK, recall_at_ks


def test_recall_at_ks_matches_naive_loop_with_ties():
    x = tied_vectors(80, d=3)
    labels = np.random.default_rng(0).integers(0, 6, 80)
    ref = brute_force_neighbours(x.numpy(), x.numpy(), 79, exclude_self=True)
    got = recall_at_ks(x, labels, ks=(1, 10, 100, 1000))
    assert sorted(got) == [1, 10, 79]  # clipped to the 79 other images
    expected = naive_recall(ref, labels, labels, (1, 10, 79))
    assert got == pytest.approx(expected)


def test_recall_at_ks_with_separate_queries():
    q, db = tied_vectors(30, seed=1), tied_vectors(50, seed=2)
    ql, dl = np.arange(30) % 4, np.arange(50) % 4
    got = recall_at_ks(db, dl, ks=(1, 5), query_embeddings=q, query_labels=ql)
    ref = brute_force_neighbours(q.numpy(), db.numpy(), 5, exclude_self=False)
    assert got == pytest.approx(naive_recall(ref, ql, dl, (1, 5)))


def test_recall_accepts_string_labels():
    x = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1)
    assert recall_at_ks(x, ["a", "a", "b", "c"], ks=(1,)) == {1: 0.5}


def test_recall_is_one_for_separated_clusters():
    centres = torch.eye(4)
    x = F.normalize(centres.repeat_interleave(5, 0) + 0.01 * torch.randn(20, 4), dim=1)
    labels = torch.arange(4).repeat_interleave(5)
    assert recall_at_ks(x, labels, ks=(1, 4)) == {1: 1.0, 4: 1.0}


def sop_like(n=600, classes=150, dim=32, seed=0):
    """Classes of 2-6 noisy copies of a centre (every class has a positive), float data."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(2, 7, (classes,), generator=g)
    labels = torch.arange(classes).repeat_interleave(sizes)[:n]
    centres = torch.randn(classes, dim, generator=g)
    x = F.normalize(centres[labels] + 0.9 * torch.randn(len(labels), dim, generator=g), dim=1)
    return x, labels


def test_recall_from_lit_knn_equals_accuracy_calculator_with_pml_faiss_search():
    x, labels = sop_like()
    ks = (1, 2, 4, 8, 16, 100)
    ours = recall_at_ks(x, labels, ks, device="cpu")
    theirs = recall_at_ks(x, labels, ks, device="cpu", knn_func=FaissKNN())
    assert ours == theirs
    assert 0.05 < ours[1] < 0.95  # neither trivial nor hopeless
    ref = brute_force_neighbours(x.numpy(), x.numpy(), 100, exclude_self=True)
    assert ours == pytest.approx(naive_recall(ref, labels.numpy(), labels.numpy(), ks), abs=1e-12)
    # PML's own Precision@1 on its own search is Recall@1 when every class has a positive
    pml = AccuracyCalculator(include=("precision_at_1",), k=1, device=torch.device("cpu")).get_accuracy(x, labels)
    assert pml["precision_at_1"] == pytest.approx(ours[1], abs=1e-12)


def test_recall_with_separate_queries_equals_pml_faiss_search():
    x, labels = sop_like(seed=1)
    q, ql, db, dl = x[:200], labels[:200], x[200:], labels[200:]
    ours = recall_at_ks(db, dl, (1, 10), query_embeddings=q, query_labels=ql, device="cpu")
    theirs = recall_at_ks(db, dl, (1, 10), query_embeddings=q, query_labels=ql, device="cpu", knn_func=FaissKNN())
    assert ours == theirs


def test_a_query_without_a_positive_counts_as_a_miss():
    # class 2 has one item: AccuracyCalculator's precision_at_1 leaves it out, Recall@k counts it
    x = F.normalize(torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [0.7, 0.7]]), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2])
    calc = RecallAtK((1,), device="cpu", include=("precision_at_1", "recall_at_k"))
    result = calc.get_accuracy(x, labels)
    assert result["recall_at_k"] == {1: 0.8} and result["precision_at_1"] == 1.0
    assert recall_at_ks(x, labels, (1,), device="cpu") == {1: 0.8}


def test_labels_beyond_float32_precision_stay_distinct():
    # AccuracyCalculator compares labels as float32, where 2**24 and 2**24 + 1 are equal;
    # lit hands it class codes, so the nearest neighbour here is (correctly) a miss
    x = F.normalize(torch.tensor([[1.0, 0.0], [0.95, 0.05], [0.0, 1.0], [0.05, 0.95]]), dim=1)
    labels = torch.tensor([2**24, 2**24 + 1, 2**24 + 1, 2**24], dtype=torch.int64)
    assert recall_at_ks(x, labels, (1,), device="cpu") == {1: 0.0}
