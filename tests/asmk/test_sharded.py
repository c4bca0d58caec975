"""Sharded indexes: parts by image-id range give exactly the ranks and scores of one index,
per-part lists merge by (score, id), and files that are not parts of one index are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit.asmk import ASMK
from lit.asmk.scoring import SearchResult
from lit.asmk.sharded import ShardedIndex, build_part, merge_results, part_attrs
from lit.errors import IndexFileError


def _chunks(x, ids, lo, hi, rows=40):
    """(descriptors, ids) of the images lo..hi-1 in chunks of whole images."""
    images = [i for i in range(lo, hi) if (ids == i).any()]
    for start in range(0, len(images), max(1, rows // 25)):  # 25 descriptors per image
        sel = np.isin(ids, images[start : start + max(1, rows // 25)])
        yield x[sel], ids[sel]


def _build(tmp_path, codebook, x, ids, bounds, **params):
    files = []
    for r, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        path = tmp_path / f"index.{r:05d}-of-{len(bounds) - 1:05d}.h5"
        part = build_part(codebook, _chunks(x, ids, lo, hi), path, rank=r, world=len(bounds) - 1, lo=lo, hi=hi,
                          **params)
        assert part.n_images <= hi and part.ivf.num_images == len(np.unique(ids[(ids >= lo) & (ids < hi)]))
        files.append(str(path))
    return files


@pytest.mark.parametrize("binary,use_idf", [(True, False), (True, True), (False, True)])
def test_parts_search_exactly_as_one_index(clustered, tmp_path, binary, use_idf):
    codebook, x, ids, qx, qids = clustered(seed=6)
    single = ASMK(codebook, binary=binary, use_idf=use_idf)
    single.add(x, ids)
    files = _build(tmp_path, codebook, x, ids, [0, 13, 13, 41, 60], binary=binary, use_idf=use_idf)  # one empty part
    for keep in (True, False):
        sharded = ShardedIndex(files, keep=keep)
        assert sharded.n_images == 60 and sharded.ranges[1] == (13, 13)
        assert sharded.params == single.params and torch.equal(sharded.codebook, single.codebook)
        for k in (1, 5, 60, None):
            a, b = single.search(qx, qids, topk=k), sharded.search(qx, qids, topk=k)
            assert torch.equal(a.ranks, b.ranks) and torch.equal(a.scores, b.scores)
        assert len(sharded._parts) == (4 if keep else 1)  # without keep, only the home part stays


def test_merge_results_orders_by_score_then_id():
    a = SearchResult(torch.tensor([[3, 1], [0, 2]]), torch.tensor([[0.9, 0.5], [0.7, 0.7]]))
    b = SearchResult(torch.tensor([[7, 5], [4, 6]]), torch.tensor([[0.5, 0.1], [0.8, 0.7]]))
    merged = merge_results([a, b], 3)
    assert merged.ranks.tolist() == [[3, 1, 7], [4, 0, 2]]
    assert torch.equal(merged.scores, torch.tensor([[0.9, 0.5, 0.5], [0.8, 0.7, 0.7]]))
    assert merge_results([a, b], None).ranks.shape == (2, 4)
    assert merge_results([a, b], 0).ranks.shape == (2, 0)


def test_files_that_are_not_parts_of_one_index_are_refused(clustered, tmp_path):
    codebook, x, ids, _, _ = clustered(seed=7)
    files = _build(tmp_path, codebook, x, ids, [0, 30, 60])
    other = ASMK(codebook + 1)
    other.save(tmp_path / "other.h5", attrs=part_attrs(1, 2, 30, 60))
    with pytest.raises(IndexFileError, match="codebook differs"):
        ShardedIndex([files[0], str(tmp_path / "other.h5")])
    gap = ASMK(codebook)
    gap.save(tmp_path / "gap.h5", attrs=part_attrs(1, 2, 31, 60))
    with pytest.raises(IndexFileError, match="not contiguous"):
        ShardedIndex([files[0], str(tmp_path / "gap.h5")])
    plain = ASMK(codebook)
    plain.save(tmp_path / "plain.h5")
    with pytest.raises(IndexFileError, match=r"plain\.h5: not a part of a sharded ASMK index"):
        ShardedIndex([str(tmp_path / "plain.h5")])
    (tmp_path / "junk.h5").write_bytes(b"not hdf5" * 10)
    with pytest.raises(IndexFileError, match=r"junk\.h5: not an HDF5 file"):
        ShardedIndex([files[0], str(tmp_path / "junk.h5")])
