"""Exact kNN against a brute-force stable argsort, ties included; its PML knn_func form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metric.neighbours import brute_force_neighbours, tied_vectors

from lit.errors import MissingDependencyError
from lit.metric import ExactKNN, clip_ks, knn, topk_stable


@pytest.mark.parametrize("chunk_size", [1, 7, None])
def test_knn_all_vs_all_matches_brute_force_with_ties(chunk_size):
    x = tied_vectors(60)
    ref = brute_force_neighbours(x.numpy(), x.numpy(), 25, exclude_self=True)
    res = knn(x, None, 25, chunk_size=chunk_size, device="cpu")
    assert np.array_equal(res.indices.numpy(), ref)
    expected_sims = np.take_along_axis(x.numpy() @ x.numpy().T, ref, axis=1)
    assert np.array_equal(res.similarities.numpy(), expected_sims)
    assert not (res.indices == torch.arange(60)[:, None]).any()


@pytest.mark.parametrize("chunk_size", [3, None])
def test_knn_separate_database_matches_brute_force_with_ties(chunk_size):
    q, db = tied_vectors(20, seed=1), tied_vectors(45, seed=2)
    ref = brute_force_neighbours(q.numpy(), db.numpy(), 45, exclude_self=False)
    res = knn(q, db, 45, chunk_size=chunk_size, device="cpu")
    assert np.array_equal(res.indices.numpy(), ref)


def test_knn_database_equal_to_queries_but_another_object_keeps_self():
    x = tied_vectors(30)
    res = knn(x, x.clone(), 1)
    assert np.array_equal(res.indices.numpy(), brute_force_neighbours(x.numpy(), x.numpy(), 1, False))
    same = knn(x, x, 1)  # the same object: all-vs-all, self excluded
    assert not (same.indices[:, 0] == torch.arange(30)).any()


def test_knn_self_exclusion_is_by_index_so_duplicates_stay():
    x = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]), dim=1)
    res = knn(x, None, 1)
    assert res.indices[:, 0].tolist() == [1, 0, 3, 2]
    assert res.similarities[0, 0].item() == pytest.approx(1.0)


def test_knn_random_float_data_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(300, 32, generator=g), dim=1)
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # knn's default device
    res = knn(x, None, 50, chunk_size=300)  # one block: same similarities as the reference
    xd = x.to(dev)  # the reference on the same device: same rounding of the dot products
    sims = xd @ xd.T
    sims.fill_diagonal_(float("-inf"))
    ref = torch.argsort(sims, dim=1, descending=True, stable=True)[:, :50].cpu()
    assert torch.equal(res.indices, ref)


def test_topk_stable_equals_stable_argsort():
    g = torch.Generator().manual_seed(0)
    sims = torch.randint(0, 4, (50, 40), generator=g).float()
    sims[0] = 0.0  # a whole row of ties
    sims[1, :] = -0.0
    for k in (1, 5, 39, 40):
        res = topk_stable(sims, k)
        ref = np.argsort(-sims.numpy(), axis=1, kind="stable")[:, :k]
        assert np.array_equal(res.indices.numpy(), ref)


def test_knn_validates_arguments():
    x = tied_vectors(10)
    with pytest.raises(ValueError, match="k must"):
        knn(x, None, 10)  # only 9 others
    assert knn(x, None, 10, exclude_self=False).indices.shape == (10, 10)
    with pytest.raises(ValueError):
        knn(x, tied_vectors(5, d=4), 2)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        knn(bad, None, 2)
    with pytest.raises(TypeError):
        knn(x.long(), None, 2)
    with pytest.raises(ValueError):
        knn(x, None, 2, backend="annoy")


def test_knn_accepts_numpy():
    x = tied_vectors(20).numpy()
    res = knn(x, None, 3)
    assert np.array_equal(res.indices.numpy(), brute_force_neighbours(x, x, 3, True))


def test_knn_faiss_backend_matches_torch_with_ties():
    pytest.importorskip("faiss")
    x = tied_vectors(200, d=4)
    for db in (None, tied_vectors(80, d=4, seed=5)):
        a = knn(x, db, 20, backend="torch")
        b = knn(x, db, 20, backend="faiss")
        assert torch.equal(a.indices, b.indices)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_cuda_matches_brute_force_with_ties():
    x = tied_vectors(500, d=4)
    res = knn(x, None, 50, device="cuda", chunk_size=64)
    assert np.array_equal(res.indices.numpy(), brute_force_neighbours(x.numpy(), x.numpy(), 50, True))


def test_exact_knn_func_excludes_each_query_from_a_reference_that_starts_with_the_queries():
    q, extra = tied_vectors(30, seed=1), tied_vectors(20, seed=2)
    reference = torch.cat([q, extra])
    sims, idx = ExactKNN(device="cpu")(q, 7, reference, ref_includes_query=True)
    full = q.numpy() @ reference.numpy().T
    full[np.arange(30), np.arange(30)] = -np.inf
    ref = np.argsort(-full, axis=1, kind="stable")[:, :7]
    assert np.array_equal(idx.numpy(), ref)
    assert np.array_equal(sims.numpy(), np.take_along_axis(full, ref, axis=1))
    # without the flag nothing is excluded; without a reference it is all-vs-all
    plain = brute_force_neighbours(q.numpy(), reference.numpy(), 7, exclude_self=False)
    assert np.array_equal(ExactKNN(device="cpu")(q, 7, reference)[1].numpy(), plain)
    assert torch.equal(ExactKNN(device="cpu")(q, 5)[1], knn(q, None, 5).indices)


def test_missing_faiss_is_a_one_line_dependency_error(monkeypatch):
    from lit.metric import exact_knn

    monkeypatch.setattr(exact_knn, "faiss_available", lambda: False)
    with pytest.raises(MissingDependencyError, match="pip install faiss-cpu"):
        knn(tied_vectors(10), None, 2, backend="faiss")


def test_clip_ks():
    assert clip_ks((1, 10, 100, 1000), 60501) == [1, 10, 100, 1000]
    assert clip_ks((1000, 1, 10), 10) == [1, 10]
    with pytest.raises(ValueError):
        clip_ks((0,), 5)
