"""Reading images from disk into RGB float tensors, robustly."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

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


def display_name(name: str | bytes | os.PathLike) -> str:
    """A printable, valid-UTF-8 form of a file name, for messages, JSON and CSV.

    Names that are valid UTF-8 are returned unchanged; bytes that are not (a Latin-1
    ``caf\\xe9.jpg`` read by Python as ``'caf\\udce9.jpg'``) are written as ``\\xNN``.
    The stored name itself keeps the exact bytes (:func:`encode_name`).
    """
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    raw = name if isinstance(name, bytes) else name.encode("utf-8", "surrogateescape")
    return raw.decode("utf-8", "backslashreplace")


def encode_name(name: str | os.PathLike) -> bytes:
    """The exact bytes of a file name (``os.fsencode``: undecodable bytes survive)."""
    return os.fsencode(name)


def decode_name(raw: bytes) -> str:
    """Inverse of :func:`encode_name`: the ``str`` that ``open`` and ``os.listdir`` use."""
    return os.fsdecode(bytes(raw))


def _megapixels(n: int) -> str:
    return f"{n / 1e6:.1f} MP"


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
    if not os.path.exists(path):
        raise ImageReadError(f"{shown}: no such file")
    if os.path.isdir(path):
        raise ImageReadError(f"{shown}: a folder, not an image file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(f"{shown}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # our own check below
            try:
                img = Image.open(path)
            finally:
                Image.MAX_IMAGE_PIXELS = limit
        with img:
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
            out = ImageOps.exif_transpose(img)
            return img.copy() if out is None or out is img else out
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


def resize_max(img: Image.Image, image_size: int | None) -> Image.Image:
    """Downscale (never upscale) so that the longer side is at most ``image_size``.

    Keeps the aspect ratio (each side rounded) and antialiases (Lanczos).
    """
    if image_size is None:
        return img
    w, h = img.size
    longer = max(w, h)
    if longer <= image_size:
        return img
    ratio = image_size / longer
    size = (max(1, round(w * ratio)), max(1, round(h * ratio)))
    if img.mode not in ("RGB", "L", "RGBA", "LA", "F"):  # Lanczos needs 8-bit or float bands
        img = img.convert("F") if img.mode.startswith("I") else img.convert("RGB")
    factor = longer // (2 * image_size)
    if w * h > _REDUCE_PIXELS and factor >= 2:
        # very large images: a box reduction first (still at least twice the target size),
        # then Lanczos; ordinary photos are resized by Lanczos alone
        return img.reduce(factor).resize(size, Image.LANCZOS)
    return img.resize(size, Image.LANCZOS)


def load_image(
    image: str | os.PathLike | Image.Image,
    image_size: int | None = 1024,
    bbox: Sequence[float] | None = None,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
) -> torch.Tensor:
    """Load a path or PIL image as the network input of SPEC section 1.

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
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # keep 16-bit precision through the resize by going through float
        t = pil_to_tensor(img)
        if image_size is not None and max(img.size) > image_size:
            gray = Image.fromarray(t[0].numpy(), mode="F")
            return pil_to_tensor(resize_max(gray, image_size))
        return t
    return pil_to_tensor(resize_max(img, image_size))


def list_images(folder: str | os.PathLike, recursive: bool = True) -> list[str]:
    """Sorted image-like files under ``folder`` (by extension; unreadable ones are kept,
    so that extraction can report them)."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise UsageError(f"{folder}: not a directory")
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                out.append(os.path.join(root, f))
        if not recursive:
            break
    return sorted(out)


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
