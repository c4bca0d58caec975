"""ASMK index against a literal brute-force reference of SPEC section 3."""

from __future__ import annotations

import itertools
import math

import h5py
import numpy as np
import pytest
import torch

from lit.asmk import ASMK, FORMAT_VERSION, kmeans

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


def _data(seed=0, k=12, dim=12, n_db=(9, 14, 6, 11, 8), db_image_ids=(0, 1, 3, 4, 6), n_q=(10, 7, 12)):
    rng = np.random.default_rng(seed)
    codebook = rng.normal(size=(k, dim)).astype(np.float32)
    db_x = rng.normal(size=(sum(n_db), dim)).astype(np.float32) * 1.3
    db_ids = np.repeat(np.array(db_image_ids), n_db)
    q_x = rng.normal(size=(sum(n_q), dim)).astype(np.float32) * 1.3
    q_ids = np.repeat(np.array([7, 2, 5]), n_q)  # unsorted, non-contiguous query ids
    return codebook, db_x, db_ids, q_x, q_ids


KERNELS = [(3.0, 0.0), (1.0, -1.0), (2.5, 0.1)]
ASSIGNMENTS = [(1, 1), (1, 3), (2, 4)]


@pytest.mark.parametrize(
    "binary,use_idf,assignment,kernel",
    list(itertools.product([True, False], [False, True], ASSIGNMENTS, KERNELS)),
)
def test_scores_match_brute_force_reference(binary, use_idf, assignment, kernel):
    ma, qma = assignment
    alpha, tau = kernel
    codebook, db_x, db_ids, q_x, q_ids = _data()
    index = ASMK(codebook, binary=binary, alpha=alpha, similarity_threshold=tau, use_idf=use_idf,
                 multiple_assignment=ma, query_multiple_assignment=qma)
    index.add(db_x, db_ids)
    got = index.scores(q_x, q_ids).numpy()
    want = reference_scores(codebook, db_x, db_ids, q_x, q_ids, binary=binary, alpha=alpha, tau=tau,
                            use_idf=use_idf, ma=ma, qma=qma)
    assert got.shape == (3, 7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.all(got[:, [2, 5]] == 0)  # ids never added score 0


def test_idf_reference_with_many_words_is_not_trivial():
    codebook, db_x, db_ids, q_x, q_ids = _data(seed=3, k=40)
    index = ASMK(codebook, use_idf=True)
    index.add(db_x, db_ids)
    got = index.scores(q_x, q_ids).numpy()
    want = reference_scores(codebook, db_x, db_ids, q_x, q_ids, binary=True, alpha=3.0, tau=0.0,
                            use_idf=True, ma=1, qma=5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.count_nonzero(got) > 5


def test_binary_dimension_multiple_of_64_and_chunking(monkeypatch):
    import lit.asmk.functional as F
    import lit.asmk.index as I

    # tiny memory budgets force several image batches, residual chunks and pair chunks
    monkeypatch.setattr(F, "CHUNK_BYTES", 4 * 64 * 7)
    monkeypatch.setattr(I, "_PAIR_BYTES", 2000)
    codebook, db_x, db_ids, q_x, q_ids = _data(seed=1, dim=64, k=10)
    index = ASMK(codebook, query_multiple_assignment=3)
    index.add(torch.from_numpy(db_x), torch.from_numpy(db_ids))
    got = index.scores(q_x, q_ids).numpy()
    want = reference_scores(codebook, db_x, db_ids, q_x, q_ids, binary=True, alpha=3.0, tau=0.0,
                            use_idf=False, ma=1, qma=3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- index behaviour


def test_incremental_add_equals_one_shot_add():
    codebook, db_x, db_ids, q_x, q_ids = _data(seed=2)
    one = ASMK(codebook, use_idf=True)
    one.add(db_x, db_ids)
    inc = ASMK(codebook, use_idf=True)
    for part in ([3, 0], [6], [1, 4]):
        mask = np.isin(db_ids, part)
        inc.add(db_x[mask], db_ids[mask])
        inc.scores(q_x, q_ids)  # querying in between merges the pending entries
    assert inc.stats() == one.stats()
    torch.testing.assert_close(inc.scores(q_x, q_ids), one.scores(q_x, q_ids), rtol=1e-6, atol=1e-7)


def test_adding_an_image_twice_is_rejected():
    codebook, db_x, db_ids, _, _ = _data()
    index = ASMK(codebook)
    index.add(db_x[db_ids == 1], db_ids[db_ids == 1])
    with pytest.raises(ValueError, match="already in the index: 1"):
        index.add(db_x[db_ids <= 1], db_ids[db_ids <= 1])


def test_search_ranks_by_decreasing_score_with_topk():
    codebook, db_x, db_ids, q_x, q_ids = _data(seed=4)
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


def test_save_load_round_trip_gives_identical_scores_and_can_grow(tmp_path):
    codebook, db_x, db_ids, q_x, q_ids = _data(seed=5)
    for binary in (True, False):
        index = ASMK(codebook, binary=binary, use_idf=True, alpha=2.0, similarity_threshold=0.1,
                     multiple_assignment=2, query_multiple_assignment=3)
        first = db_ids < 4
        index.add(db_x[first], db_ids[first])
        path = tmp_path / f"index_{binary}.h5"
        index.save(path)
        loaded = ASMK.load(path)
        assert loaded.params == index.params
        assert torch.equal(loaded.codebook, index.codebook)
        assert torch.equal(loaded.scores(q_x, q_ids), index.scores(q_x, q_ids))
        with h5py.File(path) as f:
            assert f.attrs["type"] == "lit.asmk.ASMK" and f.attrs["version"] == FORMAT_VERSION
        # an index saved once can be extended later
        loaded.add(db_x[~first], db_ids[~first])
        index.add(db_x[~first], db_ids[~first])
        assert torch.equal(loaded.scores(q_x, q_ids), index.scores(q_x, q_ids))
        state = loaded.state_dict()
        assert torch.equal(ASMK.from_state(state).scores(q_x, q_ids), loaded.scores(q_x, q_ids))


def _saved(tmp_path):
    codebook, db_x, db_ids, _, _ = _data()
    index = ASMK(codebook)
    index.add(db_x, db_ids)
    path = tmp_path / "index.h5"
    index.save(path)
    return path


def test_load_truncated_file_raises_value_error(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"index\.h5.*(truncated|corrupt)"):
        ASMK.load(path)


def test_load_other_version_raises_value_error(tmp_path):
    path = _saved(tmp_path)
    with h5py.File(path, "a") as f:
        f.attrs["version"] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match=r"index\.h5.*version 2"):
        ASMK.load(path)


def test_load_non_hdf5_file_raises_value_error(tmp_path):
    path = tmp_path / "index.h5"
    path.write_bytes(b"\x80\x04 this is a pickle, not HDF5" * 20)
    with pytest.raises(ValueError, match=r"index\.h5.*not an HDF5 file"):
        ASMK.load(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.attrs["type"] = "something.else"
    with pytest.raises(ValueError, match=r"other\.h5.*not an ASMK index"):
        ASMK.load(other)
    with pytest.raises(FileNotFoundError):
        ASMK.load(tmp_path / "missing.h5")


def test_input_validation():
    codebook, db_x, db_ids, q_x, q_ids = _data()
    index = ASMK(codebook)
    with pytest.raises(ValueError, match=r"\(N, 12\)"):
        index.add(db_x[:, :5], db_ids)
    with pytest.raises(ValueError, match="one id per descriptor"):
        index.add(db_x, db_ids[:-1])
    with pytest.raises(TypeError, match="integers"):
        index.add(db_x, db_ids.astype(np.float32))
    with pytest.raises(TypeError, match="floating point"):
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
    with pytest.raises(ValueError, match="one id per descriptor"):
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


def test_precomputed_words_give_the_same_scores():
    codebook, db_x, db_ids, q_x, q_ids = _data(seed=6)
    a = ASMK(codebook, multiple_assignment=2)
    a.add(db_x, db_ids)
    b = ASMK(codebook, multiple_assignment=2)
    b.add(db_x, db_ids, words=b.quantize(db_x))
    qw = b.quantize(q_x, m=5)
    assert torch.equal(a.scores(q_x, q_ids), b.scores(q_x, q_ids, words=qw))


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


# ----------------------------------------------------------------------------- k-means


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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_gives_the_cpu_scores():
    codebook, db_x, db_ids, q_x, q_ids = _data(seed=7, dim=128, k=30)
    for binary in (True, False):
        cpu = ASMK(codebook, binary=binary, use_idf=True)
        gpu = ASMK(codebook, binary=binary, use_idf=True, device="cuda")
        cpu.add(db_x, db_ids)
        gpu.add(db_x, db_ids)
        torch.testing.assert_close(gpu.scores(q_x, q_ids).cpu(), cpu.scores(q_x, q_ids), rtol=1e-4, atol=1e-5)
