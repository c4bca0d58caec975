"""Bounded-memory ASMK: exact quantisation backends, blocked top-k search, bucketed flush,
chunked save/load, column ranges and global idf of sharded indexes."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import lit.asmk.index as index_module
from lit.asmk import ASMK, faiss_available, nearest_words, smallest_stable, topk_stable


def _stable_reference(dist: np.ndarray, m: int) -> np.ndarray:
    return np.argsort(dist, axis=1, kind="stable")[:, :m]


def _tied_codebook(seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(20, 6)).astype(np.float32)
    # words i, i + 20 and i + 40 are the same centroid: every distance is tied three ways
    return np.concatenate([base, base, base]), rng.normal(size=(300, 6)).astype(np.float32)


BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("m", [1, 2, 4])
def test_nearest_words_ties_go_to_the_lower_index(backend, m):
    codebook, x = _tied_codebook()
    words = nearest_words(torch.from_numpy(x), torch.from_numpy(codebook), m, backend=backend).numpy()
    # distances computed the kernel's way (||c||^2 - 2 x.c), ranked by a stable sort
    dist = (codebook.astype(np.float64) ** 2).sum(1)[None] - 2 * x.astype(np.float64) @ codebook.T.astype(np.float64)
    ref = _stable_reference(dist, m)
    assert np.array_equal(words, ref)
    assert (words[:, 0] < 20).all()  # the first copy of the nearest centroid


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_faiss_and_torch_backends_assign_the_same_words():
    rng = np.random.default_rng(1)
    codebook = torch.from_numpy(rng.normal(size=(500, 32)).astype(np.float32))
    x = torch.from_numpy(rng.normal(size=(2000, 32)).astype(np.float32))
    for m in (1, 5):
        a = nearest_words(x, codebook, m, backend="faiss")
        b = nearest_words(x, codebook, m, backend="torch", chunk_size=333)
        assert torch.equal(a, b)


def test_smallest_stable_is_a_stable_sort_prefix():
    values = torch.from_numpy(np.random.default_rng(2).integers(0, 4, size=(200, 30)).astype(np.float32))
    for m in (1, 3, 7, 30):
        expect = torch.sort(values, dim=1, stable=True).indices[:, :m]
        assert torch.equal(smallest_stable(values, m), expect)


def test_topk_stable_orders_by_score_then_id_with_negatives_and_signed_zeros():
    rng = np.random.default_rng(3)
    scores = rng.choice(np.array([-2.5, -1.0, -0.0, 0.0, 0.25, 1.0, 3e-39, -3e-39], np.float32), size=(50, 40))
    scores = torch.from_numpy(scores)
    ids = torch.arange(100, 140)
    for k in (1, 5, 40):
        got_ids, got_scores = topk_stable(scores, ids, k)
        order = torch.sort(scores + 0.0, dim=1, descending=True, stable=True).indices[:, :k]
        assert torch.equal(got_ids, ids[order])
        assert torch.equal(got_scores, torch.gather(scores + 0.0, 1, order))
    # per-element ids (a merge of per-shard lists)
    per = torch.from_numpy(rng.permutation(40 * 50).reshape(50, 40).astype(np.int64))
    got_ids, _ = topk_stable(scores, per, 7)
    key = sorted(range(40), key=lambda j: (-float(scores[0, j] + 0.0), int(per[0, j])))[:7]
    assert got_ids[0].tolist() == [int(per[0, j]) for j in key]


def _clustered(seed=0, k=64, dim=16, images=60, per=25, queries=9):
    rng = np.random.default_rng(seed)
    codebook = rng.normal(size=(k, dim)).astype(np.float32)
    words = rng.integers(0, k, size=images * per)
    x = (codebook[words] + 0.4 * rng.normal(size=(images * per, dim))).astype(np.float32)
    ids = np.repeat(np.arange(images), per)
    src = rng.choice(images, size=queries, replace=False)
    qx = np.concatenate([x[ids == s][: per // 2] + 0.2 * rng.normal(size=(per // 2, dim)) for s in src]).astype(np.float32)
    qids = np.repeat(np.arange(queries), per // 2)
    return codebook, x, ids, qx, qids


@pytest.mark.parametrize("binary", [True, False])
def test_blocked_topk_search_equals_a_stable_sort_of_dense_scores(monkeypatch, binary):
    codebook, x, ids, qx, qids = _clustered()
    index = ASMK(codebook, binary=binary)
    index.add(x, ids)
    dense = index.scores(qx, qids)
    order = torch.sort(dense, dim=1, descending=True, stable=True).indices
    monkeypatch.setattr(index_module, "_BLOCK_BYTES", 4 * 60 * 2)  # two query rows per block
    for k in (1, 10, None):
        ranks, values = index.search(qx, qids, topk=k)
        kk = 60 if k is None else k
        assert torch.equal(ranks, order[:, :kk])
        assert torch.equal(values, torch.gather(dense, 1, order[:, :kk]))


def test_search_columns_rank_one_id_range():
    codebook, x, ids, qx, qids = _clustered(seed=1)
    index = ASMK(codebook)
    index.add(x, ids)
    dense = index.scores(qx, qids)
    ranks, values = index.search(qx, qids, topk=5, columns=(20, 45))
    sub = dense[:, 20:45]
    order = torch.sort(sub, dim=1, descending=True, stable=True).indices[:, :5]
    assert torch.equal(ranks, order + 20) and torch.equal(values, torch.gather(sub, 1, order))
    # a range past the largest id: the missing images score 0 and come in id order
    wide = index.search(qx, qids, topk=80, columns=(50, 90))
    assert wide.ranks.shape == (9, 40) and set(wide.ranks[0].tolist()) == set(range(50, 90))


@pytest.mark.parametrize("buckets", [1, 3, 32])
def test_bucketed_flush_equals_one_shot_add_also_into_a_non_empty_index(monkeypatch, buckets):
    monkeypatch.setattr(index_module, "_BUCKETS", buckets)
    codebook, x, ids, qx, qids = _clustered(seed=2)
    for binary in (True, False):
        one = ASMK(codebook, binary=binary, use_idf=True)
        one.add(x, ids)
        inc = ASMK(codebook, binary=binary, use_idf=True)
        for part in (np.arange(0, 20), np.arange(35, 60), np.arange(20, 35)):
            mask = np.isin(ids, part)
            inc.add(x[mask], ids[mask])
            if part[0] == 35:
                inc.flush()  # merge into a non-empty inverted file next time
        assert inc.stats() == one.stats()
        a, b = one.state_dict(), inc.state_dict()
        assert np.array_equal(a["offsets"], b["offsets"])
        # within a word, entries keep insertion order: the parts in the order they came
        parts = (range(0, 20), range(35, 60), range(20, 35))
        for w in range(64):
            sl = slice(a["offsets"][w], a["offsets"][w + 1])
            one_ids, one_vec = a["image_ids"][sl], a["vectors"][sl]
            order = np.concatenate([np.flatnonzero(np.isin(one_ids, list(p))) for p in parts]).astype(np.int64)
            assert np.array_equal(b["image_ids"][sl], one_ids[order])
            assert np.array_equal(b["vectors"][sl], one_vec[order])
        assert torch.equal(inc.search(qx, qids, topk=10).ranks, one.search(qx, qids, topk=10).ranks)
        torch.testing.assert_close(inc.scores(qx, qids), one.scores(qx, qids), rtol=1e-6, atol=1e-7)


def test_chunked_save_load_keeps_unknown_groups_readable(monkeypatch, tmp_path):
    monkeypatch.setattr(index_module, "_IO_ROWS", 7)
    codebook, x, ids, qx, qids = _clustered(seed=3)
    for binary in (True, False):
        index = ASMK(codebook, binary=binary)
        index.add(x, ids)
        path = tmp_path / f"i{binary}.h5"
        index.save(path, attrs={"shard.lo": 0, "note": "x"})
        with h5py.File(path, "a") as f:  # another tool adds its own metadata
            f.create_group("pipeline").attrs["model"] = "tiny"
            f["pipeline"].create_dataset("names", data=np.array([b"a", b"b"]))
        loaded = ASMK.load(path)
        assert np.array_equal(loaded.state_dict()["vectors"], index.state_dict()["vectors"])
        assert torch.equal(loaded.scores(qx, qids), index.scores(qx, qids))


# ----------------------------------------------------------------------------- bfloat16 + exact re-check


def _exact_reference(x: np.ndarray, codebook: np.ndarray, m: int) -> np.ndarray:
    """Float64 distances of the float32 inputs (products exact), ranked by a stable sort."""
    x64, c64 = x.astype(np.float64), codebook.astype(np.float64)
    dist = ((x64[:, None, :] - c64[None]) ** 2).sum(-1)
    return _stable_reference(dist, m)


def test_bf16_ties_go_to_the_lower_index():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(200, 6)).astype(np.float32)
    codebook = np.concatenate([base, base, base])  # every distance tied three ways
    x = rng.normal(size=(300, 6)).astype(np.float32)
    for m in (1, 2, 4):
        words = nearest_words(torch.from_numpy(x), torch.from_numpy(codebook), m, backend="bf16").numpy()
        assert np.array_equal(words, _exact_reference(x, codebook, m))
        assert (words[:, 0] < 200).all()


@pytest.mark.parametrize("m", [1, 5])
def test_bf16_search_is_the_exact_ranking_across_chunks_and_padding(m):
    rng = np.random.default_rng(4)
    # 1000 words: not a multiple of the group size, so the last group is padded
    codebook = rng.normal(size=(1000, 24)).astype(np.float32)
    near = codebook[rng.integers(0, 1000, 300)] + 0.3 * rng.normal(size=(300, 24)).astype(np.float32)
    far = rng.normal(size=(300, 24)).astype(np.float32) * 3
    x = np.concatenate([near, far])
    words = nearest_words(torch.from_numpy(x), torch.from_numpy(codebook), m, backend="bf16", chunk_size=97)
    assert np.array_equal(words.numpy(), _exact_reference(x, codebook, m))


def test_bf16_rows_the_bound_cannot_settle_fall_back_to_exact_search(monkeypatch):
    import lit.asmk.functional as functional

    # +-e_i: 320 words at the same distance from the origin; a query at the origin ties all
    # of them (the first pass and the 256-candidate second pass cannot settle it), a query
    # near the origin has a nearest word closer than the bfloat16 error
    d = 160
    eye = np.eye(d, dtype=np.float32)
    codebook = np.concatenate([eye, -eye, 2 * eye])
    rng = np.random.default_rng(5)
    x = np.concatenate([np.zeros((3, d), np.float32), 1e-3 * rng.normal(size=(20, d)).astype(np.float32),
                        rng.normal(size=(50, d)).astype(np.float32)])
    calls = []
    real = functional._nearest_words_exact64
    monkeypatch.setattr(functional, "_nearest_words_exact64", lambda xx, *a: calls.append(len(xx)) or real(xx, *a))
    for m in (1, 3):
        words = nearest_words(torch.from_numpy(x), torch.from_numpy(codebook), m, backend="bf16")
        assert np.array_equal(words.numpy(), _exact_reference(x, codebook, m))
        assert words[0].tolist() == list(range(m))  # all tied: the lowest indices
    assert calls and min(calls) >= 3  # the tied rows did reach the float64 brute force


def test_bf16_backend_outside_its_conditions_uses_the_float32_kernel():
    rng = np.random.default_rng(6)
    codebook = torch.from_numpy(rng.normal(size=(40, 8)).astype(np.float32))  # too few words
    x = torch.from_numpy(rng.normal(size=(100, 8)).astype(np.float32))
    assert torch.equal(nearest_words(x, codebook, 2, backend="bf16"), nearest_words(x, codebook, 2, backend="torch"))
    big = torch.from_numpy(rng.normal(size=(2000, 8)).astype(np.float32))
    huge = x * 1e9  # beyond the range where the bound is computed
    assert torch.equal(nearest_words(huge, big, 1, backend="bf16"), nearest_words(huge, big, 1, backend="torch"))
    with pytest.raises(ValueError, match="backend"):
        nearest_words(x, codebook, 1, backend="bf16x")


def test_auto_backend_policy(monkeypatch):
    import lit.asmk.functional as functional

    monkeypatch.setattr(functional, "_native_bf16", True)
    assert functional.auto_backend("cpu", 16384, 5) == "bf16"
    assert functional.auto_backend("cpu", 16384, 6) != "bf16"
    assert functional.auto_backend("cpu", 1000, 1) != "bf16"
    assert functional.auto_backend("cuda", 16384, 1) == "torch"
    monkeypatch.setattr(functional, "_native_bf16", False)
    assert functional.auto_backend("cpu", 16384, 5) == ("faiss" if faiss_available() else "torch")


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_bf16_and_faiss_assign_the_same_words_on_clustered_data():
    rng = np.random.default_rng(7)
    codebook = rng.normal(size=(4096, 32)).astype(np.float32)
    x = codebook[rng.integers(0, 4096, 3000)] + 0.3 * rng.normal(size=(3000, 32)).astype(np.float32)
    xt, ct = torch.from_numpy(x), torch.from_numpy(codebook)
    assert torch.equal(nearest_words(xt, ct, 1, backend="bf16"), nearest_words(xt, ct, 1, backend="faiss"))


def test_group_max_equals_amax():
    import lit.asmk.functional as functional

    gen = torch.Generator().manual_seed(8)
    for width in (128, 96, 8, 5):
        v = torch.randn(7, 11, width, generator=gen).to(torch.bfloat16)
        v[0, 0, -1] = 50.0  # a maximum in the last column
        assert torch.equal(functional._group_max(v), v.amax(dim=2))
