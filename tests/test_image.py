"""Image reading: every PIL mode, EXIF rotation, resizing and bad files."""

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from lit import ImageReadError, load_image
from lit._image import display_name, list_images, scan_images


def _gradient(w=40, h=30):
    x = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float64)[:, None].repeat(w, 1)
    return np.stack([x, y, 255 - x], axis=-1).astype(np.uint8)


@pytest.fixture
def rgb():
    return Image.fromarray(_gradient())


def test_rgb_values_are_exact(tmp_path, rgb):
    rgb.save(tmp_path / "a.png")
    t = load_image(tmp_path / "a.png")
    assert t.shape == (3, 30, 40) and t.dtype == torch.float32
    torch.testing.assert_close(t, torch.from_numpy(_gradient()).permute(2, 0, 1).float() / 255)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "RGBA", "LA", "YCbCr", "I", "F"])
def test_every_mode_becomes_rgb_in_unit_range(tmp_path, rgb, mode):
    img = rgb.convert(mode)
    t = load_image(img)
    assert t.shape == (3, 30, 40)
    assert float(t.min()) >= 0 and float(t.max()) <= 1
    if mode in ("L", "1", "I", "F", "LA"):
        assert torch.equal(t[0], t[1]) and torch.equal(t[1], t[2])
    if mode == "CMYK":  # CMYK -> RGB is lossless for images that came from RGB
        torch.testing.assert_close(t, load_image(rgb), atol=1 / 255 + 1e-6, rtol=0)


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    torch.testing.assert_close(load_image(img), torch.ones(3, 4, 4))
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([10, 20, 30] * 256)
    pal.info["transparency"] = 0
    torch.testing.assert_close(load_image(pal), torch.ones(3, 4, 4))


def test_16_bit_png_keeps_precision(tmp_path):
    arr = np.array([[0, 1000, 65535], [257, 30000, 65534]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    t = load_image(tmp_path / "deep.png")
    torch.testing.assert_close(t[0].double(), torch.from_numpy(arr / 65535.0), atol=1e-7, rtol=0)
    assert float(t[0, 0, 1]) > 0  # 1000/65535 is not lost as it would be in 8 bits


def test_exif_orientation_is_applied(tmp_path, rgb):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    t = load_image(tmp_path / "rot.jpg")
    assert t.shape == (3, 40, 30)


def test_resize_downscales_longer_side_never_upscales(rgb):
    big = rgb.resize((400, 300))
    t = load_image(big, image_size=100)
    assert t.shape == (3, 75, 100)
    assert load_image(rgb, image_size=100).shape == (3, 30, 40)
    tall = load_image(rgb.resize((300, 400)), image_size=128)
    assert tall.shape == (3, 128, 96)
    deep = Image.fromarray((np.ones((300, 400)) * 40000).astype(np.uint16))
    torch.testing.assert_close(load_image(deep, image_size=100), torch.full((3, 75, 100), 40000 / 65535), atol=1e-4, rtol=0)


def test_bounding_box_crop_before_resize(rgb):
    t = load_image(rgb, image_size=None, bbox=(10, 5, 30, 25))
    full = load_image(rgb, image_size=None)
    torch.testing.assert_close(t, full[:, 5:25, 10:30])
    with pytest.raises(ValueError, match="bounding box"):
        load_image(rgb, bbox=(10, 10, 5, 20))


def test_bad_files_name_the_file(tmp_path, rgb):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.jpg").write_text("hello, I am text")
    rgb.resize((200, 200)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    cases = {"empty.jpg": "empty file", "notes.jpg": "not an image", "trunc.jpg": "cannot decode", "missing.jpg": "no such file"}
    for name, problem in cases.items():
        with pytest.raises(ImageReadError, match=problem) as err:
            load_image(tmp_path / name)
        assert name in str(err.value)


def test_list_images(tmp_path, rgb):
    (tmp_path / "sub").mkdir()
    rgb.save(tmp_path / "b.png")
    rgb.save(tmp_path / "sub" / "a.JPG")
    (tmp_path / "readme.txt").write_text("x")
    assert [p.split("/")[-1] for p in list_images(tmp_path)] == ["b.png", "a.JPG"]
    with pytest.raises(ValueError, match="not a directory"):
        list_images(tmp_path / "b.png")


def test_difference_hash_bits_follow_brightness_steps():
    from lit._image import difference_hash, hash_distance

    ramp = np.tile(np.arange(0, 252, 4, dtype=np.uint8), (40, 1))  # brighter to the right
    assert difference_hash(Image.fromarray(ramp)) == 2**64 - 1
    assert difference_hash(Image.fromarray(ramp[:, ::-1].copy())) == 0
    # one bright column in the middle: row by row, only the step into it is "brighter"
    img = np.zeros((8, 9), np.uint8)
    img[:, 4] = 200
    assert difference_hash(Image.fromarray(img)) == sum(1 << (8 * r + 3) for r in range(8))
    assert hash_distance(0b1011, 0b0110) == 3


def test_difference_hash_finds_copies_not_other_photos(tmp_path):
    from skimage import data  # a test dependency (setup.cfg extras "test")

    from lit._image import difference_hash, hash_distance
    cat, coffee = Image.fromarray(data.chelsea()), Image.fromarray(data.coffee())
    cat.resize((cat.width // 3, cat.height // 3), Image.LANCZOS).save(tmp_path / "small.jpg", quality=60)
    assert hash_distance(difference_hash(cat), difference_hash(tmp_path / "small.jpg")) <= 4
    assert hash_distance(difference_hash(cat), difference_hash(coffee)) >= 16


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="measures the peak resident size through /proc (Linux)")
def test_a_large_16_bit_png_is_resized_within_a_small_multiple_of_its_decoded_size(tmp_path):
    """Decoded, a 4000x4000 16-bit PNG takes 32 MB; converting it whole to float64 RGB took
    over 10 times that (a 13000x13000 one peaked at 4.76 GB). ``benchmarks/decode_memory.py``
    measures the 13000x13000 case."""
    side = 4000
    ramp = (np.arange(side, dtype=np.uint32) * 65535 // (side - 1)).astype(np.uint16)
    Image.fromarray(np.broadcast_to(ramp, (side, side)).copy()).save(tmp_path / "deep.png", compress_level=1)
    from lit.bench import load_image_peak

    # reduce_pixels: the strip path of very large images, at a size a test can afford
    peak_kb, _, shape = load_image_peak(tmp_path / "deep.png", 512, reduce_pixels=1_000_000, timeout=300)
    decoded_kb = side * side * 2 // 1024
    assert shape == [3, 512, 512]
    assert peak_kb < 3 * decoded_kb, f"peak {peak_kb // 1024} MB for {decoded_kb // 1024} MB decoded"


def test_strips_of_a_16_bit_image_reduce_exactly_like_the_whole_image(monkeypatch):
    import lit._image as im

    rng = np.random.default_rng(0)
    deep = Image.fromarray(rng.integers(0, 65536, size=(301, 250), dtype=np.uint16))
    monkeypatch.setattr(im, "_REDUCE_PIXELS", 1000)
    monkeypatch.setattr(im, "_STRIP_PIXELS", 250 * 7)  # strips of a few rows: many strips, a short last one
    got = np.asarray(im._deep_to_float(deep, 50))
    whole = np.asarray(deep.convert("F").reduce(3).resize((42, 50), Image.LANCZOS))
    np.testing.assert_array_equal(got, whole)
    t = load_image(deep, image_size=50)
    np.testing.assert_allclose(t[0].numpy(), np.clip(whole / 65535.0, 0, 1), rtol=0, atol=1e-7)


def test_special_files_are_named_for_what_they_are_without_being_opened(tmp_path, rgb):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)  # opening it would block until a writer comes
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    (tmp_path / "x.jpg").mkdir()
    cases = {"pipe.jpg": "not a regular file: a FIFO", "loop.jpg": "symlink loop", "dangling.jpg": "broken symlink",
             "x.jpg": "a folder"}
    for name, problem in cases.items():
        with pytest.raises(ImageReadError, match=re.escape(problem)) as err:
            load_image(tmp_path / name)
        assert name in str(err.value) and "no such file" not in str(err.value)


def test_a_folder_scan_says_what_it_left_out(tmp_path, rgb):
    (tmp_path / "x.jpg").mkdir()
    rgb.save(tmp_path / "x.jpg" / "inside.png")
    rgb.save(tmp_path / "a.png")
    (tmp_path / "garbage.heic").write_bytes(b"\0" * 10)
    images, ignored = scan_images(tmp_path)
    assert [os.path.relpath(p, tmp_path) for p in images] == ["a.png", os.path.join("x.jpg", "inside.png")]
    assert [(os.path.relpath(p, tmp_path), why) for p, why in ignored] == [
        ("garbage.heic", "not an image extension"), ("x.jpg", "a folder")]


def test_display_name_escapes_undecodable_bytes_and_control_characters():
    assert display_name(os.fsdecode(b"caf\xe9.jpg")) == "caf\\xe9.jpg"
    assert display_name(b"caf\xe9.jpg") == "caf\\xe9.jpg"
    assert display_name("a\nb\tc\r.jpg") == "a\\nb\\tc\\r.jpg"
    assert display_name("\x1b[31mred\x07") == "\\x1b[31mred\\x07"
    assert display_name("x\u202ey\u2028\x85") == "x\\u202ey\\u2028\\u0085"
    assert display_name("été/東京 1.jpg") == "été/東京 1.jpg"  # printable text is kept as it is


def test_a_shown_name_reads_back_to_the_name():
    import random

    from lit._names import shown_to_name

    pieces = ["a", "é", "/", ".", " ", "東", "\n", "\t", "\r", "\x1b", "\x7f", "\x85", "\u2028", "\u202e",
              os.fsdecode(b"\xe9"), os.fsdecode(b"\xff")]
    rng = random.Random(0)
    for _ in range(2000):
        name = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 10)))
        assert shown_to_name(display_name(name)) == name, repr(name)
    assert shown_to_name("caf\\xe9.jpg") == os.fsdecode(b"caf\xe9.jpg")
    assert shown_to_name("plain/name.jpg") == "plain/name.jpg"


@pytest.mark.parametrize("mode", ["RGBA", "RGB", "P", "CMYK"])
def test_very_large_images_reduced_in_strips_are_the_whole_image_reduced(monkeypatch, mode):
    import lit._image as im

    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, size=(301, 250, 4), dtype=np.uint8), "RGBA")
    img = img.convert(mode) if mode != "P" else img.convert("RGB").convert("P")
    whole = im._lanczos_ready(img).reduce(3).resize((42, 50), Image.LANCZOS)
    monkeypatch.setattr(im, "_REDUCE_PIXELS", 1000)
    monkeypatch.setattr(im, "_STRIP_PIXELS", 250 * 7)
    got = im.resize_max(img, 50)
    assert got.mode == whole.mode and np.array_equal(np.asarray(got), np.asarray(whole))
