"""Faults injected into lit's writers and files: a full disk, kill -9 at chosen points,
damaged feature and index files, bad options. Each must end in one line (a LitError, or
exit status != 0 with one line on stderr), never a traceback, and never in results that
differ silently from the undamaged run. ``benchmarks/fault_tour.py`` runs the larger tour."""

import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lit import pipeline
from lit.errors import LitError, StorageError
from lit.features import FeatureStore
from lit.index_file import write_index
from lit.types import LocalFeatures

SEED = 25
NAMES = [f"scene_{s}/{i}.jpg" for s in "abc" for i in range(4)] + [os.fsdecode(b"scene_c/caf\xe9.jpg")]


def _feats(rng, centre, k=24, d=8):
    x = (rng.normal(size=(k, d)) + centre).astype(np.float32)
    return LocalFeatures(descriptors=torch.from_numpy(x), strengths=torch.rand(k), scales=torch.ones(k),
                         superfeature_ids=torch.arange(k), positions=torch.rand(k, 2))


def _feature_file(path, names=NAMES, fingerprint="fp"):
    rng = np.random.default_rng(0)
    centres = {s: rng.normal(scale=3, size=8).astype(np.float32) for s in "abc"}
    with FeatureStore(path, "a", descriptor_dim=8, fingerprint=fingerprint) as st:
        for n in names:
            st.append(n, _feats(rng, centres[n[6]]))
            if n.endswith("1.jpg"):
                st.add_failure(n.replace("1.jpg", "bad.jpg"), "not an image")
    return path


def _results(features, index_path=None):
    """Ranked names of every query of ``features`` against the index (built from
    ``features`` when ``index_path`` is None, else read from it)."""
    if index_path is None:
        index, info = pipeline.build_index(features, seed=0)
    else:
        index, info = pipeline.open_index(index_path)
    q = pipeline.queries_from_features(features, info)
    hits = pipeline.search(index, info, q.features, q.names, topk=5)
    return [(r.query, [(h.name, round(h.score, 5)) for h in r.hits]) for r in hits]


def _damage(src, dst, rng, kind):
    data = bytearray(open(src, "rb").read())
    if kind == "truncate":
        data = data[: int(rng.integers(0, len(data)))]
    else:
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] ^= int(rng.integers(1, 256))
    open(dst, "wb").write(bytes(data))


def _tour(clean, run, tmp_path, cases, suffix):
    """Damage ``clean`` ``cases`` times; count the outcomes of ``run(damaged)``."""
    rng = np.random.default_rng(SEED)
    expected = run(clean)
    counts = {"refused": 0, "same": 0, "different": [], "traceback": []}
    for case in range(cases):
        kind = "truncate" if case % 4 == 3 else "flip"
        bad = tmp_path / f"bad{case}{suffix}"
        _damage(clean, bad, rng, kind)
        try:
            got = run(bad)
        except LitError as err:
            counts["refused"] += 1
            assert str(err).count("\n") == 0 and os.path.basename(bad) in str(err), str(err)
        except Exception as err:  # noqa: BLE001 - a traceback: what the tour counts
            counts["traceback"].append(f"{kind}: {type(err).__name__}: {err}")
        else:
            if got == expected:
                counts["same"] += 1
            else:
                counts["different"].append(kind)
        bad.unlink()
    return counts


def test_damaged_feature_files_are_refused_or_give_the_same_results(tmp_path):
    clean = _feature_file(tmp_path / "clean.h5")
    counts = _tour(clean, _results, tmp_path, 56, ".h5")
    assert counts["traceback"] == [] and counts["different"] == [], counts
    assert counts["refused"] >= 20  # most damage is detected, not merely harmless


def test_damaged_index_files_are_refused_or_give_the_same_results(tmp_path):
    feats = _feature_file(tmp_path / "feats.h5")
    index, info = pipeline.build_index(feats, seed=0)
    clean = write_index(tmp_path / "clean.idx.h5", index, info)
    counts = _tour(clean, lambda p: _results(feats, p), tmp_path, 56, ".idx.h5")
    assert counts["traceback"] == [] and counts["different"] == [], counts
    assert counts["refused"] >= 20


# ---------------------------------------------------------------------------- disk full
IMAGES = 24  # x 200 rows x 64 floats: 51 kB each


def _write_images(path, images=IMAGES):
    """Append images ``im000.jpg``... to a feature file, skipping those it holds (a rerun)."""
    with FeatureStore(path, "a", descriptor_dim=64, fingerprint="fp") as st:
        for i in range(images):
            name = f"im{i:03d}.jpg"
            if name in st.names:
                continue
            g = torch.Generator().manual_seed(i)
            k = 200
            st.append(name, LocalFeatures(torch.randn(k, 64, generator=g), torch.rand(k, generator=g),
                                          torch.ones(k), torch.arange(k), torch.rand(k, 2, generator=g)))


_LIMITED_WRITER = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
    from lit.errors import LitError
    from test_faults import _write_images
    try:
        _write_images(sys.argv[1])
    except LitError as err:  # as the command line does: one line, exit 2
        print(f"{type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(2)
""")


def _contents(path):
    with FeatureStore(path) as st:
        desc, ids = st.all_descriptors()
        return list(st.names), desc, ids


def test_a_write_that_fails_stops_with_one_line_and_a_rerun_gives_the_clean_file(tmp_path):
    """The writer's file may not grow past 700 kB (RLIMIT_FSIZE: every write past it fails,
    as on a full disk; about 10 images fit): one line, no traceback, no crash, nothing
    partial committed; the rerun (room again) ends with exactly what an uninterrupted run
    writes. ``benchmarks/fault_tour.py`` (``disk_full``, ``tmpfs``) runs more limits and a
    real full tmpfs."""
    _write_images(tmp_path / "clean.h5")
    hit = tmp_path / "hit.h5"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _LIMITED_WRITER, str(hit), "700000"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 2, proc  # the script's status for a LitError, not a signal (segfault)
    assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr, proc.stderr
    assert "StorageError" in proc.stderr and "images kept, rerun to continue" in proc.stderr, proc.stderr
    with contextlib.suppress(LitError):  # the damaged file reads back its committed images, or refuses
        names, desc, _ = _contents(hit)
        assert 0 < len(names) < IMAGES and (np.abs(desc).max(axis=1) > 0).all()
    _write_images(hit)  # the rerun, with room
    got, clean = _contents(hit), _contents(tmp_path / "clean.h5")
    assert got[0] == clean[0] and np.array_equal(got[1], clean[1]) and np.array_equal(got[2], clean[2])


def test_a_full_disk_is_refused_before_writing(tmp_path, monkeypatch):
    path = tmp_path / "f.h5"
    with FeatureStore(path, "a", descriptor_dim=8, fingerprint="fp") as st:
        st.append("a.jpg", _feats(np.random.default_rng(0), 0))
        free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
        monkeypatch.setattr("lit.features.SPACE_MARGIN", free + 1)
        with pytest.raises(StorageError, match=r"disk full while writing .*f\.h5.*1 images kept"):
            st.append("b.jpg", _feats(np.random.default_rng(1), 0))
        monkeypatch.undo()
    assert _contents(path)[0] == ["a.jpg"]


def test_a_full_disk_while_lit_index_rewrites_an_index_leaves_the_old_one(tmp_path):
    """``lit index --overwrite`` whose file may not grow past half of the new index
    (RLIMIT_FSIZE, as a full disk): one line, exit 2, the old index untouched and searching
    as before."""
    feats = _feature_file(tmp_path / "feats.h5")
    old = _feature_file(tmp_path / "old.h5", names=NAMES[:6])
    out = tmp_path / "index.h5"
    index, info = pipeline.build_index(old, seed=0)
    write_index(out, index, info)
    before, size = _results(old, out), os.path.getsize(out)
    index, info = pipeline.build_index(feats, seed=0)
    limit = os.path.getsize(write_index(tmp_path / "new.h5", index, info)) // 2
    script = textwrap.dedent(f"""
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, resource.RLIM_INFINITY))
        from lit.cli import main
        sys.exit(main(sys.argv[1:]))
    """)
    proc = subprocess.run([sys.executable, "-c", script, "index", str(feats), "--out", str(out), "--overwrite",
                           "--codebook-size", "8", "--device", "cpu"], capture_output=True, text=True, timeout=300)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("lit index: error: ")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(errors) == 1 and "while writing it; the file it replaces is unchanged" in errors[0], proc.stderr
    assert os.path.getsize(out) == size and _results(old, out) == before
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_kill_9_during_an_index_rewrite_leaves_the_old_index_searchable(tmp_path):
    """Killed after the ASMK data and before the names (``benchmarks/fault_tour.py``,
    ``index_kills``, kills at the other injected points and at random moments)."""
    feats = _feature_file(tmp_path / "feats.h5")
    old = _feature_file(tmp_path / "old.h5", names=NAMES[:6])
    out = tmp_path / "index.h5"
    index, info = pipeline.build_index(old, seed=0)
    write_index(out, index, info)
    before = _results(old, out)
    script = textwrap.dedent(f"""
        import os
        import lit.index_file
        from lit import pipeline
        real = lit.index_file.write_asmk
        def dying(group, index, attrs=None):
            real(group, index, attrs=attrs)
            os.kill(os.getpid(), 9)
        lit.index_file.write_asmk = dying
        index, info = pipeline.build_index({str(feats)!r}, seed=0)
        lit.index_file.write_index({str(out)!r}, index, info)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert _results(old, out) == before  # the old index, whole
    assert [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # the dead writer's temporary
    with open(out, "rb"):  # a reader holding the file while it is replaced keeps the old one
        index, info = pipeline.build_index(feats, seed=0)
        write_index(out, index, info)
    assert _results(feats, out) == _results(feats)
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # the next write removed it


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("option, value, said", [
    ("--scales", "100", "--scales must be in (0, 4]"), ("--scales", "0", "--scales"), ("--scales", "-1,1", "--scales"),
    ("--scales", "nan", "--scales"), ("--image-size", "0", "--image-size must be an integer >= 16"),
    ("--image-size", "-3", "--image-size"), ("--features-num", "0", "--features-num must be an integer >= 1"),
    ("--batch-size", "0", "--batch-size must be an integer >= 1"), ("--workers", "-1", "--workers"),
    ("--max-pixels", "-5", "--max-pixels"),
])
def test_bad_extraction_options_are_refused_before_any_file_is_created(tmp_path, capsys, ckpt, option, value, said):
    from lit.cli import main

    photo = os.path.join(os.path.dirname(__import__("lit").__file__), "assets", "photos")
    out = tmp_path / "out" / "f.h5"
    status = main(["extract", photo, "--out", str(out), "--model", str(ckpt), "--device", "cpu", "--quiet",
                   "--text-model", "none", f"{option}={value}"])
    err = capsys.readouterr().err
    assert status == 2 and said in err and err.count("\n") == 1, err
    assert not out.exists() and not out.parent.exists()


# ---------------------------------------------------------------------------- messages and API
def test_a_truncated_feature_file_is_called_truncated_and_a_locked_one_in_use(tmp_path):
    import h5py

    path = _feature_file(tmp_path / "f.h5")
    data = open(path, "rb").read()
    cut = tmp_path / "cut.h5"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(LitError, match=r"cut\.h5: truncated \(") as err:
        FeatureStore(cut)
    assert "in use" not in str(err.value)
    writer = [sys.executable, "-c", textwrap.dedent(f"""
        from lit.errors import LitError
        from lit.features import FeatureStore
        try:
            FeatureStore({str(path)!r}, "a", descriptor_dim=8, fingerprint="fp").close()
        except LitError as err:
            print(err)
    """)]
    with h5py.File(path, "r"):  # a reader holds the file: a writer is told it is in use
        proc = subprocess.run(writer, capture_output=True, text=True, timeout=120)
    assert "in use by another process" in proc.stdout, proc


def test_an_index_rewrite_while_a_reader_holds_the_file_keeps_the_readers_index(tmp_path):
    import h5py

    feats = _feature_file(tmp_path / "feats.h5")
    out = tmp_path / "index.h5"
    index, info = pipeline.build_index(feats, seed=0)
    write_index(out, index, info)
    with h5py.File(out, "r") as reader:  # HDF5's lock on the old file
        old_names = list(reader["pipeline/names"][()])
        index2, info2 = pipeline.build_index(feats, seed=1)
        write_index(out, index2, info2)  # no "unable to lock file", no truncation
        assert list(reader["pipeline/names"][()]) == old_names
    assert _results(feats, out) == _results(feats, None) or os.path.getsize(out) > 0


def test_asmk_training_on_nan_is_a_lit_error():
    from lit.asmk import ASMK

    x = torch.randn(64, 8)
    x[3, 2] = float("nan")
    with pytest.raises(LitError, match="not finite"):
        ASMK.train(x, size=4)


@pytest.mark.parametrize("scale", [1e19, 1e-15, 1e30, 1e-30])
def test_matching_finds_every_self_match_at_any_finite_scale(scale):
    import lit

    a = torch.randn(50, 16, generator=torch.Generator().manual_seed(0)) * scale
    f = LocalFeatures(a, torch.ones(50), torch.ones(50), torch.arange(50))
    assert len(lit.match(f, f)) == 50
