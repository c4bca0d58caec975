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
list; pending entries are merged into the CSR arrays (one stable sort by word) before
the next query, ``save``, ``stats`` or an explicit :meth:`ASMK.flush`.

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

FORMAT_TYPE = "lit.asmk.ASMK"
FORMAT_VERSION = 1
_MAX_IMAGE_ID = 2**31 - 2  # image ids are stored as int32
_PAIR_BYTES = 1 << 24  # memory target of one chunk of (query, database) pairs on CPU
_PAIR_BYTES_ACCELERATOR = 1 << 28  # and on GPU, where fewer, larger kernels pay


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
        self._offsets = torch.zeros(k + 1, dtype=torch.int64, device=self.device)
        self._images = torch.zeros(0, dtype=torch.int32, device=self.device)
        self._vectors = self._internal(
            torch.zeros((0, self._vector_width), dtype=self._vector_dtype, device=self.device)
        )
        self._pending: list[tuple[Tensor, Tensor, Tensor]] = []
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
        return int(self._images.shape[0]) + sum(int(p[1].shape[0]) for p in self._pending)

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
        return F.nearest_words(x, self.codebook, int(m))

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
            words = F.nearest_words(x, self.codebook, self.params.multiple_assignment)
        entries = [
            (agg_words, agg_images.to(torch.int32), self._internal(agg_vectors))
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
        self._pending.append((words, image_ids.to(torch.int32), self._internal(vectors.contiguous())))
        self._mark_present(image_ids, int(image_ids.max()))

    def flush(self) -> None:
        """Merge pending entries into the CSR inverted file (automatic before queries)."""
        if not self._pending:
            return
        k = self.num_words
        lengths = self._offsets[1:] - self._offsets[:-1]
        old_words = torch.repeat_interleave(
            torch.arange(k, device=self.device), lengths, output_size=self._images.shape[0]
        )
        all_words = torch.cat([old_words] + [p[0] for p in self._pending])
        order = torch.sort(all_words, stable=True).indices
        self._images = torch.cat([self._images] + [p[1] for p in self._pending])[order]
        dim = self._entry_dim()
        vectors = torch.cat([self._vectors] + [p[2] for p in self._pending], dim=dim)
        self._vectors = torch.index_select(vectors, dim, order)
        counts = torch.bincount(all_words, minlength=k)
        self._offsets = torch.cat([counts.new_zeros(1), torch.cumsum(counts, 0)])
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
        if "idf" not in self._cache:
            if self.params.use_idf:
                entries = self._offsets[1:] - self._offsets[:-1]
                self._cache["idf"] = F.inverse_document_frequency(entries, self._n_images)
            else:
                self._cache["idf"] = torch.ones(self.num_words, dtype=torch.float32, device=self.device)
        return self._cache["idf"]

    def _db_inv_sqrt_norm(self) -> Tensor:
        if "db_norm" not in self._cache:
            lengths = self._offsets[1:] - self._offsets[:-1]
            per_entry = torch.repeat_interleave(self._idf(), lengths, output_size=self._images.shape[0])
            norms = torch.zeros(self._n_images, dtype=torch.float32, device=self.device)
            norms.index_add_(0, self._images.to(torch.int64), per_entry)
            self._cache["db_norm"] = F.inverse_sqrt(norms)
        return self._cache["db_norm"]

    # ------------------------------------------------------------------ queries

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
        image whose norm is 0 (never added, or all its words have idf 0) scores 0.

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
        x = self._check_descriptors(qdescriptors, "qdescriptors")
        ids = self._check_ids(qimage_ids, x.shape[0], "qimage_ids")
        mq = self.params.query_multiple_assignment
        words = self._check_words(words, x.shape[0], mq)
        qids, rows = torch.unique(ids, sorted=True, return_inverse=True)
        n_q, n_db = int(qids.shape[0]), self._n_images
        out = torch.zeros(n_q * n_db, dtype=torch.float32, device=self.device)
        if n_q == 0 or n_db == 0:
            return out.view(n_q, n_db)
        self.flush()
        idf = self._idf()
        if words is None:
            words = F.nearest_words(x, self.codebook, mq)
        qnorm = torch.zeros(n_q, dtype=torch.float32, device=self.device)
        binary = self.params.binary
        db_vectors = self._vectors
        db_images = self._images
        if binary:  # similarities take D + 1 values: tabulate the kernel over Hamming distances
            lut = F.selective_kernel(
                F.binary_similarity_from_hamming(torch.arange(self.dim + 1, device=self.device), self.dim),
                self.params.alpha,
                self.params.similarity_threshold,
            )
        bytes_per_pair = 2 * self._vector_width * (1 if binary else 4) + 64
        budget = _PAIR_BYTES if self.device.type == "cpu" else _PAIR_BYTES_ACCELERATOR
        max_pairs = max(1, budget // bytes_per_pair)
        out = out.view(n_q, n_db)
        for q_rows, q_words, q_vectors in self._aggregate(x, words, rows):
            q_idf = idf[q_words]
            qnorm.index_add_(0, q_rows, q_idf)
            q_vectors = self._internal(q_vectors)
            lengths = self._offsets[q_words + 1] - self._offsets[q_words]
            # entries are sorted by query row: one query image at a time (its own score row)
            row_values, row_counts = torch.unique_consecutive(q_rows, return_counts=True)
            row_end = 0
            for row, count in zip(row_values.tolist(), row_counts.tolist(), strict=True):
                row_start, row_end = row_end, row_end + count
                for a, b, total in _pair_chunks(lengths[row_start:row_end], max_pairs):
                    a, b = a + row_start, b + row_start
                    qi, di = F.posting_pairs(q_words[a:b], self._offsets, total=total)
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
                    images = torch.index_select(db_images, 0, di)
                    if images.device.type != "cpu":
                        images = images.to(torch.int64)
                    out[row].index_add_(0, images, weight)
        out *= self._db_inv_sqrt_norm().unsqueeze(0)
        out *= F.inverse_sqrt(qnorm).unsqueeze(1)
        return out

    def search(
        self,
        qdescriptors: Tensor | np.ndarray,
        qimage_ids: Tensor | np.ndarray,
        topk: int | None = None,
        *,
        words: Tensor | np.ndarray | None = None,
    ) -> SearchResult:
        """Rank database images for each query by decreasing score.

        Ties keep increasing image id order (stable sort). For
        :func:`lit.evaluate.revisited_map`, pass ``ranks.T`` (database x queries).

        Args:
            qdescriptors: local descriptors of the query images.
            qimage_ids: query id of every descriptor.
            topk: keep the best ``topk`` images per query (all when ``None``; clipped to
                the number of database images).
            words: optional precomputed assignments, as in :meth:`scores`.

        Returns:
            :class:`SearchResult` ``(ranks, scores)``, one row per distinct query id
            (sorted), on the index device.

        Shape:
            - ranks, scores: :math:`(Q, k)` with ``k = min(topk, n_images)``.
        """
        if topk is not None and (isinstance(topk, bool) or not isinstance(topk, (int, np.integer)) or topk < 1):
            raise ValueError(f"topk must be a positive int or None, got {topk!r}")
        scores = self.scores(qdescriptors, qimage_ids, words=words)
        values, ranks = torch.sort(scores, dim=1, descending=True, stable=True)
        if topk is not None:
            values, ranks = values[:, :topk], ranks[:, :topk]
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
        vectors = np.asarray(state["vectors"])
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
        index._offsets = torch.from_numpy(offsets.astype(np.int64)).to(index.device)
        index._images = torch.from_numpy(images.astype(np.int32)).to(index.device)
        index._vectors = index._internal(torch.from_numpy(np.ascontiguousarray(vectors)).to(index.device))
        index._n_images = n_images
        index._present = torch.zeros(n_images, dtype=torch.bool, device=index.device)
        index._present[index._images.to(torch.int64)] = True
        return index

    def save(self, path: str | os.PathLike) -> None:
        """Write the index (codebook, parameters, inverted file) to an HDF5 file."""
        import h5py

        state = self.state_dict()
        with h5py.File(path, "w") as f:
            f.attrs["type"] = state["type"]
            f.attrs["version"] = state["version"]
            f.attrs["n_images"] = state["n_images"]
            for key, value in state["params"].items():
                f.attrs[f"params.{key}"] = value
            for key in ("codebook", "offsets", "image_ids", "vectors"):
                f.create_dataset(key, data=state[key])

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> ASMK:
        """Read an index written by :meth:`save`.

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
                state = {
                    "type": kind,
                    "version": int(version),
                    "n_images": int(f.attrs["n_images"]),
                    "params": {
                        key[len("params.") :]: _attr_value(value)
                        for key, value in f.attrs.items()
                        if key.startswith("params.")
                    },
                }
                for key in ("codebook", "offsets", "image_ids", "vectors"):
                    if key not in f:
                        raise ValueError(f"{path}: ASMK index lacks the dataset {key!r}")
                    state[key] = f[key][()]
        except (OSError, KeyError, RuntimeError) as err:
            raise ValueError(f"{path}: cannot read ASMK index, truncated or corrupt ({err})") from err
        try:
            return cls.from_state(state, device=device)
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err

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
