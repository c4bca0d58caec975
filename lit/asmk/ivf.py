"""The inverted file (IVF) of an ASMK index: aggregated database vectors by visual word.

There is one *entry* per (database image, visual word): the image id and the aggregated
vector (SPEC section 3). Entries live in two places:

- the **segment** (:class:`Segment`), a CSR inverted file on the index device:
  ``offsets`` :math:`(K + 1,)` int64 (the entries of word ``w`` are rows
  ``offsets[w]:offsets[w + 1]``), ``image_ids`` :math:`(E,)` int32 and ``vectors``: binary
  mode, packed bits (``B = 8 * ceil(D / 64)`` bytes, 16 for 128-d) kept column-major as
  :math:`(B / 8, E)` int64 so that a gather reads 1-D columns (several times faster than
  gathering 16-byte rows); real mode, :math:`(E, D)` float32 L2-normalised residual sums.
  :meth:`InvertedFile.rows` and :meth:`InvertedFile.internal` convert between that layout
  and ``(E, B)`` uint8 rows (``numpy.packbits`` order), the layout of files.
- **pending** entries: every :meth:`InvertedFile.add` appends its batch, split by word
  range into :data:`_BUCKETS` pieces, each sorted by word (stable). :meth:`flush` merges
  them into the segment one word range at a time and frees every piece once merged, so
  its peak is the pending entries plus one range (~1/32), not a second copy of the
  inverted file; merging into a non-empty segment also keeps the old arrays until the end.

Within a posting list, entries are in the order they were added. The file also keeps,
per image id, whether the image is present (``present``), and ``n_images``, the largest
id + 1. :attr:`InvertedFile.version` moves on every change, so that statistics derived
from the entries (idf, image norms: :mod:`lit.asmk.scoring`) are cached against it.

Readers see the entries only through :meth:`segments` (a tuple of CSR segments),
:meth:`entries_per_word` and :meth:`image_sums`, which already sum over segments. Live
collections (:mod:`lit.pipeline.live`) change the file at a cost that grows with the change,
not with the collection:

- *Appends without a rewrite*: :meth:`segment_of` turns the aggregated entries of new
  images into a CSR segment of their own (a sort and a ``bincount`` of their entries) and
  :meth:`append_segment` keeps it after the main segment; the scorer loops over segments.
  :meth:`merge_extra` merges the appended segments with each other only (their own size),
  so that queries loop over few segments.
- *Deletion by tombstone*: :meth:`remove` marks ids removed (``removed``): they are never
  ranked (:meth:`lit.asmk.ASMK.search` leaves their columns out), :meth:`entries_per_word`
  counts the entries of present images only and :meth:`image_sums` gives removed ids 0, so
  idf (over ``n_images - num_removed`` images) and norms are those of the present images;
  both are recomputed at the first search after a change, one vectorised pass over the
  entries (as after any change). A removed id is not reused before :meth:`compact`.
- *Compaction*: :meth:`compact` merges every segment into one, dropping the entries of
  removed images, and optionally renumbers the ids (``new_ids``): the file of an index
  built from scratch on the present images. Files and states hold one segment without
  tombstones (:meth:`arrays` compacts first).
- *On disk*: the segments of a live index are files of their own beside the index file
  (:mod:`lit.index_file`); :mod:`lit.asmk.io` keeps the single-segment layout.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ..errors import UsageError
from .functional import packed_width

__all__ = ["MAX_IMAGE_ID", "Compaction", "InvertedFile", "Segment"]

#: Largest image id (ids are stored as int32).
MAX_IMAGE_ID = 2**31 - 2
_BUCKETS = 32  # word ranges of pending entries: flush merges one range at a time


def _zero_padded(t: Tensor, n: int) -> Tensor:
    """``t`` (1-D) grown to length ``n`` with zeros (``t`` itself when long enough)."""
    if t.shape[0] >= n:
        return t
    grown = torch.zeros(n, dtype=t.dtype, device=t.device)
    grown[: t.shape[0]] = t
    return grown


class Segment(NamedTuple):
    """A CSR inverted file (module docstring).

    Shape:
        - offsets: :math:`(K + 1,)` int64.
        - image_ids: :math:`(E,)` int32.
        - vectors: :math:`(B / 8, E)` int64 (binary) or :math:`(E, D)` float32 (real).
    """

    offsets: Tensor
    image_ids: Tensor
    vectors: Tensor


class Compaction(NamedTuple):
    """A compacted inverted file made by :meth:`InvertedFile.compacted`, to
    :meth:`InvertedFile.adopt`: the one segment, the new ``n_images`` (``None``: ids kept)
    and the version of the inverted file it was made from."""

    segment: Segment
    n_images: int | None
    version: int


_Piece = tuple[Tensor, Tensor, Tensor]  # pending: words int32, image ids int32, internal vectors


class InvertedFile:
    """Entries of an ASMK index by visual word, with the pending entries not merged yet.

    Args:
        num_words: codebook size K.
        dim: descriptor dimension D.
        binary: packed binary vectors (else float32 vectors of dimension D).
        device: where the arrays live.
    """

    def __init__(self, num_words: int, dim: int, *, binary: bool, device: torch.device) -> None:
        self.num_words, self.dim, self.binary, self.device = int(num_words), int(dim), bool(binary), device
        #: Elements of the row dtype per vector: bytes (binary) or floats (real).
        self.width = packed_width(self.dim) if self.binary else self.dim
        self.row_dtype = torch.uint8 if self.binary else torch.float32
        self._segment = Segment(
            torch.zeros(self.num_words + 1, dtype=torch.int64, device=device),
            torch.zeros(0, dtype=torch.int32, device=device),
            self.internal(torch.zeros((0, self.width), dtype=self.row_dtype, device=device)),
        )
        # pending entries: one list per add batch, of _BUCKETS pieces by word range
        self._pending: list[list[_Piece | None]] = []
        self._present = torch.zeros(0, dtype=torch.bool, device=device)
        self._n_images = 0
        # live collections: segments appended after the main one, and removed ids (tombstones)
        self._extra: list[Segment] = []
        self._removed = torch.zeros(0, dtype=torch.bool, device=device)
        self._num_removed = 0
        self._entries_of: Tensor | None = None  # entries per id (removed_entries), computed when asked for
        #: Moves on every change of the entries (caches of derived statistics key on it).
        self.version = 0

    # ------------------------------------------------------------------ layout

    def internal(self, rows: Tensor) -> Tensor:
        """``(G, B)`` packed uint8 or ``(G, D)`` float32 rows -> the in-memory layout."""
        return rows.view(torch.int64).t().contiguous() if self.binary else rows

    def rows(self, internal: Tensor) -> Tensor:
        """The in-memory layout -> ``(G, B)`` packed uint8 or ``(G, D)`` float32 rows."""
        if not self.binary:
            return internal
        flat = internal.t().contiguous().reshape(-1)  # (E, W) row-major, even when W == 1
        return flat.view(torch.uint8).reshape(internal.shape[1], self.width)

    @property
    def entry_dim(self) -> int:
        """Dimension of the in-memory vectors that runs over entries."""
        return 1 if self.binary else 0

    @property
    def bytes_per_vector(self) -> int:
        """16 for binary 128-d vectors, 4 D for real ones."""
        return self.width * (1 if self.binary else 4)

    # ------------------------------------------------------------------ size

    @property
    def n_images(self) -> int:
        """Largest image id + 1; 0 when empty."""
        return self._n_images

    @property
    def present(self) -> Tensor:
        """``(n_images,)`` bool: which ids hold an image."""
        return self._present

    @property
    def num_images(self) -> int:
        """Images added."""
        return int(self._present.sum())

    @property
    def num_entries(self) -> int:
        """Entries, merged (every segment, removed images' included) and pending."""
        return sum(int(seg.image_ids.shape[0]) for seg in (self._segment, *self._extra)) + self.num_pending

    @property
    def removed(self) -> Tensor:
        """``(n_images,)`` bool: ids removed by :meth:`remove` (tombstones; never ranked)."""
        self._removed = _zero_padded(self._removed, self._n_images)
        return self._removed

    @property
    def num_removed(self) -> int:
        """Ids removed (they no longer count as database images, e.g. in idf)."""
        return self._num_removed

    @property
    def num_extra_segments(self) -> int:
        """Segments appended after the main one (:meth:`append_segment`)."""
        return len(self._extra)

    def removed_entries(self) -> int:
        """Entries of removed images still held (dropped by :meth:`compact`): a sum over ids,
        from entry counts per id that are counted once and kept up to date by
        :meth:`append_segment` (not a pass over the entries per call)."""
        if not self._num_removed:
            return 0
        counts = self._entry_counts()
        removed = self.removed[: counts.shape[0]]
        return int(counts[: removed.shape[0]][removed].sum())

    def _entry_counts(self) -> Tensor:
        """Entries per id, ``(n_images,)`` int64 (merged entries)."""
        self.flush()
        if self._entries_of is None:
            counts = torch.zeros(self._n_images, dtype=torch.int64, device=self.device)
            for seg in (self._segment, *self._extra):
                counts += torch.bincount(seg.image_ids.to(torch.int64), minlength=self._n_images)[: self._n_images]
            self._entries_of = counts
        else:  # ids reserved since: no entries
            self._entries_of = _zero_padded(self._entries_of, self._n_images)
        return self._entries_of

    @property
    def num_pending(self) -> int:
        """Entries added but not merged yet (:meth:`flush`)."""
        return sum(int(piece[1].shape[0]) for batch in self._pending for piece in batch if piece is not None)

    def nbytes(self) -> int:
        """Bytes of the merged arrays: vectors, int32 image ids and CSR offsets."""
        return int(sum(t.numel() * t.element_size() for seg in (self._segment, *self._extra) for t in seg))

    # ------------------------------------------------------------------ adding

    def check_new(self, image_ids: Tensor) -> None:
        """Refuse ids already present (every image must come in one call).

        Raises:
            UsageError: some of the sorted distinct ``image_ids`` are in the file already.
        """
        known = image_ids[image_ids < self._present.shape[0]]
        dup = known[self._present[known]]
        if dup.numel():
            shown = ", ".join(str(int(i)) for i in dup[:10])
            raise UsageError(
                f"image ids already in the index: {shown}{' ...' if dup.numel() > 10 else ''} "
                "(every image must be added in one call)"
            )

    def add(self, batches: Iterable[tuple[Tensor, Tensor, Tensor]], image_ids: Tensor) -> None:
        """Append aggregated entries of new images (pending until :meth:`flush`).

        Nothing is appended unless every batch was taken (an error half-way leaves the
        file as it was).

        Args:
            batches: ``(image_ids, words, rows)`` per batch: one entry per (image, word),
                rows in the file layout (packed uint8 or float32).
            image_ids: the sorted distinct ids of the images (marked present).
        """
        pieces = [self._bucketed(words, images, rows) for images, words, rows in batches]
        self._pending.extend(pieces)  # only once everything succeeded
        if image_ids.numel():
            self._mark_present(image_ids, int(image_ids[-1]))

    def add_entries(self, words: Tensor, image_ids: Tensor, rows: Tensor) -> None:
        """Append already aggregated entries (one per image and word; for simulations).

        No check is made that (image, word) pairs are distinct or that images are new.

        Shape:
            - words, image_ids: :math:`(G,)`.
            - rows: :math:`(G, B)` packed uint8 (binary) or :math:`(G, D)` float32.
        """
        words = words.to(self.device, torch.int64)
        image_ids = image_ids.to(self.device, torch.int64)
        rows = rows.to(self.device, self.row_dtype)
        if rows.shape != (words.shape[0], self.width) or image_ids.shape != words.shape:
            raise UsageError("inconsistent shapes of words, image_ids and vectors")
        if words.numel() == 0:
            return
        if int(image_ids.min()) < 0 or int(image_ids.max()) > MAX_IMAGE_ID:
            raise UsageError(f"image_ids must be in 0..{MAX_IMAGE_ID}")
        self._pending.append(self._bucketed(words, image_ids, rows.contiguous()))
        self._mark_present(image_ids, int(image_ids.max()))

    def _mark_present(self, image_ids: Tensor, top: int) -> None:
        self._present = _zero_padded(self._present, top + 1)
        self._present[image_ids] = True
        self._n_images = max(self._n_images, top + 1)
        self.version += 1

    def _bucket_bounds(self) -> Tensor:
        """First word of each of the :data:`_BUCKETS` word ranges, and K."""
        return torch.div(torch.arange(_BUCKETS + 1, device=self.device) * self.num_words, _BUCKETS,
                         rounding_mode="floor")

    def _bucketed(self, words: Tensor, image_ids: Tensor, rows: Tensor) -> list[_Piece | None]:
        """Pending pieces of a batch of entries: per word range, sorted by word (stable).

        Every piece is a fresh tensor, so that :meth:`flush` frees each one as soon as it is
        merged (the batch itself is not kept alive by views)."""
        order = torch.sort(words, stable=True).indices
        sorted_words = words[order]
        cuts = torch.searchsorted(sorted_words, self._bucket_bounds()).tolist()
        pieces: list[_Piece | None] = []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            if a == b:
                pieces.append(None)
                continue
            sel = order[a:b]
            pieces.append((
                sorted_words[a:b].to(torch.int32),
                torch.index_select(image_ids, 0, sel).to(torch.int32),
                self.internal(torch.index_select(rows, 0, sel)),
            ))
        return pieces

    def flush(self) -> None:
        """Merge pending entries into the segment (module docstring: one word range at a
        time, each pending piece freed once merged)."""
        if not self._pending:
            return
        k = self.num_words
        dim = self.entry_dim
        old_offsets, old_images, old_vectors = self._segment
        counts = old_offsets[1:] - old_offsets[:-1]
        for batch in self._pending:
            for piece in batch:
                if piece is not None:
                    counts = counts + torch.bincount(piece[0].to(torch.int64), minlength=k)
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        total = int(offsets[-1])
        images = torch.empty(total, dtype=torch.int32, device=self.device)
        if self.binary:
            vectors = torch.empty((self.width // 8, total), dtype=torch.int64, device=self.device)
        else:
            vectors = torch.empty((total, self.dim), dtype=torch.float32, device=self.device)
        bounds = self._bucket_bounds().tolist()
        new_bounds = offsets[bounds].tolist()
        old_bounds = old_offsets[bounds].tolist()
        for b in range(_BUCKETS):
            w0, w1 = bounds[b], bounds[b + 1]
            oa, ob = old_bounds[b], old_bounds[b + 1]
            words_parts, image_parts, vector_parts = [], [], []
            if ob > oa:
                old_lengths = old_offsets[w0 + 1 : w1 + 1] - old_offsets[w0:w1]
                words_parts.append(torch.repeat_interleave(
                    torch.arange(w0, w1, device=self.device, dtype=torch.int32), old_lengths, output_size=ob - oa
                ))
                image_parts.append(old_images[oa:ob])
                vector_parts.append(old_vectors.narrow(dim, oa, ob - oa))
            for batch in self._pending:
                piece = batch[b]
                if piece is not None:
                    words_parts.append(piece[0])
                    image_parts.append(piece[1])
                    vector_parts.append(piece[2])
                    batch[b] = None  # freed once merged below
            if not words_parts:
                continue
            order = torch.sort(torch.cat(words_parts), stable=True).indices
            a, c = new_bounds[b], new_bounds[b + 1]
            images[a:c] = torch.cat(image_parts)[order]
            block = torch.cat(vector_parts, dim=dim) if len(vector_parts) > 1 else vector_parts[0]
            if dim == 0:  # rows: gather straight into place
                torch.index_select(block, 0, order, out=vectors[a:c])
            else:
                vectors[:, a:c] = torch.index_select(block, 1, order)
            del words_parts, image_parts, vector_parts, block, order
        self._segment = Segment(offsets, images, vectors)
        self._pending = []
        self._entries_of = None
        self.version += 1

    # ------------------------------------------------------------------ reading

    def segments(self) -> tuple[Segment, ...]:
        """The CSR segments holding every entry (:meth:`flush` first: nothing pending)."""
        assert not self._pending, "flush() before reading the segments"
        return (self._segment, *self._extra)

    def entries_per_word(self) -> Tensor:
        """Database images holding each word, entries(w) of SPEC section 3 (flushed file).

        Shape:
            - output: :math:`(K,)` int64.
        """
        segments = self.segments()
        if self._num_removed:  # count the entries of images still present only
            removed = self.removed
            total = torch.zeros(self.num_words, dtype=torch.int64, device=self.device)
            for offsets, images, _ in segments:
                e = int(images.shape[0])
                if e:
                    words = torch.repeat_interleave(torch.arange(self.num_words, device=self.device),
                                                    offsets[1:] - offsets[:-1], output_size=e)
                    total += torch.bincount(words[~removed[images.to(torch.int64)]], minlength=self.num_words)
            return total
        total = segments[0].offsets[1:] - segments[0].offsets[:-1]
        for seg in segments[1:]:
            total = total + (seg.offsets[1:] - seg.offsets[:-1])
        return total

    def image_sums(self, word_weights: Tensor) -> Tensor:
        """Per image, the sum of ``word_weights`` over its entries (flushed file).

        One word range at a time (entries in order, so the sums are those of one pass
        over the entries, without a per-entry copy of the file).

        Shape:
            - word_weights: :math:`(K,)` float32.
            - output: :math:`(n\\_images,)` float32.
        """
        sums = torch.zeros(self._n_images, dtype=torch.float32, device=self.device)
        bounds = self._bucket_bounds().tolist()
        for offsets, images, _ in self.segments():
            starts = offsets[bounds].tolist()
            for b in range(_BUCKETS):
                w0, w1, a, c = bounds[b], bounds[b + 1], starts[b], starts[b + 1]
                if c > a:
                    lengths = offsets[w0 + 1 : w1 + 1] - offsets[w0:w1]
                    per_entry = torch.repeat_interleave(word_weights[w0:w1], lengths, output_size=c - a)
                    sums.index_add_(0, images[a:c].to(torch.int64), per_entry)
        if self._num_removed:
            sums[self.removed] = 0
        return sums

    # ------------------------------------------------------------------ arrays (state, files)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(offsets, image_ids)`` of the flushed file as numpy arrays (int64, int32); appended
        segments and removed images' entries are merged in first (:meth:`compact`)."""
        self._single()
        return self._segment.offsets.cpu().numpy(), self._segment.image_ids.cpu().numpy()

    def vector_rows(self) -> np.ndarray:
        """Every vector of the flushed file as rows (the file layout; a full copy)."""
        self._single()
        return self.rows(self._segment.vectors).cpu().numpy()

    def row_chunks(self, chunk_rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """The vectors of the flushed file as rows, ``(start, stop, rows)`` per chunk of
        ``chunk_rows`` rows (the file layout, straight from memory: no full copy)."""
        self._single()
        vectors = self._segment.vectors
        e = int(self._segment.image_ids.shape[0])
        for start in range(0, e, chunk_rows):
            stop = min(e, start + chunk_rows)
            part = vectors[:, start:stop] if self.binary else vectors[start:stop]
            yield start, stop, self.rows(part).cpu().numpy()

    def load(self, offsets: np.ndarray, image_ids: np.ndarray, vectors: Any, n_images: int, *,
             chunk_rows: int) -> None:
        """Replace the contents with checked arrays (a state or a file).

        The vectors are read ``chunk_rows`` rows at a time straight into the in-memory
        layout: the peak is the file plus one chunk.

        Args:
            offsets: :math:`(K + 1,)` CSR offsets.
            image_ids: :math:`(E,)` image id of every entry.
            vectors: :math:`(E, B)` uint8 or :math:`(E, D)` float32 rows: an array or
                anything with ``shape``, ``dtype`` and row slicing (an HDF5 dataset).
            n_images: largest image id + 1.
            chunk_rows: rows per read.

        Raises:
            UsageError: the arrays do not describe one inverted file.
        """
        k = self.num_words
        e = image_ids.shape[0] if image_ids.ndim == 1 else -1
        if offsets.shape != (k + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != e:
            raise UsageError(f"inconsistent inverted file: offsets do not describe {e} entries over {k} words")
        expected = np.dtype(np.uint8 if self.binary else np.float32)
        if tuple(vectors.shape) != (e, self.width) or vectors.dtype != expected:
            raise UsageError(
                f"inconsistent inverted file: vectors of shape {tuple(vectors.shape)} and dtype {vectors.dtype}, "
                f"expected ({e}, {self.width}) {expected}"
            )
        if e and (image_ids.min() < 0 or image_ids.max() >= n_images):
            raise UsageError(f"inconsistent inverted file: image ids outside 0..{n_images - 1}")
        device = self.device
        offsets_t = torch.from_numpy(offsets.astype(np.int64, copy=False)).to(device)
        images_t = torch.from_numpy(image_ids.astype(np.int32, copy=False)).to(device)
        if self.binary:  # fill the column-major layout chunk by chunk
            vectors_t = torch.empty((self.width // 8, e), dtype=torch.int64, device=device)
            for start in range(0, e, chunk_rows):
                stop = min(e, start + chunk_rows)
                rows = torch.from_numpy(np.ascontiguousarray(vectors[start:stop])).to(device)
                vectors_t[:, start:stop] = rows.view(torch.int64).t()
        else:
            vectors_t = torch.empty((e, self.width), dtype=torch.float32, device=device)
            for start in range(0, e, chunk_rows):
                stop = min(e, start + chunk_rows)
                vectors_t[start:stop] = torch.from_numpy(np.ascontiguousarray(vectors[start:stop]))
        self._segment = Segment(offsets_t, images_t, vectors_t)
        self._pending = []
        self._extra = []
        self._entries_of = None
        self._removed = torch.zeros(0, dtype=torch.bool, device=device)
        self._num_removed = 0
        self._n_images = int(n_images)
        self._present = torch.zeros(self._n_images, dtype=torch.bool, device=device)
        self._present[images_t.to(torch.int64)] = True
        self.version += 1

    # ------------------------------------------------------------------ live collections

    def _single(self) -> None:
        """One segment and no removed image's entry (what files and states hold)."""
        self.flush()
        if self._extra or self.removed_entries():
            self.compact()

    def reserve(self, n_images: int) -> None:
        """Make ids up to ``n_images - 1`` part of the database (images without entries
        count as database images, e.g. in idf, as in an index built from scratch)."""
        if n_images > self._n_images:
            self._n_images = int(n_images)
            self.version += 1

    def segment_of(self, batches: Iterable[tuple[Tensor, Tensor, Tensor]]) -> Segment:
        """A CSR segment of aggregated entries (the ``(image_ids, words, rows)`` batches of
        :func:`lit.asmk.functional.aggregate_images`), ordered by word, then as given.

        Costs the entries of the batches only (a sort and a ``bincount``), not the file."""
        words, images, rows = [], [], []
        for b_images, b_words, b_rows in batches:
            words.append(b_words.to(self.device, torch.int64))
            images.append(b_images.to(self.device, torch.int32))
            rows.append(b_rows.to(self.device, self.row_dtype))
        if not words:
            return Segment(torch.zeros(self.num_words + 1, dtype=torch.int64, device=self.device),
                           torch.zeros(0, dtype=torch.int32, device=self.device),
                           self.internal(torch.zeros((0, self.width), dtype=self.row_dtype, device=self.device)))
        words_t = torch.cat(words)
        order = torch.sort(words_t, stable=True).indices
        counts = torch.bincount(words_t, minlength=self.num_words)
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        return Segment(offsets, torch.cat(images)[order], self.internal(torch.cat(rows)[order]))

    def append_segment(self, segment: Segment, image_ids: Tensor) -> None:
        """Append a segment of new images (:meth:`segment_of`, or read from a file) without
        touching the others: the cost is the segment's.

        Args:
            segment: CSR over the K words, vectors in the in-memory layout.
            image_ids: the sorted distinct ids of its images (marked present; none may be
                present or removed already).

        Raises:
            UsageError: an id already present or removed, or a segment of another shape.
        """
        if segment.offsets.shape != (self.num_words + 1,):
            raise UsageError(f"segment offsets must have {self.num_words + 1} values, got {tuple(segment.offsets.shape)}")
        image_ids = image_ids.to(self.device, torch.int64)
        self.check_new(image_ids)
        removed = self.removed
        if image_ids.numel():
            known = image_ids[image_ids < removed.shape[0]]
            if bool(removed[known].any()):
                raise UsageError("an id of a removed image cannot be reused before compact()")
        self.flush()
        segment = Segment(segment.offsets.to(self.device, torch.int64), segment.image_ids.to(self.device, torch.int32),
                          segment.vectors.to(self.device))
        if int(segment.image_ids.shape[0]):
            self._extra.append(segment)
            if self._entries_of is not None:  # keep the counts up to date: the segment's cost
                top = max(self._entries_of.shape[0], int(segment.image_ids.max()) + 1)
                self._entries_of = _zero_padded(self._entries_of, top) + torch.bincount(
                    segment.image_ids.to(torch.int64), minlength=top)
        if image_ids.numel():
            self._mark_present(image_ids, int(image_ids.max()))
        else:
            self.version += 1

    def remove(self, image_ids: Tensor) -> int:
        """Remove images: their ids become tombstones (never ranked, not counted in idf or
        norms); their entries stay until :meth:`compact`. Costs the ids, not the file.

        Returns:
            How many of the ids were present (the others are ignored).
        """
        image_ids = torch.unique(image_ids.to(self.device, torch.int64))
        image_ids = image_ids[(image_ids >= 0) & (image_ids < self._n_images)]
        removed = self.removed
        fresh = image_ids[~removed[image_ids]]
        if fresh.numel():
            removed[fresh] = True
            present = fresh[fresh < self._present.shape[0]]
            self._present[present] = False
            self._num_removed += int(fresh.numel())
            self.version += 1
        return int(fresh.numel())

    def compact(self, new_ids: Tensor | None = None, n_images: int | None = None) -> None:
        """Merge every segment into one, dropping the entries of removed images.

        Args:
            new_ids: ``(n_images,)`` int64, the new id of every id, ``-1`` to drop it (e.g.
                removed ids renumbered away); ``None`` keeps ids (tombstones stay).
            n_images: the new ``n_images`` with ``new_ids`` (default: largest new id + 1).

        The new segment is built one word range at a time from the old ones; entries keep
        their order within a posting list. :meth:`compacted` and :meth:`adopt` are the same
        in two steps.
        """
        self.flush()
        self.adopt(self.compacted(new_ids, n_images))

    def compacted(self, new_ids: Tensor | None = None, n_images: int | None = None) -> Compaction:
        """What :meth:`compact` makes, built without changing this inverted file: it may be
        searched meanwhile (the O(collection) part of a compaction blocks no search), and
        :meth:`adopt` then installs it. Nothing may be pending (:meth:`flush`)."""
        if self._pending:
            raise RuntimeError("flush() before compacted(): pending entries would be lost")
        removed = self.removed
        segments = (self._segment, *self._extra)
        k, dim = self.num_words, self.entry_dim
        keeps, counts = [], torch.zeros(k, dtype=torch.int64, device=self.device)
        for offsets, images, _ in segments:
            e = int(images.shape[0])
            keep = ~removed[images.to(torch.int64)]
            if new_ids is not None:
                keep &= new_ids[images.to(torch.int64)] >= 0
            words = torch.repeat_interleave(torch.arange(k, device=self.device), offsets[1:] - offsets[:-1],
                                            output_size=e)
            counts += torch.bincount(words[keep], minlength=k)
            keeps.append((words, keep))
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        total = int(offsets[-1])
        parts_w, parts_i, parts_v = [], [], []
        for (_offsets, images, vectors), (words, keep) in zip(segments, keeps, strict=True):
            idx = keep.nonzero().squeeze(1)
            parts_w.append(words[idx])
            img = images[idx]
            if new_ids is not None:
                img = new_ids[img.to(torch.int64)].to(torch.int32)
            parts_i.append(img)
            parts_v.append(torch.index_select(vectors, dim, idx))
        order = torch.sort(torch.cat(parts_w), stable=True).indices
        images_t = torch.cat(parts_i)[order]
        vectors_t = torch.index_select(torch.cat(parts_v, dim=dim), dim, order)
        assert int(images_t.shape[0]) == total
        n = None
        if new_ids is not None:
            top = int(new_ids.max()) + 1 if new_ids.numel() else 0
            n = top if n_images is None else int(n_images)
        return Compaction(Segment(offsets, images_t, vectors_t), n, self.version)

    def adopt(self, compaction: Compaction) -> None:
        """Install a :meth:`compacted` inverted file (O(1) but for ``present`` when ids were
        renumbered).

        Raises:
            RuntimeError: the inverted file changed since it was made.
        """
        if compaction.version != self.version or self._pending:
            raise RuntimeError("the inverted file changed after compacted(): compact it again")
        self._segment = compaction.segment
        self._extra = []
        self._entries_of = None
        if compaction.n_images is not None:
            n, images_t = compaction.n_images, compaction.segment.image_ids
            present = torch.zeros(n, dtype=torch.bool, device=self.device)
            if images_t.numel():
                present[images_t.to(torch.int64)] = True
            self._present = present
            self._n_images = n
            self._removed = torch.zeros(n, dtype=torch.bool, device=self.device)
            self._num_removed = 0
        self.version += 1

    def merge_extra(self) -> None:
        """Merge the appended segments into one (not the main segment): costs the appended
        entries only. Keeps the number of segments a query loops over small."""
        if len(self._extra) < 2:
            return
        k, dim = self.num_words, self.entry_dim
        counts = torch.zeros(k, dtype=torch.int64, device=self.device)
        parts_w, parts_i, parts_v = [], [], []
        for offsets, images, vectors in self._extra:
            lengths = offsets[1:] - offsets[:-1]
            counts += lengths
            parts_w.append(torch.repeat_interleave(torch.arange(k, device=self.device), lengths,
                                                   output_size=int(images.shape[0])))
            parts_i.append(images)
            parts_v.append(vectors)
        order = torch.sort(torch.cat(parts_w), stable=True).indices
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        self._extra = [Segment(offsets, torch.cat(parts_i)[order],
                               torch.index_select(torch.cat(parts_v, dim=dim), dim, order))]
        self.version += 1
