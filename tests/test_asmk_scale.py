"""Bounded-memory ASMK: blocked top-k search, bucketed flush, chunked save/load, column
ranges (the quantisation backends are tested in tests/asmk/test_quantize.py)."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import lit.asmk.index as index_module
from lit.asmk import ASMK


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
