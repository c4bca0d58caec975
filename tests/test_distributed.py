"""Sharded feature collections and indexes; torchrun (gloo) runs of extract -> index -> search
that must give exactly the single-process ranks and scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from lit.asmk import ASMK
from lit.asmk.sharded import ShardedIndex
from lit.distributed import env_from_environ, find_shards, shard_path, split_range
from lit.features import FeatureCollection, FeatureStore
from lit.models import save_checkpoint
from lit.pipeline import make_index, merge_feature_files, rank_share
from lit.types import LocalFeatures


def test_split_range_covers_everything_in_order():
    for n in (0, 1, 5, 13):
        for world in (1, 2, 4, 7):
            blocks = [split_range(n, r, world) for r in range(world)]
            assert blocks[0][0] == 0 and blocks[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(blocks[:-1], blocks[1:]))
            assert max(b - a for a, b in blocks) - min(b - a for a, b in blocks) <= 1


def test_torchrun_environment_and_shard_names():
    assert env_from_environ({}) is None and env_from_environ({"WORLD_SIZE": "1", "RANK": "0"}) is None
    env = env_from_environ({"WORLD_SIZE": "4", "RANK": "2", "LOCAL_RANK": "0"})
    assert (env.rank, env.world_size, env.local_rank, env.is_main) == (2, 4, 0, False)
    with pytest.raises(ValueError, match="RANK"):
        env_from_environ({"WORLD_SIZE": "2", "RANK": "5"})
    assert shard_path("out/feats.h5", 3, 4) == "out/feats.00003-of-00004.h5"
    paths, out, _ = rank_share(list(range(10)), "f.h5", env)
    assert paths == [6, 7] and out == "f.00002-of-00004.h5"


def _fake_store(path, names, dim=4, seed=0, fingerprint="fp"):
    rng = np.random.default_rng(seed)
    with FeatureStore(path, "a", descriptor_dim=dim, fingerprint=fingerprint) as st:
        for i, name in enumerate(names):
            k = 3 + i % 4
            st.append(name, LocalFeatures(
                descriptors=torch.from_numpy(rng.normal(size=(k, dim)).astype(np.float32)),
                strengths=torch.ones(k), scales=torch.ones(k), superfeature_ids=torch.arange(k),
                positions=torch.zeros(k, 2)))


def test_feature_collection_reads_shards_as_one_in_rank_order(tmp_path):
    base = tmp_path / "feats.h5"
    names = [f"img{i}.jpg" for i in range(11)]
    for r in range(3):
        lo, hi = split_range(len(names), r, 3)
        _fake_store(shard_path(base, r, 3), names[lo:hi], seed=r)
    for spec in (base, tmp_path, str(tmp_path / "feats.*.h5")):
        with FeatureCollection(spec) as coll:
            assert coll.names == names and len(coll) == 11
            desc, ids = coll.all_descriptors()
            chunks = list(coll.iter_descriptors(max_rows=7))
            assert len(chunks) > 3 and all(len(set(c[1]) & set(d[1])) == 0 for c, d in zip(chunks[:-1], chunks[1:]))
            assert np.array_equal(np.concatenate([c[0] for c in chunks]), desc)
            assert np.array_equal(np.concatenate([c[1] for c in chunks]), ids)
            assert torch.equal(coll[5].descriptors, torch.from_numpy(desc[ids == 5]))
            assert torch.equal(coll["img9.jpg"].descriptors, coll[9].descriptors)
            part = list(coll.iter_descriptors(3, 8))
            assert np.array_equal(np.concatenate([p[1] for p in part]), ids[(ids >= 3) & (ids < 8)])
    (tmp_path / "merged").mkdir()
    merged_cli = tmp_path / "merged" / "cli.h5"  # `lit features merge` takes the shard set's base name
    assert merge_feature_files([base], merged_cli).images == 11
    with FeatureStore(merged_cli) as st, FeatureCollection(base) as coll:
        assert st.names == names and np.array_equal(st.all_descriptors()[0], coll.all_descriptors()[0])


def test_incomplete_or_mixed_shard_sets_are_refused(tmp_path):
    base = tmp_path / "f.h5"
    _fake_store(shard_path(base, 0, 3), ["a"])
    _fake_store(shard_path(base, 2, 3), ["c"])
    with pytest.raises(ValueError, match=r"missing rank\(s\) \[1\]"):
        find_shards(base)
    with pytest.raises(FileNotFoundError, match="no such file"):
        find_shards(tmp_path / "g.h5")
    _fake_store(shard_path(tmp_path / "h.h5", 0, 2), ["a"], fingerprint="other")
    _fake_store(shard_path(tmp_path / "h.h5", 1, 2), ["b"])
    with pytest.raises(ValueError, match="fingerprints differ"):
        FeatureCollection(tmp_path / "h.h5")


@pytest.mark.parametrize("binary,use_idf", [(True, False), (True, True), (False, True)])
def test_sharded_index_gives_exactly_the_single_index_results(tmp_path, binary, use_idf):
    rng = np.random.default_rng(7)
    names = [f"i{i}" for i in range(40)]
    base = tmp_path / "feats.h5"
    for r in range(3):
        lo, hi = split_range(len(names), r, 3)
        _fake_store(shard_path(base, r, 3), names[lo:hi], dim=8, seed=10 + r)
    codebook = rng.normal(size=(16, 8)).astype(np.float32)
    q = rng.normal(size=(60, 8)).astype(np.float32)
    qids = np.repeat(np.arange(6), 10)
    with FeatureCollection(base) as coll:
        single = ASMK(codebook, binary=binary, use_idf=use_idf)
        desc, ids = coll.all_descriptors()
        single.add(desc, ids)
    out = str(tmp_path / "index.h5")
    make_index(base, out, parts=4, codebook=codebook, codebook_source="given", binary=binary, use_idf=use_idf)
    for keep in (True, False):
        sharded = ShardedIndex(find_shards(out), keep=keep)
        for k in (1, 5, 40, None):
            a, b = single.search(q, qids, topk=k), sharded.search(q, qids, topk=k)
            assert torch.equal(a.ranks, b.ranks) and torch.equal(a.scores, b.scores)


# ----------------------------------------------------------------------------- torchrun


def _lit(*args, nproc=None, timeout=300, codes=(0,)):
    cmd = [sys.executable, "-m", "lit", *map(str, args)]
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "lit", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode in codes, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


@pytest.fixture
def photos(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (64 + 8 * (i % 2), 80, 3), dtype=np.uint8)).save(d / f"p{i}.jpg")
    (d / "broken.jpg").write_bytes(b"not a jpeg")
    return d


@pytest.mark.slow
def test_torchrun_extract_index_search_equals_single_process(tmp_path, photos, tiny_model):
    """2 and 4 gloo processes against one single-process reference; in the 2-process run,
    rank 1 was interrupted after its first image and resumes."""
    ckpt = tmp_path / "model.pt"
    save_checkpoint(tiny_model, ckpt)
    common = ("--model", ckpt, "--device", "cpu")
    single = tmp_path / "single"
    single.mkdir()
    _lit("extract", photos, "--out", single / "f.h5", "--quiet", *common, codes=(3,))  # 3: a bad image
    _lit("index", single / "f.h5", "--out", single / "i.h5", "--codebook-size", "16", "--device", "cpu")
    _lit("search", single / "i.h5", "--query-features", single / "f.h5", "--topk", "5", "--json", single / "r.json",
         "--device", "cpu")
    expect = json.loads((single / "r.json").read_text())
    assert len(expect["queries"]) == 7 and all(len(r["results"]) == 5 for r in expect["queries"])
    paths = sorted(str(p) for p in photos.iterdir())
    for nproc in (2, 4):
        sh = tmp_path / f"sharded{nproc}"
        sh.mkdir()
        if nproc == 2:  # rank 1 was interrupted after its first image: its shard holds it already
            lo, _ = split_range(len(paths), 1, nproc)
            # (same thread count as the ranks: CPU convolutions round differently with other counts)
            _lit("extract", paths[lo], "--out", shard_path(sh / "f.h5", 1, nproc), "--root", photos, "--quiet", *common)
        proc = _lit("extract", photos, "--out", sh / "f.h5", "--quiet", *common, nproc=nproc)
        assert f"rank 1/{nproc}" in proc.stdout
        assert ("skipped 1 already done" in proc.stdout) is (nproc == 2)
        assert len(find_shards(sh / "f.h5")) == nproc
        with FeatureStore(single / "f.h5") as a, FeatureCollection(sh / "f.h5") as b:
            assert a.names == b.names and set(a.failed) == set(b.failed) == {"broken.jpg"}
            assert np.array_equal(a.all_descriptors()[0], b.all_descriptors()[0])
        proc = _lit("index", sh / "f.h5", "--out", sh / "i.h5", "--codebook-size", "16", "--device", "cpu", nproc=nproc)
        assert f"into {nproc} parts" in proc.stdout
        assert np.array_equal(ASMK.load(single / "i.h5").codebook, ShardedIndex(find_shards(sh / "i.h5")).codebook)
        _lit("search", sh / "i.h5", "--query-features", sh / "f.h5", "--topk", "5", "--json", sh / "r.json",
             "--device", "cpu", nproc=nproc)
        assert json.loads((sh / "r.json").read_text()) == expect  # same names, ranks and scores
        if nproc == 2:  # the same sharded index searched part by part in one process
            _lit("search", sh / "i.h5", "--query-features", sh / "f.h5", "--topk", "5", "--json", sh / "r1.json",
                 "--device", "cpu")
            assert json.loads((sh / "r1.json").read_text()) == expect


def test_single_index_streams_the_database_when_the_codebook_comes_from_elsewhere(tmp_path, monkeypatch):
    """lit index with --codebook/--train-features adds the database in chunks (bounded
    memory), with the same index as adding everything at once."""
    import lit.features as shards
    from lit import pipeline

    names = [f"img{i}.jpg" for i in range(13)]
    _fake_store(tmp_path / "db.h5", names, seed=1)
    codebook = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    chunks = []
    real = shards.FeatureCollection.iter_descriptors

    def spy(self, lo=0, hi=None, max_rows=shards.STREAM_ROWS):
        for desc, ids in real(self, lo, hi, max_rows=10):
            chunks.append(len(desc))
            yield desc, ids

    monkeypatch.setattr(shards.FeatureCollection, "iter_descriptors", spy)
    monkeypatch.setattr(shards.FeatureCollection, "all_descriptors", lambda self: pytest.fail("loaded everything"))
    index, info = pipeline.build_index(tmp_path / "db.h5", codebook=codebook, codebook_source="given")
    assert len(chunks) > 3 and max(chunks) <= 10 + 6  # chunks of whole images, about 10 rows each
    monkeypatch.undo()
    with FeatureStore(tmp_path / "db.h5") as st:
        desc, ids = st.all_descriptors()
    whole = ASMK(codebook)
    whole.add(desc, ids)
    assert info.descriptors == len(desc) and info.names == tuple(names)
    a, b = index.search(desc, ids, topk=5), whole.search(desc, ids, topk=5)
    assert torch.equal(a.ranks, b.ranks) and torch.equal(a.scores, b.scores)


def test_streamed_descriptors_are_checked(tmp_path):
    import h5py

    from lit.features import FeatureFileError

    _fake_store(tmp_path / "db.h5", [f"img{i}.jpg" for i in range(5)])
    with h5py.File(tmp_path / "db.h5", "a") as h:
        h["descriptors"][4] = np.float32(3e38)  # overwritten bytes: finite but absurd
    with FeatureCollection(tmp_path / "db.h5") as coll, pytest.raises(FeatureFileError, match="damaged feature file"):
        list(coll.iter_descriptors())
