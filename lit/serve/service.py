"""What the search service does, without the web: every method blocks and is thread-safe.

:class:`SearchService` holds one open :class:`lit.pipeline.live.LiveIndex` (one writer, many
readers: searches see a consistent index while photos are added or removed), the model it
was opened with and small caches. The web layer (:mod:`lit.serve.app`) calls these methods
in worker threads, never on its event loop; a user's mistake (garbage upload, unknown name,
empty text) raises a :class:`lit.errors.LitError` that it turns into a 4xx answer.

Photos added through the service are written to its upload folder (by default
``INDEX_STEM-uploads/`` beside the index file) under their name; the photos the index was
built from are read from the index's image root and never written or deleted.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath

import torch

from .._fileio import atomic_path
from .._image import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    display_name,
    load_image,
    open_image,
    resize_max,
)
from .._names import json_fields, shown_to_name
from ..errors import ImageReadError, NotFoundError, UsageError
from ..pipeline import queries_from_images

log = logging.getLogger(__name__)

__all__ = ["MAX_TOPK", "SearchService", "UnknownNameError", "check_name"]

#: largest ``topk`` a request may ask for
MAX_TOPK = 1000
#: largest thumbnail side
MAX_THUMBNAIL = 2048
#: longest text query, in characters (the text model cuts at 256 tokens anyway)
MAX_TEXT_CHARS = 2000


class UnknownNameError(NotFoundError):
    """A photo name that the index does not hold."""


@dataclass(frozen=True)
class Added:
    name: str
    replaced: bool
    images: int


class _LRU:
    """A small thread-safe least-recently-used cache."""

    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key, make: Callable):
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
                return self.items[key]
        value = make()  # outside the lock: two threads may compute the same value once each
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)
        return value

    def drop(self, test: Callable) -> None:
        with self.lock:
            for key in [k for k in self.items if test(k)]:
                del self.items[key]


def check_name(name: str) -> str:
    """A photo name for an upload: relative, ``/``-separated, no ``..``, an image extension.

    Raises:
        UsageError: the name cannot be used.
    """
    if not isinstance(name, str) or not name.strip():
        raise UsageError("the photo name is empty")
    if len(name) > 400 or any(ord(c) < 32 for c in name) or "\\" in name:
        raise UsageError(f"{display_name(name[:80])!r}: a photo name is at most 400 characters, without control "
                         "characters or backslashes")
    parts = PurePosixPath(name).parts
    if name.startswith("/") or any(p in ("..", ".") for p in parts) or "//" in name:
        raise UsageError(f"{display_name(name)!r}: a photo name must be a relative path without '.' or '..' parts")
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        raise UsageError(f"{display_name(name)!r}: a photo name must end with an image extension "
                         f"({', '.join(IMAGE_EXTENSIONS[:4])}, ...)")
    return name


class SearchService:
    """Search, browse, add and remove photos of one live index.

    Args:
        index: an open :class:`lit.pipeline.live.LiveIndex` (the service closes it in
            :meth:`close`).
        upload_dir: where added photos are stored (default: ``INDEX_STEM-uploads`` beside
            the index file).
        max_pixels: uploads that decode to more pixels are refused.
        text: whether text search is offered (``None``: when the index holds embeddings).
        model_name: how :meth:`health` names the model (default: its class).
    """

    def __init__(self, index, *, upload_dir: str | os.PathLike | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, text: bool | None = None,
                 model_name: str | None = None) -> None:
        self.index = index
        self.model_name = model_name
        self.model = index.model
        path = Path(index.path)
        self.upload_dir = Path(upload_dir) if upload_dir is not None else path.with_name(path.stem + "-uploads")
        self.max_pixels = max_pixels
        info = index.info
        # what does not change while the index lives: where its photos are, the model and
        # extraction settings its queries must match (the names are asked for each time)
        self.image_root = info.image_root
        self._query_info = replace(info, names=())
        settings = info.settings or {}
        self._extraction = {k: settings[k] for k in ("scales", "features_num", "image_size") if settings.get(k) is not None}
        self.text = self._has_text() if text is None else bool(text)
        self.started = time.time()
        self._closed = False
        self._features = _LRU(64)
        self._attention = _LRU(16)
        self._thumbs = _LRU(512)
        self._uploads = _LRU(32)
        self._model_lock = threading.Lock()  # one extraction at a time: no gain from more on a CPU, less memory on a GPU

    # ------------------------------------------------------------------ state
    def _has_text(self) -> bool:
        return bool(self.index.has_text and self.index.text_model is not None)

    def close(self) -> None:
        """Close the index (once; later calls do nothing)."""
        if not self._closed:
            self._closed = True
            self.index.close()

    def health(self) -> dict:
        return {"status": "ok", "images": len(self.index), "model": self._model_name(), "index": str(self.index.path),
                "text_search": self.text, "image_size": self._image_size(), "max_topk": MAX_TOPK,
                "uptime_s": round(time.time() - self.started, 1)}

    def _model_name(self) -> str:
        return str(self.model_name or type(self.model).__name__)

    def names(self, offset: int = 0, limit: int = 100) -> dict:
        names = self.index.names()
        return {"images": len(names), "offset": offset, "names": [display_name(n) for n in names[offset:offset + limit]]}

    def _known(self, name: str) -> str:
        """The indexed name a client means: ``name`` itself, else the name shown as ``name``
        (answers show names through :func:`display_name`; :func:`shown_to_name` reads them
        back, so a photo whose name is not valid UTF-8 is found by the name the page got)."""
        if isinstance(name, str) and name:
            if name in self.index:
                return name
            real = shown_to_name(name)
            if real != name and real in self.index:
                return real
        raise UnknownNameError(f"{display_name(str(name))!r} is not in the index")

    def photo_path(self, name: str) -> Path:
        """The file of an indexed photo: the upload folder's copy, else the index's image root.

        Raises:
            UnknownNameError: the index does not hold ``name``.
            NotFoundError: its file is gone (an index copied without its photos).
        """
        name = self._known(name)
        uploaded = self.upload_dir / name
        if uploaded.is_file():
            return uploaded
        root = self.image_root
        if root and (Path(root) / name).is_file():
            return Path(root) / name
        raise NotFoundError(f"{display_name(name)!r} is indexed, but its photo file is not in {display_name(str(root))} "
                            f"nor in the upload folder")

    def _file_key(self, name: str) -> tuple:
        name = self._known(name)
        path = self.photo_path(name)
        st = path.stat()
        return (name, str(path), st.st_mtime_ns, st.st_size)

    # ------------------------------------------------------------------ images
    def thumbnail(self, name: str, size: int | None) -> tuple[bytes, str]:
        """The photo's bytes (``size`` ``None``) or a JPEG whose longer side is at most ``size``."""
        if size is not None and not 16 <= size <= MAX_THUMBNAIL:
            raise UsageError(f"size must be between 16 and {MAX_THUMBNAIL}, got {size}")
        key = self._file_key(name)
        if size is None:
            data = Path(key[1]).read_bytes()
            return data, _media_type(key[1])

        def make() -> bytes:
            img = resize_max(open_image(key[1], image_size=size), size).convert("RGB")
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=85)
            return buf.getvalue()

        return self._thumbs.get(key + (size,), make), "image/jpeg"

    # ------------------------------------------------------------------ features
    def _image_size(self) -> int | None:
        return self._extraction.get("image_size", self.model.cfg.runtime.image_size)

    def _query(self, path: str):
        """Features of one photo under the index's extraction settings (fingerprint checked)."""
        with self._model_lock:
            q = queries_from_images(self.model, [path], self._query_info, root=os.path.dirname(path), **self._extraction)
        return q.features[0]

    def _indexed_features(self, name: str):
        key = self._file_key(name)
        return self._features.get(key, lambda: self._query(key[1]))

    def check_upload(self, path: str, label: str) -> None:
        """Refuse an uploaded file that is not a readable image within the pixel limit; the
        message names ``label`` (the upload's file name), not the temporary file."""
        try:
            open_image(path, image_size=self._image_size(), max_pixels=self.max_pixels)
        except ImageReadError as err:
            msg = str(err).replace(display_name(path), label)
            raise type(err)(msg.replace("; raise it with --max-pixels", "")) from None

    # ------------------------------------------------------------------ search
    def _results(self, results) -> dict:
        r = results[0]
        return {**json_fields("query", r.query),
                "results": [{"rank": h.rank, **json_fields("name", h.name), "score": h.score} for h in r.hits]}

    def _upload(self, data: bytes, filename: str | None, what: Callable[[str], object], tag: str):
        """``what(path)`` on an uploaded photo written to a temporary file, cached by the
        photo's content and ``tag``."""
        label = os.path.basename(filename or "") or "upload"
        key = ("upload:" + hashlib.sha256(data).hexdigest(), tag)

        def make():
            with tempfile.TemporaryDirectory(prefix="lit-serve-") as tmp:
                path = os.path.join(tmp, _safe_file_name(label))
                Path(path).write_bytes(data)
                self.check_upload(path, label)
                return what(path)

        return self._uploads.get(key, make), label

    def search_upload(self, data: bytes, filename: str | None, *, topk: int = 10, exclude_self: bool = False,
                      keep_unscored: bool = False) -> dict:
        """Search with an uploaded photo; its name (for ``exclude_self``) is its file name."""
        check_topk(topk)
        feats, label = self._upload(data, filename, self._query, "features")
        found = self.index.search([feats], [label], topk=topk, exclude_self=exclude_self, keep_unscored=keep_unscored)
        return {"kind": "image", **self._results(found)}

    def search_name(self, name: str, *, topk: int = 10, exclude_self: bool = False,
                    keep_unscored: bool = False) -> dict:
        """Search with a photo already in the index."""
        check_topk(topk)
        name = self._known(name)
        feats = self._indexed_features(name)
        found = self.index.search([feats], [name], topk=topk, exclude_self=exclude_self, keep_unscored=keep_unscored)
        return {"kind": "name", **self._results(found)}

    def search_text(self, text: str, *, topk: int = 10) -> dict:
        """Search by words (the index's text embeddings)."""
        check_topk(topk)
        text = " ".join((text or "").split())
        if not text:
            raise UsageError("the text query is empty")
        if len(text) > MAX_TEXT_CHARS:
            raise UsageError(f"the text query is {len(text)} characters long; at most {MAX_TEXT_CHARS}")
        if not self.text:
            raise UsageError(f"{display_name(str(self.index.path))} holds no embeddings for search by words "
                             "(run `lit text embed`, then restart the service)")
        found = self.index.search_text([text], topk=topk)
        return {"kind": "text", **self._results(found)}

    # ------------------------------------------------------------------ add, remove
    def add(self, data: bytes, name: str) -> Added:
        """Store an uploaded photo as ``name`` in the upload folder and add it to the index
        (persisted before this returns); a name already indexed is replaced."""
        name = check_name(name)
        target = self.upload_dir / name
        with tempfile.TemporaryDirectory(prefix="lit-serve-") as tmp:
            probe = os.path.join(tmp, _safe_file_name(os.path.basename(name)))
            Path(probe).write_bytes(data)
            self.check_upload(probe, name)
            replaced = name in self.index
            with self._model_lock:
                report = self.index.add([probe], names=[name])  # committed to the index file when it returns
            if report.failed:
                problem = str(next(iter(report.failed.values()))).replace(display_name(probe), display_name(name))
                raise ImageReadError(problem if problem.startswith(display_name(name)) else f"{display_name(name)}: {problem}")
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp_target:
                shutil.copyfile(probe, tmp_target)
        self._forget(name)
        log.info(f"added {display_name(name)}")
        return Added(name, replaced, len(self.index))

    def remove(self, name: str) -> dict:
        """Remove ``name`` from the index (persisted) and its file from the upload folder
        (never from the index's image root)."""
        name = self._known(name)
        report = self.index.remove([name])
        if name in getattr(report, "unknown", ()):
            raise UnknownNameError(f"{display_name(name)!r} is not in the index")
        (self.upload_dir / name).unlink(missing_ok=True)
        self._forget(name)
        log.info(f"removed {display_name(name)}")
        return {**json_fields("removed", name), "images": len(self.index)}

    def _forget(self, name: str) -> None:
        for cache in (self._features, self._attention, self._thumbs):
            cache.drop(lambda k: k[0] == name)

    # ------------------------------------------------------------------ evidence
    def _model_size_of(self, path: str) -> list[int]:
        size = self._image_size()
        return list(resize_max(open_image(path, image_size=size), size).size)

    def _features_and_size(self, name: str | None, upload: tuple[bytes, str | None] | None):
        """Features, size as the model saw it, and label of an indexed photo or an upload."""
        if upload is not None:
            (feats, size), label = self._upload(*upload, lambda p: (self._query(p), self._model_size_of(p)), "features+size")
            return feats, size, label
        key = self._file_key(name)
        size = self._thumbs.get(key + ("model-size",), lambda: self._model_size_of(key[1]))
        return self._indexed_features(name), size, name

    def match(self, a: str | None, b: str, *, upload: tuple[bytes, str | None] | None = None) -> dict:
        """The super-feature matches of two photos under the model's rule: ``a`` an indexed
        photo, or ``upload`` (``(bytes, file name)``: a query photo), and ``b`` an indexed one.

        Positions are attention centroids ``(x, y)`` in pixels of the photo as the model saw
        it (longer side at most the index's image size: ``size_a``, ``size_b``).
        """
        if upload is None:
            a = self._known(a)
        b = self._known(b)
        fa, size_a, a = self._features_and_size(a, upload)
        fb, size_b, b = self._features_and_size(b, None)
        rule = self.model.match_rule()
        m = rule.match(fa, fb)
        pa, pb = fa.positions[m.indices_a], fb.positions[m.indices_b]
        ids_a, ids_b = fa.superfeature_ids[m.indices_a], fb.superfeature_ids[m.indices_b]
        matches = [{"xa": float(pa[i, 0]), "ya": float(pa[i, 1]), "xb": float(pb[i, 0]), "yb": float(pb[i, 1]),
                    "similarity": float(m.similarity[i]), "scale_a": float(m.scales_a[i]), "scale_b": float(m.scales_b[i]),
                    "id_a": int(ids_a[i]), "id_b": int(ids_b[i])} for i in range(len(m))]
        return {**json_fields("a", a), **json_fields("b", b), "size_a": size_a, "size_b": size_b, "rule": rule.describe(), "score": float(m.score),
                "matches": matches}

    def attention(self, name: str | None, *, scale: float = 1.0, ids: list[int] | None = None,
                  upload: tuple[bytes, str | None] | None = None) -> dict:
        """Attention maps of the super-features of an indexed photo (or an upload) at one
        scale, each divided by its peak and sent as base64 bytes (0..255, row-major, ``grid``
        h x w) covering the photo as the model saw it (``size``: width, height)."""
        if not (isinstance(scale, (int, float)) and 0.05 <= scale <= 4):
            raise UsageError(f"scale must be between 0.05 and 4, got {scale}")

        def make(path):
            img = load_image(path, self._image_size())
            with self._model_lock:
                return self.model.superfeatures(img, scale=float(scale)), [int(img.shape[2]), int(img.shape[1])]

        if upload is not None:
            (sf, size), name = self._upload(*upload, make, f"attention:{float(scale)}")
        else:
            key = self._file_key(self._known(name))
            sf, size = self._attention.get(key + (float(scale),), lambda: make(key[1]))
        n = sf.attention.shape[0]
        ids = list(range(n)) if ids is None else ids
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise UsageError(f"super-feature ids must be between 0 and {n - 1}, got {bad[0]}")
        maps = []
        for i in ids:
            a = sf.attention[i].float()
            peak = float(a.max())
            q = (a / max(peak, 1e-12) * 255).round().clamp(0, 255).to(torch.uint8).contiguous().numpy()
            maps.append({"id": i, "peak": peak, "data": base64.b64encode(q.tobytes()).decode("ascii")})
        return {**json_fields("name", name), "scale": float(sf.scale), "size": size, "grid": list(sf.attention.shape[-2:]),
                "maps": maps}


def check_topk(topk) -> int:
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= MAX_TOPK:
        raise UsageError(f"topk must be between 1 and {MAX_TOPK}, got {topk!r}")
    return topk


def _safe_file_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[-100:].lstrip(".")
    return keep or "upload"


def _media_type(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    return {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".bmp": "image/bmp",
            ".webp": "image/webp", ".tif": "image/tiff", ".tiff": "image/tiff"}.get(ext, "application/octet-stream")

