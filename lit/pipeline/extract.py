"""Extraction into feature files, and the naming of stored images.

- :func:`gather_images`: image paths from folders, files and a list, and the root of their
  names; :func:`common_root` / :func:`image_names`: stored names are paths relative to a
  root, with ``/`` (``--root`` when given, else the deepest folder holding every input);
- :func:`model_fingerprint`: what a feature file, an index and queries must share;
- :func:`extract_to_file`: resumable extraction (skips what is stored, retries failures, bad
  files named and recorded), optionally with global embeddings for text search;
- :func:`rank_share`: under ``torchrun``, this rank's block of the images and its shard file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .._fileio import check_output_file
from .._image import (
    DEFAULT_MAX_PIXELS,
    ImageReadError,
    display_name,
    load_image,
    missing_problem,
    open_image,
    scan_images,
    too_small_message,
)
from ..distributed import env_from_environ, shard_path, split_range
from ..errors import FeatureFileError, NotFoundError, UsageError
from ..features import FeatureStore
from ..models.model import check_scales

log = logging.getLogger(__name__)

__all__ = [
    "IGNORED_SHOWN", "MAX_SCALE", "ExtractionSummary", "FoundImages", "check_extraction_options", "common_root",
    "extract_to_file", "find_images", "gather_images", "image_names", "model_fingerprint", "rank_share",
    "read_list_file", "too_small_message",
]


def model_fingerprint(model, scales: Sequence[float], features_num: int, image_size: int | None,
                      amp: torch.dtype | None = None, half: bool = False) -> str:
    """sha256 over the model's weights, its config and the extraction settings.

    The precision is part of the settings: ``amp`` (the autocast dtype of the fast path)
    and ``half`` (float16 storage) change the features, so a file written with other
    values is not resumed. The float32 defaults leave the digest as it was before they
    were added (existing files still resume). The model's match rule (its config's
    ``match`` and the background bank) changes no feature, so it is left out: a model
    whose rule is recalibrated keeps its feature files and indexes.
    """
    h = hashlib.sha256()
    cfg = model.cfg.to_dict()
    cfg.pop("match", None)
    h.update(json.dumps(cfg, sort_keys=True).encode())
    h.update(json.dumps({"scales": list(map(float, scales)), "features_num": int(features_num), "image_size": image_size}).encode())
    if amp is not None or half:
        h.update(json.dumps({"amp": str(amp), "half": bool(half)}).encode())
    for key, value in sorted(model.state_dict().items()):
        if key == "match_background":
            continue
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def common_root(inputs: Sequence[str | os.PathLike]) -> str:
    """The default root of stored names: the deepest folder holding every input.

    A folder counts as itself, a file as its folder: one folder gives that folder, one
    file its folder, several inputs their common folder. Absolute path.
    """
    if not inputs:
        raise UsageError("no inputs")
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
            msg = f"{display_name(p)} is not under the root folder {display_name(root)}"
            raise UsageError(msg, cli=msg + " (--root)")
        out.append(rel.replace(os.sep, "/"))
    return out


def gather_images(inputs: Sequence[str], list_file: str | None = None) -> tuple[list[str], str | None]:
    """Image paths from folders, files and a list file, and the root of their names
    (:func:`find_images` without what the folder scans left out)."""
    found = find_images(inputs, list_file)
    return found.paths, found.root


@dataclass
class FoundImages:
    """What :func:`find_images` gathered.

    Attributes:
        paths: the image paths, in order (folders' images sorted).
        root: the folder their names are relative to by default.
        ignored: ``(path, reason)`` of the entries that folder scans left out: files
            without an image extension, folders named like images (``x.jpg/``).
    """

    paths: list[str]
    root: str | None
    ignored: list[tuple[str, str]]


def read_list_file(path: str | os.PathLike, what: str = "list file", names: bool = True) -> list[str]:
    """The lines of a list file (image paths, query texts): stripped, blank and ``#``
    lines skipped, a UTF-8 byte-order mark removed.

    Args:
        path: the file.
        what: what the file is, for messages (``"list file"``, ``"query file"``).
        names: the lines are file names: bytes that are not UTF-8 are kept
            (``surrogateescape``; names need not be UTF-8). ``False``: the lines are text,
            which must be UTF-8.

    Raises:
        NotFoundError: no such file.
        UsageError: a folder, a symlink loop or another non-regular file, or
            (``names=False``) a line that is not UTF-8 (the line and the byte are named).
    """
    path = os.fspath(path)
    shown = display_name(path)
    if os.path.isdir(path):
        raise UsageError(f"{shown}: is a folder, not a {what}")
    if not os.path.isfile(path):
        problem = missing_problem(path) if not os.path.exists(path) else "not a regular file"
        if problem == "no such file":
            raise NotFoundError(f"{shown}: no such {what}")
        raise UsageError(f"{shown}: {problem} ({what})")
    with open(path, "rb") as f:
        raw = f.read()
    raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # a byte-order mark (Windows editors)
    lines = []
    for number, line in enumerate(raw.splitlines(), 1):
        try:
            text = line.decode("utf-8", "surrogateescape" if names else "strict")
        except UnicodeDecodeError as err:
            raise UsageError(f"{shown}, line {number}: not UTF-8 text (byte 0x{line[err.start]:02x} at column "
                             f"{err.start + 1}; a Latin-1 or Windows-1252 file?): save the {what} as UTF-8") from None
        lines.append(text.strip())
    return [line for line in lines if line and not line.startswith("#")]


def find_images(inputs: Sequence[str], list_file: str | None = None) -> FoundImages:
    """Image paths from folders, files and a list file, the root of their names, and what
    the folder scans left out.

    Folders are searched recursively for images (:func:`lit._image.scan_images`); lines of
    the list file (:func:`read_list_file`) are paths relative to its folder. The root is
    :func:`common_root` of the folder and file arguments and the listed files: one folder
    gives that folder.

    Raises:
        UsageError: an argument that does not exist (a symlink loop is called one), a
            missing list file, or no image at all.
    """
    paths: list[str] = []
    anchors: list[str] = []
    ignored: list[tuple[str, str]] = []
    for item in inputs:
        if os.path.isdir(item):
            images, left_out = scan_images(item)
            paths.extend(images)
            ignored.extend(left_out)
            anchors.append(item)
        elif os.path.exists(item):
            paths.append(item)
            anchors.append(item)
        else:
            problem = missing_problem(item)
            raise UsageError(f"{display_name(item)}: " + ("no such file or directory" if problem == "no such file"
                                                          else problem))
    if list_file:
        base = os.path.dirname(list_file)
        for line in read_list_file(list_file):
            paths.append(line if os.path.isabs(line) else os.path.join(base, line))
            anchors.append(paths[-1])
    if not paths:
        raise UsageError("no images given (folders are searched for .jpg/.png/... files)")
    return FoundImages(paths, common_root(anchors), ignored)


#: How many of the files a folder scan left out the extraction report names.
IGNORED_SHOWN = 5


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
        ignored: ``(path, reason)`` of what the folder scans left out (not images by their
            extension, folders named like images): counted and named in the report.
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
    ignored: list[tuple[str, str]] | None = None

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
        first = ", ".join(parts) + f", in {self.seconds:.1f} s"
        if self.ignored:  # what a folder scan left out: on the first line, which `lit extract` prints
            shown = [f"{display_name(p)} ({why})" for p, why in self.ignored[:IGNORED_SHOWN]]
            more = len(self.ignored) - len(shown)
            first += (f"; ignored {len(self.ignored)} file{'s' if len(self.ignored) != 1 else ''}: "
                      + ", ".join(shown) + (f" and {more} more" if more else ""))
        lines = [first]
        lines += [f"  failed: {display_name(err)}" for err in failed.values()]
        return "\n".join(lines)


class _ImageList(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[str, str, tuple | None]], image_size: int | None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS) -> None:
        self.items, self.image_size, self.max_pixels = items, image_size, max_pixels

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        """``(name, image tensor, None, size of the file)``, or ``(name, None, error, None)``."""
        name, path, bbox = self.items[i]
        try:  # a crop needs the full-resolution pixels: no reduced decoding then
            img = open_image(path, image_size=None if bbox is not None else self.image_size,
                             max_pixels=self.max_pixels)
            return name, load_image(img, self.image_size, bbox=bbox), None, img.size
        except (ImageReadError, ValueError, OSError, MemoryError) as err:
            msg = display_name(str(err))
            return name, None, msg if display_name(path) in msg else f"{display_name(path)}: {msg}", None


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
    ignored: Sequence[tuple[str, str]] | None = None,
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
        embedder: an image tower (``.name`` and ``.embed(images) -> (B, D)``, e.g.
            :func:`lit.text.image_embedder`) whose global embedding of each image is stored
            too, for text search (``None``: none).
        ignored: what gathering the images left out (:attr:`FoundImages.ignored`), to be
            counted and named in the summary's report.

    Returns:
        An :class:`ExtractionSummary` (``.status`` is the exit status of ``lit extract``);
        unreadable, too large and too small files are reported on stderr (one line each,
        ``skipped: NAME: problem``), recorded in the file and skipped.
    """
    rt = model.cfg.runtime
    scales, features_num, image_size = check_extraction_options(
        model, rt.scales if scales is None else scales, rt.features_num if features_num is None else features_num,
        rt.image_size if image_size == -1 else image_size, batch_size=batch_size, num_workers=num_workers,
        max_pixels=max_pixels)
    entries = [(entry if isinstance(entry, tuple) else (entry, None)) for entry in images]
    paths = [os.fspath(p) for p, _ in entries]
    out = os.fspath(out)
    check_output_file(out)  # /dev/null, a folder, a FIFO: refused before anything is extracted
    _make_folder(out)
    start = time.perf_counter()
    summary = ExtractionSummary(failed={}, ignored=list(ignored or []))
    new_root = root if root is not None else default_root if default_root is not None else (
        common_root(paths) if paths else None)
    with FeatureStore(out, "a", descriptor_dim=model.cfg.reduction_dim or model.cfg.lit.dim,
                      fingerprint=model_fingerprint(model, scales, features_num, image_size, amp=amp, half=half),
                      half=half, root=new_root,
                      settings=_settings(model, scales, features_num, image_size, embedder)) as store:
        base = _names_root(store, root, default_root, paths)
        if store.root is not None and len(store):
            _check_under_stored_root(store, paths)
        todo = _plan(store, image_names(paths, base) if paths else [], paths, entries, retry_failed, summary)
        _extract(model, store, todo, summary, scales=scales, features_num=features_num, image_size=image_size,
                 amp=amp, batch_size=batch_size, num_workers=num_workers, max_pixels=max_pixels, embedder=embedder,
                 progress=progress)
    summary.seconds = time.perf_counter() - start
    return summary


#: Largest extraction scale: a scale multiplies both sides of the (resized) image, and
#: memory grows with its square (FIRe's largest is 2).
MAX_SCALE = 4.0


def _option(name: str, flag: str, value, rule: str) -> UsageError:
    return UsageError(f"{name} must be {rule}, got {value!r}", cli=f"{flag} must be {rule}, got {value!r}")


def check_extraction_options(model, scales, features_num, image_size, *, batch_size: int = 1, num_workers: int = 0,
                             max_pixels=DEFAULT_MAX_PIXELS) -> tuple[tuple[float, ...], int, int | None]:
    """Check extraction settings before anything is written: scales in ``(0, MAX_SCALE]``,
    ``features_num >= 1``, ``image_size`` ``None`` or at least the model's smallest image at
    these scales, ``batch_size >= 1``, ``num_workers >= 0``, ``max_pixels`` ``None`` or >= 1.

    Returns:
        ``(scales, features_num, image_size)``, normalised.

    Raises:
        UsageError: the first setting out of range (naming the command line's option too).
    """
    try:
        scales = check_scales(scales)
    except ValueError as err:
        raise UsageError(str(err), cli=f"--scales: {err}") from None
    if max(scales) > MAX_SCALE:
        raise _option("scales", "--scales", list(scales), f"in (0, {MAX_SCALE:g}] (memory grows with the square)")
    if isinstance(features_num, bool) or not isinstance(features_num, (int, np.integer)) or features_num < 1:
        raise _option("features_num", "--features-num", features_num, "an integer >= 1")
    if image_size is not None:
        least = model.min_image_size(scales)
        if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < least:
            raise _option("image_size", "--image-size", image_size,
                          f"an integer >= {least} (this model's smallest image at scale {max(scales):g})")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise _option("batch_size", "--batch-size", batch_size, "an integer >= 1")
    if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
        raise _option("num_workers", "--workers", num_workers, "an integer >= 0")
    if max_pixels is not None and (not isinstance(max_pixels, (int, np.integer)) or max_pixels < 1):
        raise _option("max_pixels", "--max-pixels", max_pixels, "None or an integer >= 1")
    return scales, int(features_num), None if image_size is None else int(image_size)
def _settings(model, scales, features_num, image_size, embedder) -> dict:
    """What a new feature file records of how it was made (``lit features info`` shows it)."""
    settings = {"scales": list(scales), "features_num": features_num, "image_size": image_size}
    if getattr(model, "source", None):
        settings["model"] = model.source
    settings["text_tower"] = getattr(embedder, "name", None)  # None: extracted without text embeddings
    return settings


def _make_folder(out: str) -> None:
    folder = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise FeatureFileError(f"{display_name(out)}: cannot create the folder {display_name(folder)} "
                               f"({err.strerror})") from None


def _names_root(store: FeatureStore, root, default_root, paths: Sequence[str]) -> str:
    """The folder this run's names are relative to: the file's own root (another explicit
    ``root`` is refused), else the one given, else the inputs' common folder."""
    stored = store.root
    if root is not None and stored is not None and os.path.abspath(os.fspath(root)) != stored:
        raise FeatureFileError(
            f"{display_name(store.path)} holds names relative to {display_name(stored)}, not "
            f"{display_name(os.path.abspath(os.fspath(root)))}: give root={display_name(stored)!r} or use another file",
            cli=f"{display_name(store.path)} holds names relative to {display_name(stored)}, not "
                f"{display_name(os.path.abspath(os.fspath(root)))}: pass --root {display_name(stored)} or use another file")
    if stored is not None:
        return stored
    given = root if root is not None else default_root
    return os.fspath(given) if given is not None else (common_root(paths) if paths else ".")


def _check_under_stored_root(store: FeatureStore, paths: Sequence[str]) -> None:
    """Refuse images outside the folder an existing file's names are relative to, saying
    what to do instead (a new file, then a merge)."""
    for p in paths:
        rel = os.path.relpath(os.path.abspath(os.fspath(p)), store.root)
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            msg = (f"{display_name(p)} is outside {display_name(store.root)}, the folder that the names in "
                   f"{display_name(store.path)} are relative to: extract these images into a new feature file, "
                   "then join the two with ")
            raise FeatureFileError(msg + "lit.pipeline.merge_feature_files",
                                   cli=msg + f"`lit features merge {display_name(store.path)} NEW.h5 --out ALL.h5`")


def _plan(store: FeatureStore, names: Sequence[str], paths: Sequence[str], entries, retry_failed: bool,
          summary: ExtractionSummary) -> list[tuple[str, str, tuple | None]]:
    """The ``(name, path, bbox)`` still to extract: duplicates once, stored images skipped,
    earlier failures retried unless ``retry_failed`` is false (counted in ``summary``)."""
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
    return todo


def _extract(model, store: FeatureStore, todo, summary: ExtractionSummary, *, scales, features_num, image_size, amp,
             batch_size: int, num_workers: int, max_pixels, embedder, progress: bool) -> None:
    """Decode, extract and commit ``todo`` in input order: consecutive images of one size are
    batched; each image is committed on its own (features after its embedding)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    loader = torch.utils.data.DataLoader(
        _ImageList(todo, image_size, max_pixels), batch_size=None, shuffle=False,
        num_workers=_cap_workers(num_workers),
    )  # not pin_memory: pinning single images before torch.stack is wasted; the batch is pinned
    pin = str(model.device).startswith("cuda")
    bar = tqdm(total=len(todo), disable=not progress, unit="img", file=sys.stderr, desc="extract")
    path_of = {it[0]: it[1] for it in todo}
    # equal-size images waiting for a batch: (name, tensor, the file's own size for messages)
    pending: list[tuple[str, torch.Tensor, tuple[int, int]]] = []
    extracted: list[str] = []

    def fail(name: str, error: str) -> None:
        store.add_failure(name, error)
        summary.failed[name] = error
        log.warning(f"skipped: {error}", extra={"lit_plain": True})

    def flush() -> None:
        if not pending:
            return
        batch = torch.stack([t for _, t, _ in pending])
        batch = (batch.pin_memory() if pin else batch).to(model.device, non_blocking=True)
        try:
            outs = model.extract_batch(batch, scales=scales, features_num=features_num, amp=amp)
        except ImageReadError as err:  # too small: the whole batch has this size
            for n, t, size in pending:
                fail(n, f"{display_name(path_of[n])}: {too_small_message(err, size, t, image_size)}")
            bar.update(len(pending))
            pending.clear()
            return
        if embedder is not None:  # rows written before the features commit them
            rows = list(range(len(store), len(store) + len(pending)))
            store.write_embeddings(rows, embedder.name, embedder.embed([t for _, t, _ in pending]))
        for (n, _, _), feats in zip(pending, outs, strict=True):
            store.append(n, feats)
            extracted.append(n)
        summary.done += len(pending)
        bar.update(len(pending))
        pending.clear()

    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger("lit")]):
            for name, tensor, error, size in loader:
                if error is not None:
                    flush()  # keep the file in input order
                    fail(name, error)
                    bar.update(1)
                    continue
                if pending and pending[0][1].shape != tensor.shape:
                    flush()
                pending.append((name, tensor, size))
                if len(pending) >= batch_size:
                    flush()
            flush()
    finally:
        store.clear_failures(extracted)
        bar.close()


def rank_share(paths: Sequence, out: str, env=None):
    """This process's share of an extraction: ``(paths, out, report)``.

    Outside ``torchrun``: every path, ``out`` itself, and ``report(summary)`` returns
    ``summary.report()``. Under ``torchrun``: the rank's contiguous block of ``paths``
    (:func:`lit.distributed.split_range`), its shard file, and a report prefixed with the
    rank and the shard. ``env``: the ``torchrun`` environment (default: this process's)."""
    env = env_from_environ() if env is None else env
    if env is None:
        return list(paths), out, lambda summary: summary.report()
    lo, hi = split_range(len(paths), env.rank, env.world_size)
    shard = shard_path(out, env.rank, env.world_size)

    def report(summary) -> str:
        return f"rank {env.rank}/{env.world_size} ({shard}): " + summary.report()

    return list(paths)[lo:hi], shard, report
