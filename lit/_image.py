"""Reading images from disk into RGB float tensors, robustly."""

from __future__ import annotations

import errno
import os
import stat
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ._names import decode_name, display_name, encode_name  # noqa: F401  (re-exported)
from .errors import ImageReadError, ImageTooLargeError, ImageTooSmallError, UsageError  # noqa: F401  (re-exported)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


#: Largest number of pixels decoded from one file (about 13,400 x 13,400). A larger JPEG
#: is decoded directly at a reduced size (``Image.draft``, powers of two) when the
#: network needs fewer pixels, so the limit applies to the decoded size; other formats
#: (PNG, TIFF, ...) cannot be decoded reduced.
#: Larger files are refused with :class:`ImageTooLargeError` ("too large"). The command
#: line's ``--max-pixels`` changes it; ``None`` removes it.
DEFAULT_MAX_PIXELS = 180_000_000


_REDUCE_PIXELS = 64_000_000  # above this, resize_max box-reduces before Lanczos
_STRIP_PIXELS = 4_000_000  # pixels converted at a time by _reduce_in_strips
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16/32-bit grey: resized through float
_ORIENTATION = 0x0112  # the EXIF tag


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP"


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def missing_problem(path: str | os.PathLike) -> str:
    """Why ``path`` cannot be reached, for a path that ``os.stat`` refuses: ``symlink loop``,
    ``broken symlink``, ``permission denied`` or ``no such file``."""
    path = os.fspath(path)
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symlink loop (a symbolic link that leads back to itself)"
        if err.errno == errno.ENOENT and os.path.islink(path):
            return f"broken symlink (it points to {display_name(os.readlink(path))}, which does not exist)"
        if err.errno in (errno.EACCES, errno.EPERM):
            return "permission denied"
        if err.errno == errno.ENOTDIR:
            return "no such file (a part of the path is not a folder)"
        if err.errno != errno.ENOENT:
            return display_name(err.strerror or str(err))
    return "no such file"


def file_problem(path: str | os.PathLike) -> str | None:
    """What keeps ``path`` from being read as an image file, without opening it (a FIFO
    would block): ``None`` for a non-empty regular file (or a link to one), else e.g.
    ``no such file``, ``symlink loop``, ``a folder, not an image file``, ``not a regular
    file: a FIFO (named pipe)``, ``empty file (0 bytes)``."""
    try:
        st = os.stat(path)
    except OSError:
        return missing_problem(path)
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not an image file"
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "a special file")
        return f"not a regular file: {kind}"
    if st.st_size == 0:
        return "empty file (0 bytes)"
    return None


def open_image(path: str | os.PathLike, image_size: int | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open and fully decode an image file, applying its EXIF orientation.

    Args:
        path: the file.
        image_size: the longer side the caller will downscale to (``None``: full size).
            A JPEG with more pixels than ``max_pixels`` is then decoded at a power-of-two
            reduction that keeps at least this size (``Image.draft``), so that very large
            JPEGs still load; files under the limit are always decoded whole.
        max_pixels: refuse files that would decode to more pixels than this
            (:data:`DEFAULT_MAX_PIXELS`; ``None``: no limit). PIL's own
            decompression-bomb check is replaced by this one.

    Raises:
        ImageTooLargeError: more pixels than ``max_pixels`` (nothing is decoded).
        ImageReadError: missing, empty, truncated, or not an image.
    """
    path = os.fspath(path)
    shown = display_name(path)
    problem = file_problem(path)
    if problem is not None:
        raise ImageReadError(f"{shown}: {problem}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own check below
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        try:
            w, h = img.size
            if w < 1 or h < 1:
                raise ImageReadError(f"{shown}: empty image ({w}x{h} pixels)")
            too_many = max_pixels is not None and w * h > max_pixels
            if too_many and image_size is not None and img.format == "JPEG" and max(w, h) > image_size:
                # decode at a power-of-two reduction that still covers image_size (only
                # past the limit: smaller files decode whole, so features do not change)
                scale = image_size / max(w, h)
                img.draft(img.mode, (max(1, int(w * scale)), max(1, int(h * scale))))
            dw, dh = img.size  # after draft: the size that is really decoded
            if max_pixels is not None and dw * dh > max_pixels:
                raise ImageTooLargeError(
                    f"{shown}: too large ({w}x{h} = {_megapixels(w * h)}, limit {_megapixels(max_pixels)}; "
                    "raise it with --max-pixels)"
                )
            img.load()
        except BaseException:
            img.close()
            raise
        # one decoded copy of the pixels at a time: the rotated image replaces the decoded one
        # (exif_transpose copies even when there is nothing to rotate: only called to rotate),
        # and a file that load() has closed is returned as it is (no copy)
        if img.getexif().get(_ORIENTATION, 1) in range(2, 9):
            out = ImageOps.exif_transpose(img)
            img.close()
            return out
        if getattr(img, "fp", None) is None:
            return img
        copy = img.copy()  # multi-frame files (GIF, TIFF) stay open after load(): close the file
        img.close()
        return copy
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{shown}: not an image file (or a format PIL cannot read)") from None
    except Image.DecompressionBombError as err:  # pragma: no cover - the limit is lifted above
        raise ImageTooLargeError(f"{shown}: too large ({err})") from None
    except (OSError, SyntaxError, ValueError, MemoryError) as err:
        raise ImageReadError(f"{shown}: cannot decode image ({display_name(str(err))})") from None


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """Convert any PIL image to an RGB float tensor in ``[0, 1]``.

    Handles grayscale (``L``, ``1``), 16/32-bit grayscale (``I;16``, ``I``, ``F``), palette
    (with or without transparency), ``CMYK``, ``YCbCr``, ``LAB`` and alpha channels (alpha is
    composited on white).

    Shape:
        - Output: :math:`(3, H, W)` float32.
    """
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16"):
            arr = arr / 65535.0
        elif mode == "I":
            arr = arr / (65535.0 if arr.max(initial=0) > 255 else 255.0)
        else:  # "F": assume [0, 1] unless clearly 8-bit range
            arr = arr / 255.0 if arr.max(initial=0) > 1.0 else arr
        arr = np.clip(arr, 0.0, 1.0).astype(np.float32)
        t = torch.from_numpy(np.ascontiguousarray(arr))
        return t.unsqueeze(0).expand(3, -1, -1).contiguous()
    if mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba).convert("RGB")
    elif mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _target_size(w: int, h: int, image_size: int) -> tuple[int, int]:
    ratio = image_size / max(w, h)
    return max(1, round(w * ratio)), max(1, round(h * ratio))


def _box_factor(w: int, h: int, image_size: int) -> int:
    """The box reduction applied before Lanczos: only for very large images (more than
    ``_REDUCE_PIXELS``), by an integer factor that keeps at least twice the target size."""
    factor = max(w, h) // (2 * image_size)
    return factor if w * h > _REDUCE_PIXELS and factor >= 2 else 1


def _lanczos_ready(img: Image.Image) -> Image.Image:
    """``img`` in a mode Lanczos resizes (8-bit or float bands)."""
    if img.mode in ("RGB", "L", "RGBA", "LA", "F"):
        return img
    return img.convert("F") if img.mode.startswith("I") else img.convert("RGB")


def _reduce_in_strips(img: Image.Image, factor: int, convert) -> Image.Image:
    """``convert(img).reduce(factor)``, computed strip by strip (whole reduction blocks of
    rows, about ``_STRIP_PIXELS`` pixels each), so that no full-size converted copy of a
    very large image exists (RGBA is premultiplied, 16-bit made float, ...). The same pixels
    as the whole-image reduction."""
    w, h = img.size
    rows = max(1, _STRIP_PIXELS // (w * factor)) * factor
    small = None
    for top in range(0, h, rows):
        strip = convert(img.crop((0, top, w, min(h, top + rows)))).reduce(factor)
        if small is None:
            small = Image.new(strip.mode, (-(-w // factor), -(-h // factor)))
        small.paste(strip, (0, top // factor))
    return small


def resize_max(img: Image.Image, image_size: int | None) -> Image.Image:
    """Downscale (never upscale) so that the longer side is at most ``image_size``.

    Keeps the aspect ratio (each side rounded) and antialiases (Lanczos); very large
    images are box-reduced first, in strips (:func:`_reduce_in_strips`).
    """
    if image_size is None or max(img.size) <= image_size:
        return img
    return _reduce_and_resize(img, image_size, _lanczos_ready)


def _reduce_and_resize(img: Image.Image, image_size: int, convert) -> Image.Image:
    """``convert(img)`` downscaled to a longer side of ``image_size`` by Lanczos; very large
    images are box-reduced first (still at least twice the target size), in strips, so
    that no full-size converted copy exists; ordinary photos are resized by Lanczos alone."""
    w, h = img.size
    factor = _box_factor(w, h, image_size)
    small = _reduce_in_strips(img, factor, convert) if factor > 1 else convert(img)
    return small.resize(_target_size(w, h, image_size), Image.LANCZOS)


def _as_float(img: Image.Image) -> Image.Image:
    try:
        return img.convert("F")
    except ValueError:  # pragma: no cover - a 16-bit layout PIL converts through "I" only
        return img.convert("I").convert("F")


def _deep_to_float(img: Image.Image, image_size: int | None) -> Image.Image:
    """A 16/32-bit grey image as a float (``F``) image of its raw values, resized like
    :func:`resize_max`, without a float copy of a very large image (converted and reduced
    in strips), so memory stays near the decoded size (2 bytes a pixel for 16-bit) instead
    of 4-8 times it."""
    if image_size is None or max(img.size) <= image_size:
        return _as_float(img)
    return _reduce_and_resize(img, image_size, _as_float)


def _deep_to_tensor(img: Image.Image, image_size: int | None) -> torch.Tensor:
    """16/32-bit grey (``I;16``, ``I``) to RGB in ``[0, 1]``, resized at full precision."""
    if img.mode.startswith("I;16"):
        peak = 65535.0
    else:  # "I": 16-bit values unless every value fits 8 bits
        peak = 65535.0 if (img.getextrema()[1] or 0) > 255 else 255.0
    grey = np.asarray(_deep_to_float(img, image_size), dtype=np.float32).astype(np.float64) / peak
    t = torch.from_numpy(np.ascontiguousarray(np.clip(grey, 0.0, 1.0).astype(np.float32)))
    return t.unsqueeze(0).expand(3, -1, -1).contiguous()


def too_small_message(err: ImageReadError, size: tuple[int, int] | None, tensor: torch.Tensor, image_size) -> str:
    """The model's "too small" message (``err``, about the resized ``tensor``), with the
    file's own ``size`` where the resize to ``image_size`` changed it (a 5000x5 photo is
    not "512x1")."""
    msg = str(err)
    h, w = tensor.shape[-2:]
    if isinstance(err, ImageTooSmallError) and size is not None and tuple(size) != (w, h):
        msg = msg.replace(f"({w}x{h} pixels)",
                          f"({size[0]}x{size[1]} pixels, {w}x{h} after the resize to at most {image_size} px)", 1)
    return msg


def load_image(
    image: str | os.PathLike | Image.Image,
    image_size: int | None = 1024,
    bbox: Sequence[float] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Load a path or PIL image as the network input of SPEC section 1.

    Memory: besides the decoded file (width x height x 1 byte for grey, 2 for 16-bit grey,
    4 for RGB and RGBA: at most 720 MB at :data:`DEFAULT_MAX_PIXELS`), only the reduced
    image is held: very large images are converted (to float, premultiplied RGBA, RGB) and
    box-reduced in strips, and large JPEGs are decoded reduced (:func:`open_image`).

    Args:
        image: path or PIL image.
        image_size: longer side after downscaling (``None``: keep the size).
        bbox: optional ``(x1, y1, x2, y2)`` crop applied first (revisited query boxes).
        max_pixels: refuse files that decode to more pixels (see :func:`open_image`).

    Returns:
        RGB float tensor :math:`(3, H, W)` in ``[0, 1]``.

    Raises:
        ImageTooLargeError: the file has more pixels than ``max_pixels``.
        ImageReadError: the file cannot be read (the message names it).
    """
    if isinstance(image, Image.Image):
        img = image
    else:  # a crop needs the full-resolution pixels: no reduced decoding then
        img = open_image(image, image_size=None if bbox is not None else image_size, max_pixels=max_pixels)
    if bbox is not None:
        x1, y1, x2, y2 = (float(v) for v in bbox)
        if not (x2 > x1 and y2 > y1):
            raise UsageError(f"invalid bounding box {tuple(bbox)}: need x2 > x1 and y2 > y1")
        img = img.crop((round(x1), round(y1), round(x2), round(y2)))
    if img.mode in _DEEP_MODES:  # keep 16-bit precision through the resize by going through float
        return _deep_to_tensor(img, image_size)
    return pil_to_tensor(resize_max(img, image_size))


def scan_images(folder: str | os.PathLike, recursive: bool = True) -> tuple[list[str], list[tuple[str, str]]]:
    """Image-like files under ``folder`` (by extension, sorted; unreadable ones are kept, so
    that extraction can report them) and what the scan left out, with the reason: files
    without an image extension (``garbage.heic``) and folders named like images
    (``x.jpg/``, whose contents are still searched).

    Returns:
        ``(images, ignored)``: paths, and ``(path, reason)`` pairs, both sorted by path.

    Raises:
        UsageError: ``folder`` is not a folder.
    """
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise UsageError(f"{display_name(folder)}: not a directory")
    images, ignored = [], []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for d in dirs:
            if d.lower().endswith(IMAGE_EXTENSIONS):
                ignored.append((os.path.join(root, d), "a folder"))
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                images.append(os.path.join(root, f))
            else:
                ignored.append((os.path.join(root, f), "not an image extension"))
        if not recursive:
            break
    return sorted(images), sorted(ignored)


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Sorted image-like files under ``folder`` (by extension; unreadable ones are kept,
    so that extraction can report them). :func:`scan_images` also says what was left out."""
    return scan_images(folder, recursive)[0]


def difference_hash(image: str | os.PathLike | Image.Image, size: int = 8) -> int:
    """64-bit difference hash (dHash) of an image, for finding near-duplicates.

    The image is reduced to a ``(size + 1) x size`` grey thumbnail (box filter) and each bit
    says whether a pixel is brighter than its right neighbour, so resized, re-encoded or
    slightly recoloured copies of a photo differ in a few bits, and different photos in about
    half of them. Compare hashes with :func:`hash_distance`.
    """
    img = image if isinstance(image, Image.Image) else open_image(image)
    px = np.asarray(img.convert("L").resize((size + 1, size), Image.Resampling.BOX), dtype=np.int16)
    bits = (px[:, 1:] > px[:, :-1]).ravel()
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def hash_distance(a: int, b: int) -> int:
    """Number of differing bits of two :func:`difference_hash` values."""
    return (a ^ b).bit_count()
