"""lit.features: round trip, resume, failures, kill -9, damaged descriptors, a file in use by another process."""

import signal
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest
import torch
from photo_folders import random_photos
from PIL import Image

from lit.features import FeatureFileError, FeatureStore
from lit.models import save_checkpoint
from lit.pipeline import extract_to_file


def test_round_trip_and_resume(tmp_path, tiny_model):
    paths = random_photos(tmp_path / "imgs", 5, name="img{i:03d}.png")
    out = tmp_path / "feats.h5"
    s1 = extract_to_file(tiny_model, paths[:3], out, root=tmp_path / "imgs", progress=False)
    assert (s1.done, s1.skipped) == (3, 0)
    s2 = extract_to_file(tiny_model, paths, out, root=tmp_path / "imgs", progress=False)
    assert (s2.done, s2.skipped) == (2, 3)
    with FeatureStore(out) as store:
        assert store.names == [f"img{i:03d}.png" for i in range(5)]
        for i, p in enumerate(paths):
            ref = tiny_model.extract(p)
            got = store[i]
            torch.testing.assert_close(got.descriptors, ref.descriptors)
            torch.testing.assert_close(got.strengths, ref.strengths)
            assert torch.equal(got.superfeature_ids, ref.superfeature_ids)
            torch.testing.assert_close(store[f"img{i:03d}.png"].scales, ref.scales)
        desc, ids = store.all_descriptors()
        assert desc.shape == (5 * 20, 16) and np.array_equal(ids, np.repeat(np.arange(5), 20))
        with pytest.raises(KeyError, match="nope"):
            store["nope.png"]


def test_bad_files_are_reported_and_skipped(tmp_path, tiny_model):
    paths = random_photos(tmp_path / "imgs", 2, name="img{i:03d}.png")
    (tmp_path / "imgs" / "zero.jpg").write_bytes(b"")
    (tmp_path / "imgs" / "text.png").write_text("not an image")
    paths += [tmp_path / "imgs" / "zero.jpg", tmp_path / "imgs" / "text.png"]
    out = tmp_path / "f.h5"
    s = extract_to_file(tiny_model, paths, out, root=tmp_path / "imgs", progress=False)
    assert s.done == 2 and set(s.failed) == {"zero.jpg", "text.png"}
    assert "zero.jpg" in s.report() and "empty file" in s.report()
    again = extract_to_file(tiny_model, paths, out, root=tmp_path / "imgs", progress=False)
    assert (again.done, again.skipped, again.retried, len(again.failed)) == (0, 2, 2, 2)  # failures are retried
    assert again.status == 3
    kept = extract_to_file(tiny_model, paths, out, root=tmp_path / "imgs", progress=False, retry_failed=False)
    assert (kept.done, kept.skipped, kept.skipped_failed, kept.failed) == (0, 2, 2, {})
    with FeatureStore(out) as store:
        assert len(store) == 2 and set(store.failed) == {"zero.jpg", "text.png"}


def test_other_model_or_settings_are_refused(tmp_path, tiny_model):
    paths = random_photos(tmp_path / "imgs", 1, name="img{i:03d}.png")
    out = tmp_path / "f.h5"
    extract_to_file(tiny_model, paths, out, progress=False)
    with pytest.raises(FeatureFileError, match="fingerprint"):
        extract_to_file(tiny_model, paths, out, scales=[1.0], progress=False)
    with torch.no_grad():
        tiny_model.lit.templates_init.add_(1)
    with pytest.raises(FeatureFileError, match="another model"):
        extract_to_file(tiny_model, paths, out, progress=False)


def test_unreadable_feature_files(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"garbage")
    with pytest.raises(FeatureFileError, match="bad.h5"):
        FeatureStore(bad)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = 1
    with pytest.raises(FeatureFileError, match="not a lit feature file"):
        FeatureStore(other)
    with pytest.raises(FeatureFileError, match="no such"):
        FeatureStore(tmp_path / "missing.h5")


CHILD = textwrap.dedent("""
    import sys, time
    import lit
    from lit.pipeline import extract_to_file
    model = lit.load_model(sys.argv[1])
    real = model.extract_batch
    def slow(*a, **k):
        out = real(*a, **k)
        print("x", flush=True)
        time.sleep(0.15)
        return out
    model.extract_batch = slow
    extract_to_file(model, sys.argv[3:], sys.argv[2], progress=False)
""")


def test_kill_9_loses_at_most_the_image_in_flight(tmp_path, tiny_model):
    paths = [str(p) for p in random_photos(tmp_path / "imgs", 30, name="img{i:03d}.png")]
    out = tmp_path / "f.h5"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    save_checkpoint(tiny_model, tmp_path / "model.pt")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "model.pt"), str(out), *paths], stdout=subprocess.PIPE, text=True)
    for _ in range(6):
        assert proc.stdout.readline().strip() == "x"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with FeatureStore(out) as store:  # still readable
        n = len(store)
        assert 5 <= n < 30  # killed mid-run; the exact count depends on scheduling
        assert store.names == [f"img{i:03d}.png" for i in range(n)]  # relative to the common folder
    summary = extract_to_file(tiny_model, paths, out, progress=False)
    assert summary.skipped == n and summary.done == 30 - n
    with FeatureStore(out) as store:
        assert store.names == [f"img{i:03d}.png" for i in range(30)]
        torch.testing.assert_close(store[29].descriptors, tiny_model.extract(paths[29]).descriptors)
        torch.testing.assert_close(store[0].descriptors, tiny_model.extract(paths[0]).descriptors)


def test_batched_extraction_equals_one_by_one(tmp_path, tiny_model):
    paths = random_photos(tmp_path / "imgs", 5, name="img{i:03d}.png") + random_photos(tmp_path / "other", 2, size=(80, 40), name="img{i:03d}.png")
    (tmp_path / "imgs" / "bad.png").write_text("x")
    paths.insert(3, tmp_path / "imgs" / "bad.png")
    one, many = tmp_path / "one.h5", tmp_path / "many.h5"
    extract_to_file(tiny_model, paths, one, progress=False)
    s = extract_to_file(tiny_model, paths, many, progress=False, batch_size=4)
    assert s.done == 7 and list(s.failed) == ["imgs/bad.png"]
    with FeatureStore(one) as a, FeatureStore(many) as b:
        assert a.names == b.names
        for i in range(len(a)):
            torch.testing.assert_close(a[i].descriptors, b[i].descriptors, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="batch_size"):
        extract_to_file(tiny_model, paths, tmp_path / "x.h5", batch_size=0, progress=False)


def run_process(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "lit", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, errors="surrogateescape")


def test_damaged_descriptors_are_refused_with_the_file_name(tmp_path, tiny_model, cli):
    paths = []
    for i in range(2):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(paths[-1])
    out = tmp_path / "f.h5"
    extract_to_file(tiny_model, paths, out, progress=False)
    with h5py.File(out, "a") as h:  # the file overwritten with 0x7F bytes: ~3.4e38, finite
        d = h["descriptors"]
        d[:5] = np.frombuffer(b"\x7f" * (5 * d.shape[1] * 4), np.float32).reshape(5, -1)
    with FeatureStore(out) as store:
        with pytest.raises(FeatureFileError, match=r"f\.h5: damaged feature file \(descriptors: values up to 3\.4e\+38"):
            store.all_descriptors()
        with pytest.raises(FeatureFileError, match="descriptors of 0.png"):
            store[0]
        store[1]  # the other image is fine
    proc = cli("features", "merge", out, out, "--out", tmp_path / "m.h5", ok=False)
    assert proc.returncode == 2 and "damaged feature file" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "m.h5").exists()


def test_feature_file_in_use_and_missing_folder(tmp_path, tiny_model, ckpt):
    img = tmp_path / "a.png"
    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(img)
    out = tmp_path / "f.h5"
    extract_to_file(tiny_model, [img], out, progress=False)
    with h5py.File(out, "a"):  # another process is writing it
        proc = run_process("extract", img, "--out", out, "--model", ckpt, "--device", "cpu", "--quiet")
    assert proc.returncode == 2
    assert "in use by another process" in proc.stderr and "Traceback" not in proc.stderr
    with pytest.raises(FeatureFileError, match="does not exist"):
        FeatureStore(tmp_path / "nowhere" / "x.h5", "a", descriptor_dim=16)


def test_names_with_control_characters_read_back_from_files_of_either_name_rule(tmp_path):
    """Names are stored twice: exact bytes and as shown. A newline is shown escaped now
    (``a\\nb.jpg``); files written when only undecodable bytes were escaped still read."""
    from lit.types import LocalFeatures

    odd = "scene/two\nlines.jpg"
    feats = LocalFeatures(torch.ones(3, 8), torch.ones(3), torch.ones(3), torch.arange(3), torch.zeros(3, 2))
    with FeatureStore(tmp_path / "f.h5", "a", descriptor_dim=8, fingerprint="fp") as st:
        st.append(odd, feats)
    with FeatureStore(tmp_path / "f.h5") as st:
        assert st.names == [odd] and st.display_names == ["scene/two\\nlines.jpg"]
    with h5py.File(tmp_path / "f.h5", "r+") as h5:  # the shown copy as an earlier lit wrote it
        h5["names"][0] = odd
        assert h5["names"][0].decode() == odd
    with FeatureStore(tmp_path / "f.h5") as st:
        assert st.names == [odd]
