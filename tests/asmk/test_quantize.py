"""Nearest-word search: the exact ranking of every backend (ties to the lower index), the
bfloat16 path with its proven bound, and what a Quantizer keeps between calls."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import lit.asmk.quantize as quantize
from lit.asmk import ASMK, faiss_available, nearest_words
from lit.asmk.quantize import Quantizer, auto_backend


def _stable_reference(dist: np.ndarray, m: int) -> np.ndarray:
    return np.argsort(dist, axis=1, kind="stable")[:, :m]


def _exact_reference(x: np.ndarray, codebook: np.ndarray, m: int) -> np.ndarray:
    """Float64 distances of the float32 inputs (products exact), ranked by a stable sort."""
    x64, c64 = x.astype(np.float64), codebook.astype(np.float64)
    dist = ((x64[:, None, :] - c64[None]) ** 2).sum(-1)
    return _stable_reference(dist, m)


def _tied_codebook(seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(20, 6)).astype(np.float32)
    # words i, i + 20 and i + 40 are the same centroid: every distance is tied three ways
    return np.concatenate([base, base, base]), rng.normal(size=(300, 6)).astype(np.float32)


BACKENDS = ["torch"] + (["faiss"] if faiss_available() else [])


# ----------------------------------------------------------------------------- float32 backends


def test_nearest_words_are_sorted_by_distance_across_chunks():
    x, c = torch.randn(37, 6), torch.randn(9, 6)
    got = nearest_words(x, c, 4, chunk_size=5)
    want = torch.cdist(x, c).argsort(dim=1)[:, :4]
    assert torch.equal(got, want)


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_backends_rank_near_ties_exactly_whatever_else_is_searched(backend):
    # centroids and descriptors around far-away points: float32 distances err by more than
    # the gaps, which the float64 re-check of those rows settles
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(30, 16)) * 300
    codebook = np.concatenate([centres + rng.normal(size=(30, 16)) * 0.01 for _ in range(4)]).astype(np.float32)
    x = (centres[rng.integers(0, 30, 200)] + rng.normal(size=(200, 16)) * 0.01).astype(np.float32)
    for m in (1, 3):
        words = nearest_words(torch.from_numpy(x), torch.from_numpy(codebook), m, backend=backend)
        assert np.array_equal(words.numpy(), _exact_reference(x, codebook, m))
        alone = nearest_words(torch.from_numpy(x[:7]), torch.from_numpy(codebook), m, backend=backend)
        assert torch.equal(alone, words[:7])  # the same words in a batch of 7 and of 200


# ----------------------------------------------------------------------------- bfloat16 + exact re-check


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
    real = quantize._exact64_kernel
    monkeypatch.setattr(quantize, "_exact64_kernel", lambda xx, *a: calls.append(len(xx)) or real(xx, *a))
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


def test_auto_backend_policy():
    assert auto_backend("cpu", 16384, 5, native_bf16=True) == "bf16"
    assert auto_backend("cpu", 16384, 6, native_bf16=True) != "bf16"
    assert auto_backend("cpu", 1000, 1, native_bf16=True) != "bf16"
    assert auto_backend("cuda", 16384, 1, native_bf16=True) == "torch"
    assert auto_backend("cpu", 16384, 5, native_bf16=False) == ("faiss" if faiss_available() else "torch")
    assert Quantizer(torch.zeros(16384, 4), native_bf16=True).auto_backend("cpu", 5) == "bf16"
    assert Quantizer(torch.zeros(16384, 4), native_bf16=False).auto_backend("cpu", 5) != "bf16"


@pytest.mark.skipif(not faiss_available(), reason="faiss is not installed")
def test_bf16_and_faiss_assign_the_same_words_on_clustered_data():
    rng = np.random.default_rng(7)
    codebook = rng.normal(size=(4096, 32)).astype(np.float32)
    x = codebook[rng.integers(0, 4096, 3000)] + 0.3 * rng.normal(size=(3000, 32)).astype(np.float32)
    xt, ct = torch.from_numpy(x), torch.from_numpy(codebook)
    assert torch.equal(nearest_words(xt, ct, 1, backend="bf16"), nearest_words(xt, ct, 1, backend="faiss"))


def test_group_max_equals_amax():
    gen = torch.Generator().manual_seed(8)
    for width in (128, 96, 8, 5):
        v = torch.randn(7, 11, width, generator=gen).to(torch.bfloat16)
        v[0, 0, -1] = 50.0  # a maximum in the last column
        assert torch.equal(quantize._group_max(v), v.amax(dim=2))


# ----------------------------------------------------------------------------- the Quantizer object


def _words_set(seed=9, k=2000, dim=16, n=700):
    rng = np.random.default_rng(seed)
    codebook = torch.from_numpy(rng.normal(size=(k, dim)).astype(np.float32))
    x = torch.from_numpy((codebook.numpy()[rng.integers(0, k, n)] + 0.3 * rng.normal(size=(n, dim))).astype(np.float32))
    return codebook, x


@pytest.mark.parametrize("backend", ["bf16", "torch"])
def test_quantizer_prepares_its_codebook_once_and_equals_the_function(backend, monkeypatch):
    codebook, x = _words_set()
    prepared = []
    real = quantize._prepare_bf16
    monkeypatch.setattr(quantize, "_prepare_bf16", lambda c: prepared.append(1) or real(c))
    q = Quantizer(codebook)
    for m in (1, 3):
        for part in (x[:300], x[300:]):
            assert torch.equal(q(part, m, backend=backend), nearest_words(part, codebook, m, backend=backend))
    if backend == "bf16":
        assert len(prepared) == 1 + 4  # once for the quantizer, once per call of the function
        assert q._bf16[1].c32 is not None and q._float32 is None
    else:
        assert not prepared and q._float32 is not None


def test_quantizer_notices_a_codebook_changed_in_place():
    codebook, x = _words_set(seed=10)
    q = Quantizer(codebook)
    before = {b: q(x, 2, backend=b) for b in ("bf16", "torch")}
    codebook[:1000] += 5.0  # the version counter moves: prepared forms are remade
    for b, old in before.items():
        got = q(x, 2, backend=b)
        assert torch.equal(got, nearest_words(x, codebook, 2, backend=b)) and not torch.equal(got, old)


def test_quantizer_keeps_one_workspace_per_thread():
    codebook, x = _words_set(seed=11)
    q = Quantizer(codebook)
    want = nearest_words(x, codebook, 3, backend="bf16")
    first = q._workspace(10)
    assert q._workspace(5) is first  # kept between calls
    results, buffers = {}, {}

    def work(i):
        results[i] = q(x, 3, backend="bf16")
        buffers[i] = q._local.buf

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(torch.equal(r, want) for r in results.values())
    assert len({id(b) for b in buffers.values()} | {id(q._local.buf)}) == 4  # one each


def test_a_quantizer_and_its_index_can_be_pickled_and_copied():
    import copy
    import pickle

    codebook, x = _words_set(seed=13)
    index = ASMK(codebook)
    index.add(x, torch.arange(len(x)) // 7)
    index.quantize(x)  # caches and a workspace exist now
    index.quantizer._workspace(10)
    for other in (pickle.loads(pickle.dumps(index)), copy.deepcopy(index)):
        assert other.quantizer._bf16 is None and not hasattr(other.quantizer._local, "buf")
        assert torch.equal(other.quantize(x), index.quantize(x))
        assert torch.equal(other.scores(x[:30], torch.zeros(30, dtype=torch.int64)),
                           index.scores(x[:30], torch.zeros(30, dtype=torch.int64)))


def test_an_index_quantises_with_its_own_quantizer():
    codebook, x = _words_set(seed=12)
    index = ASMK(codebook, multiple_assignment=2)
    assert index.quantizer.codebook is index.codebook
    assert torch.equal(index.quantize(x), nearest_words(x, codebook, 2))
    assert torch.equal(index.quantize(x, m=4), index.quantizer(x, 4))


def test_quantize_module_holds_no_mutable_state():
    """Caches live in Quantizer objects; the module keeps constants and one memoised fact."""
    import __future__

    import types

    for name, value in vars(quantize).items():
        if name.startswith("__") or name in ("_faiss", "native_bf16_cpu"):
            continue
        if isinstance(value, (types.FunctionType, types.ModuleType, type, __future__._Feature)):
            continue
        assert isinstance(value, (int, float, bool, str, tuple, frozenset)) or value is None, name
