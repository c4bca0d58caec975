"""The pure tensor functions of ASMK: bit packing, popcount, kernels, stable selections,
aggregation and the chunking helpers."""

from __future__ import annotations

import numpy as np
import torch

import lit.asmk.functional as F
from lit.asmk import (
    hamming_packed,
    pack_bits,
    popcount64,
    selective_kernel,
    smallest_stable,
    topk_stable,
    unpack_bits,
)


def test_pack_bits_matches_numpy_packbits_and_unpacks():
    bits = torch.rand(5, 21) > 0.5
    packed = pack_bits(bits)
    assert packed.shape == (5, 8) and packed.dtype == torch.uint8
    np.testing.assert_array_equal(packed[:, :3].numpy(), np.packbits(bits.numpy(), axis=1))
    assert torch.equal(unpack_bits(packed, 21), bits)


def test_hamming_by_popcount_matches_counting_differing_bits():
    a = torch.rand(50, 200) > 0.5
    b = torch.rand(50, 200) > 0.5
    got = hamming_packed(pack_bits(a), pack_bits(b))
    assert torch.equal(got, (a != b).sum(1))
    x = torch.tensor([0, -1, 1, -(2**63), 2**63 - 1, 0x0F0F], dtype=torch.int64)
    assert popcount64(x).tolist() == [0, 64, 1, 1, 63, 8]


def test_portable_bit_paths_match_the_numpy_ones(monkeypatch):
    """The torch-only packing and SWAR popcount (used on GPU) agree with numpy's."""
    bits = torch.rand(40, 130) > 0.5
    assert torch.equal(F._pack_bits_torch(bits), pack_bits(bits))
    x = torch.randint(-(2**63), 2**63 - 1, (300, 3), dtype=torch.int64)
    x[0] = torch.tensor([-1, -(2**63), 2**63 - 1])
    want = F.popcount_rows(x)
    want_sum = F.popcount_sum(list(x.t()))
    monkeypatch.setattr(F, "_HAS_NP_BITCOUNT", False)
    assert torch.equal(F.popcount_rows(x), want)
    assert torch.equal(F.popcount_sum(list(x.t())), want_sum)
    assert torch.equal(F.popcount64(x), torch.from_numpy(np.bitwise_count(x.numpy().view(np.uint64)).astype(np.int64)))
    assert want[0] == 64 + 1 + 63
    wide = torch.randint(-(2**63), 2**63 - 1, (20, 33), dtype=torch.int64)  # more than 15 words
    assert torch.equal(F.popcount_rows(wide), F.popcount64(wide).sum(1))


def test_selective_kernel_keeps_values_at_or_above_threshold():
    s = torch.tensor([-0.5, 0.0, 0.2, 0.5, 1.0])
    assert torch.allclose(selective_kernel(s, 3.0, 0.2), torch.tensor([0, 0, 0.008, 0.125, 1.0]))
    assert torch.allclose(selective_kernel(s, 3.0, -1.0), s**3)


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


def test_aggregate_images_in_small_batches_equals_one_batch(monkeypatch):
    """Batches of whole images (a tiny residual budget) give the entries of one batch, and
    unsorted image ids are put in order first (descriptors of an image keep theirs)."""
    rng = np.random.default_rng(5)
    codebook = torch.from_numpy(rng.normal(size=(10, 8)).astype(np.float32))
    x = torch.from_numpy(rng.normal(size=(90, 8)).astype(np.float32))
    ids = torch.from_numpy(rng.permutation(np.repeat(np.arange(9), 10)))
    words = torch.from_numpy(rng.integers(0, 10, size=(90, 2)))
    for binary in (True, False):
        one = [torch.cat(t) for t in zip(*F.aggregate_images(x, words, ids, codebook, binary=binary), strict=True)]
        monkeypatch.setattr(F, "CHUNK_BYTES", 4 * 8 * 2 * 12)  # 12 rows: one or two images per batch
        batches = list(F.aggregate_images(x, words, ids, codebook, binary=binary))
        monkeypatch.undo()
        assert len(batches) > 4
        many = [torch.cat(t) for t in zip(*batches, strict=True)]
        assert torch.equal(many[0], one[0]) and torch.equal(many[1], one[1])
        assert torch.equal(many[2], one[2]) if binary else torch.allclose(many[2], one[2], rtol=0, atol=1e-6)
        # the reference: residual sums per (image, word) with loops
        for image, word, vec in zip(*one, strict=True):
            rows = [i for i in range(90) for w in words[i] if ids[i] == image and w == word]  # a word twice counts twice
            total = sum(x[i].double() - codebook[word].double() for i in rows)
            want = F.binarize(total[None].float())[0] if binary else F.l2_normalize(total[None].float())[0]
            assert torch.equal(vec, want) if binary else torch.allclose(vec, want, atol=1e-5)


def test_image_batches_keep_images_whole():
    ids = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 4, 4])
    batches = F.image_batches(ids, 3)
    assert batches[0][0] == 0 and batches[-1][1] == len(ids)
    assert all(a[1] == b[0] for a, b in zip(batches[:-1], batches[1:], strict=False))
    for a, b in batches:
        assert b > a
        assert a == 0 or ids[a] != ids[a - 1]  # never cuts through an image
    assert (4, 9) in batches  # an image larger than the budget is a batch of its own
    assert F.image_batches(ids, 100) == [(0, 12)]


def test_pair_chunks_cover_every_entry_with_bounded_pairs():
    lengths = torch.tensor([3, 0, 5, 1, 1, 9, 2, 0])
    chunks = F.pair_chunks(lengths, 4)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in zip(chunks[:-1], chunks[1:], strict=False))
    for a, b, pairs in chunks:
        assert pairs == int(lengths[a:b].sum())
        assert pairs <= 4 or b - a == 1  # one long posting list may exceed the target alone
    assert F.pair_chunks(lengths, 100) == [(0, 8, 21)]
    assert F.pair_chunks(torch.zeros(3, dtype=torch.int64), 4) == []


def test_posting_pairs_enumerate_every_shared_word():
    offsets = torch.tensor([0, 2, 2, 5, 6])  # word 0: entries 0, 1; word 2: 2..4; word 3: 5
    qi, di = F.posting_pairs(torch.tensor([2, 1, 0, 3]), offsets)
    assert list(zip(qi.tolist(), di.tolist(), strict=True)) == [(0, 2), (0, 3), (0, 4), (2, 0), (2, 1), (3, 5)]


def test_functional_holds_no_mutable_state():
    """Only functions, imported modules and classes, and constants at module level."""
    import __future__

    import types

    for name, value in vars(F).items():
        if name.startswith("__") or isinstance(value, (types.FunctionType, types.ModuleType, type, __future__._Feature)):
            continue
        assert isinstance(value, (int, float, bool, str, tuple, frozenset)) or value is None, name
