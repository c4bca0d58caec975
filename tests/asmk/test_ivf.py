"""The inverted file: pending entries merged word range by word range, insertion order
within a word, presence of images, checked loading of arrays."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import lit.asmk.ivf as ivf_module
from lit.asmk import ASMK
from lit.asmk.functional import pack_bits
from lit.asmk.ivf import InvertedFile
from lit.errors import UsageError


@pytest.mark.parametrize("buckets", [1, 3, 32])
def test_bucketed_flush_equals_one_shot_add_also_into_a_non_empty_index(clustered, monkeypatch, buckets):
    monkeypatch.setattr(ivf_module, "_BUCKETS", buckets)
    codebook, x, ids, qx, qids = clustered(seed=2)
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


def _entries(seed=0, k=10, images=(0, 3, 4), per=4, dim=12):
    """One entry per (image, word): ``per`` distinct words per image, random packed vectors."""
    rng = np.random.default_rng(seed)
    words = np.concatenate([rng.choice(k, per, replace=False) for _ in images])
    image_ids = np.repeat(np.array(images), per)
    bits = torch.from_numpy(rng.integers(0, 2, size=(len(words), dim)).astype(bool))
    return torch.from_numpy(words), torch.from_numpy(image_ids), pack_bits(bits)


def test_entries_land_in_their_posting_lists_in_insertion_order():
    f = InvertedFile(10, 12, binary=True, device=torch.device("cpu"))
    w1, i1, r1 = _entries(seed=1, images=(0, 3))
    w2, i2, r2 = _entries(seed=2, images=(4,))
    f.add_entries(w1, i1, r1)
    f.add_entries(w2, i2, r2)
    assert f.num_pending == f.num_entries == 12 and (f.n_images, f.num_images) == (5, 3)
    f.flush()
    assert f.num_pending == 0 and f.num_entries == 12
    (offsets, images, vectors), = f.segments()
    rows = f.rows(vectors)
    words = torch.cat([w1, w2])
    all_images, all_rows = torch.cat([i1, i2]), torch.cat([r1, r2])
    for w in range(10):
        mine = torch.nonzero(words == w).flatten()  # in the order they were added
        sl = slice(int(offsets[w]), int(offsets[w + 1]))
        assert torch.equal(images[sl].long(), all_images[mine]) and torch.equal(rows[sl], all_rows[mine])
    assert torch.equal(f.entries_per_word(), torch.bincount(words, minlength=10))
    assert f.present.tolist() == [True, False, False, True, True]


def test_image_sums_add_word_weights_per_image():
    f = InvertedFile(10, 12, binary=True, device=torch.device("cpu"))
    words, image_ids, rows = _entries(seed=3, images=(1, 2, 6))
    f.add_entries(words, image_ids, rows)
    f.flush()
    weights = torch.arange(10, dtype=torch.float32) / 7
    want = torch.zeros(7).index_add_(0, image_ids, weights[words])
    torch.testing.assert_close(f.image_sums(weights), want)


def test_version_moves_on_every_change_and_only_then():
    f = InvertedFile(10, 12, binary=False, device=torch.device("cpu"))
    v0 = f.version
    words, image_ids, _ = _entries(seed=4)
    f.add_entries(words, image_ids, torch.randn(len(words), 12))
    assert f.version > v0
    v1 = f.version
    f.flush()
    assert f.version > v1
    v2 = f.version
    f.flush()  # nothing pending: nothing changes
    f.entries_per_word()
    assert f.version == v2


def test_new_images_only_and_whole_batches_or_nothing():
    f = InvertedFile(10, 12, binary=True, device=torch.device("cpu"))
    words, image_ids, rows = _entries(seed=5, images=(2, 5))
    f.add([(image_ids, words, rows)], torch.tensor([2, 5]))
    with pytest.raises(UsageError, match="already in the index: 5"):
        f.check_new(torch.tensor([4, 5, 9]))
    f.check_new(torch.tensor([0, 1, 9]))  # new ids are fine

    def failing():
        yield image_ids, words, rows
        raise RuntimeError("a batch failed half-way")

    before = (f.version, f.num_entries, f.n_images)
    with pytest.raises(RuntimeError):
        f.add(failing(), torch.tensor([7]))
    assert (f.version, f.num_entries, f.n_images) == before
    with pytest.raises(UsageError, match="inconsistent shapes"):
        f.add_entries(words, image_ids[:-1], rows)
    with pytest.raises(UsageError, match="image_ids must be in"):
        f.add_entries(words, -image_ids - 1, rows)


def test_layout_round_trip_of_rows():
    for binary, dim in ((True, 12), (True, 128), (True, 130), (False, 7)):
        f = InvertedFile(4, dim, binary=binary, device=torch.device("cpu"))
        rows = pack_bits(torch.rand(9, dim) > 0.5) if binary else torch.randn(9, dim)
        assert rows.shape == (9, f.width)
        assert torch.equal(f.rows(f.internal(rows)), rows)
        assert f.rows(f.internal(rows[:0])).shape == (0, f.width)  # empty too
    assert InvertedFile(4, 128, binary=True, device=torch.device("cpu")).bytes_per_vector == 16


def test_loading_arrays_checks_that_they_describe_one_inverted_file():
    f = InvertedFile(3, 12, binary=True, device=torch.device("cpu"))
    offsets = np.array([0, 2, 2, 3])
    images = np.array([0, 4, 1], np.int32)
    rows = np.zeros((3, 8), np.uint8)
    f.load(offsets, images, rows, 5, chunk_rows=2)
    assert (f.n_images, f.num_images, f.num_entries) == (5, 3, 3)
    assert f.present.tolist() == [True, True, False, False, True]
    with pytest.raises(UsageError, match="offsets do not describe"):
        f.load(np.array([0, 3, 2, 3]), images, rows, 5, chunk_rows=2)
    with pytest.raises(UsageError, match="vectors of shape"):
        f.load(offsets, images, np.zeros((3, 16), np.uint8), 5, chunk_rows=2)
    with pytest.raises(UsageError, match="vectors of shape"):
        f.load(offsets, images, rows.astype(np.float32), 5, chunk_rows=2)
    with pytest.raises(UsageError, match="image ids outside 0..3"):
        f.load(offsets, images, rows, 4, chunk_rows=2)
