"""Appends and deletions of the inverted file (lit.asmk.ivf, live collections): a batch as a
segment of its own and tombstones rank and score like an index built from scratch on the
present images; compaction drops the removed entries and renumbers."""

import pytest
import torch

from lit.asmk import ASMK

D, K = 16, 24


def images(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(int(torch.randint(3, 20, (1,), generator=g)), D, generator=g) for _ in range(n)]


def ids_of(batch, first=0):
    return torch.cat([torch.full((len(x),), first + i) for i, x in enumerate(batch)])


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("use_idf", [False, True])
@pytest.mark.parametrize("ma", [1, 3])
def test_segments_and_tombstones_score_as_an_index_of_the_present_images(binary, use_idf, ma):
    params = {"binary": binary, "use_idf": use_idf, "multiple_assignment": ma}
    cb = torch.randn(K, D, generator=torch.Generator().manual_seed(0))
    db, qs = images(30, 1), images(4, 2)
    live = ASMK(cb, **params)
    live.add(torch.cat(db[:18]), ids_of(db[:18]))
    live.flush()
    for first in (18, 22, 26):  # three appends, each a segment of its own
        segment, present = live.aggregate_segment(torch.cat(db[first:first + 4]), ids_of(db[first:first + 4], first))
        live.append_segment(segment, present)
    assert live.ivf.num_extra_segments == 3
    assert live.remove(torch.tensor([0, 5, 19, 5])) == 3
    with pytest.raises(ValueError, match="removed image"):
        live.append_segment(*live.aggregate_segment(db[5], torch.full((len(db[5]),), 5)))
    live.ivf.merge_extra()
    assert live.ivf.num_extra_segments == 1
    keep = [i for i in range(30) if i not in (0, 5, 19)]
    ref = ASMK(cb, **params)
    ref.add(torch.cat([db[i] for i in keep]), torch.cat([torch.full((len(db[i]),), n) for n, i in enumerate(keep)]))
    q, qid = torch.cat(qs), ids_of(qs)
    got, want = live.search(q, qid), ref.search(q, qid)
    assert torch.equal(got.ranks, torch.tensor(keep)[want.ranks])  # removed images never ranked
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-5, atol=1e-7)
    entries = live.ivf.num_entries
    new_ids = torch.full((30,), -1)
    new_ids[torch.tensor(keep)] = torch.arange(len(keep))
    live.compact(new_ids)
    assert live.ivf.num_extra_segments == 0 and live.ivf.num_removed == 0 and live.ivf.num_entries < entries
    again = live.search(q, qid)
    assert torch.equal(again.ranks, want.ranks)
    torch.testing.assert_close(again.scores, want.scores, rtol=1e-5, atol=1e-7)


def flushed_index(batch):
    """A binary ASMK index of ``batch`` (ids from 0), its entries in the inverted file."""
    live = ASMK(torch.randn(K, D, generator=torch.Generator().manual_seed(0)), binary=True)
    live.add(torch.cat(batch), ids_of(batch))
    live.flush()
    return live


def test_removed_entries_are_counted_across_appends_and_removals():
    db = images(20, 3)
    live = flushed_index(db[:10])

    def brute():
        removed = live.ivf.removed
        return sum(int(removed[seg.image_ids.long()].sum()) for seg in live.ivf.segments())

    live.remove(torch.tensor([1, 2]))
    assert live.ivf.removed_entries() == brute() > 0  # counts per id taken here
    for first in (10, 15):  # kept up to date by the appends
        live.append_segment(*live.aggregate_segment(torch.cat(db[first:first + 5]), ids_of(db[first:first + 5], first)))
        live.remove(torch.tensor([first, first + 3]))
        assert live.ivf.removed_entries() == brute()
    live.ivf.reserve(25)  # ids without entries
    live.remove(torch.tensor([22, 3]))
    assert live.ivf.removed_entries() == brute()
    live.ivf.compact()  # keeps the ids, drops the removed entries
    assert live.ivf.removed_entries() == 0 and live.ivf.num_extra_segments == 0


def test_a_compaction_made_apart_is_installed_only_on_the_inverted_file_it_was_made_from():
    db = images(12, 4)
    live = flushed_index(db[:8])
    live.append_segment(*live.aggregate_segment(torch.cat(db[8:]), ids_of(db[8:], 8)))
    live.remove(torch.tensor([2, 9]))
    q = torch.cat(db[:3])
    before = live.search(q, ids_of(db[:3]), topk=12)
    made = live.ivf.compacted()
    assert live.ivf.num_extra_segments == 1  # nothing changed yet
    live.ivf.adopt(made)
    assert live.ivf.num_extra_segments == 0 and live.ivf.removed_entries() == 0
    after = live.search(q, ids_of(db[:3]), topk=12)
    assert torch.equal(torch.as_tensor(before[0]), torch.as_tensor(after[0]))
    torch.testing.assert_close(torch.as_tensor(after[1]), torch.as_tensor(before[1]))
    stale = live.ivf.compacted()
    live.remove(torch.tensor([4]))  # changed after it was made
    with pytest.raises(RuntimeError, match="changed"):
        live.ivf.adopt(stale)
