"""`lit extract` on a folder of bad files beside good photos: every good photo kept, failures listed and retried, exit statuses, --max-pixels."""

import json
import os
import shutil
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from paths import PHOTOS
from photo_folders import LATIN1
from PIL import Image

import lit
from lit._image import (
    DEFAULT_MAX_PIXELS,
    ImageTooLargeError,
    load_image,
)
from lit.features import FeatureStore


def png_header(width, height):
    """A PNG whose header claims ``width x height`` (refused before any decoding)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def bad_folder(tmp_path):
    """Six real photos (one under a Latin-1 name) and every kind of bad file."""
    d = tmp_path / "photos"
    (d / "sub").mkdir(parents=True)
    good = []
    for scene in ("sacre_coeur", "terrace", "warsaw"):
        for f in sorted(os.listdir(os.path.join(PHOTOS, scene))):
            good.append(os.path.join(PHOTOS, scene, f))
    shutil.copy(good[0], d / "a.jpg")
    shutil.copy(good[1], d / "b.jpg")
    shutil.copy(good[2], d / "sub" / "c.jpg")
    shutil.copy(good[3], d / "sub" / "d.jpg")
    shutil.copy(good[4], d / "e.jpg")
    shutil.copy(good[5], os.path.join(os.fsencode(d), b"caf\xe9.jpg"))  # not valid UTF-8
    (d / "huge.png").write_bytes(png_header(20000, 20000))
    Image.new("RGB", (1, 1), (200, 10, 10)).save(d / "tiny.png")
    data = (d / "a.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 50])
    (d / "notes.jpg").write_text("a text file named .jpg\n")
    (d / "empty.jpg").write_bytes(b"")
    return d


GOOD = {"a.jpg", "b.jpg", "sub/c.jpg", "sub/d.jpg", "e.jpg", LATIN1}


BAD = {"huge.png", "tiny.png", "truncated.jpg", "notes.jpg", "empty.jpg"}


def test_folder_of_bad_files_keeps_every_good_photo_and_retries_the_fixed_one(tmp_path, bad_folder, ckpt, cli):
    feats = tmp_path / "out" / "feats.h5"  # the folder does not exist yet: created
    proc = cli("extract", bad_folder, bad_folder / "a.jpg", "--out", feats, "--model", ckpt, "--device", "cpu", "--quiet", ok=False)
    assert proc.returncode == 3, proc.stderr  # finished, some files skipped
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert proc.stdout.startswith("extracted 6 images, skipped 0 already done, 5 failed")
    assert "1 duplicate inputs stored once" in proc.stdout
    for bad in BAD:
        assert sum(bad in line for line in proc.stderr.splitlines() if line.startswith("skipped: ")) == 1, bad
    assert "caf\\xe9.jpg" not in proc.stderr  # the good Latin-1 photo is not an error
    lines = {line.split(": ", 2)[1].rsplit("/", 1)[-1]: line for line in proc.stderr.splitlines() if line.startswith("skipped: ")}
    assert "too large (20000x20000" in lines["huge.png"] and "--max-pixels" in lines["huge.png"]
    assert "too small (1x1 pixels)" in lines["tiny.png"]
    assert "empty file" in lines["empty.jpg"] and "not an image file" in lines["notes.jpg"]
    with FeatureStore(feats) as store:
        assert set(store.names) == GOOD and len(store) == 6  # a.jpg given twice, stored once
        assert set(store.failed) == BAD
        assert store.root == str(bad_folder)
        assert os.path.exists(os.path.join(store.root, store.names[sorted(store.names).index(LATIN1)]))
        raw = [bytes(r) for r in store.h5["names_raw"][:6]]
        assert b"caf\xe9.jpg" in raw  # the exact bytes, round-tripped
        assert "caf\\xe9.jpg" in [s.decode() if isinstance(s, bytes) else s for s in store.h5["names"][:6]]
        latin = store[LATIN1]
    ref = lit.load_model(ckpt).extract(os.path.join(bad_folder, LATIN1))
    torch.testing.assert_close(latin.descriptors, ref.descriptors)

    shutil.copy(bad_folder / "b.jpg", bad_folder / "truncated.jpg")  # the user fixes one file
    again = cli("extract", bad_folder, "--out", feats, "--model", ckpt, "--device", "cpu", "--quiet", ok=False)
    assert again.returncode == 3 and "Traceback" not in again.stderr
    assert again.stdout.startswith("extracted 1 images, skipped 6 already done, 4 failed, 5 earlier failures retried")
    with FeatureStore(feats) as store:
        assert set(store.names) == GOOD | {"truncated.jpg"}
        assert set(store.failed) == BAD - {"truncated.jpg"}
    kept = cli("extract", bad_folder, "--out", feats, "--model", ckpt, "--device", "cpu", "--quiet", "--no-retry", ok=False)
    assert kept.returncode == 3 and "skipped: " not in kept.stderr
    assert "4 earlier failures not retried (--no-retry)" in kept.stdout

    info = cli("features", "info", feats, "--json", ok=False)
    assert info.returncode == 0, info.stderr
    data = json.loads(info.stdout)
    assert data["images"] == 7 and set(data["failed"]) == BAD - {"truncated.jpg"}
    assert data["root"] == str(bad_folder) and data["settings"]["features_num"] == 20


def test_exit_status_every_file_failed_and_all_ok(tmp_path, bad_folder, ckpt, cli):
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    for name in ("tiny.png", "notes.jpg"):
        shutil.copy(bad_folder / name, only_bad / name)
    proc = cli("extract", only_bad, "--out", tmp_path / "bad.h5", "--model", ckpt, "--device", "cpu", "--quiet", ok=False)
    assert proc.returncode == 4 and "2 of 2 images could not be extracted" in proc.stderr
    good = cli("extract", bad_folder / "a.jpg", bad_folder / "sub", "--out", tmp_path / "good.h5", "--model", ckpt,
               "--device", "cpu", "--quiet", ok=False)
    assert good.returncode == 0 and good.stderr == ""
    with FeatureStore(tmp_path / "good.h5") as store:  # several arguments: relative to their common folder
        assert sorted(store.names) == ["a.jpg", "sub/c.jpg", "sub/d.jpg"] and store.root == str(bad_folder)
    # adding a folder later: names stay relative to the file's root; another --root is refused
    more = cli("extract", bad_folder / "sub", bad_folder / "e.jpg", "--out", tmp_path / "good.h5", "--model", ckpt,
               "--device", "cpu", "--quiet", ok=False)
    assert more.returncode == 0 and more.stdout.startswith("extracted 1 images, skipped 2 already done")
    with FeatureStore(tmp_path / "good.h5") as store:
        assert sorted(store.names) == ["a.jpg", "e.jpg", "sub/c.jpg", "sub/d.jpg"]
    other = cli("extract", bad_folder / "sub", "--root", bad_folder / "sub", "--out", tmp_path / "good.h5",
                "--model", ckpt, "--device", "cpu", "--quiet", ok=False)
    assert other.returncode == 2 and "holds names relative to" in other.stderr


def test_max_pixels_option_and_large_jpeg_decoded_reduced(tmp_path, bad_folder, ckpt, tiny_model, cli):
    proc = cli("extract", bad_folder / "a.jpg", "--out", tmp_path / "f.h5", "--model", ckpt, "--device", "cpu",
               "--quiet", "--max-pixels", "1000", ok=False)
    assert proc.returncode == 4 and "too large" in proc.stderr and "limit 0.0 MP" in proc.stderr
    # a JPEG over the limit is decoded at a power-of-two reduction when the network needs fewer pixels
    big = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (600, 800, 3), dtype=np.uint8)).save(big)
    x = load_image(big, 96, max_pixels=100_000)  # 480,000 pixels decoded at 1/4: 200x150
    assert tuple(x.shape) == (3, 72, 96)
    with pytest.raises(ImageTooLargeError, match="too large"):
        load_image(big, None, max_pixels=100_000)  # full size wanted: refused
    with pytest.raises(ImageTooLargeError, match="too large"):
        load_image(bad_folder / "huge.png", 96)  # PNGs cannot be decoded reduced
    assert DEFAULT_MAX_PIXELS == 180_000_000  # documented in the README
    with pytest.raises(ImageTooLargeError, match=r"huge\.png: too large"):  # also model.extract (and lit match)
        tiny_model.extract(bad_folder / "huge.png")
    (tmp_path / "12k.png").write_bytes(png_header(12000, 12000))  # over PIL's warning size, under the limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning: lit's own limit replaces PIL's
        with pytest.raises(lit.ImageReadError, match="12k.png: cannot decode image"):  # its pixel data is cut
            load_image(tmp_path / "12k.png", 96)


def test_special_files_are_named_for_what_they_are_and_ignored_entries_counted(tmp_path, ckpt, cli):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(os.path.join(PHOTOS, "sacre_coeur", sorted(os.listdir(os.path.join(PHOTOS, "sacre_coeur")))[0]),
                d / "a.jpg")
    os.mkfifo(d / "pipe.jpg")  # opening it would block until a writer comes
    (d / "loop.jpg").symlink_to(d / "loop.jpg")
    Image.new("RGB", (5000, 5), (90, 120, 150)).save(d / "thin.png")
    (d / "x.jpg").mkdir()  # a folder named like a photo
    (d / "garbage.heic").write_bytes(b"\0" * 64)  # a format lit does not read
    proc = cli("extract", d, "--out", tmp_path / "f.h5", "--model", ckpt, "--device", "cpu", "--quiet", ok=False)
    assert proc.returncode == 3, proc.stderr
    lines = {line.split(": ", 2)[1].rsplit("/", 1)[-1]: line for line in proc.stderr.splitlines()
             if line.startswith("skipped: ")}
    assert "not a regular file: a FIFO" in lines["pipe.jpg"]
    assert "symlink loop" in lines["loop.jpg"] and "no such file" not in lines["loop.jpg"]
    assert "too small (5000x5 pixels, 96x1 after the resize to at most 96 px)" in lines["thin.png"], lines["thin.png"]
    summary = proc.stdout.splitlines()[0]
    assert summary.startswith("extracted 1 images, skipped 0 already done, 3 failed")
    assert "ignored 2 files: " in summary and f"{d / 'garbage.heic'} (not an image extension)" in summary
    assert f"{d / 'x.jpg'} (a folder)" in summary
    loop = cli("extract", d / "loop.jpg", "--out", tmp_path / "g.h5", "--model", ckpt, "--device", "cpu", ok=False)
    assert loop.returncode == 2 and "symlink loop" in loop.stderr and "no such file" not in loop.stderr


@pytest.mark.parametrize("out, said", [("/dev/null", "is a character device, not a regular file"),
                                       ("{tmp}", "is a folder, not a regular file")])
def test_an_output_that_is_not_a_regular_file_is_refused_before_extracting(tmp_path, ckpt, cli, out, said):
    photo = os.path.join(PHOTOS, "sacre_coeur", sorted(os.listdir(os.path.join(PHOTOS, "sacre_coeur")))[0])
    proc = cli("extract", photo, "--out", out.format(tmp=tmp_path), "--model", ckpt, "--device", "cpu", "--quiet",
               ok=False)
    assert proc.returncode == 2 and said in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "extracted" not in proc.stdout


def test_a_list_file_may_start_with_a_byte_order_mark(tmp_path, ckpt, cli):
    scene = os.path.join(PHOTOS, "sacre_coeur")
    shutil.copy(os.path.join(scene, sorted(os.listdir(scene))[0]), tmp_path / "a.jpg")
    (tmp_path / "list.txt").write_bytes(b"\xef\xbb\xbfa.jpg\r\n")  # as Windows editors save UTF-8
    cli("extract", "--list", tmp_path / "list.txt", "--out", tmp_path / "f.h5", "--model", ckpt, "--device", "cpu",
        "--quiet")
    with FeatureStore(tmp_path / "f.h5") as store:
        assert list(store.names) == ["a.jpg"]
    folder = cli("extract", "--list", tmp_path, "--out", tmp_path / "g.h5", "--model", ckpt, "--device", "cpu",
                 ok=False)
    assert folder.returncode == 2 and "is a folder, not a list file" in folder.stderr
