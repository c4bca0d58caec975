"""ASMK index: aggregated selective match kernel over a vectorised inverted file.

Layout of the inverted file (IVF), on the index device:

- ``offsets`` :math:`(K + 1,)` int64, CSR offsets: the database entries of visual word
  ``w`` are rows ``offsets[w]:offsets[w + 1]`` of the two arrays below;
- ``image_ids`` :math:`(E,)` int32, database image of every entry;
- ``vectors``: binary mode, packed bits (``B = 8 * ceil(D / 64)`` bytes, 16 for 128-d)
  kept in memory column-major as :math:`(B / 8, E)` int64 so that a gather reads 1-D
  columns; saved as :math:`(E, B)` uint8 rows (``numpy.packbits`` order). Real mode,
  :math:`(E, D)` float32 L2-normalised residual sums.

There is one entry per (database image, word). Within a posting list, entries are in the
order they were added. ``add`` aggregates a batch of images and appends it to a pending
list (split by word range, sorted by word); pending entries are merged into the CSR
arrays before the next query, ``save``, ``stats`` or an explicit :meth:`ASMK.flush`, one
word range at a time.

Memory model (binary 128-d, FIRe's setting; ``E`` = entries = about 0.6-0.9 x the
descriptors per image, as several descriptors of an image share words):

- index: 16 B (vector) + 4 B (image id) per entry, + 8 (K + 1) B of offsets, 4 K D B of
  codebook and 5 B per image (presence flag, cached norm): about 20 B x E per image,
  e.g. ~15 KB per image of 1000 descriptors at K = 65,536 (``stats()["bytes"]``); real
  mode stores 4 D B per vector instead of 16.
- build: an ``add`` batch holds its descriptors and about :data:`~lit.asmk.functional.CHUNK_BYTES`
  of residuals at a time; pending entries take 24 B each (vector, image id, int32 word);
  :meth:`flush` writes the merged arrays one word range at a time and frees each pending
  piece once merged, so its peak is the pending entries plus one range (~1/32), not a
  second copy of the inverted file. Flushing into a non-empty inverted file also keeps
  the old arrays until the end. ``add`` from a feature file or a shard set streams in
  chunks (:func:`lit.shards.add_collection`): the whole database is never held as
  descriptors.
- search: query descriptors and their m = 5 words, their aggregated entries, one chunk of
  (query entry, database entry) pairs (about 16 MB on CPU, 256 MB on GPU) and one block of
  score rows (about 128 MB of float32, plus the same again twice for the top-k key):
  :meth:`ASMK.search` never holds the dense (queries x database) matrix, only the top-k
  of each block (``topk=None`` asks for it all, and gets it). :meth:`ASMK.scores` is the
  dense matrix by definition.
- save / load: the vectors are written and read in chunks of rows straight from/into the
  in-memory layout, so loading peaks at the index plus one chunk (not twice the file).

A query gathers all (query vector, database entry) pairs of its words by slicing the
posting lists (``repeat_interleave``), computes their similarities in one go (XOR and
popcount on int64 words in binary mode, a dot product in real mode), applies the
selective kernel (a lookup table over the D + 1 Hamming distances in binary mode) and
idf, and ``index_add_``\\ s them into the query's row of a dense score matrix. No Python
loop runs per descriptor, word or database image; the only loops are over query images
and over chunks that bound memory.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import functional as F
from .codebook import kmeans
from .quantize import Quantizer

FORMAT_TYPE = "lit.asmk.ASMK"
FORMAT_VERSION = 1
_MAX_IMAGE_ID = 2**31 - 2  # image ids are stored as int32
_PAIR_BYTES = 1 << 24  # memory target of one chunk of (query, database) pairs on CPU
_PAIR_BYTES_ACCELERATOR = 1 << 28  # and on GPU, where fewer, larger kernels pay
_BUCKETS = 32  # word ranges of pending entries: flush merges one range at a time
_BLOCK_BYTES = 1 << 27  # memory target of one block of query scores (rows x database images)
_IO_ROWS = 1 << 20  # inverted-file rows read or written per HDF5 call


@dataclass(frozen=True)
class ASMKParams:
    """Kernel and assignment parameters of an :class:`ASMK` index (FIRe defaults).

    Args:
        binary: binarise aggregated residuals (1 bit per dimension) instead of
            L2-normalising them.
        alpha: exponent of the selective kernel.
        similarity_threshold: tau; word similarities below it are discarded.
        use_idf: weight words by ``log(n_images / entries(w)) ** 2``.
        multiple_assignment: nearest words per database descriptor.
        query_multiple_assignment: nearest words per query descriptor.
    """

    binary: bool = True
    alpha: float = 3.0
    similarity_threshold: float = 0.0
    use_idf: bool = False
    multiple_assignment: int = 1
    query_multiple_assignment: int = 5

    def __post_init__(self) -> None:
        for name in ("binary", "use_idf"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
            object.__setattr__(self, name, bool(getattr(self, name)))
        for name in ("alpha", "similarity_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not np.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
            object.__setattr__(self, name, float(value))
        if self.alpha <= 0:
            raise ValueError(f"alpha must be positive, got {self.alpha}")
        if self.similarity_threshold < 0 and not F.is_integral(self.alpha):
            raise ValueError(
                "a negative similarity_threshold keeps negative similarities, which need an "
                f"integer alpha to be raised to its power; got alpha={self.alpha}"
            )
        for name in ("multiple_assignment", "query_multiple_assignment"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
            object.__setattr__(self, name, int(value))


class SearchResult(NamedTuple):
    """Ranked database images per query (rows follow the sorted distinct query ids).

    Shape:
        - ranks: :math:`(Q, k)` int64 database image ids, best first.
        - scores: :math:`(Q, k)` float32 scores, non-increasing along each row.
    """

    ranks: Tensor
    scores: Tensor


class ASMK:
    """Aggregated selective match kernel index (SPEC section 3).

    Args:
        codebook: visual words (centroids), numpy array or torch tensor.
        binary: binary mode (FIRe default) or real mode.
        alpha: selective-kernel exponent.
        similarity_threshold: selective-kernel threshold tau.
        use_idf: inverse-document-frequency weighting of words.
        multiple_assignment: nearest words per database descriptor.
        query_multiple_assignment: nearest words per query descriptor.
        device: torch device holding the codebook and the inverted file, where all
            computation runs.

    Shape:
        - codebook: :math:`(K, D)`.

    Example:
        >>> index = ASMK(torch.randn(64, 8))
        >>> index.add(torch.randn(50, 8), torch.arange(50) // 10)
        >>> index.scores(torch.randn(7, 8), torch.zeros(7, dtype=torch.int64)).shape
        torch.Size([1, 5])
    """

    def __init__(
        self,
        codebook: Tensor | np.ndarray,
        binary: bool = True,
        alpha: float = 3.0,
        similarity_threshold: float = 0.0,
        use_idf: bool = False,
        multiple_assignment: int = 1,
        query_multiple_assignment: int = 5,
        device: str | torch.device = "cpu",
    ) -> None:
        self.params = ASMKParams(
            binary=binary,
            alpha=alpha,
            similarity_threshold=similarity_threshold,
            use_idf=use_idf,
            multiple_assignment=multiple_assignment,
            query_multiple_assignment=query_multiple_assignment,
        )
        self.device = torch.device(device)
        cb = _as_tensor(codebook, "codebook")
        if not cb.is_floating_point():
            raise TypeError(f"codebook must be floating point, got {cb.dtype}")
        if cb.dim() != 2 or cb.shape[0] < 1 or cb.shape[1] < 1:
            raise ValueError(f"codebook must be a non-empty (K, D) matrix, got shape {tuple(cb.shape)}")
        if not bool(torch.isfinite(cb).all()):
            raise ValueError("codebook contains NaN or infinite values")
        k = cb.shape[0]
        for name in ("multiple_assignment", "query_multiple_assignment"):
            if getattr(self.params, name) > k:
                raise ValueError(f"{name}={getattr(self.params, name)} exceeds the codebook size {k}")
        self.codebook = cb.to(device=self.device, dtype=torch.float32).contiguous()
        #: The nearest-word search of this codebook (keeps its prepared forms).
        self.quantizer = Quantizer(self.codebook)
        self._offsets = torch.zeros(k + 1, dtype=torch.int64, device=self.device)
        self._images = torch.zeros(0, dtype=torch.int32, device=self.device)
        self._vectors = self._internal(
            torch.zeros((0, self._vector_width), dtype=self._vector_dtype, device=self.device)
        )
        # pending entries: one list per add batch, of _BUCKETS pieces (words int32, image ids
        # int32, internal vectors) by word range, each sorted by word (stable)
        self._pending: list[list[tuple[Tensor, Tensor, Tensor] | None]] = []
        self._idf_override: Tensor | None = None  # global idf of a sharded index
        self._present = torch.zeros(0, dtype=torch.bool, device=self.device)
        self._n_images = 0
        self._cache: dict[str, Tensor] = {}

    # ------------------------------------------------------------------ properties

    @property
    def num_words(self) -> int:
        """Codebook size K."""
        return int(self.codebook.shape[0])

    @property
    def dim(self) -> int:
        """Descriptor dimension D."""
        return int(self.codebook.shape[1])

    @property
    def n_images(self) -> int:
        """Largest database image id + 1 (the width of :meth:`scores`); 0 when empty."""
        return self._n_images

    @property
    def num_vectors(self) -> int:
        """Number of aggregated database vectors (one per image and word)."""
        return int(self._images.shape[0]) + sum(
            int(piece[1].shape[0]) for batch in self._pending for piece in batch if piece is not None
        )

    @property
    def _vector_width(self) -> int:
        return F.packed_width(self.dim) if self.params.binary else self.dim

    @property
    def _vector_dtype(self) -> torch.dtype:
        return torch.uint8 if self.params.binary else torch.float32

    # Binary vectors are kept column-major, (W, E) int64 (W = 64-bit words per vector):
    # gathering W 1-D columns is several times faster than gathering 16-byte rows.
    # Real vectors are kept as (E, D) float32 rows.

    def _internal(self, rows: Tensor) -> Tensor:
        """(G, B) packed uint8 or (G, D) float32 rows -> internal layout."""
        return rows.view(torch.int64).t().contiguous() if self.params.binary else rows

    def _rows(self, internal: Tensor) -> Tensor:
        """Internal layout -> (G, B) packed uint8 or (G, D) float32 rows."""
        if not self.params.binary:
            return internal
        flat = internal.t().contiguous().reshape(-1)  # (E, W) row-major, even when W == 1
        return flat.view(torch.uint8).reshape(internal.shape[1], -1)

    def _entry_dim(self) -> int:
        return 1 if self.params.binary else 0

    def __repr__(self) -> str:
        p = self.params
        return (
            f"ASMK(K={self.num_words}, D={self.dim}, binary={p.binary}, alpha={p.alpha}, "
            f"similarity_threshold={p.similarity_threshold}, use_idf={p.use_idf}, "
            f"multiple_assignment={p.multiple_assignment}, "
            f"query_multiple_assignment={p.query_multiple_assignment}, images={self.n_images}, "
            f"vectors={self.num_vectors}, device={self.device})"
        )

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(
        cls,
        descriptors: Tensor | np.ndarray,
        size: int = 65536,
        iterations: int = 20,
        seed: int = 0,
        device: str | torch.device = "cpu",
        backend: str = "auto",
        **params: Any,
    ) -> ASMK:
        """Learn a codebook by k-means and return an empty index using it.

        k-means runs with faiss when it is importable and with the built-in torch
        implementation otherwise (``backend`` forces one, see :func:`lit.asmk.kmeans`).

        Args:
            descriptors: training descriptors.
            size: codebook size K (FIRe: 65536).
            iterations: k-means iterations.
            seed: k-means seed.
            device: device of the k-means and of the returned index.
            backend: ``"auto"``, ``"torch"`` or ``"faiss"``.
            **params: :class:`ASMK` keyword arguments (``binary``, ``alpha``...).

        Shape:
            - descriptors: :math:`(N, D)` with ``N >= size``.
        """
        n = int(descriptors.shape[0]) if hasattr(descriptors, "shape") and len(descriptors.shape) else 0
        if n == 0:
            raise ValueError("ASMK.train: no descriptors given (the feature file or array is empty)")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"ASMK.train: size must be a positive integer, got {size!r}")
        if size > n:
            raise ValueError(f"ASMK.train: {n} descriptors cannot make {size} visual words; pass size <= {n} "
                             "(lit index chooses a size from the descriptor count)")
        codebook = kmeans(descriptors, size, iterations=iterations, seed=seed, device=device, backend=backend)
        return cls(codebook, device=device, **params)

    # ------------------------------------------------------------------ quantisation

    def quantize(self, descriptors: Tensor | np.ndarray, m: int | None = None) -> Tensor:
        """Nearest visual words of descriptors, nearest first (chunked L2 search).

        Args:
            descriptors: descriptors of dimension D.
            m: words per descriptor; ``None`` means ``multiple_assignment``.

        Returns:
            int64 words on the index device.

        Shape:
            - descriptors: :math:`(N, D)`.
            - output: :math:`(N, m)`.
        """
        x = self._check_descriptors(descriptors, "descriptors")
        m = self.params.multiple_assignment if m is None else m
        if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or not 1 <= m <= self.num_words:
            raise ValueError(f"m must be an int in 1..{self.num_words}, got {m!r}")
        return self.quantizer(x, int(m))

    # ------------------------------------------------------------------ database

    def add(
        self,
        descriptors: Tensor | np.ndarray,
        image_ids: Tensor | np.ndarray,
        *,
        words: Tensor | np.ndarray | None = None,
    ) -> None:
        """Add the local descriptors of database images (may be called several times).

        Every image must come in a single call: an id already in the index raises
        ``ValueError``. Ids need not be contiguous; the score width is the largest
        id + 1 and ids never added score 0.

        Args:
            descriptors: local descriptors of all images of this batch.
            image_ids: int image id (``0 <= id < 2**31 - 1``) of every descriptor.
            words: optional precomputed assignments (e.g. from :meth:`quantize` with
                ``m = multiple_assignment``); skips the nearest-centroid search.

        Shape:
            - descriptors: :math:`(N, D)`.
            - image_ids: :math:`(N,)`.
            - words: :math:`(N, m)` or :math:`(N,)` when ``m = 1``.
        """
        x = self._check_descriptors(descriptors, "descriptors")
        ids = self._check_ids(image_ids, x.shape[0], "image_ids")
        words = self._check_words(words, x.shape[0], self.params.multiple_assignment)
        if x.shape[0] == 0:
            return
        batch_ids = torch.unique(ids)
        top = int(batch_ids[-1])
        known = batch_ids[batch_ids < self._present.shape[0]]
        dup = known[self._present[known]]
        if dup.numel():
            shown = ", ".join(str(int(i)) for i in dup[:10])
            raise ValueError(
                f"image ids already in the index: {shown}{' ...' if dup.numel() > 10 else ''} "
                "(every image must be added in one call)"
            )
        if words is None:
            words = self.quantizer(x, self.params.multiple_assignment)
        entries = [
            self._bucketed(agg_words, agg_images, agg_vectors)
            for agg_images, agg_words, agg_vectors in self._aggregate(x, words, ids)
        ]
        self._pending.extend(entries)  # only once everything succeeded
        self._mark_present(batch_ids, top)

    def _mark_present(self, image_ids: Tensor, top: int) -> None:
        if top + 1 > self._present.shape[0]:
            grown = torch.zeros(top + 1, dtype=torch.bool, device=self.device)
            grown[: self._present.shape[0]] = self._present
            self._present = grown
        self._present[image_ids] = True
        self._n_images = max(self._n_images, top + 1)
        self._cache.clear()

    def _add_entries(self, words: Tensor, image_ids: Tensor, vectors: Tensor) -> None:
        """Append already aggregated entries (one per image and word; for simulations).

        No check is made that (image, word) pairs are distinct or that images are new.

        Shape:
            - words, image_ids: :math:`(G,)`.
            - vectors: :math:`(G, B)` packed uint8 (binary) or :math:`(G, D)` float32.
        """
        words = words.to(self.device, torch.int64)
        image_ids = image_ids.to(self.device, torch.int64)
        vectors = vectors.to(self.device, self._vector_dtype)
        if vectors.shape != (words.shape[0], self._vector_width) or image_ids.shape != words.shape:
            raise ValueError("inconsistent shapes of words, image_ids and vectors")
        if words.numel() == 0:
            return
        if int(image_ids.min()) < 0 or int(image_ids.max()) > _MAX_IMAGE_ID:
            raise ValueError(f"image_ids must be in 0..{_MAX_IMAGE_ID}")
        self._pending.append(self._bucketed(words, image_ids, vectors.contiguous()))
        self._mark_present(image_ids, int(image_ids.max()))

    def _bucket_bounds(self) -> Tensor:
        """First word of each of the :data:`_BUCKETS` word ranges, and K."""
        k = self.num_words
        return torch.div(torch.arange(_BUCKETS + 1, device=self.device) * k, _BUCKETS, rounding_mode="floor")

    def _bucketed(self, words: Tensor, image_ids: Tensor, rows: Tensor) -> list[tuple[Tensor, Tensor, Tensor] | None]:
        """Pending pieces of a batch of entries: per word range, sorted by word (stable).

        Every piece is a fresh tensor, so that :meth:`flush` frees each one as soon as it is
        merged (the batch itself is not kept alive by views)."""
        order = torch.sort(words, stable=True).indices
        sorted_words = words[order]
        cuts = torch.searchsorted(sorted_words, self._bucket_bounds()).tolist()
        pieces: list[tuple[Tensor, Tensor, Tensor] | None] = []
        for a, b in zip(cuts[:-1], cuts[1:], strict=True):
            if a == b:
                pieces.append(None)
                continue
            sel = order[a:b]
            pieces.append((
                sorted_words[a:b].to(torch.int32),
                torch.index_select(image_ids, 0, sel).to(torch.int32),
                self._internal(torch.index_select(rows, 0, sel)),
            ))
        return pieces

    def flush(self) -> None:
        """Merge pending entries into the CSR inverted file (automatic before queries).

        Works one word range at a time (:data:`_BUCKETS` ranges) and frees every pending
        piece once merged, so the peak is the pending entries plus the part of the merged
        inverted file written so far (its pages are touched only as they are filled), not
        two or three full copies. Merging into a non-empty inverted file keeps the old one
        until the end (old + new)."""
        if not self._pending:
            return
        k = self.num_words
        dim = self._entry_dim()
        old_offsets, old_images, old_vectors = self._offsets, self._images, self._vectors
        counts = old_offsets[1:] - old_offsets[:-1]
        for batch in self._pending:
            for piece in batch:
                if piece is not None:
                    counts = counts + torch.bincount(piece[0].to(torch.int64), minlength=k)
        offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
        total = int(offsets[-1])
        images = torch.empty(total, dtype=torch.int32, device=self.device)
        if self.params.binary:
            vectors = torch.empty((self._vector_width // 8, total), dtype=torch.int64, device=self.device)
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
        self._offsets, self._images, self._vectors = offsets, images, vectors
        self._pending = []
        self._cache.clear()

    def _aggregate(self, x: Tensor, words: Tensor, ids: Tensor):
        """Aggregate per (image, word) in batches of whole images; yields IVF entries."""
        if ids.shape[0] > 1 and not bool((ids[1:] >= ids[:-1]).all()):
            order = torch.sort(ids, stable=True).indices
            x, words, ids = x[order], words[order], ids[order]
        m = words.shape[1]
        budget = max(1, F.CHUNK_BYTES // (4 * self.dim * m))
        for start, stop in _image_batches(ids, budget):
            images, agg_words, sums = F.aggregate_residuals(
                x[start:stop], words[start:stop], ids[start:stop], self.codebook
            )
            vectors = F.binarize(sums) if self.params.binary else F.l2_normalize(sums)
            yield images, agg_words, vectors

    # ------------------------------------------------------------------ statistics used by queries

    def _idf(self) -> Tensor:
        if self._idf_override is not None:
            return self._idf_override
        if "idf" not in self._cache:
            if self.params.use_idf:
                self._cache["idf"] = F.inverse_document_frequency(self._word_entries(), self._n_images)
            else:
                self._cache["idf"] = torch.ones(self.num_words, dtype=torch.float32, device=self.device)
        return self._cache["idf"]

    def _word_entries(self) -> Tensor:
        """Database images holding each word, entries(w) of SPEC section 3 (flushed index)."""
        return self._offsets[1:] - self._offsets[:-1]

    def _db_inv_sqrt_norm(self) -> Tensor:
        if "db_norm" not in self._cache:
            # sum of idf over each image's entries, one word range at a time (entries in
            # order, so the sums are the same as in one pass; no per-entry copy of the file)
            idf = self._idf()
            norms = torch.zeros(self._n_images, dtype=torch.float32, device=self.device)
            bounds = self._bucket_bounds().tolist()
            starts = self._offsets[bounds].tolist()
            for b in range(_BUCKETS):
                w0, w1, a, c = bounds[b], bounds[b + 1], starts[b], starts[b + 1]
                if c > a:
                    lengths = self._offsets[w0 + 1 : w1 + 1] - self._offsets[w0:w1]
                    per_entry = torch.repeat_interleave(idf[w0:w1], lengths, output_size=c - a)
                    norms.index_add_(0, self._images[a:c].to(torch.int64), per_entry)
            self._cache["db_norm"] = F.inverse_sqrt(norms)
        return self._cache["db_norm"]

    # ------------------------------------------------------------------ queries

    def _prepare_queries(self, qdescriptors, qimage_ids, words):
        x = self._check_descriptors(qdescriptors, "qdescriptors")
        ids = self._check_ids(qimage_ids, x.shape[0], "qimage_ids")
        words = self._check_words(words, x.shape[0], self.params.query_multiple_assignment)
        return x, ids, words

    def _score_blocks(self, x: Tensor, ids: Tensor, words: Tensor | None, lo: int, hi: int):
        """Scores of blocks of whole query images against database ids ``lo..hi-1``.

        Yields ``(first_row, block)``: ``block`` is a float32 ``(R, hi - lo)`` tensor of the
        rows ``first_row..first_row + R - 1`` (rows = sorted distinct query ids). At most
        about :data:`_BLOCK_BYTES` of scores exist at a time, whatever the number of
        queries."""
        qids, rows = torch.unique(ids, sorted=True, return_inverse=True)
        width = hi - lo
        if qids.shape[0] == 0 or width <= 0:
            return
        self.flush()
        idf = self._idf()
        if words is None:
            words = self.quantizer(x, self.params.query_multiple_assignment)
        binary = self.params.binary
        db_vectors, db_images, offsets = self._vectors, self._images, self._offsets
        inv_db = torch.zeros(width, dtype=torch.float32, device=self.device)
        top = min(hi, self._n_images)
        if top > lo:
            inv_db[: top - lo] = self._db_inv_sqrt_norm()[lo:top]
        if binary:  # similarities take D + 1 values: tabulate the kernel over Hamming distances
            lut = F.selective_kernel(
                F.binary_similarity_from_hamming(torch.arange(self.dim + 1, device=self.device), self.dim),
                self.params.alpha,
                self.params.similarity_threshold,
            )
        bytes_per_pair = 2 * self._vector_width * (1 if binary else 4) + 64
        budget = _PAIR_BYTES if self.device.type == "cpu" else _PAIR_BYTES_ACCELERATOR
        max_pairs = max(1, budget // bytes_per_pair)
        block_rows = max(1, _BLOCK_BYTES // (4 * width))
        for q_rows, q_words, q_vectors in self._aggregate(x, words, rows):
            q_idf = idf[q_words]
            q_vectors = self._internal(q_vectors)
            lengths = offsets[q_words + 1] - offsets[q_words]
            # entries are sorted by query row: one query image at a time (its own score row)
            row_values, row_counts = torch.unique_consecutive(q_rows, return_counts=True)
            row_values, row_counts = row_values.tolist(), row_counts.tolist()
            row_end = 0
            for g in range(0, len(row_values), block_rows):
                group, counts = row_values[g : g + block_rows], row_counts[g : g + block_rows]
                first = group[0]
                block = torch.zeros((group[-1] - first + 1, width), dtype=torch.float32, device=self.device)
                qnorm = torch.zeros(block.shape[0], dtype=torch.float32, device=self.device)
                for row, count in zip(group, counts, strict=True):
                    row_start, row_end = row_end, row_end + count
                    qnorm[row - first] = q_idf[row_start:row_end].sum()
                    out_row = block[row - first]
                    for a, b, total in _pair_chunks(lengths[row_start:row_end], max_pairs):
                        a, b = a + row_start, b + row_start
                        qi, di = F.posting_pairs(q_words[a:b], offsets, total=total)
                        if binary:
                            xor = [
                                torch.index_select(db_col, 0, di).bitwise_xor_(torch.index_select(q_col[a:b], 0, qi))
                                for db_col, q_col in zip(db_vectors, q_vectors, strict=True)
                            ]
                            weight = torch.index_select(lut, 0, F.popcount_sum(xor))
                        else:
                            dbv = torch.index_select(db_vectors, 0, di)
                            qv = torch.index_select(q_vectors[a:b], 0, qi)
                            weight = F.selective_kernel(
                                F.real_similarity(dbv, qv), self.params.alpha, self.params.similarity_threshold
                            )
                        if self.params.use_idf:
                            weight *= torch.index_select(q_idf[a:b], 0, qi)
                        images = torch.index_select(db_images, 0, di).to(torch.int64)
                        if lo or top < self._n_images:  # a column range: drop entries outside
                            keep = (images >= lo) & (images < hi)
                            images, weight = images[keep] - lo, weight[keep]
                        out_row.index_add_(0, images, weight)
                block *= inv_db.unsqueeze(0)
                block *= F.inverse_sqrt(qnorm).unsqueeze(1)
                yield first, block

    def scores(
        self,
        qdescriptors: Tensor | np.ndarray,
        qimage_ids: Tensor | np.ndarray,
        *,
        words: Tensor | np.ndarray | None = None,
    ) -> Tensor:
        """Dense ASMK scores of query images against all database images.

        ``score(q, i) = sum_w idf(w) sigma(w) / sqrt(norm_db(i)) / sqrt(norm_q)`` over the
        words ``w`` shared by query ``q`` and database image ``i`` (SPEC section 3). An
        image whose norm is 0 (never added, or all its words have idf 0) scores 0. The
        output is ``Q x n_images`` float32: for many queries against a large database use
        :meth:`search` with ``topk``, which never holds it.

        Args:
            qdescriptors: local descriptors of one or several query images.
            qimage_ids: query id of every descriptor (any non-negative ints).
            words: optional precomputed assignments (:meth:`quantize` with
                ``m = query_multiple_assignment``).

        Returns:
            float32 scores on the index device; row ``r`` is the ``r``-th smallest
            distinct query id, column ``i`` database image id ``i``.

        Shape:
            - qdescriptors: :math:`(N, D)`.
            - qimage_ids: :math:`(N,)`.
            - words: :math:`(N, m_q)`.
            - output: :math:`(Q, n\\_images)`, ``Q`` = number of distinct query ids.
        """
        x, ids, words = self._prepare_queries(qdescriptors, qimage_ids, words)
        n_q = int(torch.unique(ids).shape[0])
        out = torch.zeros((n_q, self._n_images), dtype=torch.float32, device=self.device)
        for first, block in self._score_blocks(x, ids, words, 0, self._n_images):
            out[first : first + block.shape[0]] = block
        return out

    def search(
        self,
        qdescriptors: Tensor | np.ndarray,
        qimage_ids: Tensor | np.ndarray,
        topk: int | None = None,
        *,
        words: Tensor | np.ndarray | None = None,
        columns: tuple[int, int] | None = None,
    ) -> SearchResult:
        """Rank database images for each query by decreasing score.

        Ties keep increasing image id order (the order of a stable sort). For
        :func:`lit.evaluate.revisited_map`, pass ``ranks.T`` (database x queries). Queries
        are scored in blocks and only the best ``topk`` of each block are kept, so memory
        stays bounded with many queries and a large database (module docstring).

        Args:
            qdescriptors: local descriptors of the query images.
            qimage_ids: query id of every descriptor.
            topk: keep the best ``topk`` images per query (all when ``None``; clipped to
                the number of database images).
            words: optional precomputed assignments, as in :meth:`scores`.
            columns: rank only database ids ``lo..hi-1`` (``(lo, hi)``; default all, ``0..
                n_images-1``); a part of a sharded index ranks its own id range.

        Returns:
            :class:`SearchResult` ``(ranks, scores)``, one row per distinct query id
            (sorted), on the index device.

        Shape:
            - ranks, scores: :math:`(Q, k)` with ``k = min(topk, hi - lo)``.
        """
        if topk is not None and (isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1):
            raise ValueError(f"topk must be a positive int or None, got {topk!r}")
        lo, hi = (0, self._n_images) if columns is None else (int(columns[0]), int(columns[1]))
        if not 0 <= lo <= hi:
            raise ValueError(f"columns must be (lo, hi) with 0 <= lo <= hi, got {columns!r}")
        x, ids, words = self._prepare_queries(qdescriptors, qimage_ids, words)
        n_q = int(torch.unique(ids).shape[0])
        k = (hi - lo) if topk is None else min(int(topk), hi - lo)
        ranks = torch.zeros((n_q, k), dtype=torch.int64, device=self.device)
        values = torch.zeros((n_q, k), dtype=torch.float32, device=self.device)
        if k == 0:
            return SearchResult(ranks, values)
        col_ids = torch.arange(lo, hi, device=self.device)
        for first, block in self._score_blocks(x, ids, words, lo, hi):
            r, v = F.topk_stable(block, col_ids, k)
            ranks[first : first + block.shape[0]] = r
            values[first : first + block.shape[0]] = v
        return SearchResult(ranks, values)

    # ------------------------------------------------------------------ statistics

    def stats(self) -> dict[str, Any]:
        """Size of the index.

        Returns:
            dict with ``images`` (database images added), ``n_images`` (largest id + 1),
            ``vectors`` (aggregated vectors), ``words`` (K), ``dim`` (D),
            ``bytes_per_vector`` (16 for binary 128-d), ``bytes`` (inverted file:
            vectors, int32 image ids and CSR offsets) and ``codebook_bytes``.
        """
        self.flush()
        vec_bytes = self._vectors.numel() * self._vectors.element_size()
        id_bytes = self._images.numel() * self._images.element_size()
        off_bytes = self._offsets.numel() * self._offsets.element_size()
        return {
            "images": int(self._present.sum()),
            "n_images": self._n_images,
            "vectors": int(self._images.shape[0]),
            "words": self.num_words,
            "dim": self.dim,
            "binary": self.params.binary,
            "bytes_per_vector": self._vector_width * (1 if self.params.binary else 4),
            "bytes": int(vec_bytes + id_bytes + off_bytes),
            "codebook_bytes": int(self.codebook.numel() * 4),
        }

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Plain state: ``type``, ``version``, ``params``, ``n_images`` and numpy arrays
        ``codebook`` (K, D) float32, ``offsets`` (K + 1,) int64, ``image_ids`` (E,) int32 and
        ``vectors``: (E, B) uint8 packed bits (binary) or (E, D) float32 (real)."""
        self.flush()
        return {
            "type": FORMAT_TYPE,
            "version": FORMAT_VERSION,
            "params": asdict(self.params),
            "n_images": self._n_images,
            "codebook": self.codebook.cpu().numpy(),
            "offsets": self._offsets.cpu().numpy(),
            "image_ids": self._images.cpu().numpy(),
            "vectors": self._rows(self._vectors).cpu().numpy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str | torch.device = "cpu") -> ASMK:
        """Rebuild an index from :meth:`state_dict` (validated; ``ValueError`` if inconsistent)."""
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state)}")
        missing = {"type", "version", "params", "n_images", "codebook", "offsets", "image_ids", "vectors"} - set(state)
        if missing:
            raise ValueError(f"ASMK state lacks {sorted(missing)}")
        if state["type"] != FORMAT_TYPE:
            raise ValueError(f"state is of type {state['type']!r}, expected {FORMAT_TYPE!r}")
        if int(state["version"]) != FORMAT_VERSION:
            raise ValueError(
                f"ASMK format version {state['version']!r} is not supported (this lit reads version {FORMAT_VERSION})"
            )
        params = dict(state["params"])
        unknown = set(params) - {f for f in ASMKParams.__dataclass_fields__}
        if unknown:
            raise ValueError(f"unknown ASMK parameters {sorted(unknown)}")
        index = cls(np.asarray(state["codebook"]), device=device, **params)
        k = index.num_words
        offsets = np.asarray(state["offsets"])
        images = np.asarray(state["image_ids"])
        vectors = state["vectors"]
        if not isinstance(vectors, _RowSource):
            vectors = np.asarray(vectors)
        n_images = int(state["n_images"])
        e = images.shape[0] if images.ndim == 1 else -1
        if offsets.shape != (k + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0) or offsets[-1] != e:
            raise ValueError(f"inconsistent inverted file: offsets do not describe {e} entries over {k} words")
        expected = np.dtype(np.uint8 if index.params.binary else np.float32)
        if vectors.shape != (e, index._vector_width) or vectors.dtype != expected:
            raise ValueError(
                f"inconsistent inverted file: vectors of shape {vectors.shape} and dtype {vectors.dtype}, "
                f"expected ({e}, {index._vector_width}) {expected}"
            )
        if e and (images.min() < 0 or images.max() >= n_images):
            raise ValueError(f"inconsistent inverted file: image ids outside 0..{n_images - 1}")
        index._offsets = torch.from_numpy(offsets.astype(np.int64, copy=False)).to(index.device)
        index._images = torch.from_numpy(images.astype(np.int32, copy=False)).to(index.device)
        if index.params.binary:  # fill the column-major layout chunk by chunk
            index._vectors = torch.empty((index._vector_width // 8, e), dtype=torch.int64, device=index.device)
            for start in range(0, e, _IO_ROWS):
                stop = min(e, start + _IO_ROWS)
                rows = torch.from_numpy(np.ascontiguousarray(vectors[start:stop])).to(index.device)
                index._vectors[:, start:stop] = rows.view(torch.int64).t()
        else:
            index._vectors = torch.empty((e, index._vector_width), dtype=torch.float32, device=index.device)
            for start in range(0, e, _IO_ROWS):
                stop = min(e, start + _IO_ROWS)
                index._vectors[start:stop] = torch.from_numpy(np.ascontiguousarray(vectors[start:stop]))
        index._n_images = n_images
        index._present = torch.zeros(n_images, dtype=torch.bool, device=index.device)
        index._present[index._images.to(torch.int64)] = True
        return index

    def save(self, path: str | os.PathLike, *, attrs: dict[str, Any] | None = None) -> None:
        """Write the index (codebook, parameters, inverted file) to an HDF5 file.

        The file is created anew (an existing file is replaced). Vectors are written in
        chunks of rows straight from the inverted file (no full second copy). Readers
        ignore groups and attributes they do not know, so other tools may add their own
        (e.g. a ``/pipeline`` group) after saving.

        Args:
            path: output file.
            attrs: extra file attributes (numbers or strings), e.g. the id range of a part
                of a sharded index.
        """
        import h5py

        self.flush()
        e = int(self._images.shape[0])
        with h5py.File(path, "w") as f:
            f.attrs["type"] = FORMAT_TYPE
            f.attrs["version"] = FORMAT_VERSION
            f.attrs["n_images"] = self._n_images
            for key, value in asdict(self.params).items():
                f.attrs[f"params.{key}"] = value
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            f.create_dataset("codebook", data=self.codebook.cpu().numpy())
            f.create_dataset("offsets", data=self._offsets.cpu().numpy())
            f.create_dataset("image_ids", data=self._images.cpu().numpy())
            dtype = np.uint8 if self.params.binary else np.float32
            ds = f.create_dataset("vectors", shape=(e, self._vector_width), dtype=dtype)
            for start in range(0, e, _IO_ROWS):
                stop = min(e, start + _IO_ROWS)
                part = self._vectors[:, start:stop] if self.params.binary else self._vectors[start:stop]
                ds[start:stop] = self._rows(part).cpu().numpy()

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> ASMK:
        """Read an index written by :meth:`save`.

        The inverted file is read in chunks of rows straight into its in-memory layout on
        ``device``: the peak is the index itself plus one chunk. Unknown groups, datasets
        and attributes in the file are ignored.

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not HDF5, is truncated or corrupt, is not an ASMK
                index, or has another format version; the message names the file.
        """
        import h5py

        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such ASMK index file")
        if not h5py.is_hdf5(path):
            raise ValueError(f"{path}: not an HDF5 file (an ASMK index is saved as HDF5)")
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            raise ValueError(f"{path}: cannot open HDF5 file, truncated or corrupt ({err})") from err
        try:
            with f:
                kind = _attr_str(f.attrs.get("type"))
                if kind != FORMAT_TYPE:
                    raise ValueError(f"{path}: not an ASMK index (type {kind!r}, expected {FORMAT_TYPE!r})")
                version = _attr_value(f.attrs.get("version"))
                if not isinstance(version, int) or version != FORMAT_VERSION:
                    raise ValueError(
                        f"{path}: ASMK format version {version!r} is not supported "
                        f"(this lit reads version {FORMAT_VERSION})"
                    )
                for key in ("codebook", "offsets", "image_ids", "vectors"):
                    if key not in f or not isinstance(f[key], h5py.Dataset):
                        raise ValueError(f"{path}: ASMK index lacks the dataset {key!r}")
                params = {
                    key[len("params.") :]: _attr_value(value)
                    for key, value in f.attrs.items()
                    if key.startswith("params.")
                }
                state = {
                    "type": kind, "version": int(version), "n_images": int(f.attrs["n_images"]),
                    "params": params, "codebook": f["codebook"][()], "offsets": f["offsets"][()],
                    "image_ids": f["image_ids"][()].astype(np.int32, copy=False),
                    "vectors": _RowSource(f["vectors"]),
                }
                try:
                    return cls.from_state(state, device=device)
                except (ValueError, TypeError) as err:
                    raise ValueError(f"{path}: {err}") from err
        except (OSError, KeyError, RuntimeError) as err:
            raise ValueError(f"{path}: cannot read ASMK index, truncated or corrupt ({err})") from err

    # ------------------------------------------------------------------ input checks

    def _check_descriptors(self, x: Any, name: str) -> Tensor:
        x = _as_tensor(x, name)
        if not x.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {x.dtype}")
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"{name} must be (N, {self.dim}) to match the codebook, got shape {tuple(x.shape)}")
        x = x.to(device=self.device, dtype=torch.float32)
        # one fast pass: a finite sum means finite values; otherwise look closer (the sum
        # may only have overflowed), min and max propagate NaN and expose infinities
        if (
            x.numel()
            and not bool(torch.isfinite(x.sum()))
            and not bool(torch.isfinite(torch.stack(torch.aminmax(x))).all())
        ):
            raise ValueError(f"{name} contains NaN or infinite values")
        return x.contiguous()

    def _check_ids(self, ids: Any, n: int, name: str) -> Tensor:
        ids = _as_tensor(ids, name)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be integers, got {ids.dtype}")
        if ids.dim() != 1 or ids.shape[0] != n:
            raise ValueError(f"{name} must be 1-D with one id per descriptor ({n}), got shape {tuple(ids.shape)}")
        ids = ids.to(device=self.device, dtype=torch.int64)
        if n and (int(ids.min()) < 0 or int(ids.max()) > _MAX_IMAGE_ID):
            raise ValueError(f"{name} must be in 0..{_MAX_IMAGE_ID}, got {int(ids.min())}..{int(ids.max())}")
        return ids

    def _check_words(self, words: Any, n: int, m: int) -> Tensor | None:
        if words is None:
            return None
        words = _as_tensor(words, "words")
        if words.is_floating_point() or words.dtype == torch.bool:
            raise TypeError(f"words must be integers, got {words.dtype}")
        if words.dim() == 1 and m == 1:
            words = words.unsqueeze(1)
        if words.shape != (n, m):
            raise ValueError(f"words must be ({n}, {m}), got shape {tuple(words.shape)}")
        words = words.to(device=self.device, dtype=torch.int64)
        if n and (int(words.min()) < 0 or int(words.max()) >= self.num_words):
            raise ValueError(f"words must be in 0..{self.num_words - 1}")
        return words.contiguous()


def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    if isinstance(x, (list, tuple)):
        x = np.asarray(x)
    if isinstance(x, np.ndarray):
        if x.dtype == object or x.dtype.kind not in "biuf":
            raise TypeError(f"{name} has unsupported dtype {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


class _RowSource:
    """Rows of an HDF5 dataset read on demand (``shape``, ``dtype``, slicing)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.shape = tuple(dataset.shape)
        self.dtype = dataset.dtype

    def __getitem__(self, item: Any) -> np.ndarray:
        return self.dataset[item]


def _image_batches(sorted_ids: Tensor, budget: int) -> list[tuple[int, int]]:
    """Split rows sorted by image id into ``(start, stop)`` runs of whole images with
    about ``budget`` rows each (one image larger than the budget is a run of its own)."""
    n = sorted_ids.shape[0]
    if n <= budget:
        return [(0, n)]
    _, counts = torch.unique_consecutive(sorted_ids, return_counts=True)
    ends = torch.cumsum(counts, 0)
    targets = torch.arange(budget, n, budget, device=ends.device)
    cut = torch.searchsorted(ends, targets, right=True)  # images fully within the target
    cut = torch.unique(cut.clamp_min(1))  # at least one image per batch
    bounds = [0] + ends[cut - 1].tolist() + [n]
    bounds = sorted(set(bounds))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _pair_chunks(lengths: Tensor, max_pairs: int) -> list[tuple[int, int, int]]:
    """Split query entries into ``(start, stop, pairs)`` runs of about ``max_pairs`` pairs."""
    ends = torch.cumsum(lengths, 0)
    total = int(ends[-1]) if ends.numel() else 0
    if total <= max_pairs:
        return [(0, lengths.shape[0], total)] if total else []
    targets = torch.arange(max_pairs, total, max_pairs, device=ends.device)
    cut = torch.unique(torch.searchsorted(ends, targets, right=True).clamp_min(1)).tolist()
    bounds = sorted(set([0] + cut + [lengths.shape[0]]))
    ends_list = [0] + ends.tolist()
    return [(a, b, ends_list[b] - ends_list[a]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _attr_str(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return None if value is None else str(value)


def _attr_value(value: Any) -> Any:
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value
