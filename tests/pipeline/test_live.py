"""Live collections (lit.pipeline.live): photos added and removed in place give exactly the
results of an index built from scratch with the same codebook; the journal is committed
atomically, readers see whole commits, one writer at a time; drift and stats are reported.

Most tests use synthetic feature files (descriptors drawn from each name, so that a photo has
the same descriptors in every file) and ``add_features``; one test extracts real photos."""

from __future__ import annotations

import os
import threading
import time
import zlib

import h5py
import numpy as np
import pytest
import torch

from lit.features import FeatureStore, open_features
from lit.index_file import (
    IndexInfo,
    WriterBusy,
    live_folder,
    load_index,
    read_info,
    read_manifest,
    write_index,
    writer_lock,
)
from lit.pipeline import index_collection
from lit.pipeline.index import quantization_error
from lit.pipeline.live import LiveIndex, add_images, remove_images
from lit.pipeline.search import search
from lit.types import LocalFeatures

D = 16
FP = "fingerprint-of-a-test-model"


def descriptors(name: str, scale: float = 1.0) -> torch.Tensor:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    k = int(rng.integers(4, 20))
    return torch.from_numpy((rng.standard_normal((k, D)) * scale).astype(np.float32))


def write_features(path, names, *, scale: float = 1.0, fingerprint: str = FP, root=None) -> str:
    with FeatureStore(path, "a", descriptor_dim=D, fingerprint=fingerprint, root=root,
                      settings={"scales": [1.0], "features_num": 20, "image_size": 64}) as store:
        for n in names:
            d = descriptors(n, scale)
            k = d.shape[0]
            store.append(n, LocalFeatures(d, torch.ones(k), torch.ones(k), torch.arange(k)))
    return os.fspath(path)


def build(path, features, codebook, **params) -> str:
    """An index of a feature file with a given codebook (what `lit index --codebook` does)."""
    with open_features(features) as coll:
        index = index_collection(codebook, coll, **params)
        sample = coll.all_descriptors()[0]
        info = IndexInfo(names=tuple(coll.names), image_root=coll.root, fingerprint=coll.fingerprint,
                         features=os.fspath(features), codebook_source="test", codebook_size=len(codebook),
                         descriptors=coll.num_features, settings={"scales": [1.0], "features_num": 20},
                         codebook_error=quantization_error(index, sample))
    write_index(path, index, info)
    return os.fspath(path)


def codebook(k: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, D)).astype(np.float32)


def queries(names):
    return [LocalFeatures(descriptors(n), torch.ones(len(descriptors(n))), torch.ones(len(descriptors(n))),
                          torch.arange(len(descriptors(n)))) for n in names]


QUERY_NAMES = ["q/one", "q/two", "a/003", "b/001"]


def results_of(index, info):
    return search(index, info, queries(QUERY_NAMES), QUERY_NAMES, topk=None)


def assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert [h.name for h in g.hits] == [h.name for h in w.hits]
        np.testing.assert_allclose([h.score for h in g.hits], [h.score for h in w.hits], rtol=1e-5, atol=1e-7)


def from_scratch(tmp_path, names, cb, tag="ref", **params):
    feats = write_features(tmp_path / f"{tag}.h5", names)
    ref = build(tmp_path / f"{tag}-index.h5", feats, cb, **params)
    return results_of(*load_index(ref))


A = [f"a/{i:03d}" for i in range(10)]
B = [f"b/{i:03d}" for i in range(6)]
C = [f"c/{i:03d}" for i in range(5)]
MANY = [f"a/{i:03d}" for i in range(40)]  # a base large enough for a journal below the compaction threshold


@pytest.mark.parametrize("binary,use_idf,ma", [  # each option both ways, each pair of values once
    (True, False, 1), (True, True, 3), (False, True, 1), (False, False, 3)])
def test_grown_index_ranks_and_scores_as_one_built_from_scratch(tmp_path, binary, use_idf, ma):
    params = {"binary": binary, "use_idf": use_idf, "multiple_assignment": ma}
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", A), cb, **params)
    with LiveIndex.open(index, device="cpu") as live:
        live.add_features(write_features(tmp_path / "b.h5", B))
        live.remove(["a/001", "a/004", "b/002"])
        live.add_features(write_features(tmp_path / "c.h5", C + ["b/002"]))  # b/002 back, at the end
        live.remove(["c/003"])
        names = live.names()
        assert names == [n for n in A if n not in ("a/001", "a/004")] + [n for n in B if n != "b/002"] + \
            [n for n in C if n != "c/003"] + ["b/002"]
        want = from_scratch(tmp_path, names, cb, **params)
        assert_same(live.search(queries(QUERY_NAMES), QUERY_NAMES, topk=None), want)
        assert_same(results_of(*load_index(index)), want)  # another reader of the file, journal applied
        live.compact()
        assert_same(live.search(queries(QUERY_NAMES), QUERY_NAMES, topk=None), want)
    assert_same(results_of(*load_index(index)), want)  # the compacted base file alone


def test_adding_then_removing_a_set_gives_back_the_original_results(tmp_path):
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", A), cb, use_idf=True)
    before = results_of(*load_index(index))
    report = add_images(index, features=write_features(tmp_path / "b.h5", B[:2]), device="cpu")
    assert report.added == B[:2] and not report.compacted  # in the journal
    assert len(read_info(index).names) == len(A) + 2
    removed = remove_images(index, B[:2] + ["no/such"], device="cpu")
    assert removed.removed == B[:2] and removed.unknown == ["no/such"]
    after = results_of(*load_index(index))
    for g, w in zip(after, before, strict=True):  # exactly: same ranks, same float scores
        assert [(h.name, h.score) for h in g.hits] == [(h.name, h.score) for h in w.hits]


def test_a_name_added_again_replaces_its_photo(tmp_path):
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", A), cb)
    with LiveIndex.open(index, device="cpu") as live:
        report = live.add_features(write_features(tmp_path / "again.h5", ["a/002", "b/000"]))
        assert report.replaced == ["a/002"] and report.added == ["b/000"]
        assert live.names().count("a/002") == 1 and len(live) == len(A) + 1
        assert live.names()[-2:] == ["a/002", "b/000"]


def test_adding_costs_no_rewrite_of_the_index_file(tmp_path):
    """The base file is untouched by adds and removes below the compaction threshold; the
    change is one new segment file and the manifest."""
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", MANY), cb)
    stat = os.stat(index)
    add_images(index, features=write_features(tmp_path / "b.h5", B[:2]), device="cpu")
    remove_images(index, ["a/000"], device="cpu")
    assert os.stat(index).st_mtime_ns == stat.st_mtime_ns and os.stat(index).st_ino == stat.st_ino
    files = sorted(os.listdir(live_folder(index)))
    assert [f for f in files if f.startswith("seg-")].__len__() == 1 and "manifest.json" in files
    manifest = read_manifest(index)
    assert manifest.commit == 2 and manifest.added == 2 and len(manifest.removed) == 1


def test_adding_and_removing_read_only_the_names_they_change(tmp_path, monkeypatch):
    """`lit add` / `lit remove` find the names they change in the base's name table: the
    collection's names are not read (their cost grows with the change, not the index)."""
    from lit import index_file

    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", MANY), cb)
    b = write_features(tmp_path / "b.h5", ["a/003", "b/000"])
    monkeypatch.setattr(index_file, "_read_names", lambda *a: pytest.fail("every name of the index read"))
    report = add_images(index, features=b, device="cpu")
    assert report.replaced == ["a/003"] and report.added == ["b/000"]
    removed = remove_images(index, ["a/005", "b/000", "a/003", "no/such"], device="cpu")
    assert removed.removed == ["a/005", "b/000", "a/003"] and removed.unknown == ["no/such"]
    assert remove_images(index, ["a/005"], device="cpu").unknown == ["a/005"]
    monkeypatch.undo()
    assert list(read_info(index).names) == [n for n in MANY if n not in ("a/003", "a/005")]


def test_searches_do_a_bounded_extra_work_over_a_fresh_index(tmp_path, monkeypatch):
    """In memory, removed photos' entries are dropped and appended segments merged once
    they pass MERGE_FRACTION of the entries (a search's extra work over a fresh index stays
    bounded); results unchanged."""
    from lit.pipeline import live as live_module

    monkeypatch.setattr(live_module, "COMPACT_FRACTION", 1.0)  # the journal stays on disk
    monkeypatch.setattr(live_module, "MERGE_FRACTION", 0.05)  # one photo of 40 stays below it
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", MANY), cb, use_idf=True)
    with LiveIndex.open(index, device="cpu") as live:
        live.remove(["a/000"])
        live.add_features(write_features(tmp_path / "b0.h5", B[:1]))
        stats = live.stats()
        assert 0 < stats["removed_entries_pending"] <= live_module.MERGE_FRACTION * stats["entries"]
        assert stats["segments_in_memory"] == 2  # the base's and the appended one
        live.add_features(write_features(tmp_path / "b.h5", B[1:]))  # past the bound: merged
        assert live.stats()["segments_in_memory"] == 1 and live.stats()["removed_entries_pending"] == 0
        live.remove(["a/001", "a/002", "a/006", "b/003"])  # past the bound: dropped
        stats = live.stats()
        assert stats["removed_entries_pending"] == 0 and stats["removed_pending"] == 5
        names = live.names()
        assert_same(live.search(queries(QUERY_NAMES), QUERY_NAMES, topk=None), from_scratch(tmp_path, names, cb,
                                                                                             use_idf=True))
    with LiveIndex.open(index, device="cpu") as again:  # a reader loading the journal: the same bound
        assert again.stats()["removed_entries_pending"] == 0


def test_searches_go_on_while_the_segments_are_merged(tmp_path, monkeypatch):
    """The O(collection) merge in memory is built while searches run (they are not held
    behind the writer), then installed at once; results as a fresh index's."""
    from lit.asmk.ivf import InvertedFile
    from lit.pipeline import live as live_module

    monkeypatch.setattr(live_module, "COMPACT_FRACTION", 1.0)  # the journal stays on disk
    monkeypatch.setattr(live_module, "MERGE_FRACTION", 0.05)
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", MANY), cb, use_idf=True)
    during = []
    built = InvertedFile.compacted

    def compacted_while_searching(ivf, *args, **kwargs):
        def search():
            during.append((live.names(), live.search(queries(QUERY_NAMES), QUERY_NAMES, topk=None)))

        reader = threading.Thread(target=search, daemon=True)
        reader.start()
        reader.join(30)
        assert during, "a search waited for the merge"
        return built(ivf, *args, **kwargs)

    with LiveIndex.open(index, device="cpu") as live:
        live.search(queries(QUERY_NAMES), QUERY_NAMES, topk=None)  # loaded: the merge happens in memory
        monkeypatch.setattr(InvertedFile, "compacted", compacted_while_searching)
        live.remove(["a/000", "a/001", "a/002", "a/003"])  # past the bound
        assert len(during) == 1 and live.stats()["removed_entries_pending"] == 0
        names = live.names()
        want = from_scratch(tmp_path, names, cb, use_idf=True)
        assert during[0][0] == names
        assert_same(during[0][1], want)  # the search during the merge: the removal already applied
        assert_same(live.search(queries(QUERY_NAMES), QUERY_NAMES, topk=None), want)


def test_a_waiting_change_goes_before_searches_that_come_after_it():
    """Searches that overlap (some search always holds the index) cannot starve a change:
    once a writer waits, later readers wait for it."""
    from lit.pipeline.live import _SharedLock

    lock, order = _SharedLock(), []
    first_in, release_first = threading.Event(), threading.Event()

    def first_reader():
        with lock.read():
            first_in.set()
            release_first.wait(30)

    def writer():
        with lock.write():
            order.append("change")

    def later_reader():
        with lock.read():
            order.append("later search")

    threads = [threading.Thread(target=first_reader, daemon=True)]
    threads[0].start()
    assert first_in.wait(30)
    threads.append(threading.Thread(target=writer, daemon=True))
    threads[1].start()
    time.sleep(0.5)  # the writer waits for the first reader by now
    threads.append(threading.Thread(target=later_reader, daemon=True))
    threads[2].start()
    time.sleep(0.3)
    assert order == []  # the later search waits behind the waiting change
    release_first.set()
    for t in threads:
        t.join(30)
    assert order == ["change", "later search"]


def test_compaction_runs_on_threshold_and_leaves_a_plain_index(tmp_path):
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", A), cb)
    with LiveIndex.open(index, device="cpu") as live:
        report = live.add_features(write_features(tmp_path / "b.h5", B))  # 6 > 25 % of 10
        assert report.compacted
        names = live.names()
    assert read_manifest(index).segments == () and read_manifest(index).removed == ()
    assert not [f for f in os.listdir(live_folder(index)) if f.startswith("seg-")]
    with h5py.File(index, "r") as f:  # the base holds everything: an index of an earlier lit reads it
        assert [bytes(n).decode() for n in f["pipeline/names"][()]] == names


def test_a_journal_of_a_rebuilt_base_is_ignored(tmp_path):
    cb = codebook()
    feats = write_features(tmp_path / "a.h5", A)
    index = build(tmp_path / "index.h5", feats, cb)
    add_images(index, features=write_features(tmp_path / "b.h5", B[:1]), device="cpu")
    assert len(read_info(index).names) == len(A) + 1
    build(index, feats, cb)  # `lit index` again over the same file: a new base
    assert list(read_info(index).names) == A
    with LiveIndex.open(index, device="cpu") as live:
        assert live.names() == A
        live.add_features(write_features(tmp_path / "c.h5", C[:1]))
        assert live.names() == A + C[:1]


def test_an_index_of_an_earlier_lit_takes_adds_and_removals(tmp_path):
    cb = codebook()
    feats = write_features(tmp_path / "a.h5", A)
    index = build(tmp_path / "index.h5", feats, cb)
    with h5py.File(index, "a") as f:  # no generation and no name table, as lit wrote them before
        g = f["pipeline"]
        del g.attrs["generation"]
        for key in ("name_hashes", "name_buckets", "name_ids"):
            del g[key]
    with LiveIndex.open(index, device="cpu") as live:
        assert A[0] in live and "nowhere.jpg" not in live
        live.add_features(write_features(tmp_path / "b.h5", B[:1]))
        live.remove(A[:1])
        assert live.names() == A[1:] + B[:1]
        expected = from_scratch(tmp_path, A[1:] + B[:1], cb)
        assert_same(live.search(queries(QUERY_NAMES), QUERY_NAMES, topk=None), expected)


def test_a_second_writer_is_refused_or_waits(tmp_path):
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", A), cb)
    feats = write_features(tmp_path / "b.h5", B[:1])
    held = threading.Event()
    release = threading.Event()

    def other_writer():
        with writer_lock(index):
            held.set()
            release.wait(10)

    t = threading.Thread(target=other_writer)
    t.start()
    held.wait(10)
    try:
        with pytest.raises(WriterBusy, match="being changed by another process"):
            add_images(index, features=feats, device="cpu")
        assert len(read_info(index).names) == len(A)  # nothing half-done
        threading.Timer(0.3, release.set).start()
        report = add_images(index, features=feats, device="cpu", wait=10)  # waits for it
        assert report.added == B[:1]
    finally:
        release.set()
        t.join()


def test_another_process_changes_are_taken_in_before_writing(tmp_path):
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", A), cb)
    with LiveIndex.open(index, device="cpu") as one:
        add_images(index, features=write_features(tmp_path / "b.h5", B[:1]), device="cpu")  # someone else
        one.add_features(write_features(tmp_path / "c.h5", C[:1]))
        assert one.names() == A + B[:1] + C[:1]
    assert list(read_info(index).names) == A + B[:1] + C[:1]


def test_readers_see_whole_commits_while_photos_are_added(tmp_path):
    """Readers of the file (as another process would: load_index) and searches of the same
    LiveIndex from other threads, during adds, removes and a compaction: every read is one
    committed state, in order."""
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", A), cb)
    batches = [[f"n{j}/{i}" for i in range(2)] for j in range(6)]
    files = [write_features(tmp_path / f"n{j}.h5", b) for j, b in enumerate(batches)]
    states = [tuple(A)]
    for b in batches:
        states.append(states[-1] + tuple(b))
    states.append(tuple(n for n in states[-1] if n != "a/000"))
    seen_file, seen_live, errors = [], [], []
    stop = threading.Event()

    with LiveIndex.open(index, device="cpu") as live:
        def file_reader():
            while not stop.is_set():
                try:
                    idx, info = load_index(index)
                    assert idx.n_images == len(info.names)
                    seen_file.append(tuple(info.names))
                except Exception as err:  # noqa: BLE001 - collected and reported below
                    errors.append(err)

        def live_reader():
            while not stop.is_set():
                try:
                    res = live.search(queries(["q/one"]), ["q/one"], topk=None)
                    seen_live.append(tuple(sorted(h.name for h in res[0].hits)))
                except Exception as err:  # noqa: BLE001
                    errors.append(err)

        threads = [threading.Thread(target=file_reader), threading.Thread(target=live_reader)]
        for t in threads:
            t.start()
        for f in files:
            live.add_features(f)
        live.remove(["a/000"])
        live.compact()
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    assert seen_file and seen_live
    order = {s: i for i, s in enumerate(states)}
    positions = [order[s] for s in seen_file]  # KeyError: a state that was never committed
    assert positions == sorted(positions)
    sorted_states = {tuple(sorted(s)) for s in states}
    assert all(s in sorted_states for s in seen_live)


def test_drift_is_reported_when_new_photos_do_not_fit_the_codebook(tmp_path):
    cb = codebook()
    with open_features(write_features(tmp_path / "a.h5", A)) as coll:
        cb = coll.all_descriptors()[0][::3][:12]  # words on the data: small error
    index = build(tmp_path / "index.h5", tmp_path / "a.h5", cb)
    with LiveIndex.open(index, device="cpu") as live:
        fine = live.add_features(write_features(tmp_path / "b.h5", B[:1]))
        assert fine.drift is None and fine.reference_error > 0
        far = live.add_features(write_features(tmp_path / "far.h5", ["far/0"], scale=10.0))
        assert far.drift is not None and "retrain" in far.drift
        assert far.quantization_error > 10 * far.reference_error


def test_stats_show_images_pending_changes_and_the_codebook(tmp_path):
    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", MANY), cb)
    with LiveIndex.open(index, device="cpu") as live:
        live.add_features(write_features(tmp_path / "b.h5", B[:2]))
        live.remove(["a/005"])
        stats = live.stats()
    assert stats["images"] == len(MANY) + 1 and stats["base_images"] == len(MANY)
    assert stats["journal_segments"] == 1 and stats["journal_added"] == 2 and stats["removed_pending"] == 1
    assert stats["removed_entries_pending"] > 0 and stats["codebook_source"] == "test" and stats["words"] == 12


def test_features_of_another_model_are_refused(tmp_path):
    from lit.errors import FingerprintError

    cb = codebook()
    index = build(tmp_path / "index.h5", write_features(tmp_path / "a.h5", A), cb)
    with pytest.raises(FingerprintError):
        add_images(index, features=write_features(tmp_path / "x.h5", B, fingerprint="another"), device="cpu")
    assert list(read_info(index).names) == A
