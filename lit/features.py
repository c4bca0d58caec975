"""Feature files: per-image super-features in one HDF5 file, written resumably.

Layout (``format = "lit-features"``, ``version = 1``):

=====================  ==========================  ==========================================
dataset                shape / dtype               content
=====================  ==========================  ==========================================
``names``              (n,) utf-8 str              image name, printable (:func:`display_name`)
``names_raw``          (n,) vlen uint8             the exact bytes of each name (``os.fsencode``)
``offsets``            (n + 1,) int64              features of image i: rows offsets[i]:offsets[i+1]
``descriptors``        (M, d) float32 or float16   reduced descriptors (not L2-normalised)
``strengths``          (M,) float32                strengths
``scales``             (M,) float32                extraction scale
``superfeature_ids``   (M,) int16                  template index n
``positions``          (M, 2) float32              attention centroid (x, y) in the resized image
``failed``             (f,) utf-8 str              "name<TAB>error" of images that could not be read
``failed_raw``         (f,) vlen uint8             the exact bytes of each failed name
=====================  ==========================  ==========================================

Attributes: ``num_images`` and ``num_features`` (the committed counts: rows past them are
ignored), ``fingerprint`` (model weights + extraction settings), ``descriptor_dim``,
``root`` (bytes: the folder that names are relative to) and ``settings`` (JSON: scales,
features_num, image_size). Files written before ``names_raw``/``root`` existed are read
as before.

**Names.** Every stored name is the path of the image relative to a root folder, with
``/`` separators: ``--root`` when given, else the deepest folder that holds every input
(the folder itself for one folder; a file's own folder for one file). Names that are not
valid UTF-8 (``caf\\xe9.jpg`` on a Latin-1 disk) are kept byte for byte in
``names_raw`` and read back as the ``str`` Python uses for that file (surrogate escapes);
:func:`display_name` gives their printable form (``caf\\xe9.jpg``) for messages, JSON and
CSV.

**Resuming.** Datasets grow by doubling and the file is flushed after every image, so a
run killed at any moment (even ``kill -9``) loses at most the image in flight. A rerun
skips every image already in the file and retries the ones recorded as failed (a file
fixed since is then extracted and leaves the failure list); ``retry_failed=False``
(``--no-retry``) skips them too. The same image given twice is stored once.

**Reading** checks the descriptors: a file whose values are not finite or beyond
:data:`MAX_DESCRIPTOR_ABS` (a damaged or overwritten file) raises
:class:`FeatureFileError` naming it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import h5py
import numpy as np
import torch

from ._image import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    decode_name,
    display_name,
    encode_name,
    load_image,
)
from .errors import FeatureFileError
from .types import LocalFeatures

FORMAT = "lit-features"
VERSION = 1
_STR = h5py.string_dtype("utf-8")
_RAW = h5py.vlen_dtype(np.uint8)

#: Largest absolute descriptor value accepted when reading a feature file. Real
#: descriptors (PCA-whitened super-features) stay within a few hundred; a damaged file
#: (bytes overwritten: 0x7F7F7F7F is 3.4e38) would overflow the squared distances of
#: k-means and ASMK.
MAX_DESCRIPTOR_ABS = 1e4

__all__ = [
    "ExtractionSummary", "FeatureFileError", "FeatureStore", "MAX_DESCRIPTOR_ABS", "MergeSummary",
    "common_root", "display_name", "extract_to_file", "feature_file_info", "image_names",
    "merge_feature_files", "model_fingerprint",
]


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


def _open_h5(path: str, mode: str) -> h5py.File:
    """``h5py.File`` with one-line errors that say what is wrong."""
    shown = display_name(path)
    folder = os.path.dirname(os.path.abspath(path))
    if mode != "r" and not os.path.isdir(folder):
        raise FeatureFileError(f"{shown}: the folder {display_name(folder)} does not exist")
    if os.path.isdir(path):
        raise FeatureFileError(f"{shown}: a folder, not a feature file")
    try:
        return h5py.File(path, mode)
    except OSError as err:
        text = str(err)
        if "lock" in text.lower() or getattr(err, "errno", None) == 11:
            raise FeatureFileError(
                f"{shown}: in use by another process (another `lit extract` writing it?); "
                "wait for it to finish or use another file"
            ) from None
        if "permission" in text.lower() or getattr(err, "errno", None) == 13:
            raise FeatureFileError(f"{shown}: permission denied") from None
        raise FeatureFileError(f"{shown}: not a readable HDF5 feature file ({text})") from None


def _raw_bytes(value) -> bytes:
    return value.tobytes() if isinstance(value, np.ndarray) else bytes(value)


class FeatureStore:
    """Read (and append to) a feature file.

    Args:
        path: the HDF5 file.
        mode: ``"r"`` to read, ``"a"`` to append (created if missing; its folder must exist).
        descriptor_dim, fingerprint: required to create a file; checked when appending.
        half: store descriptors as float16 (halves the size; default float32).
        root: the folder names are relative to (recorded when the file is created).
        settings: extraction settings recorded when the file is created (JSON-able).

    Raises:
        FeatureFileError: missing, in use by another process, not a lit feature file, made
            by another model, or (when reading) damaged descriptors; the message names the
            file.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r", descriptor_dim: int | None = None,
                 fingerprint: str | None = None, half: bool = False, root: str | os.PathLike | None = None,
                 settings: dict | None = None) -> None:
        self.path = os.fspath(path)
        shown = display_name(self.path)
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', got {mode!r}")
        if mode == "r" and not os.path.isfile(self.path):
            raise FeatureFileError(f"{shown}: no such feature file")
        self.h5 = _open_h5(self.path, mode)
        if "format" not in self.h5.attrs:
            if mode == "r" or len(self.h5.keys()):
                self.h5.close()
                raise FeatureFileError(f"{shown}: not a lit feature file (no 'format' attribute)")
            if descriptor_dim is None:
                self.h5.close()
                raise ValueError("descriptor_dim is needed to create a feature file")
            self._create(int(descriptor_dim), fingerprint or "", half, root, settings)
        fmt, ver = self.h5.attrs.get("format"), int(self.h5.attrs.get("version", -1))
        if fmt != FORMAT or ver != VERSION:
            self.h5.close()
            raise FeatureFileError(f"{shown}: format {fmt!r} version {ver}, expected {FORMAT!r} version {VERSION}")
        if mode == "a" and fingerprint is not None and self.h5.attrs["fingerprint"] != fingerprint:
            self.h5.close()
            raise FeatureFileError(
                f"{shown} was written by another model or with other extraction settings "
                "(scales, features, image size, --amp or --half: fingerprint differs): use another output file"
            )
        if mode == "a" and "names_raw" not in self.h5:  # a file of an earlier lit: add the raw names
            n = len(self)
            ds = self.h5.create_dataset("names_raw", (n,), maxshape=(None,), dtype=_RAW, chunks=(1024,))
            for j, name in enumerate(self._display_names()):
                ds[j] = np.frombuffer(encode_name(name), np.uint8)
        if mode == "a" and "failed_raw" not in self.h5:
            ds = self.h5.create_dataset("failed_raw", (self.h5["failed"].shape[0],), maxshape=(None,), dtype=_RAW, chunks=(256,))
            for j, s in enumerate(self.h5["failed"][:]):
                s = s.decode() if isinstance(s, bytes) else s
                ds[j] = np.frombuffer(encode_name(s.partition("\t")[0]), np.uint8)
        self._names: list[str] | None = None
        self._lookup: dict[str, int] | None = None
        self._checked = False

    def _create(self, dim: int, fingerprint: str, half: bool, root, settings) -> None:
        h = self.h5
        h.attrs.update({"format": FORMAT, "version": VERSION, "fingerprint": fingerprint,
                        "descriptor_dim": dim, "num_images": 0, "num_features": 0})
        if root is not None:
            h.attrs["root"] = encode_name(os.path.abspath(os.fspath(root)))  # read back as str by h5py
        if settings is not None:
            h.attrs["settings"] = json.dumps(settings, sort_keys=True)
        cap = 1024
        h.create_dataset("names", (0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
        h.create_dataset("names_raw", (0,), maxshape=(None,), dtype=_RAW, chunks=(1024,))
        h.create_dataset("offsets", data=np.zeros(1, np.int64), maxshape=(None,), chunks=(1024,))
        h.create_dataset("descriptors", (cap, dim), maxshape=(None, dim), dtype=np.float16 if half else np.float32, chunks=(1024, dim))
        h.create_dataset("strengths", (cap,), maxshape=(None,), dtype=np.float32, chunks=(4096,))
        h.create_dataset("scales", (cap,), maxshape=(None,), dtype=np.float32, chunks=(4096,))
        h.create_dataset("superfeature_ids", (cap,), maxshape=(None,), dtype=np.int16, chunks=(4096,))
        h.create_dataset("positions", (cap, 2), maxshape=(None, 2), dtype=np.float32, chunks=(4096, 2))
        h.create_dataset("failed", (0,), maxshape=(None,), dtype=_STR, chunks=(256,))
        h.create_dataset("failed_raw", (0,), maxshape=(None,), dtype=_RAW, chunks=(256,))
        h.flush()

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return int(self.h5.attrs["num_images"])

    def __repr__(self) -> str:
        return f"FeatureStore({display_name(self.path)!r}, {len(self)} images, {self.num_features} features)"

    @property
    def num_features(self) -> int:
        return int(self.h5.attrs["num_features"])

    @property
    def fingerprint(self) -> str:
        return str(self.h5.attrs["fingerprint"])

    @property
    def root(self) -> str | None:
        """The absolute folder the names are relative to (``None`` in older files)."""
        value = self.h5.attrs.get("root")
        if value is None:
            return None
        return value if isinstance(value, str) else decode_name(_raw_bytes(value))

    @property
    def settings(self) -> dict:
        """Extraction settings (scales, features_num, image_size); ``{}`` in older files."""
        value = self.h5.attrs.get("settings")
        return json.loads(value) if value is not None else {}

    @property
    def half(self) -> bool:
        return self.h5["descriptors"].dtype == np.float16

    def _display_names(self) -> list[str]:
        return [s.decode() if isinstance(s, bytes) else s for s in self.h5["names"][: len(self)]]

    @property
    def names(self) -> list[str]:
        """Stored image names (``str``; exact bytes kept, see the module docstring)."""
        if self._names is None:
            n = len(self)
            if "names_raw" in self.h5 and self.h5["names_raw"].shape[0] >= n:
                self._names = [decode_name(_raw_bytes(r)) for r in self.h5["names_raw"][:n]]
            else:
                self._names = self._display_names()
        return self._names

    @property
    def failed(self) -> dict[str, str]:
        """``name -> error`` of the images that could not be read (and not extracted since)."""
        rows = self.h5["failed"][:]
        raws = self.h5["failed_raw"][:] if "failed_raw" in self.h5 else [None] * len(rows)
        out = {}
        for s, raw in zip(rows, raws, strict=False):
            s = s.decode() if isinstance(s, bytes) else s
            name, _, err = s.partition("\t")
            out[decode_name(_raw_bytes(raw)) if raw is not None else name] = err
        return out

    def index(self, name: str) -> int:
        if self._lookup is None:
            self._lookup = {n: i for i, n in enumerate(self.names)}
        try:
            return self._lookup[name]
        except KeyError:
            raise KeyError(f"{display_name(name)!r} is not in {display_name(self.path)}") from None

    def _check(self, values: np.ndarray, what: str) -> np.ndarray:
        if values.size and not (np.isfinite(values).all() and np.abs(values).max() <= MAX_DESCRIPTOR_ABS):
            bad = ~np.isfinite(values)
            detail = (f"{int(bad.sum())} non-finite values" if bad.any()
                      else f"values up to {float(np.abs(values).max()):.3g}, beyond ±{MAX_DESCRIPTOR_ABS:g}")
            raise FeatureFileError(
                f"{display_name(self.path)}: damaged feature file ({what}: {detail}); extract it again"
            )
        return values

    def _check_offsets(self) -> np.ndarray:
        n, m = len(self), self.num_features
        offsets = self.h5["offsets"][: n + 1]
        if (len(offsets) != n + 1 or offsets[0] != 0 or offsets[-1] != m or (np.diff(offsets) < 0).any()
                or self.h5["descriptors"].shape[0] < m or self.h5["names"].shape[0] < n):
            raise FeatureFileError(f"{display_name(self.path)}: damaged feature file (inconsistent offsets or counts)")
        return offsets

    def __getitem__(self, key: int | str) -> LocalFeatures:
        i = self.index(key) if isinstance(key, str) else int(key)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image index {i} out of range for {n} images")
        i %= n
        a, b = (int(v) for v in self.h5["offsets"][i:i + 2])
        if not 0 <= a <= b <= self.num_features:
            raise FeatureFileError(f"{display_name(self.path)}: damaged feature file (offsets of image {i})")
        desc = self._check(self.h5["descriptors"][a:b].astype(np.float32), f"descriptors of {display_name(self.names[i])}")
        return LocalFeatures(
            descriptors=torch.from_numpy(desc),
            strengths=torch.from_numpy(self.h5["strengths"][a:b]),
            scales=torch.from_numpy(self.h5["scales"][a:b]),
            superfeature_ids=torch.from_numpy(self.h5["superfeature_ids"][a:b].astype(np.int64)),
            positions=torch.from_numpy(self.h5["positions"][a:b]),
        )

    def all_descriptors(self) -> tuple[np.ndarray, np.ndarray]:
        """All committed descriptors with the image index of each row: ``(M, d)``, ``(M,)``.

        Raises:
            FeatureFileError: inconsistent offsets, or descriptors that are not finite or
                beyond :data:`MAX_DESCRIPTOR_ABS` (a damaged file).
        """
        n, m = len(self), self.num_features
        offsets = self._check_offsets()
        ids = np.repeat(np.arange(n, dtype=np.int64), np.diff(offsets))
        return self._check(self.h5["descriptors"][:m].astype(np.float32), "descriptors"), ids

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
        self._ensure("names_raw", n + 1)
        self._ensure("offsets", n + 2)
        h["descriptors"][m:m + k] = feats.descriptors.numpy()
        h["strengths"][m:m + k] = feats.strengths.numpy()
        h["scales"][m:m + k] = feats.scales.numpy()
        h["superfeature_ids"][m:m + k] = feats.superfeature_ids.numpy().astype(np.int16)
        pos = feats.positions if feats.positions is not None and len(feats.positions) == k else torch.full((k, 2), float("nan"))
        h["positions"][m:m + k] = pos.numpy()
        h["names"][n] = display_name(name)
        h["names_raw"][n] = np.frombuffer(encode_name(name), np.uint8)
        h["offsets"][n + 1] = m + k
        h.attrs["num_features"] = m + k
        h.attrs["num_images"] = n + 1  # commit point
        h.flush()
        if self._names is not None:
            self._names.append(name)
        if self._lookup is not None:
            self._lookup.setdefault(name, n)

    def _write_failures(self, failures: dict[str, str]) -> None:
        rows = [f"{display_name(k)}\t{display_name(v)}" for k, v in failures.items()]
        for ds_name, values in (("failed", rows), ("failed_raw", [np.frombuffer(encode_name(k), np.uint8) for k in failures])):
            ds = self.h5[ds_name]
            ds.resize(len(values), axis=0)
            for j, v in enumerate(values):
                ds[j] = v
        self.h5.flush()

    def add_failure(self, name: str, error: str) -> None:
        """Record (or update) that ``name`` could not be read."""
        failures = self.failed
        if name in failures:  # a retried file failed again: rewrite its entry
            failures[name] = error
            self._write_failures(failures)
            return
        for ds_name, value in (("failed", f"{display_name(name)}\t{display_name(error)}"),
                               ("failed_raw", np.frombuffer(encode_name(name), np.uint8))):
            ds = self.h5[ds_name]
            ds.resize(ds.shape[0] + 1, axis=0)
            ds[-1] = value
        self.h5.flush()

    def clear_failures(self, names: Iterable[str]) -> None:
        """Forget recorded failures of ``names`` (e.g. after they were extracted)."""
        failures = self.failed
        drop = [n for n in names if n in failures]
        if drop:
            for n in drop:
                del failures[n]
            self._write_failures(failures)

    def close(self) -> None:
        if self.h5.id.valid:
            self.h5.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------- names
def common_root(inputs: Sequence[str | os.PathLike]) -> str:
    """The default root of stored names: the deepest folder holding every input.

    A folder counts as itself, a file as its folder: one folder gives that folder, one
    file its folder, several inputs their common folder. Absolute path.
    """
    if not inputs:
        raise ValueError("no inputs")
    dirs = []
    for item in inputs:
        path = os.path.abspath(os.fspath(item))
        dirs.append(path if os.path.isdir(path) else os.path.dirname(path))
    return os.path.commonpath(dirs)


def image_names(paths: Sequence[str | os.PathLike], root: str | os.PathLike) -> list[str]:
    """Stored names of ``paths``: relative to ``root``, with ``/`` separators.

    Raises:
        ValueError: a path lies outside ``root`` (the message names it).
    """
    root = os.path.abspath(os.fspath(root))
    out = []
    for p in paths:
        rel = os.path.relpath(os.path.abspath(os.fspath(p)), root)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise ValueError(f"{display_name(p)} is not under the root folder {display_name(root)} (--root)")
        out.append(rel.replace(os.sep, "/"))
    return out


# ---------------------------------------------------------------------- extraction
@dataclass
class ExtractionSummary:
    """What :func:`extract_to_file` did.

    Attributes:
        done: images extracted by this run.
        skipped: images already in the file (not extracted again).
        failed: ``name -> error`` of this run's images that could not be extracted.
        retried: earlier failures tried again by this run.
        skipped_failed: earlier failures not retried (``retry_failed=False``).
        duplicates: inputs given more than once (stored once).
        seconds: wall time.
    """

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] | None = None
    seconds: float = 0.0
    retried: int = 0
    skipped_failed: int = 0
    duplicates: int = 0
    total: int = 0

    @property
    def status(self) -> int:
        """Exit status of ``lit extract``: 0 every image is in the file, 3 some could not
        be extracted (named on stderr and recorded in the file), 4 none could be."""
        bad = len(self.failed or {}) + self.skipped_failed
        if bad == 0:
            return 0
        return 4 if self.done + self.skipped == 0 else 3

    def report(self) -> str:
        failed = self.failed or {}
        parts = [f"extracted {self.done} images", f"skipped {self.skipped} already done", f"{len(failed)} failed"]
        if self.retried:
            parts.append(f"{self.retried} earlier failures retried")
        if self.skipped_failed:
            parts.append(f"{self.skipped_failed} earlier failures not retried (--no-retry)")
        if self.duplicates:
            parts.append(f"{self.duplicates} duplicate inputs stored once")
        lines = [", ".join(parts) + f", in {self.seconds:.1f} s"]
        lines += [f"  failed: {display_name(err)}" for err in failed.values()]
        return "\n".join(lines)


class _ImageList(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[str, str, tuple | None]], image_size: int | None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.items, self.image_size, self.max_pixels = items, image_size, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        name, path, bbox = self.items[i]
        try:
            return name, load_image(path, self.image_size, bbox=bbox, max_pixels=self.max_pixels), None
        except (ImageReadError, ValueError, OSError, MemoryError) as err:
            msg = display_name(str(err))
            return name, None, msg if display_name(path) in msg else f"{display_name(path)}: {msg}"


def _cap_workers(num_workers: int) -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(int(num_workers), cpus))


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
    retry_failed: bool = True,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    default_root: str | os.PathLike | None = None,
    embedder=None,
) -> ExtractionSummary:
    """Extract super-features of many images into a feature file, resumably.

    Args:
        model: a :class:`~lit.models.SuperFeatureModel`.
        images: paths, or ``(path, bbox)`` pairs (bbox ``(x1, y1, x2, y2)`` crops first).
        out: the HDF5 file (created, or appended to when it exists; missing folders are
            created).
        root: image names are stored relative to it (an existing file keeps its own root,
            and another one given here is refused).
        default_root: the root of a new file when ``root`` is not given (default:
            :func:`common_root` of the images); an existing file keeps its own.
        scales, features_num: default the model's.
        image_size: longer side (``-1``: the model's default; ``None``: keep).
        num_workers: image decoding processes (capped by the CPUs this process may use).
        progress: tqdm progress bar on stderr.
        half: store descriptors as float16.
        batch_size: consecutive images of equal size are extracted together, up to this
            many at a time (each image is still committed to the file on its own).
        amp: autocast dtype for the fast path (``torch.bfloat16``); ``None``: float32.
        retry_failed: try the images recorded as failed by earlier runs again.
        max_pixels: refuse images that decode to more pixels ("too large").
        embedder: an image tower (:func:`lit.text.search.image_embedder`) whose global
            embedding of each image is stored too, for text search (``None``: none).

    Returns:
        An :class:`ExtractionSummary` (``.status`` is the exit status of ``lit extract``);
        unreadable, too large and too small files are reported on stderr (one line each,
        ``skipped: NAME: problem``), recorded in the file and skipped.
    """
    from tqdm import tqdm

    from .models.model import check_scales

    rt = model.cfg.runtime
    scales = check_scales(rt.scales if scales is None else scales)
    features_num = rt.features_num if features_num is None else int(features_num)
    image_size = rt.image_size if image_size == -1 else image_size
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    fp = model_fingerprint(model, scales, features_num, image_size, amp=amp, half=half)
    dim = model.cfg.reduction_dim or model.cfg.lit.dim
    entries = [(entry if isinstance(entry, tuple) else (entry, None)) for entry in images]
    paths = [os.fspath(p) for p, _ in entries]
    out = os.fspath(out)
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise FeatureFileError(f"{display_name(out)}: cannot create the folder {display_name(folder)} ({err.strerror})") from None
    start = time.perf_counter()
    summary = ExtractionSummary(failed={})
    settings = {"scales": list(scales), "features_num": features_num, "image_size": image_size}
    with FeatureStore(out, "a", descriptor_dim=dim, fingerprint=fp, half=half,
                      root=root if root is not None else default_root if default_root is not None
                      else (common_root(paths) if paths else None),
                      settings=settings) as store:
        stored_root = store.root
        if root is not None and stored_root is not None and os.path.abspath(os.fspath(root)) != stored_root:
            raise FeatureFileError(
                f"{display_name(out)} holds names relative to {display_name(stored_root)}, not "
                f"{display_name(os.path.abspath(os.fspath(root)))}: pass --root {display_name(stored_root)} or use another file"
            )
        given = root if root is not None else default_root
        base = stored_root if stored_root is not None else (os.fspath(given) if given is not None else common_root(paths) if paths else ".")
        names = image_names(paths, base) if paths else []
        items, seen = [], set()
        for name, path, (_, bbox) in zip(names, paths, entries, strict=True):
            key = (name, tuple(bbox) if bbox is not None else None)
            if key in seen:
                summary.duplicates += 1
                continue
            seen.add(key)
            items.append((name, path, key[1]))
        summary.total = len(items)
        known, failed_before = set(store.names), store.failed
        todo = []
        for it in items:
            if it[0] in known:
                summary.skipped += 1
            elif it[0] in failed_before and not retry_failed:
                summary.skipped_failed += 1
            else:
                summary.retried += it[0] in failed_before
                todo.append(it)
        loader = torch.utils.data.DataLoader(
            _ImageList(todo, image_size, max_pixels), batch_size=None, shuffle=False,
            num_workers=_cap_workers(num_workers),
        )  # not pin_memory: pinning single images before torch.stack is wasted; the batch is pinned
        pin = str(model.device).startswith("cuda")
        bar = tqdm(total=len(todo), disable=not progress, unit="img", file=sys.stderr, desc="extract")
        path_of = {it[0]: it[1] for it in todo}
        pending: list[tuple[str, torch.Tensor]] = []  # equal-size images waiting for a batch
        extracted: list[str] = []

        def fail(name: str, error: str) -> None:
            store.add_failure(name, error)
            summary.failed[name] = error
            bar.write(f"skipped: {error}", file=sys.stderr)

        def flush() -> None:
            if not pending:
                return
            batch = torch.stack([t for _, t in pending])
            batch = (batch.pin_memory() if pin else batch).to(model.device, non_blocking=True)
            try:
                outs = model.extract_batch(batch, scales=scales, features_num=features_num, amp=amp)
            except ImageReadError as err:  # too small: the whole batch has this size
                for n, _ in pending:
                    fail(n, f"{display_name(path_of[n])}: {err}")
                bar.update(len(pending))
                pending.clear()
                return
            if embedder is not None:  # rows written before the features commit them
                from .text.search import store_embeddings

                store_embeddings(store, embedder, list(range(len(store), len(store) + len(pending))), [t for _, t in pending])
            for (n, _), feats in zip(pending, outs, strict=True):
                store.append(n, feats)
                extracted.append(n)
            summary.done += len(pending)
            bar.update(len(pending))
            pending.clear()

        try:
            for name, tensor, error in loader:
                if error is not None:
                    flush()  # keep the file in input order
                    fail(name, error)
                    bar.update(1)
                    continue
                if pending and pending[0][1].shape != tensor.shape:
                    flush()
                pending.append((name, tensor))
                if len(pending) >= batch_size:
                    flush()
            flush()
        finally:
            store.clear_failures(extracted)
            bar.close()
    summary.seconds = time.perf_counter() - start
    return summary


# ---------------------------------------------------------------------- inspection and merging
def feature_file_info(path: str | os.PathLike) -> dict:
    """What a feature file holds: counts, model fingerprint, settings, root and failures.

    Returns:
        A JSON-able dict (names in their printable form, :func:`display_name`).
    """
    with FeatureStore(path) as store:
        offsets = store._check_offsets()
        per_image = np.diff(offsets)
        return {
            "path": display_name(os.path.abspath(store.path)),
            "format": f"{FORMAT} v{VERSION}",
            "images": len(store),
            "features": store.num_features,
            "features_per_image": {"min": int(per_image.min()) if len(per_image) else 0,
                                   "mean": float(per_image.mean()) if len(per_image) else 0.0,
                                   "max": int(per_image.max()) if len(per_image) else 0},
            "descriptor_dim": int(store.h5.attrs["descriptor_dim"]),
            "dtype": "float16" if store.half else "float32",
            "fingerprint": store.fingerprint,
            "settings": store.settings,
            "root": display_name(store.root) if store.root is not None else None,
            "failed": {display_name(k): display_name(v) for k, v in store.failed.items()},
            "size_bytes": os.path.getsize(store.path),
        }


@dataclass
class MergeSummary:
    """What :func:`merge_feature_files` did."""

    images: int = 0
    duplicates: list[str] = field(default_factory=list)
    failed: int = 0
    root: str | None = None


def merge_feature_files(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, overwrite: bool = False) -> MergeSummary:
    """Merge feature files of the same model and settings into a new one.

    An input may also be a set of shards (``torchrun ... lit extract``): its base name, a
    folder or a glob stands for its files, in rank order (:func:`lit.shards.find_shards`).

    Names are re-based on the common folder of the inputs' roots (files without a
    recorded root keep their names); an image present in several inputs is stored once
    (the first one wins); failures are kept unless the image is present in some input.

    Raises:
        FeatureFileError: fewer than two inputs are readable feature files, fingerprints
            (model or extraction settings) or descriptor dimensions differ, or ``out``
            exists (without ``overwrite``) or is one of the inputs.
    """
    from .shards import find_shards  # a shard set (base name, folder or glob) counts as its files

    inputs = [f for p in inputs for f in find_shards(p)]
    out = os.fspath(out)
    if len(inputs) < 1:
        raise FeatureFileError("nothing to merge: give feature files")
    if any(os.path.abspath(out) == os.path.abspath(p) for p in inputs):
        raise FeatureFileError(f"{display_name(out)}: the output must not be one of the inputs")
    if os.path.exists(out):
        if not overwrite:
            raise FeatureFileError(f"{display_name(out)}: already exists (pass --overwrite to replace it)")
        os.remove(out)
    stores = []
    try:
        for p in inputs:
            stores.append(FeatureStore(p))
        first = stores[0]
        for st in stores[1:]:
            if st.fingerprint != first.fingerprint:
                raise FeatureFileError(
                    f"{display_name(st.path)} was made by another model or with other extraction settings than "
                    f"{display_name(first.path)} (fingerprint {st.fingerprint[:12]} vs {first.fingerprint[:12]}): "
                    "features of different models cannot be searched together"
                )
            if st.h5.attrs["descriptor_dim"] != first.h5.attrs["descriptor_dim"]:
                raise FeatureFileError(f"{display_name(st.path)}: descriptor dimension differs from {display_name(first.path)}")
        roots = [st.root for st in stores]
        root = os.path.commonpath(roots) if all(r is not None for r in roots) else None
        summary = MergeSummary(root=display_name(root) if root is not None else None)
        folder = os.path.dirname(os.path.abspath(out))
        os.makedirs(folder, exist_ok=True)
        with FeatureStore(out, "a", descriptor_dim=int(first.h5.attrs["descriptor_dim"]), fingerprint=first.fingerprint,
                          half=all(st.half for st in stores), root=root, settings=first.settings or None) as dst:
            have: set[str] = set()
            failures: dict[str, str] = {}
            for st in stores:
                rebase = (lambda n, st=st: image_names([os.path.join(st.root, n)], root)[0]) if root is not None else (lambda n: n)
                st.all_descriptors()  # validates the whole file first
                for i, name in enumerate(st.names):
                    new = rebase(name)
                    if new in have:
                        summary.duplicates.append(new)
                        continue
                    have.add(new)
                    dst.append(new, st[i])
                for name, err in st.failed.items():
                    failures.setdefault(rebase(name), err)
            failures = {k: v for k, v in failures.items() if k not in have}
            if failures:
                dst._write_failures(failures)
            summary.images, summary.failed = len(dst), len(failures)
    except BaseException:
        for st in stores:
            st.close()
        if os.path.exists(out) and not any(os.path.abspath(out) == os.path.abspath(p) for p in inputs):
            try:
                os.remove(out)
            except OSError:
                pass
        raise
    for st in stores:
        st.close()
    return summary
