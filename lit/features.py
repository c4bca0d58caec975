"""Feature files: per-image super-features in one HDF5 file, written resumably.

Layout (``format = "lit-features"``, ``version = 1``):

=====================  ==========================  ==========================================
dataset                shape / dtype               content
=====================  ==========================  ==========================================
``names``              (n,) utf-8 str              image name (path relative to the root)
``offsets``            (n + 1,) int64              features of image i: rows offsets[i]:offsets[i+1]
``descriptors``        (M, d) float32 or float16   reduced descriptors
``strengths``          (M,) float32                strengths
``scales``             (M,) float32                extraction scale
``superfeature_ids``   (M,) int16                  template index n
``positions``          (M, 2) float32              attention centroid (x, y) in the resized image
``failed``             (f,) utf-8 str              "name<TAB>error" of images that could not be read
=====================  ==========================  ==========================================

Attributes: ``num_images`` and ``num_features`` (the committed counts: rows past them are
ignored), ``fingerprint`` (model weights + extraction settings), ``descriptor_dim``.

Datasets grow by doubling and the file is flushed after every image, so a run killed at
any moment (even ``kill -9``) loses at most the image in flight; a rerun skips every image
already in the file or already recorded as failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import h5py
import numpy as np
import torch

from ._image import ImageReadError, load_image
from .types import LocalFeatures

FORMAT = "lit-features"
VERSION = 1
_STR = h5py.string_dtype("utf-8")


def model_fingerprint(model, scales: Sequence[float], features_num: int, image_size: int | None,
                      amp: torch.dtype | None = None, half: bool = False) -> str:
    """sha256 over the model's weights, its config and the extraction settings.

    The precision is part of the settings: ``amp`` (the autocast dtype of the fast path)
    and ``half`` (float16 storage) change the features, so a file written with other
    values is not resumed. The float32 defaults leave the digest as it was before they
    were added (existing files still resume).
    """
    h = hashlib.sha256()
    h.update(json.dumps(model.cfg.to_dict(), sort_keys=True).encode())
    h.update(json.dumps({"scales": list(map(float, scales)), "features_num": int(features_num), "image_size": image_size}).encode())
    if amp is not None or half:
        h.update(json.dumps({"amp": str(amp), "half": bool(half)}).encode())
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class FeatureFileError(ValueError):
    """A feature file is unreadable, of another format, or made by another model."""


class FeatureStore:
    """Read (and append to) a feature file.

    Args:
        path: the HDF5 file.
        mode: ``"r"`` to read, ``"a"`` to append (created if missing).
        descriptor_dim, fingerprint: required to create a file; checked when appending.
        half: store descriptors as float16 (halves the size; default float32).
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r", descriptor_dim: int | None = None,
                 fingerprint: str | None = None, half: bool = False) -> None:
        self.path = os.fspath(path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if mode == "r" and not os.path.isfile(self.path):
            raise FeatureFileError(f"{self.path}: no such feature file")
        try:
            self.h5 = h5py.File(self.path, mode)
        except OSError as err:
            raise FeatureFileError(f"{self.path}: not a readable HDF5 feature file ({err})") from None
        if "format" not in self.h5.attrs:
            if mode == "r" or len(self.h5.keys()):
                self.h5.close()
                raise FeatureFileError(f"{self.path}: not a lit feature file (no 'format' attribute)")
            if descriptor_dim is None:
                self.h5.close()
                raise ValueError("descriptor_dim is needed to create a feature file")
            self._create(int(descriptor_dim), fingerprint or "", half)
        fmt, ver = self.h5.attrs.get("format"), int(self.h5.attrs.get("version", -1))
        if fmt != FORMAT or ver != VERSION:
            self.h5.close()
            raise FeatureFileError(f"{self.path}: format {fmt!r} version {ver}, expected {FORMAT!r} version {VERSION}")
        if mode == "a" and fingerprint is not None and self.h5.attrs["fingerprint"] != fingerprint:
            self.h5.close()
            raise FeatureFileError(
                f"{self.path} was written by another model or with other extraction settings "
                "(scales, features, image size, --amp or --half: fingerprint differs): use another output file"
            )
        self._names: list[str] | None = None

    def _create(self, dim: int, fingerprint: str, half: bool) -> None:
        h = self.h5
        h.attrs.update({"format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
                        "descriptor_dim": dim, "num_images": 0, "num_features": 0})
        cap = 1024
        h.create_dataset("names", (0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        h.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1024,))
        h.create_dataset("descriptors", (cap, dim), maxshape=(None, dim), dtype=np.float16 if half else np.float32, chunks=(1024, dim))
        h.create_dataset("strengths", (cap,), maxshape=(None,), dtype=np.float32, chunks=(4096,))
        h.create_dataset("scales", (cap,), maxshape=(None,), dtype=np.float32, chunks=(4096,))
        h.create_dataset("superfeature_ids", (cap,), maxshape=(None,), dtype=np.int16, chunks=(4096,))
        h.create_dataset("positions", (cap, 2), maxshape=(None, 2), dtype=np.float32, chunks=(4096, 2))
        h.create_dataset("failed", (0,), maxshape=(None,), dtype=_STR, chunks=(256,))
        h.flush()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return int(self.h5.attrs["num_images"])

    @property
    def fingerprint(self) -> str:
        return str(self.h5.attrs["fingerprint"])

    @property
    def names(self) -> list[str]:
        if self._names is None:
            n = len(self)
            self._names = [s.decode() if isinstance(s, bytes) else s for s in self.h5["names"][:n]]
        return self._names

    @property
    def failed(self) -> dict[str, str]:
        out = {}
        for s in self.h5["failed"][:]:
            s = s.decode() if isinstance(s, bytes) else s
            name, _, err = s.partition("\t")
            out[name] = err
        return out

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise KeyError(f"{name!r} is not in {self.path}") from None

    def __getitem__(self, key: int | str) -> LocalFeatures:
        i = self.index(key) if isinstance(key, str) else int(key)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        i %= n
        a, b = (int(v) for v in self.h5["offsets"][i:i + 2])
        return LocalFeatures(
            descriptors=torch.from_numpy(self.h5["descriptors"][a:b].astype(np.float32)),
            strengths=torch.from_numpy(self.h5["strengths"][a:b]),
            scales=torch.from_numpy(self.h5["scales"][a:b]),
            superfeature_ids=torch.from_numpy(self.h5["superfeature_ids"][a:b].astype(np.int64)),
            positions=torch.from_numpy(self.h5["positions"][a:b]),
        )

    def all_descriptors(self) -> tuple[np.ndarray, np.ndarray]:
        """All committed descriptors with the image index of each row: ``(M, d)``, ``(M,)``."""
        n, m = len(self), int(self.h5.attrs["num_features"])
        offsets = self.h5["offsets"][: n + 1]
        ids = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        return self.h5["descriptors"][:m].astype(np.float32), ids

    # ------------------------------------------------------------------ writing
    def _ensure(self, name: str, rows: int) -> None:
        ds = self.h5[name]
        if ds.shape[0] < rows:
            ds.resize(max(rows, 2 * ds.shape[0]), axis=0)

    def append(self, name: str, feats: LocalFeatures) -> None:
        """Add one image's features and commit (flush)."""
        h, n, m = self.h5, len(self), int(self.h5.attrs["num_features"])
        k = len(feats)
        if feats.descriptors.shape[1:] != (h.attrs["descriptor_dim"],):
            raise ValueError(f"descriptor dim {tuple(feats.descriptors.shape[1:])} != file's {h.attrs['descriptor_dim']}")
        for ds in ("descriptors", "strengths", "scales", "superfeature_ids", "positions"):
            self._ensure(ds, m + k)
        self._ensure("names", n + 1)
        self._ensure("offsets", n + 2)
        h["descriptors"][m:m + k] = feats.descriptors.numpy()
        h["strengths"][m:m + k] = feats.strengths.numpy()
        h["scales"][m:m + k] = feats.scales.numpy()
        h["superfeature_ids"][m:m + k] = feats.superfeature_ids.numpy().astype(np.int16)
        pos = feats.positions if feats.positions is not None else torch.full((k, 2), float("nan"))
        h["positions"][m:m + k] = pos.numpy()
        h["names"][n] = name
        h["offsets"][n + 1] = m + k
        h.attrs["num_features"] = m + k
        h.attrs["num_images"] = n + 1  # commit point
        h.flush()
        if self._names is not None:
            self._names.append(name)

    def add_failure(self, name: str, error: str) -> None:
        ds = self.h5["failed"]
        ds.resize(ds.shape[0] + 1, axis=0)
        ds[-1] = f"{name}\t{error}"
        self.h5.flush()

    def close(self) -> None:
        if self.h5.id.valid:
            self.h5.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ExtractionSummary:
    """What :func:`extract_to_file` did."""

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] | None = None
    seconds: float = 0.0

    def report(self) -> str:
        failed = self.failed or {}
        lines = [f"extracted {self.done} images, skipped {self.skipped} already done, {len(failed)} failed, in {self.seconds:.1f} s"]
        lines += [f"  failed: {err}" for err in failed.values()]
        return "\n".join(lines)


class _ImageList(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[str, str, tuple | None]], image_size: int | None) -> None:
        self.items, self.image_size = items, image_size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        name, path, bbox = self.items[i]
        try:
            return name, load_image(path, self.image_size, bbox=bbox), None
        except (ImageReadError, ValueError, OSError) as err:
            return name, None, str(err)


def extract_to_file(
    model,
    images: Iterable[str | os.PathLike | tuple],
    out: str | os.PathLike,
    root: str | os.PathLike | None = None,
    scales: Sequence[float] | None = None,
    features_num: int | None = None,
    image_size: int | None = -1,
    num_workers: int = 0,
    progress: bool = True,
    half: bool = False,
    batch_size: int = 1,
    amp: torch.dtype | None = None,
) -> ExtractionSummary:
    """Extract super-features of many images into a feature file, resumably.

    Args:
        model: a :class:`~lit.models.SuperFeatureModel`.
        images: paths, or ``(path, bbox)`` pairs (bbox ``(x1, y1, x2, y2)`` crops first).
        out: the HDF5 file (created, or appended to when it exists).
        root: image names are stored relative to it (default: as given).
        scales, features_num: default the model's.
        image_size: longer side (``-1``: the model's default; ``None``: keep).
        num_workers: image decoding processes.
        progress: tqdm progress bar on stderr.
        half: store descriptors as float16.
        batch_size: consecutive images of equal size are extracted together, up to this
            many at a time (each image is still committed to the file on its own).
        amp: autocast dtype for the fast path (``torch.bfloat16``); ``None``: float32.

    Returns:
        An :class:`ExtractionSummary`; unreadable files are reported and skipped.
    """
    from tqdm import tqdm

    rt = model.cfg.runtime
    scales = tuple(rt.scales if scales is None else scales)
    features_num = rt.features_num if features_num is None else int(features_num)
    image_size = rt.image_size if image_size == -1 else image_size
    fp = model_fingerprint(model, scales, features_num, image_size, amp=amp, half=half)
    dim = model.cfg.reduction_dim or model.cfg.lit.dim
    items = []
    for entry in images:
        path, bbox = (entry if isinstance(entry, tuple) else (entry, None))
        path = os.fspath(path)
        name = os.path.relpath(path, root) if root is not None else path
        items.append((name, path, tuple(bbox) if bbox is not None else None))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    start = time.perf_counter()
    summary = ExtractionSummary(failed={})
    with FeatureStore(out, "a", descriptor_dim=dim, fingerprint=fp, half=half) as store:
        known = set(store.names) | set(store.failed)
        todo = [it for it in items if it[0] not in known]
        summary.skipped = len(items) - len(todo)
        loader = torch.utils.data.DataLoader(
            _ImageList(todo, image_size), batch_size=None, shuffle=False, num_workers=num_workers,
        )  # not pin_memory: pinning single images before torch.stack is wasted; the batch is pinned
        pin = str(model.device).startswith("cuda")
        bar = tqdm(total=len(todo), disable=not progress, unit="img", file=sys.stderr, desc="extract")
        pending: list[tuple[str, torch.Tensor]] = []  # equal-size images waiting for a batch

        def flush() -> None:
            if not pending:
                return
            batch = torch.stack([t for _, t in pending])
            batch = (batch.pin_memory() if pin else batch).to(model.device, non_blocking=True)
            outs = model.extract_batch(batch, scales=scales, features_num=features_num, amp=amp)
            for (n, _), feats in zip(pending, outs, strict=True):
                store.append(n, feats)
            summary.done += len(pending)
            bar.update(len(pending))
            pending.clear()

        for name, tensor, error in loader:
            if error is not None:
                flush()  # keep the file in input order
                store.add_failure(name, error)
                summary.failed[name] = error
                bar.write(f"skipped: {error}", file=sys.stderr)
                bar.update(1)
                continue
            if pending and pending[0][1].shape != tensor.shape:
                flush()
            pending.append((name, tensor))
            if len(pending) >= batch_size:
                flush()
        flush()
        bar.close()
    summary.seconds = time.perf_counter() - start
    return summary
