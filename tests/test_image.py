"""Image reading: every PIL mode, EXIF rotation, resizing and bad files."""

import numpy as np
import pytest
import torch
from PIL import Image

from lit import ImageReadError, load_image
from lit._image import list_images


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
