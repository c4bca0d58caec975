"""Live collections (``lit add`` / ``lit remove``, :mod:`lit.pipeline.live`): what a change
costs against a rebuild with the same codebook, and what the journal costs searches.

Synthetic data: 128-d descriptors, ``--words`` random centres used as the codebook,
``--per-image`` descriptors per image = centre + noise (binary ASMK, FIRe's options). Words
are assigned by the real nearest-word search everywhere (the rebuild and the adds alike).

Per database size N (``--sizes``):

- ``rebuild_s``: building the index of N images from their descriptors with the codebook and
  writing it (what ``lit index --codebook`` does after reading the feature file: a lower
  bound of a real rebuild);
- ``add100_s``: ``lit add INDEX --features F`` of 100 new images, one-shot (open, aggregate,
  write the segment, commit the manifest; median of ``--repeats``), and its ratio to the
  rebuild; ``remove100_s`` the same for ``lit remove`` of 100 names. The compaction
  threshold is lifted while these are timed (a small index would compact after a few
  hundred changes); compaction is timed on its own (``compact_s``) and, run once every
  ``COMPACT_FRACTION x N`` changes, costs ``amortised_compaction_per_100_s`` per 100;
- for N >= ``--search-from``: search times of ``--queries`` query images (topk 100) on
  three indexes of the same images: *churned* (1,000 adds in 10 commits and 1,000 removes
  in 10 commits kept in the journal: tombstones, an appended segment, as the open
  ``LiveIndex`` that made them holds them), *compacted* (a copy of that journal opened and
  compacted in place) and *fresh* (another copy compacted on disk and opened from its base
  file alone, as a rebuilt index is). They are timed in ``--rounds`` rounds, each index
  once per round in a rotating order so that the machine's load hits all alike, with
  ``--search-threads`` torch threads (1: on a shared machine more threads mostly wait for
  each other): wall time and the process's CPU time, medians, and the median per-round
  ratio to the fresh index (``search_churned_vs_fresh_cpu`` ...; criterion: within 10 %,
  compacted equal); whether the results are the same; the first search after the last
  change (idf and norms recomputed);
- while those 20 changes are made, another thread searches without pause (one query,
  topk 100): the median and the longest search time (``search_during_changes_*``) against
  the in-memory merges the changes made (``merges_during_changes``, the longest build
  ``merge_build_max_s``): a search that waited for a merge would last as long as it.

Usage::

    python benchmarks/live_index.py                                    # 1k, 10k, 100k images
    python benchmarks/live_index.py --sizes 1000,10000 --repeats 3 --rounds 5   # quick

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import statistics
import tempfile
import threading
import time

import numpy as np
import torch

from lit.asmk import ASMK
from lit.asmk.ivf import InvertedFile
from lit.features import FeatureStore
from lit.index_file import IndexInfo, write_index
from lit.pipeline import live as live_module
from lit.pipeline.live import LiveIndex, add_images, compact_index, remove_images
from lit.types import LocalFeatures

DIM = 128
NOISE = 0.35


class Data:
    """Images as descriptors drawn around random codebook centres (deterministic per id)."""

    def __init__(self, words: int, per_image: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.centres = torch.randn(words, DIM, generator=g)
        self.per_image = per_image

    def images(self, first: int, count: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(1_000_003 + first)
        pick = torch.randint(0, self.centres.shape[0], (count * self.per_image,), generator=g)
        return self.centres[pick] + NOISE * torch.randn(count * self.per_image, DIM, generator=g)


def name(i: int) -> str:
    return f"img/{i:07d}.jpg"


def build(data: Data, n: int, path: str) -> float:
    start = time.perf_counter()
    index = ASMK(data.centres, binary=True)
    chunk = 2000
    for first in range(0, n, chunk):
        count = min(chunk, n - first)
        x = data.images(first, count)
        ids = torch.arange(first, first + count).repeat_interleave(data.per_image)
        index.add(x, ids)
    write_index(path, index, IndexInfo(names=tuple(name(i) for i in range(n)), fingerprint="synthetic",
                                       codebook_source="synthetic", codebook_size=data.centres.shape[0]))
    return time.perf_counter() - start


def feature_file(data: Data, first: int, count: int, path: str) -> str:
    x = data.images(first, count).reshape(count, data.per_image, DIM)
    k = data.per_image
    with FeatureStore(path, "a", descriptor_dim=DIM, fingerprint="synthetic") as store:
        for i in range(count):
            store.append(name(first + i), LocalFeatures(x[i], torch.ones(k), torch.ones(k), torch.arange(k)))
    return path


def queries(data: Data, n: int, count: int):
    rng = np.random.default_rng(7)
    out = []
    for i in rng.choice(n, size=count, replace=False).tolist():
        x = data.images(int(i), 1)
        x = x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        out.append(LocalFeatures(x, torch.ones(len(x)), torch.ones(len(x)), torch.arange(len(x))))
    return out


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def run_size(data: Data, n: int, args, folder: str) -> dict:
    path = os.path.join(folder, f"index-{n}.h5")
    row: dict = {"images": n, "descriptors_per_image": data.per_image, "words": int(data.centres.shape[0])}
    row["rebuild_s"] = build(data, n, path)
    adds = []
    next_id = n
    threshold = live_module.COMPACT_FRACTION
    live_module.COMPACT_FRACTION = 1e9
    for r in range(args.repeats):
        f = feature_file(data, next_id, 100, os.path.join(folder, f"add-{n}-{r}.h5"))
        start = time.perf_counter()
        report = add_images(path, features=f, device="cpu")
        adds.append(time.perf_counter() - start)
        assert len(report.added) == 100 and not report.compacted
        next_id += 100
    row["add100_s"] = statistics.median(adds)
    row["add100_fraction_of_rebuild"] = row["add100_s"] / row["rebuild_s"]
    removes = []
    for r in range(args.repeats):
        names = [name(i) for i in range(r * 100, r * 100 + 100)]
        start = time.perf_counter()
        report = remove_images(path, names, device="cpu")
        removes.append(time.perf_counter() - start)
        assert len(report.removed) == 100 and not report.compacted
    row["remove100_s"] = statistics.median(removes)
    row["remove100_fraction_of_rebuild"] = row["remove100_s"] / row["rebuild_s"]
    with LiveIndex.open(path, device="cpu", load=False) as live:
        start = time.perf_counter()
        live.compact()  # reads the base and the journal, writes the new base
        row["compact_s"] = time.perf_counter() - start
    row["amortised_compaction_per_100_s"] = row["compact_s"] * 100 / (threshold * n)
    if n < args.search_from:
        live_module.COMPACT_FRACTION = threshold
        return row

    qs = queries(data, n, args.queries)
    qnames = [f"q{i}" for i in range(len(qs))]
    with LiveIndex.open(path, device="cpu") as live:  # compacted above
        with searching_during(live, qs[:1], qnames[:1]) as during:
            for b in range(10):  # 1,000 adds in 10 commits, 1,000 removes in 10 commits: kept in the journal
                live.add_features(feature_file(data, next_id, 100, os.path.join(folder, f"grow-{n}-{b}.h5")))
                next_id += 100
                live.remove([name(i) for i in range(1000 + b * 100, 1100 + b * 100)])
        row.update(during)
        stats = live.stats()
        row["journal_segments"] = stats["journal_segments"]
        row["removed_pending"] = stats["removed_pending"]
        row["removed_entries_scored"] = stats["removed_entries_pending"]
        row["entries"] = stats["entries"]
        start = time.perf_counter()
        live.search(qs, qnames, topk=100)
        row["search_first_after_change_s"] = time.perf_counter() - start  # idf and norms recomputed
        # the compacted index: a copy of the journal, opened and compacted in place; the
        # fresh one: another copy compacted on disk, then opened from its base file alone
        copies = {}
        for tag in ("compacted", "fresh"):
            copies[tag] = os.path.join(folder, f"{tag}-{n}.h5")
            shutil.copyfile(path, copies[tag])
            shutil.copytree(path + ".live", copies[tag] + ".live")
        start = time.perf_counter()
        compacted = LiveIndex.open(copies["compacted"], device="cpu")
        compacted.compact()
        row["compact_loaded_s"] = time.perf_counter() - start
        compact_index(copies["fresh"], device="cpu")
        shutil.rmtree(copies["fresh"] + ".live")
        fresh = LiveIndex.open(copies["fresh"], device="cpu")
        with compacted, fresh:
            row.update(compare_searches({"fresh": fresh, "churned": live, "compacted": compacted}, qs, qnames,
                                        args.rounds, args.search_threads))
    live_module.COMPACT_FRACTION = threshold
    return row


@contextlib.contextmanager
def searching_during(live: LiveIndex, qs, qnames):
    """Another thread searches ``live`` without pause while the block runs; gives (filled in
    when the block ends) the search times and the in-memory merges' build times."""
    out: dict = {}
    merges, latencies, stop = [], [], threading.Event()
    built = InvertedFile.compacted

    def timed_compacted(ivf, *args, **kwargs):
        start = time.perf_counter()
        made = built(ivf, *args, **kwargs)
        merges.append(time.perf_counter() - start)
        return made

    def searcher():
        while not stop.is_set():
            start = time.perf_counter()
            live.search(qs, qnames, topk=100)
            latencies.append(time.perf_counter() - start)

    InvertedFile.compacted = timed_compacted
    thread = threading.Thread(target=searcher, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        InvertedFile.compacted = built
    out.update({"searches_during_changes": len(latencies),
                "search_during_changes_median_s": statistics.median(latencies) if latencies else None,
                "search_during_changes_max_s": max(latencies, default=None),
                "merges_during_changes": len(merges), "merge_build_max_s": max(merges, default=None)})


def compare_searches(indexes: dict, qs, qnames, rounds: int, threads: int) -> dict:
    """Search times of indexes measured in rounds, each index once per round in a rotating
    order (the machine's load hits all alike), with ``threads`` threads: wall time and the
    process's CPU time (what the search computed, whatever else the machine runs); medians
    and the median per-round ratio to ``fresh``. And whether the results are the same."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    keys = list(indexes)
    wall = {k: [] for k in keys}
    cpu = {k: [] for k in keys}
    results = {k: indexes[k].search(qs, qnames, topk=100) for k in keys}  # warm: idf and norms computed
    gc.collect()
    gc.freeze()  # the three indexes' objects out of the collector's way: its passes are noise here
    try:
        for r in range(rounds):
            for k in keys[r % len(keys):] + keys[: r % len(keys)]:
                w, c = time.perf_counter(), time.process_time()
                indexes[k].search(qs, qnames, topk=100)
                cpu[k].append(time.process_time() - c)
                wall[k].append(time.perf_counter() - w)
    finally:
        torch.set_num_threads(saved)
        gc.unfreeze()
    out = {"search_threads": threads, "search_rounds": rounds, "search_queries": len(qs)}
    for k in keys:
        out[f"search_{k}_wall_s"] = statistics.median(wall[k])
        out[f"search_{k}_cpu_s"] = statistics.median(cpu[k])
        if k != "fresh":
            out[f"search_{k}_vs_fresh_wall"] = statistics.median(a / b for a, b in zip(wall[k], wall["fresh"],
                                                                                       strict=True))
            out[f"search_{k}_vs_fresh_cpu"] = statistics.median(a / b for a, b in zip(cpu[k], cpu["fresh"],
                                                                                      strict=True))
            out[f"same_results_{k}_as_fresh"] = same(results[k], results["fresh"])
    return out


def same(got, want) -> bool:
    return all([h.name for h in g.hits] == [h.name for h in w.hits]
               and np.allclose([h.score for h in g.hits], [h.score for h in w.hits], rtol=1e-5)
               for g, w in zip(got, want, strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--per-image", type=int, default=50)
    p.add_argument("--words", type=int, default=1024)
    p.add_argument("--queries", type=int, default=20)
    p.add_argument("--repeats", type=int, default=5, help="timings of adds and removes (median)")
    p.add_argument("--rounds", type=int, default=15, help="rounds of searches (each index once per round)")
    p.add_argument("--search-threads", type=int, default=1, help="torch threads while searches are timed")
    p.add_argument("--search-from", type=int, default=10000, help="measure searches from this size on")
    args = p.parse_args()
    torch.manual_seed(0)
    data = Data(args.words, args.per_image)
    out = {"benchmark": "live_index", "threads": torch.get_num_threads(), "compact_fraction": live_module.COMPACT_FRACTION,
           "sizes": []}
    with tempfile.TemporaryDirectory() as folder:
        for n in (int(s) for s in args.sizes.split(",")):
            out["sizes"].append(run_size(data, n, args, folder))
            print(json.dumps(out["sizes"][-1]), flush=True, file=__import__("sys").stderr)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
