"""The ASMK index against a literal brute-force reference of SPEC section 3, and its
behaviour as a facade: adding, searching, statistics, input checks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from lit.asmk import ASMK
from lit.errors import UsageError

# ----------------------------------------------------------------------------- reference


def _assign(x, codebook, m):
    d = ((x[:, None, :] - codebook[None, :, :]) ** 2).sum(-1)
    return np.argsort(d, axis=1, kind="stable")[:, :m]


def _aggregate_image(x, codebook, m, binary):
    """{word: aggregated vector} of one image, with loops over descriptors and words."""
    words = _assign(x, codebook, m)
    sums = {}
    for i in range(len(x)):
        for w in words[i]:
            w = int(w)
            sums[w] = sums.get(w, np.zeros(codebook.shape[1])) + (x[i] - codebook[w])
    out = {}
    for w, v in sums.items():
        out[w] = (v > 0) if binary else v / (np.linalg.norm(v) + 1e-6)
    return out


def reference_scores(codebook, db_x, db_ids, q_x, q_ids, *, binary, alpha, tau, use_idf, ma, qma):
    """SPEC section 3 computed literally in float64: loops over images and words."""
    codebook = codebook.astype(np.float64)
    dim = codebook.shape[1]
    db = {int(i): _aggregate_image(db_x[db_ids == i].astype(np.float64), codebook, ma, binary)
          for i in np.unique(db_ids)}
    n_images = int(db_ids.max()) + 1
    entries = {}
    for words in db.values():
        for w in words:
            entries[w] = entries.get(w, 0) + 1

    def idf(w):
        if not use_idf or w not in entries:
            return 1.0
        return math.log(n_images / entries[w]) ** 2

    def sim(a, b):
        return 1 - 2 * np.sum(a != b) / dim if binary else float(a @ b)

    def kernel(s):
        return s**alpha if s >= tau else 0.0

    out = []
    for q in np.unique(q_ids):
        qv = _aggregate_image(q_x[q_ids == q].astype(np.float64), codebook, qma, binary)
        norm_q = sum(idf(w) for w in qv)
        row = np.zeros(n_images)
        for i, dv in db.items():
            norm_db = sum(idf(w) for w in dv)
            total = sum(idf(w) * kernel(sim(qv[w], dv[w])) for w in qv if w in dv)
            if norm_db > 0 and norm_q > 0:
                row[i] = total / math.sqrt(norm_db) / math.sqrt(norm_q)
        out.append(row)
    return np.stack(out)


KERNELS = [(3.0, 0.0), (1.0, -1.0), (2.5, 0.1)]
ASSIGNMENTS = [(1, 1), (1, 3), (2, 4)]


@pytest.mark.parametrize(
    "binary,use_idf,assignment,kernel",
    list(itertools.product([True, False], [False, True], ASSIGNMENTS, KERNELS)),
)
def test_scores_match_brute_force_reference(random_data, binary, use_idf, assignment, kernel):
    ma, qma = assignment
    alpha, tau = kernel
    codebook, db_x, db_ids, q_x, q_ids = random_data()
    index = ASMK(codebook, binary=binary, alpha=alpha, similarity_threshold=tau, use_idf=use_idf,
                 multiple_assignment=ma, query_multiple_assignment=qma)
    index.add(db_x, db_ids)
    got = index.scores(q_x, q_ids).numpy()
    want = reference_scores(codebook, db_x, db_ids, q_x, q_ids, binary=binary, alpha=alpha, tau=tau,
                            use_idf=use_idf, ma=ma, qma=qma)
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[:, [2, 5]] == 0)  # ids never added score 0


def test_idf_reference_with_many_words_is_not_trivial(random_data):
    codebook, db_x, db_ids, q_x, q_ids = random_data(seed=3, k=40)
    index = ASMK(codebook, use_idf=True)
    index.add(db_x, db_ids)
    got = index.scores(q_x, q_ids).numpy()
    want = reference_scores(codebook, db_x, db_ids, q_x, q_ids, binary=True, alpha=3.0, tau=0.0,
                            use_idf=True, ma=1, qma=5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(got) > 5


def test_binary_dimension_multiple_of_64_and_chunking(random_data, monkeypatch):
    import lit.asmk.functional as F
    import lit.asmk.scoring as scoring

    # tiny memory budgets force several image batches, residual chunks and pair chunks
    monkeypatch.setattr(F, "CHUNK_BYTES", 4 * 64 * 7)
    monkeypatch.setattr(scoring, "_PAIR_BYTES", 2000)
    codebook, db_x, db_ids, q_x, q_ids = random_data(seed=1, dim=64, k=10)
    index = ASMK(codebook, query_multiple_assignment=3)
    index.add(torch.from_numpy(db_x), torch.from_numpy(db_ids))
    got = index.scores(q_x, q_ids).numpy()
    want = reference_scores(codebook, db_x, db_ids, q_x, q_ids, binary=True, alpha=3.0, tau=0.0,
                            use_idf=False, ma=1, qma=3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- adding


def test_incremental_add_equals_one_shot_add(random_data):
    codebook, db_x, db_ids, q_x, q_ids = random_data(seed=2)
    one = ASMK(codebook, use_idf=True)
    one.add(db_x, db_ids)
    inc = ASMK(codebook, use_idf=True)
    for part in ([3, 0], [6], [1, 4]):
        mask = np.isin(db_ids, part)
        inc.add(db_x[mask], db_ids[mask])
        inc.scores(q_x, q_ids)  # querying in between merges the pending entries
    assert inc.stats() == one.stats()
    torch.testing.assert_close(inc.scores(q_x, q_ids), one.scores(q_x, q_ids), rtol=1e-6, atol=1e-7)


def test_adding_an_image_twice_is_rejected(random_data):
    codebook, db_x, db_ids, _, _ = random_data()
    index = ASMK(codebook)
    index.add(db_x[db_ids == 1], db_ids[db_ids == 1])
    with pytest.raises(ValueError, match="already in the index: 1"):
        index.add(db_x[db_ids <= 1], db_ids[db_ids <= 1])


def test_a_refused_add_leaves_the_index_unchanged(random_data):
    codebook, db_x, db_ids, q_x, q_ids = random_data()
    index = ASMK(codebook)
    index.add(db_x[db_ids == 1], db_ids[db_ids == 1])
    before = (index.ivf.version, index.num_vectors, index.n_images)
    with pytest.raises(UsageError, match="already in the index"):
        index.add(db_x, db_ids)
    with pytest.raises(UsageError, match="words must be in"):
        index.add(db_x[db_ids == 3], db_ids[db_ids == 3], words=np.full(int((db_ids == 3).sum()), 99))
    assert (index.ivf.version, index.num_vectors, index.n_images) == before


def test_precomputed_words_give_the_same_scores(random_data):
    codebook, db_x, db_ids, q_x, q_ids = random_data(seed=6)
    a = ASMK(codebook, multiple_assignment=2)
    a.add(db_x, db_ids)
    b = ASMK(codebook, multiple_assignment=2)
    b.add(db_x, db_ids, words=b.quantize(db_x))
    qw = b.quantize(q_x, m=5)
    assert torch.equal(a.scores(q_x, q_ids), b.scores(q_x, q_ids, words=qw))


# ----------------------------------------------------------------------------- searching


def test_search_ranks_by_decreasing_score_with_topk(random_data):
    codebook, db_x, db_ids, q_x, q_ids = random_data(seed=4)
    index = ASMK(codebook, binary=False)
    index.add(db_x, db_ids)
    scores = index.scores(q_x, q_ids)
    ranks, values = index.search(q_x, q_ids)
    assert ranks.shape == values.shape == (3, 7)
    assert torch.equal(torch.gather(scores, 1, ranks), values)
    assert bool((values[:, 1:] <= values[:, :-1]).all())
    top = index.search(q_x, q_ids, topk=2)
    assert torch.equal(top.ranks, ranks[:, :2]) and torch.equal(top.scores, values[:, :2])
    assert index.search(q_x, q_ids, topk=100).ranks.shape == (3, 7)


def test_empty_index_and_empty_query():
    codebook = np.random.default_rng(0).normal(size=(8, 4)).astype(np.float32)
    index = ASMK(codebook)
    assert index.scores(np.zeros((3, 4), np.float32), np.array([0, 0, 1])).shape == (2, 0)
    index.add(np.ones((2, 4), np.float32), np.array([1, 1]))
    assert index.scores(np.zeros((0, 4), np.float32), np.zeros(0, np.int64)).shape == (0, 2)


@pytest.mark.parametrize("binary", [True, False])
def test_blocked_topk_search_equals_a_stable_sort_of_dense_scores(clustered, monkeypatch, binary):
    import lit.asmk.scoring as scoring

    codebook, x, ids, qx, qids = clustered()
    index = ASMK(codebook, binary=binary)
    index.add(x, ids)
    dense = index.scores(qx, qids)
    order = torch.sort(dense, dim=1, descending=True, stable=True).indices
    monkeypatch.setattr(scoring, "_BLOCK_BYTES", 4 * 60 * 2)  # two query rows per block
    for k in (1, 10, None):
        ranks, values = index.search(qx, qids, topk=k)
        kk = 60 if k is None else k
        assert torch.equal(ranks, order[:, :kk])
        assert torch.equal(values, torch.gather(dense, 1, order[:, :kk]))


def test_search_columns_rank_one_id_range(clustered):
    codebook, x, ids, qx, qids = clustered(seed=1)
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


def test_statistics_are_recomputed_after_the_index_grows(clustered):
    """idf and image norms are cached against the inverted file's version: scores after an
    add equal those of an index built with everything at once."""
    codebook, x, ids, qx, qids = clustered(seed=4)
    grown = ASMK(codebook, use_idf=True)
    grown.add(x[ids < 30], ids[ids < 30])
    first = grown.scores(qx, qids)
    grown.add(x[ids >= 30], ids[ids >= 30])
    whole = ASMK(codebook, use_idf=True)
    whole.add(x, ids)
    assert not torch.equal(grown.scores(qx, qids)[:, :30], first)  # idf and norms moved
    assert torch.equal(grown.scores(qx, qids), whole.scores(qx, qids))


# ----------------------------------------------------------------------------- statistics, checks


def test_stats_bytes_binary_is_about_16_bytes_per_128d_vector():
    rng = np.random.default_rng(0)
    codebook = rng.normal(size=(64, 128)).astype(np.float32)
    index = ASMK(codebook)
    index.add(rng.normal(size=(400, 128)).astype(np.float32), np.repeat(np.arange(10), 40))
    st = index.stats()
    assert st["images"] == 10 and st["n_images"] == 10 and st["bytes_per_vector"] == 16
    assert st["bytes"] == st["vectors"] * (16 + 4) + 8 * 65
    real = ASMK(codebook, binary=False)
    real.add(rng.normal(size=(40, 128)).astype(np.float32), np.zeros(40, np.int64))
    assert real.stats()["bytes_per_vector"] == 512


def test_input_validation(random_data):
    codebook, db_x, db_ids, q_x, q_ids = random_data()
    index = ASMK(codebook)
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        index.add(db_x[:, :5], db_ids)
    with pytest.raises(ValueError, match="one id per row"):
        index.add(db_x, db_ids[:-1])
    with pytest.raises(TypeError, match="integers"):
        index.add(db_x, db_ids.astype(np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        index.add(db_x.astype(np.int64), db_ids)
    with pytest.raises(ValueError, match="0.."):
        index.add(db_x, -db_ids - 1)
    with pytest.raises(ValueError, match="NaN"):
        index.add(np.full_like(db_x, np.nan), db_ids)
    with pytest.raises(TypeError):
        index.add("descriptors", db_ids)
    huge = ASMK(codebook)  # finite values whose sum overflows float32 are accepted
    huge.add(np.full((4, 12), 3e38, np.float32), np.array([0, 0, 1, 1]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        huge.add(np.full((2, 12), np.inf, np.float32), np.array([2, 2]))
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        index.scores(q_x[:, :3], q_ids)
    with pytest.raises(ValueError, match="one id per row"):
        index.scores(q_x, q_ids[:3])
    with pytest.raises(ValueError, match="topk"):
        index.search(q_x, q_ids, topk=0)
    with pytest.raises(ValueError, match="words must be"):
        index.add(db_x, db_ids, words=np.zeros((len(db_x), 2), np.int64))
    with pytest.raises(ValueError, match="codebook"):
        ASMK(codebook[0])
    with pytest.raises(ValueError, match="exceeds the codebook size"):
        ASMK(codebook, query_multiple_assignment=13)
    with pytest.raises(ValueError, match="alpha"):
        ASMK(codebook, alpha=-1.0)
    with pytest.raises(ValueError, match="integer alpha"):
        ASMK(codebook, alpha=2.5, similarity_threshold=-0.5)


def test_user_errors_are_lit_errors(random_data):
    """Bad values raise lit.errors.UsageError (a ValueError), checked after the conversion
    to float32: a float64 value beyond its range is refused, not turned into infinity."""
    codebook, db_x, db_ids, q_x, q_ids = random_data()
    index = ASMK(codebook)
    for call in (lambda: index.add(db_x[:, :5], db_ids), lambda: index.search(q_x, q_ids, topk=0),
                 lambda: index.search(q_x, q_ids, columns=(5, 2)), lambda: index.quantize(q_x, m=13),
                 lambda: ASMK(np.zeros((0, 12), np.float32)), lambda: ASMK(codebook, alpha=float("inf")),
                 lambda: ASMK.train(db_x, size=1000)):
        with pytest.raises(UsageError):
            call()
    with pytest.raises(UsageError, match="NaN or infinite"):
        index.add(np.full((2, 12), 1e300), np.array([0, 0]))
    with pytest.raises(TypeError, match="integer"):
        ASMK(codebook, multiple_assignment=1.5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_gives_the_cpu_scores(random_data):
    codebook, db_x, db_ids, q_x, q_ids = random_data(seed=7, dim=128, k=30)
    for binary in (True, False):
        cpu = ASMK(codebook, binary=binary, use_idf=True)
        gpu = ASMK(codebook, binary=binary, use_idf=True, device="cuda")
        cpu.add(db_x, db_ids)
        gpu.add(db_x, db_ids)
        torch.testing.assert_close(gpu.scores(q_x, q_ids).cpu(), cpu.scores(q_x, q_ids), rtol=1e-4, atol=1e-5)


def test_asmk_train_refuses_more_words_than_descriptors_and_empty_input():
    from lit.asmk import ASMK

    x = np.random.default_rng(0).standard_normal((100, 16)).astype(np.float32)
    with pytest.raises(ValueError, match="100 descriptors cannot make 1000 visual words; pass size <= 100"):
        ASMK.train(x, size=1000)
    with pytest.raises(ValueError, match="no descriptors"):
        ASMK.train(x[:0], size=8)
    assert ASMK.train(x, size=100, iterations=2).codebook.shape == (100, 16)
