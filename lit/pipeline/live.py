"""Live collections: add, replace and remove photos of an index in place (``lit add``,
``lit remove``, the search service).

:class:`LiveIndex` is an open index file that takes changes; :func:`add_images` and
:func:`remove_images` are the one-shot calls of the command line (open, change, close).

**Exactness.** An index changed here ranks and scores exactly as an index built from
scratch (``lit index --codebook INDEX``) on the photos it holds, in its name order
(:meth:`LiveIndex.names`), within float rounding: new photos are extracted with the
index's model and extraction settings (recorded in the index; the fingerprint is checked)
and quantised and aggregated with its codebook and parameters, as ``lit index`` would;
removed photos are tombstones that are never ranked and no longer count as database
images, so idf (``log(n / entries(w))``, when on) and image norms are recomputed from the
entries of the present images only.

**Cost.** The inverted file takes appends and deletions without being rewritten
(:mod:`lit.asmk.ivf`): an add aggregates its own photos into a CSR *segment* of their own
(a sort and a ``bincount`` of their entries) and writes it to one new file; a removal
writes the removed ids into the journal's manifest. Neither reads nor rewrites the
collection: the one-shot path (:func:`add_images`, :func:`remove_images`) reads the
codebook, the journal's names and, for the names it changes, the base file's name table
(:class:`lit.index_file.BaseNames`: a few hashed entries per name), not the inverted file
nor the collection's names. Compaction merges everything into a new base file (dropping
removed photos' entries, renumbering): it is O(collection) and runs when the journal
passes :data:`COMPACT_FRACTION` of the base (added plus removed photos) or
:data:`MAX_JOURNAL_SEGMENTS` files, so its cost per added photo is bounded (amortised O(1)
per photo); :meth:`LiveIndex.compact` runs it at will.

**Search cost.** In memory a query loops over the main segment and at most
:data:`MAX_SEGMENTS` appended one (appended segments are merged with each other: their own
size); removed photos are tombstones, left out of the ranking by an in-place mask. When the
entries of removed photos or of the appended segment pass :data:`MERGE_FRACTION` of the
entries, the segments are merged into one in memory and the removed entries dropped
(O(collection), once per that fraction of the entries changed; built while searches go on,
installed in one step). So a search of a changed
index scores at most :data:`MERGE_FRACTION` (2 %) more entries than a fresh index of the
same photos (the removed ones; the appended ones a fresh index holds too), plus, per query,
the fixed cost of one small segment and of a mask over the removed ids (about 1 % of a
100k-image search; more of a small index's, whose searches take milliseconds: measured by
``benchmarks/live_index.py``); after compaction the index *is* a fresh one. idf and norms
are recomputed at the first search after a change, one vectorised pass over the entries.

**Crash safety.** HDF5 has no transactions, so the index file itself is never changed in
place: changes go to a journal beside it, ``INDEX.live/`` (:mod:`lit.index_file`): every
segment file is written whole to a temporary name and renamed into place, and a change is
*committed* when the manifest naming it (segments, removed ids) is renamed into place
(``os.replace``, atomic; :func:`lit._fileio.atomic_path`). A ``kill -9`` at any moment
leaves the manifest before or after the change, never half of it: a segment file written
but not committed is ignored by readers and removed by the next writer; an extraction cut
short resumes from its staging feature file (``INDEX.live/staging-*.h5``) on the rerun. A
compaction writes the new base file first (atomically, with a new *generation*) and then
an empty manifest for it: a crash in between leaves a manifest of the old generation,
which readers ignore (the new base holds everything). What kill -9 cannot do: damage a
committed change. What it can leave: a staging feature file and stray temporary files
(removed by the next run), and, for a crash during a compaction, the old journal files
(removed by the next writer).

**Concurrency.** Readers take no lock: they read the manifest, the base and the segments it
names, and read again when a compaction replaced the base or removed a segment meanwhile
(:func:`lit.index_file.read_journal`); files are only ever created and renamed, so a
reader sees the state of one commit. Writers (processes) hold an exclusive ``flock`` on
``INDEX.live/lock`` for a whole change; a second writer waits up to ``wait`` seconds, then
is refused with :class:`lit.index_file.WriterBusy` (nothing is lost: it changed nothing).
Before changing anything a writer re-reads the manifest, so changes of other processes
are never overwritten. In one process, :class:`LiveIndex` is safe for one writer thread
and many reader threads: writers are serialised by a lock, and searches read the
in-memory index under a shared lock that a writer holds exclusively only while it applies
a committed change (appending a segment, marking ids removed: the change's own cost) or
compacts.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from .._device import resolve_device
from .._fileio import file_sha256
from .._image import display_name
from ..asmk import ASMK
from ..asmk.io import read_header
from ..errors import PipelineError, UsageError
from ..features import open_features
from ..index_file import (
    TEXT_GROUP,
    BaseNames,
    IndexInfo,
    Manifest,
    SegmentData,
    TextEmbeddings,
    apply_journal,
    clean_journal,
    compact_live,
    live_folder,
    load_index_base,
    read_info_base,
    read_journal,
    read_manifest,
    read_part,
    read_text,
    write_index,
    write_manifest,
    write_segment,
    writer_lock,
)
from .extract import extract_to_file, image_names, model_fingerprint
from .index import quantization_error
from .search import QueryResult, check_fingerprint, search

log = logging.getLogger(__name__)

__all__ = ["AddReport", "LiveIndex", "RemoveReport", "add_images", "compact_index", "index_stats", "read_name_list", "remove_images"]

#: Compact when the journal's added plus removed photos pass this fraction of the base.
COMPACT_FRACTION = 0.25
#: Compact when the journal holds more segment files than this.
MAX_JOURNAL_SEGMENTS = 64
#: Appended in-memory segments beyond this are merged with each other.
MAX_SEGMENTS = 1
#: When the entries of removed photos, or those of the appended segment, pass this fraction
#: of the entries held in memory, the segments are merged into one and the removed entries
#: dropped (in memory; ids kept): a search scores at most this fraction more entries than
#: one of a fresh index of the same photos, plus one small segment's fixed cost per query.
MERGE_FRACTION = 0.02
#: New photos whose mean quantisation error exceeds the codebook's by this factor are
#: reported: the codebook may not fit them.
DRIFT_FACTOR = 1.5


@dataclass
class AddReport:
    """What :meth:`LiveIndex.add` did.

    Attributes:
        added: names added (new to the index).
        replaced: names already in the index whose photo changed: the old entry removed,
            the new one added.
        skipped: names already in the index with the same photo (nothing done).
        failed: ``name -> error`` of photos that could not be extracted (not added).
        quantization_error: mean squared distance of the new descriptors to their word.
        reference_error: the same for the codebook on the database (0: unknown).
        drift: a warning when the codebook may not fit the new photos, else ``None``.
        compacted: the journal was merged into a new base file afterwards.
        seconds: wall time.
    """

    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    quantization_error: float = 0.0
    reference_error: float = 0.0
    drift: str | None = None
    compacted: bool = False
    text: int = 0
    seconds: float = 0.0

    @property
    def status(self) -> int:
        """Exit status of ``lit add``: 0 every photo is in the index, 3 some could not be
        extracted (named), 4 none could be."""
        if not self.failed:
            return 0
        return 4 if not (self.added or self.replaced or self.skipped) else 3

    def report(self) -> str:
        line = (f"added {len(self.added)} images, replaced {len(self.replaced)}, skipped {len(self.skipped)} "
                f"unchanged, {len(self.failed)} failed, in {self.seconds:.1f} s")
        if self.compacted:
            line += " (journal compacted into the index file)"
        return line


@dataclass
class RemoveReport:
    """What :meth:`LiveIndex.remove` did: ``removed`` names, ``unknown`` names (not in the
    index: reported, not an error)."""

    removed: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    compacted: bool = False
    seconds: float = 0.0

    def report(self) -> str:
        line = f"removed {len(self.removed)} images, {len(self.unknown)} unknown, in {self.seconds:.1f} s"
        if self.compacted:
            line += " (journal compacted into the index file)"
        return line


class _SharedLock:
    """Many readers or one writer (threads of one process). A waiting writer goes first:
    readers that come after it wait, so that searches without pause cannot starve a change.
    Not reentrant: a thread must not take it again while it holds it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self):
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def write(self):
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            except BaseException:  # interrupted: let the readers it held back go on
                self._writers_waiting -= 1
                self._cond.notify_all()
                raise
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


def _digest(path: str) -> str:
    return file_sha256(path)


class LiveIndex:
    """An index file open for searching and changing (module docstring: exactness, cost,
    crash safety, concurrency). Use :meth:`open`.

    Attributes:
        path: the index file.
    """

    def __init__(self, path: str | os.PathLike, *, model=None, device: str | torch.device = "auto",
                 text_model=None, wait: float = 0.0, load: bool = True) -> None:
        self.path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(self.path):
            if read_part(self.path) is None:
                raise UsageError(f"{display_name(self.path)}: not an index file")
        if read_part(self.path) is not None:
            raise UsageError(f"{display_name(self.path)}: a part of a sharded index cannot be changed in place")
        self.device = resolve_device(device)
        self.wait = float(wait)
        self._model = model
        self.text_model = text_model
        self._writer = threading.Lock()
        self._load_lock = threading.Lock()
        self._rw = _SharedLock()
        self._want_loaded = bool(load)
        self._closed = False
        self._sync(force=True)

    @classmethod
    def open(cls, path: str | os.PathLike, *, model=None, device: str | torch.device = "auto", text_model=None,
             wait: float = 0.0, load: bool = True) -> LiveIndex:
        """Open an index file (made by ``lit index``) for searching and changing.

        Args:
            path: the index file (not a sharded index).
            model: the :class:`~lit.models.SuperFeatureModel` new photos are extracted with;
                ``None``: the model the index records, else :data:`lit.DEFAULT_MODEL`,
                loaded at the first :meth:`add` of photos. Its fingerprint must be the
                index's.
            device: where the model and the index live.
            text_model: a text model (``lit.text.load_text_model``) of the image tower of
                the index's text embeddings: its image tower embeds added photos, and
                :meth:`search_text` embeds the words. ``None``: added photos get no text
                embedding (a warning says so) and :meth:`search_text` is refused.
            wait: seconds a change waits for another writing process before it is refused.
            load: read the inverted file now (for searching); ``False`` reads only the
                codebook and the names, enough for :meth:`add` and :meth:`remove`, and
                the inverted file is read at the first search or compaction.
        """
        return cls(path, model=model, device=device, text_model=text_model, wait=wait, load=load)

    # ------------------------------------------------------------------ state
    def _sync(self, force: bool = False) -> None:
        """Read the state on disk when it differs from the one in memory (another process
        committed, or nothing is loaded yet)."""
        base = read_info_base(self.path, names=False)  # the names are read when needed (BaseNames)
        manifest = read_manifest(self.path)
        if manifest is not None and manifest.base != base.generation:
            manifest = None  # stale: a crashed compaction, or a base rebuilt by `lit index`
        if not force and base.generation == self._base.generation and \
                (manifest.commit if manifest else 0) == (self._manifest.commit if self._manifest else 0):
            return
        journal = read_journal(self.path, vectors=False, generation=base.generation) if manifest else None
        with self._rw.write():
            if getattr(self, "_base", None) is None or self._base.generation != base.generation:
                self._base = base
            self._manifest = journal.manifest if journal is not None else None
            # slots: the base's images, then each segment's; a name's slot is found in the
            # journal's names (in memory) or in the base's name table (only the names asked for)
            self._journal_names = [n for seg in journal.segments for n in seg.names] if journal is not None else []
            n_base = len(self._base.names)
            self._journal_slot = {n: n_base + i for i, n in enumerate(self._journal_names)}
            self._removed = set(journal.manifest.removed) if journal is not None else set()
            self._digests: dict[int, str] = {}
            slot = len(base.names)
            for seg in journal.segments if journal is not None else []:
                for i, d in enumerate(seg.digests):
                    if d:
                        self._digests[slot + i] = d
                slot += len(seg.names)
            with h5py_file(self.path) as f:
                header = read_header(f, source=self.path)
                self._has_text = TEXT_GROUP in f
                tower = f[TEXT_GROUP].attrs.get("tower", "") if self._has_text else ""
                self._file_tower = tower.decode() if isinstance(tower, bytes) else str(tower)
            params = {k[len("params."):]: v for k, v in header.attrs.items() if k.startswith("params.")}
            self._params = params
            self._codebook = header.codebook
            self._asmk: ASMK | None = None
            self._aggregator = None
            self._text_chunks: list[tuple[np.ndarray, np.ndarray]] | None = None
            self._text_tower = ""
            self._text_cache = None
            self._base_mtime = os.stat(self.path).st_mtime
        if self._want_loaded:
            self._load()

    def _load(self) -> None:
        """Read the inverted file and the text embeddings of the current state."""
        for _ in range(10):
            asmk, base = load_index_base(self.path, self.device)
            if base.generation != self._base.generation:
                self._sync(force=True)
                return
            journal = read_journal(self.path, generation=base.generation) if self._manifest else None
            if (journal.manifest.commit if journal else 0) != (self._manifest.commit if self._manifest else 0):
                self._sync(force=True)
                return
            break
        if journal is not None:
            apply_journal(asmk, len(base.names), journal)
        asmk.ivf.reserve(self._n_slots)
        if _merge_due(asmk):  # nobody searches it yet
            asmk.ivf.compact()
        chunks = None
        tower = ""
        if self._has_text:
            text = read_text(self.path, journal=False)
            tower = text.tower
            chunks = [(np.asarray(text.embeddings, np.float32), np.asarray(text.valid, bool))]
            for seg in journal.segments if journal is not None else []:
                chunks.append(self._seg_text(seg, chunks[0][0].shape[1]))
        with self._rw.write():
            if base.generation == self._base.generation and not isinstance(base.names, BaseNames):
                self._base.names.know(base.names)  # read with the inverted file
            self._asmk = asmk
            self._text_chunks, self._text_tower, self._text_cache = chunks, tower, None

    @staticmethod
    def _seg_text(seg: SegmentData, dim: int) -> tuple[np.ndarray, np.ndarray]:
        n = len(seg.names)
        if seg.text_embeddings is not None and seg.text_embeddings.shape[1:] == (dim,):
            return np.asarray(seg.text_embeddings, np.float32), np.asarray(seg.text_valid, bool)
        return np.zeros((n, dim), np.float32), np.zeros(n, bool)

    def _ensure_loaded(self) -> ASMK:
        if self._asmk is None:
            with self._load_lock:  # one thread reads the inverted file, the others wait for it
                if self._asmk is None:
                    self._load()
        return self._asmk

    def _aggregating_index(self) -> ASMK:
        """An index with the codebook and parameters (to aggregate new photos)."""
        if self._asmk is not None:
            return self._asmk
        if self._aggregator is None:
            self._aggregator = ASMK(self._codebook, device=self.device, **self._params)
        return self._aggregator

    # ------------------------------------------------------------------ slots
    @property
    def _n_slots(self) -> int:
        """Slots: the base's images and the journal's, removed ones included."""
        return len(self._base.names) + len(self._journal_names)

    def _slot_names(self) -> list[str]:
        """Every slot's name (reads the base's names: O(collection))."""
        return [*self._base.names, *self._journal_names]

    def _find(self, names: Iterable[str]) -> dict[str, int]:
        """The slot of each of ``names`` that the index holds (not removed): the journal's
        names in memory first, then the base's name table for the others (their own cost,
        not the collection's)."""
        out, rest = {}, []
        for name in dict.fromkeys(names):
            slot = self._journal_slot.get(name)
            if slot is not None and slot not in self._removed:
                out[name] = slot
            else:
                rest.append(name)
        if rest:
            found = self._base.names.lookup(rest)
            out.update((n, i) for n, i in found.items() if i not in self._removed)
        return out

    # ------------------------------------------------------------------ reading
    @property
    def info(self) -> IndexInfo:
        """The index's :class:`IndexInfo` with the current names (journal applied)."""
        with self._rw.read():
            names = tuple(n for i, n in enumerate(self._slot_names()) if i not in self._removed)
            return replace(self._base, names=names)

    def names(self) -> list[str]:
        """Names of the photos the index holds, in id order."""
        return list(self.info.names)

    def __len__(self) -> int:
        with self._rw.read():
            return self._n_slots - len(self._removed)

    @property
    def has_text(self) -> bool:
        """Whether the index holds text-search embeddings."""
        return self._has_text

    def __contains__(self, name: str) -> bool:
        with self._rw.read():
            return bool(self._find([name]))

    @property
    def model(self):
        """The model new photos are extracted with (loaded when first asked for)."""
        if self._model is None:
            import lit

            name = (self._base.settings or {}).get("model") or lit.DEFAULT_MODEL
            self._model = lit.load_model(name, device=str(self.device))
        return self._model

    def stats(self) -> dict[str, Any]:
        """Images, words, journal size (added and removed photos and entries pending
        compaction), the codebook's source and quantisation error: ``lit index --stats``."""
        asmk = self._ensure_loaded()
        with self._rw.read():
            m = self._manifest
            return {
                "images": self._n_slots - len(self._removed),
                "words": int(self._codebook.shape[0]),
                "dim": int(self._codebook.shape[1]),
                "binary": bool(self._params.get("binary", True)),
                "use_idf": bool(self._params.get("use_idf", False)),
                "base_images": len(self._base.names),
                "journal_segments": len(m.segments) if m else 0,
                "journal_added": m.added if m else 0,
                "removed_pending": len(self._removed),
                "removed_entries_pending": asmk.ivf.removed_entries(),  # still scored in memory
                "segments_in_memory": 1 + asmk.ivf.num_extra_segments,
                "entries": asmk.ivf.num_entries,
                "codebook_source": self._base.codebook_source,
                "codebook_descriptors": self._base.codebook_descriptors,
                "codebook_error": self._base.codebook_error,
                "image_root": self._base.image_root,
                "fingerprint": (self._base.fingerprint or "")[:12],
                "settings": self._base.settings or {},
                "text": self._text_tower or None,
            }

    def search(self, queries, query_names: Sequence[str], *, topk: int | None = 10, exclude_self: bool = False,
               query_root: str | None = None, keep_unscored: bool = False) -> list[QueryResult]:
        """Rank the photos for each query, as :func:`lit.pipeline.search.search` (queries are
        :class:`lit.types.LocalFeatures` of the index's model)."""
        self._ensure_loaded()
        with self._rw.read():
            info = replace(self._base, names=tuple(self._slot_names()))
            return search(self._asmk, info, queries, query_names, topk=topk, exclude_self=exclude_self,
                          query_root=query_root, keep_unscored=keep_unscored)

    def search_text(self, texts: Sequence[str], *, topk: int | None = 10) -> list[QueryResult]:
        """Rank the photos for each text by the text model (``text_model`` of :meth:`open`)."""
        from .search import Hit

        if self.text_model is None:
            raise UsageError(f"{display_name(self.path)}: open it with a text_model to search by text")
        self._ensure_loaded()
        if self._text_chunks is None:
            raise UsageError(f"{display_name(self.path)}: no global image embeddings for text search")
        if getattr(self.text_model, "tower_name", self._text_tower) != self._text_tower:
            raise UsageError(f"{display_name(self.path)}: its image embeddings are {self._text_tower!r}, the text "
                             f"model's tower is {self.text_model.tower_name!r}")
        with self._rw.read():
            if self._text_cache is None:
                emb = np.concatenate([c[0] for c in self._text_chunks])
                valid = np.concatenate([c[1] for c in self._text_chunks])
                if self._removed:
                    valid[np.fromiter(self._removed, np.int64)] = False
                self._text_cache = (emb, valid)
            emb, valid = self._text_cache
            names = self._slot_names()
        q = self.text_model.embed_texts(list(texts))
        image = self.text_model.image_space(torch.from_numpy(emb).to(q.embeddings.device))
        scores = (q.embeddings @ image.to(q.embeddings).T).masked_fill(
            ~torch.from_numpy(valid).to(q.embeddings.device)[None], float("-inf"))
        k = int(valid.sum()) if topk is None else min(int(topk), int(valid.sum()))
        s, r = scores.topk(k, dim=1)
        return [QueryResult(text, tuple(Hit(j + 1, names[int(r[i, j])], float(s[i, j])) for j in range(k)))
                for i, text in enumerate(q.texts)]

    # ------------------------------------------------------------------ writing
    @contextlib.contextmanager
    def _writing(self):
        with self._writer, writer_lock(self.path, wait=self.wait):
            self._sync()
            clean_journal(self.path, self._manifest)  # segments of a writer that died before its commit
            yield

    def _settings(self) -> dict:
        settings = dict(self._base.settings or {})
        if not settings:  # an index of an earlier lit: the settings its feature file records
            try:
                with open_features(self._base.features) as coll:
                    settings = dict(coll.settings or {})
                    settings["half"] = bool(coll.stores[0].half)
            except (OSError, PipelineError, ValueError):
                settings = {}
        return settings

    def add(self, images: Iterable[str | os.PathLike], *, names: Sequence[str] | None = None, text: bool = True,
            progress: bool = False) -> AddReport:
        """Extract photos with the index's model and settings and add them (a name already in
        the index is replaced when its photo changed, skipped when identical); committed to
        the file before it returns.

        Args:
            images: photo paths.
            names: their names (default: relative to the index's image root, as
                ``lit extract`` names them).
            text: add their text-search embeddings too (when the index has some and a
                ``text_model`` was given).

        Raises:
            FingerprintError: the model or settings are not the index's.
            WriterBusy: another process is changing the index.
        """
        start = time.perf_counter()
        paths = [os.path.abspath(os.fspath(p)) for p in images]
        if names is None:
            if not self._base.image_root:
                raise UsageError(f"{display_name(self.path)} does not record its image folder: give the names")
            names = image_names(paths, self._base.image_root)
        names = list(names)
        if len(names) != len(paths):
            raise UsageError(f"{len(paths)} images for {len(names)} names")
        report = AddReport()
        with self._writing():
            self._staging = None
            todo = self._plan(paths, names, report)
            feats, embs, digests = {}, {}, {}
            if todo:
                feats, embs, failed = self._extract(todo, text, progress)
                report.failed.update(failed)
                digests = {n: d for n, _, d in todo}
            self._commit_add(names, feats, embs, digests, report)
            self._maybe_compact(report)
        report.seconds = time.perf_counter() - start
        return report

    def _plan(self, paths, names, report: AddReport) -> list[tuple[str, str, str]]:
        """``(name, path, digest)`` of the photos to extract; identical ones skipped."""
        todo, seen = [], set()
        held = self._find(names)
        for name, path in zip(names, paths, strict=True):
            if name in seen:
                continue
            seen.add(name)
            if not os.path.isfile(path):
                report.failed[name] = f"{display_name(path)}: no such file"
                continue
            digest = _digest(path)
            slot = held.get(name)
            if slot is not None:
                old = self._digests.get(slot)
                same = old == digest if old else os.stat(path).st_mtime <= self._base_mtime
                if same:
                    report.skipped.append(name)
                    continue
            todo.append((name, path, digest))
        return todo

    def _extract(self, todo, text: bool, progress: bool):
        """Extract ``todo`` into a staging feature file of the journal (resumed after a crash)."""
        model = self.model
        s = self._settings()
        rt = model.cfg.runtime
        scales = tuple(s.get("scales") or rt.scales)
        features_num = int(s.get("features_num") or rt.features_num)
        image_size = s["image_size"] if "image_size" in s else rt.image_size
        half = bool(s.get("half", False))
        check_fingerprint(self._base.fingerprint, model_fingerprint(model, scales, features_num, image_size, half=half),
                          "photos extracted with this model", display_name(self.path))
        embedder = None
        if text and self._has_text and self.text_model is not None:
            embedder = getattr(self.text_model, "image_tower", self.text_model)  # a text model, or its tower
            if embedder.name != self._text_tower_name():
                log.warning(f"the text model's image tower is {embedder.name!r}, the index's text embeddings are "
                            f"{self._text_tower_name()!r}: the added photos cannot be found by text")
                embedder = None
        elif text and self._has_text:
            log.warning(f"{display_name(self.path)} has text-search embeddings but no text model was given: the "
                        "added photos cannot be found by text")
        key = hashlib.sha256("\0".join(f"{n}\0{p}\0{d}" for n, p, d in todo).encode()).hexdigest()[:16]
        os.makedirs(live_folder(self.path), exist_ok=True)
        staging = os.path.join(live_folder(self.path), f"staging-{key}.h5")
        paths = [p for _, p, _ in todo]
        root = os.path.commonpath([os.path.dirname(p) for p in paths])
        summary = extract_to_file(model, paths, staging, root=root, scales=scales, features_num=features_num,
                                  image_size=image_size, half=half, progress=progress, embedder=embedder)
        staged = image_names(paths, root)
        name_of = {st: n for st, (n, _, _) in zip(staged, todo, strict=True)}
        failed = {name_of[k]: v for k, v in (summary.failed or {}).items() if k in name_of}
        feats, embs = {}, {}
        with open_features(staging) as coll:
            index = {n: i for i, n in enumerate(coll.names)}
            tower_emb = None
            if embedder is not None:
                with contextlib.suppress(Exception):
                    tower_emb = coll.embeddings(embedder.name)
            for st, name in name_of.items():
                if st in index and name not in failed:
                    feats[name] = coll[index[st]].descriptors.detach().cpu().float().numpy()
                    if tower_emb is not None and tower_emb[2][index[st]]:
                        embs[name] = tower_emb[1][index[st]]
        self._staging = staging
        return feats, embs, failed

    def add_features(self, features: str | os.PathLike, *, names: Sequence[str] | None = None,
                     force: bool = False) -> AddReport:
        """Add every photo of a feature file (``lit extract`` with the index's model; the
        fingerprint is checked) without extracting; a name already in the index is replaced.

        Names are the file's, re-rooted to the index's image root when both roots are known.
        The file's text-search embeddings of the index's tower are added with them.
        """
        start = time.perf_counter()
        report = AddReport()
        features = os.fspath(features)
        with self._writing(), open_features(features) as coll:
            check_fingerprint(self._base.fingerprint, coll.fingerprint, f"the features {display_name(features)}",
                              display_name(self.path), force)
            file_names = list(coll.names)
            if names is None:
                names = file_names
                if coll.root and self._base.image_root and os.path.abspath(coll.root) != self._base.image_root:
                    names = image_names([os.path.join(coll.root, n) for n in file_names], self._base.image_root)
            names = list(names)
            if len(names) != len(file_names):
                raise UsageError(f"{len(file_names)} images in {display_name(features)} for {len(names)} names")
            tower_emb = None
            if self._has_text:
                with contextlib.suppress(Exception):
                    tower_emb = coll.embeddings(self._text_tower_name())
            feats, embs = {}, {}
            chunks = list(coll.iter_descriptors())  # whole images per chunk, in order
            desc = np.concatenate([c[0] for c in chunks]) if chunks else np.zeros((0, coll.descriptor_dim), np.float32)
            ids = np.concatenate([c[1] for c in chunks]) if chunks else np.zeros(0, np.int64)
            bounds = np.searchsorted(ids, np.arange(len(names) + 1))
            for i, name in enumerate(names):
                feats[name] = desc[bounds[i]:bounds[i + 1]]
                if tower_emb is not None and tower_emb[2][i]:
                    embs[name] = tower_emb[1][i]
            self._staging = None
            self._commit_add(names, feats, embs, {}, report)
            self._maybe_compact(report)
        report.seconds = time.perf_counter() - start
        return report

    def _text_tower_name(self) -> str:
        return self._text_tower or self._file_tower  # the base's attribute: no embedding read

    def _commit_add(self, names, feats: dict, embs: dict, digests: dict, report: AddReport) -> None:
        """Aggregate, write the segment, commit the manifest, apply in memory."""
        order = [n for n in dict.fromkeys(names) if n in feats]
        staging = getattr(self, "_staging", None)
        if not order:
            self._drop_staging(staging)
            return
        agg = self._aggregating_index()
        desc = [feats[n] for n in order]
        ids = np.concatenate([np.full(len(d), i, np.int64) for i, d in enumerate(desc)])
        x = np.concatenate(desc) if desc else np.zeros((0, agg.dim), np.float32)
        words = agg.quantize(x) if len(x) else None  # nearest first: the first is the quantisation
        segment, _ = agg.aggregate_segment(x, ids, words=words)
        err = quantization_error(agg, x, words[:, 0] if words is not None else None)
        tower_dim = None
        text_emb = text_valid = None
        if self._has_text:
            dims = [np.asarray(e).shape[-1] for e in embs.values()]
            tower_dim = dims[0] if dims else None
            if tower_dim is not None:
                text_emb = np.stack([np.asarray(embs[n], np.float32) if n in embs else np.zeros(tower_dim, np.float32)
                                     for n in order])
                text_valid = np.array([n in embs for n in order], bool)
        report.text = len(embs)
        data = SegmentData(order, segment.offsets.cpu().numpy(), segment.image_ids.cpu().numpy(),
                           agg.ivf.rows(segment.vectors).cpu().numpy(),
                           np.array([len(d) for d in desc], np.int64), [digests.get(n, "") for n in order],
                           text_emb, text_valid, err)
        manifest = self._manifest or Manifest(base=self._base.generation)
        file = write_segment(self.path, data, base=self._base.generation)
        held = self._find(order)
        replaced = [held[n] for n in order if n in held]
        first = self._n_slots
        new = Manifest(manifest.base, manifest.commit + 1, (*manifest.segments, (file, len(order))),
                       tuple(sorted(set(manifest.removed) | set(replaced))), dict(manifest.notes))
        write_manifest(self.path, new)  # the commit
        report.added = [n for n in order if n not in held]
        report.replaced = [n for n in order if n in held]
        report.quantization_error = err
        report.reference_error = self._base.codebook_error
        if report.reference_error > 0 and err > DRIFT_FACTOR * report.reference_error:
            report.drift = (f"the added photos are far from the codebook's words (mean squared quantisation error "
                            f"{err:.4g}, {err / report.reference_error:.1f} x the {report.reference_error:.4g} of the "
                            "photos it was built on): the codebook may not fit them and search quality may drop; "
                            "retrain it: extract every photo into one feature file and build a new index from it")
            log.warning(report.drift)
        with self._rw.write():
            self._manifest = new
            self._journal_names.extend(order)
            self._removed |= set(replaced)
            for i, n in enumerate(order):
                self._journal_slot[n] = first + i
                if digests.get(n):
                    self._digests[first + i] = digests[n]
            if self._asmk is not None:
                seg_ids = torch.arange(first, first + len(order), dtype=torch.int64)
                shifted = segment._replace(image_ids=segment.image_ids + first)
                present = torch.unique(shifted.image_ids.to(torch.int64))
                self._asmk.append_segment(shifted, present)
                self._asmk.ivf.reserve(int(seg_ids[-1]) + 1)
                if replaced:
                    self._asmk.remove(torch.tensor(replaced, dtype=torch.int64))
            if self._text_chunks is not None:
                dim = self._text_chunks[0][0].shape[1]
                self._text_chunks.append(self._seg_text(data, dim))
                self._text_cache = None
        self._bound_search_cost()
        self._drop_staging(staging)

    def _bound_search_cost(self) -> None:
        """After a change (the writer's thread, holding the writer's lock): keep the index in
        memory within a fixed bound of a fresh one's search cost (module docstring). The
        O(collection) merge of every segment into one is built while searches go on (they
        only read), and installed in one step."""
        with self._rw.write():  # the appended segments' size at most
            asmk = self._asmk
            if asmk is None or not _merge_due(asmk):
                return
        with self._rw.read():
            made = asmk.ivf.compacted()
        with self._rw.write():
            if self._asmk is asmk and made.version == asmk.ivf.version:  # else: changed meanwhile, merged later
                asmk.ivf.adopt(made)

    def _drop_staging(self, staging: str | None) -> None:
        """After a commit: the staging feature files (this one, and any of an add that died)."""
        folder = live_folder(self.path)
        for name in os.listdir(folder) if os.path.isdir(folder) else []:
            if name.startswith("staging-") and name.endswith(".h5"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))

    def remove(self, names: Iterable[str]) -> RemoveReport:
        """Remove photos by name; unknown names are reported, not an error. Committed to the
        file before it returns."""
        start = time.perf_counter()
        report = RemoveReport()
        with self._writing():
            slots = []
            names = list(dict.fromkeys(names))
            held = self._find(names)
            for name in names:
                slot = held.get(name)
                if slot is None:
                    report.unknown.append(name)
                else:
                    slots.append(slot)
                    report.removed.append(name)
            if slots:
                manifest = self._manifest or Manifest(base=self._base.generation)
                new = replace(manifest, commit=manifest.commit + 1,
                              removed=tuple(sorted(set(manifest.removed) | set(slots))))
                write_manifest(self.path, new)  # the commit
                with self._rw.write():
                    self._manifest = new
                    self._removed |= set(slots)
                    if self._asmk is not None:
                        self._asmk.remove(torch.tensor(slots, dtype=torch.int64))
                    self._text_cache = None
                self._bound_search_cost()
                report.compacted = self._maybe_compact(report)
        report.seconds = time.perf_counter() - start
        return report

    def needs_compaction(self) -> bool:
        """Whether the journal passed :data:`COMPACT_FRACTION` or :data:`MAX_JOURNAL_SEGMENTS`."""
        m = self._manifest
        if m is None:
            return False
        return (m.added + len(m.removed) > COMPACT_FRACTION * max(1, len(self._base.names))
                or len(m.segments) > MAX_JOURNAL_SEGMENTS)

    def _maybe_compact(self, report) -> bool:
        if self.needs_compaction():
            self._compact()
            report.compacted = True
            return True
        return False

    def compact(self) -> None:
        """Merge the journal into a new base file (module docstring); a no-op without one."""
        with self._writing():
            self._compact()

    def _compact(self) -> None:
        if self._manifest is None:
            return
        asmk = self._ensure_loaded()
        text = None
        with self._rw.write():
            every = self._slot_names()
            keep = [i for i in range(len(every)) if i not in self._removed]
            names = tuple(every[i] for i in keep)
            compact_live(asmk, len(every), self._removed)
            if self._text_chunks is not None:
                emb = np.concatenate([c[0] for c in self._text_chunks])[keep]
                valid = np.concatenate([c[1] for c in self._text_chunks])[keep]
                text = TextEmbeddings(self._text_tower, list(names), emb, valid, "")
                self._text_chunks, self._text_cache = [(emb, valid)], None
            info = replace(self._base, names=names, descriptors=self._base.descriptors)
            write_index(self.path, asmk, info, text=text)  # the new base (new generation)
            base = read_info_base(self.path, names=False)
            base.names.know(names)
            digests = {new: self._digests[old] for new, old in enumerate(keep) if old in self._digests}
            write_manifest(self.path, Manifest(base=base.generation, notes=dict(self._manifest.notes)))
            self._base = base
            self._manifest = read_manifest(self.path)
            self._journal_names, self._journal_slot, self._removed = [], {}, set()
            self._digests = digests
            self._base_mtime = os.stat(self.path).st_mtime
        clean_journal(self.path, self._manifest)

    def refresh(self) -> None:
        """Take in the changes other processes committed since this one last read the index."""
        with self._writer:
            self._sync()

    def close(self) -> None:
        self._closed = True
        self._asmk = None
        self._aggregator = None

    def __enter__(self) -> LiveIndex:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveIndex({display_name(self.path)!r}, images={len(self)})"


def _merge_due(asmk: ASMK) -> bool:
    """Merge the appended segments when there are more than :data:`MAX_SEGMENTS` (their own
    size); whether removed photos' entries or appended entries pass :data:`MERGE_FRACTION`
    of the entries, so that every segment is due to be merged into one (module docstring)."""
    ivf = asmk.ivf
    if ivf.num_extra_segments > MAX_SEGMENTS:
        ivf.merge_extra()
    appended = sum(int(seg.image_ids.shape[0]) for seg in ivf.segments()[1:])
    return max(ivf.removed_entries(), appended) > MERGE_FRACTION * ivf.num_entries


@contextlib.contextmanager
def h5py_file(path: str):
    import h5py

    with h5py.File(path, "r") as f:
        yield f


def add_images(index_path: str | os.PathLike, images: Iterable[str | os.PathLike] = (), *,
               features: str | os.PathLike | None = None, names: Sequence[str] | None = None, model=None,
               device: str | torch.device = "auto", text_model=None, wait: float = 0.0, progress: bool = False,
               force: bool = False) -> AddReport:
    """``lit add``: add photos (or a feature file's photos) to an index file in place; reads
    the codebook and names only, not the inverted file (unless it compacts)."""
    with LiveIndex.open(index_path, model=model, device=device, text_model=text_model, wait=wait, load=False) as live:
        if features is not None:
            return live.add_features(features, names=names, force=force)
        return live.add(images, names=names, progress=progress)


def read_name_list(path: str | os.PathLike) -> list[str]:
    """Names, one per line (blank and ``#`` lines skipped)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UsageError(f"{display_name(path)}: no such list file")
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return [line.strip() for line in f if line.strip() and not line.strip().startswith("#")]


def index_stats(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, Any]:
    """What ``lit index --stats`` shows (:meth:`LiveIndex.stats`)."""
    with LiveIndex.open(path, device=device, load=True) as live:
        return live.stats()


def compact_index(path: str | os.PathLike, *, wait: float = 0.0, device: str | torch.device = "cpu") -> str:
    """``lit index --compact``: fold the journal into the index file; one line for the user."""
    with LiveIndex.open(path, device=device, wait=wait, load=False) as live:
        pending = live.stats()
        live.compact()
        return (f"{display_name(live.path)}: {len(live)} images; compacted {pending['journal_segments']} journal "
                f"segments and {pending['removed_pending']} removed images into it")


def remove_images(index_path: str | os.PathLike, names: Iterable[str], *, wait: float = 0.0,
                  device: str | torch.device = "auto") -> RemoveReport:
    """``lit remove``: remove photos by name from an index file in place."""
    with LiveIndex.open(index_path, device=device, wait=wait, load=False) as live:
        return live.remove(names)
