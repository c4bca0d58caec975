"""`lit add` as a user runs it (subprocesses): kill -9 at every stage of a change leaves an
index that opens and searches as before or after it, and a rerun completes it; a second
writer is refused with a clear message or waits; a reader in another process sees whole
commits while photos are added."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import torch

from lit.features import FeatureStore, open_features
from lit.index_file import IndexInfo, load_index, read_info, write_index, writer_lock
from lit.pipeline import index_collection
from lit.pipeline.live import add_images
from lit.pipeline.search import search
from lit.types import LocalFeatures

D = 16
FP = "fingerprint-of-a-test-model"
BASE = [f"a/{i:03d}" for i in range(40)]
NEW = [f"b/{i:03d}" for i in range(6)]  # below the compaction threshold of 40 photos
MANY = [f"c/{i:03d}" for i in range(15)]  # above it: the add compacts
QUERIES = ["q/one", "a/003", "b/001", "c/002"]

# Run `lit add` in a process that kills itself (SIGKILL, as kill -9) at one stage of the change.
KILLER = r"""
import json, os, signal, sys
import lit.pipeline.live as live

def die(*_a, **_k):
    os.kill(os.getpid(), signal.SIGKILL)

point = sys.argv[1]
if point == "segment-written":  # the segment file is in place, the manifest not yet
    live.write_manifest = die
elif point == "manifest-half-written":  # the new manifest's temporary file is written, not renamed
    dump = json.dump
    def half(obj, fh, *a, **k):
        dump(obj, fh, *a, **k)
        fh.flush()
        die()
    json.dump = half
elif point == "committed":  # the manifest is in place, the clean-up not done
    live.LiveIndex._drop_staging = die
elif point == "compaction-base-written":  # the compacted base is in place, its manifest not
    write_index = live.write_index
    def then_die(*a, **k):
        write_index(*a, **k)
        die()
    live.write_index = then_die
from lit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def lit_cli(*args, ok=True, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "lit", *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def descriptors(name: str) -> torch.Tensor:
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return torch.from_numpy(rng.standard_normal((int(rng.integers(4, 20)), D)).astype(np.float32))


def features(path, names) -> str:
    with FeatureStore(path, "a", descriptor_dim=D, fingerprint=FP, settings={"scales": [1.0]}) as store:
        for n in names:
            d = descriptors(n)
            store.append(n, LocalFeatures(d, torch.ones(len(d)), torch.ones(len(d)), torch.arange(len(d))))
    return os.fspath(path)


CODEBOOK = np.random.default_rng(0).standard_normal((12, D)).astype(np.float32)


def build(path, feats) -> str:
    with open_features(feats) as coll:
        index = index_collection(CODEBOOK, coll, use_idf=True)
        write_index(path, index, IndexInfo(names=tuple(coll.names), fingerprint=FP, codebook_size=len(CODEBOOK)))
    return os.fspath(path)


def results(index_path):
    index, info = load_index(index_path)
    qs = [descriptors(n) for n in QUERIES]
    qs = [LocalFeatures(d, torch.ones(len(d)), torch.ones(len(d)), torch.arange(len(d))) for d in qs]
    return [[(h.name, round(h.score, 5)) for h in r.hits] for r in search(index, info, qs, QUERIES, topk=None)]


def scratch(tmp_path, names, tag):
    return results(build(tmp_path / f"{tag}-ref.h5", features(tmp_path / f"{tag}-ref-f.h5", names)))


@pytest.mark.parametrize("point,added", [
    ("segment-written", NEW), ("manifest-half-written", NEW), ("committed", NEW), ("compaction-base-written", MANY),
])
def test_kill_at_any_stage_leaves_the_index_before_or_after_and_a_rerun_completes(tmp_path, point, added):
    index = build(tmp_path / "index.h5", features(tmp_path / "base.h5", BASE))
    feats = features(tmp_path / "new.h5", added)
    before = results(index)
    after = scratch(tmp_path, BASE + added, "after")
    proc = subprocess.run([sys.executable, "-c", KILLER, point, "add", index, "--features", feats, "--device", "cpu"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # it was killed
    state = results(index)  # opens and searches
    assert state in (before, after)
    add_images(index, features=feats, device="cpu")  # the rerun completes it
    assert results(index) == after
    assert list(read_info(index).names) == BASE + added
    leftovers = [f for f in os.listdir(f"{index}.live") if f.startswith(("seg-", "staging", "."))]
    assert len(leftovers) <= (0 if point == "compaction-base-written" else 1)  # the committed segment at most


def test_a_second_writer_is_refused_with_a_message(tmp_path):
    index = build(tmp_path / "index.h5", features(tmp_path / "base.h5", BASE))
    feats = features(tmp_path / "new.h5", NEW)
    with writer_lock(index):  # another writer at work (waiting for it: tests/pipeline/test_live.py)
        refused = lit_cli("add", index, "--features", feats, "--device", "cpu", ok=False)
    assert refused.returncode == 2 and "is being changed by another process (pid" in refused.stderr
    assert list(read_info(index).names) == BASE  # nothing lost, nothing half-done


READER = r"""
import json, os, sys
from lit.index_file import load_index
seen = []
open(sys.argv[2], "w").close()  # ready
while not os.path.exists(sys.argv[3]):
    index, info = load_index(sys.argv[1])
    assert index.n_images == len(info.names)
    seen.append(len(info.names))
print(json.dumps(seen))
"""


def test_a_reader_in_another_process_sees_whole_commits_while_photos_are_added(tmp_path):
    index = build(tmp_path / "index.h5", features(tmp_path / "base.h5", BASE))
    batches = [features(tmp_path / f"n{j}.h5", [f"n{j}/{i}" for i in range(3)]) for j in range(5)]
    ready, done = tmp_path / "ready", tmp_path / "done"
    reader = subprocess.Popen([sys.executable, "-c", READER, index, ready, done], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for f in batches:  # the fourth batch passes the threshold: a compaction happens while it reads
            add_images(index, features=f, device="cpu")
            time.sleep(0.2)
    finally:
        done.touch()
    out, _ = reader.communicate(timeout=120)
    assert reader.returncode == 0
    seen = json.loads(out)
    assert len(seen) > 1 and set(seen) <= {len(BASE) + 3 * j for j in range(6)}  # whole commits only
    assert seen == sorted(seen)
