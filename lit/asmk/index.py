"""ASMK index: aggregated selective match kernel over a vectorised inverted file.

:class:`ASMK` is a facade over four parts, each in its own module:

- :class:`~lit.asmk.quantize.Quantizer` (:mod:`lit.asmk.quantize`): the nearest-word
  search, with the prepared codebook and workspaces it keeps between queries;
- :class:`~lit.asmk.ivf.InvertedFile` (:mod:`lit.asmk.ivf`): entries by word, pending
  entries and their merge (:meth:`ASMK.flush`), image presence;
- :mod:`lit.asmk.scoring`: idf and image norms (:class:`~lit.asmk.scoring.WordStatistics`),
  blocks of scores, top-k;
- :mod:`lit.asmk.io`: the index in an HDF5 group (:meth:`ASMK.save`, :meth:`ASMK.load`
  and :meth:`ASMK.from_group` are thin wrappers).

The facade checks user input (:mod:`lit._checks`), aggregates descriptors
(:func:`lit.asmk.functional.aggregate_images`) and passes the pieces along.

Memory model (binary 128-d, FIRe's setting; ``E`` = entries = about 0.6-0.9 x the
descriptors per image, as several descriptors of an image share words):

- index: 16 B (vector) + 4 B (image id) per entry, + 8 (K + 1) B of offsets, 4 K D B of
  codebook and 5 B per image (presence flag, cached norm): about 20 B x E per image,
  e.g. ~15 KB per image of 1000 descriptors at K = 65,536 (``stats()["bytes"]``); real
  mode stores 4 D B per vector instead of 16. The quantizer keeps, once used, a second
  copy of the codebook (transposed, float32 kernel: 32 MB at K = 65,536) or its bfloat16
  form (17 MB) and a 64 MB workspace per searching thread (CPU bfloat16 kernel).
- build: an ``add`` batch holds its descriptors and about :data:`~lit.asmk.functional.CHUNK_BYTES`
  of residuals at a time; pending entries take 24 B each (vector, image id, int32 word);
  :meth:`ASMK.flush` writes the merged arrays one word range at a time and frees each
  pending piece once merged, so its peak is the pending entries plus one range (~1/32),
  not a second copy of the inverted file. Flushing into a non-empty inverted file also
  keeps the old arrays until the end. Adding a feature collection streams it in chunks
  (:meth:`ASMK.add` per chunk of whole images): the whole database is never held as
  descriptors.
- search: query descriptors and their m = 5 words, their aggregated entries, one chunk of
  (query entry, database entry) pairs and one block of score rows (:mod:`lit.asmk.scoring`):
  :meth:`ASMK.search` never holds the dense (queries x database) matrix, only the top-k
  of each block (``topk=None`` asks for it all, and gets it). :meth:`ASMK.scores` is the
  dense matrix by definition.
- save / load: the vectors are written and read in chunks of rows straight from/into the
  in-memory layout, so loading peaks at the index plus one chunk (not twice the file).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import as_tensor, check_finite, check_ids, check_int, check_matrix, check_number
from ..errors import IndexFileError, UsageError
from . import functional as F
from . import io as asmk_io
from . import scoring
from .codebook import kmeans
from .io import FORMAT_TYPE, FORMAT_VERSION
from .ivf import MAX_IMAGE_ID, InvertedFile, Segment
from .quantize import Quantizer
from .scoring import SearchResult, WordStatistics

__all__ = ["ASMK", "FORMAT_TYPE", "FORMAT_VERSION", "ASMKParams", "SearchResult"]


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
        alpha = check_number(self.alpha, "alpha", minimum=0, open_minimum=True)
        threshold = check_number(self.similarity_threshold, "similarity_threshold")
        if threshold < 0 and not F.is_integral(alpha):
            raise UsageError(
                "a negative similarity_threshold keeps negative similarities, which need an "
                f"integer alpha to be raised to its power; got alpha={alpha}"
            )
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "similarity_threshold", threshold)
        for name in ("multiple_assignment", "query_multiple_assignment"):
            object.__setattr__(self, name, check_int(getattr(self, name), name, minimum=1))


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
        cb = check_matrix(codebook, "codebook")
        if cb.shape[0] < 1 or cb.shape[1] < 1:
            raise UsageError(f"codebook must be a non-empty (K, D) matrix, got shape {tuple(cb.shape)}")
        k = cb.shape[0]
        for name in ("multiple_assignment", "query_multiple_assignment"):
            if getattr(self.params, name) > k:
                raise UsageError(f"{name}={getattr(self.params, name)} exceeds the codebook size {k}")
        #: The nearest-word search of this codebook (keeps its prepared forms).
        self.quantizer = Quantizer(cb.to(device=self.device, dtype=torch.float32).contiguous())
        #: The inverted file.
        self.ivf = InvertedFile(k, cb.shape[1], binary=self.params.binary, device=self.device)
        self._statistics = WordStatistics(self.ivf, self.params.use_idf)

    # ------------------------------------------------------------------ properties

    @property
    def codebook(self) -> Tensor:
        """The centroids, float32 on the index device.

        Shape: :math:`(K, D)`."""
        return self.quantizer.codebook

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
        return self.ivf.n_images

    @property
    def num_vectors(self) -> int:
        """Number of aggregated database vectors (one per image and word)."""
        return self.ivf.num_entries

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
            raise UsageError("ASMK.train: no descriptors given (the feature file or array is empty)")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
            raise UsageError(f"ASMK.train: size must be a positive integer, got {size!r}")
        if size > n:
            raise UsageError(f"ASMK.train: {n} descriptors cannot make {size} visual words; pass size <= {n}")
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
        x = self._descriptors(descriptors, "descriptors")
        m = self.params.multiple_assignment if m is None else check_int(m, "m", minimum=1, maximum=self.num_words)
        return self.quantizer(x, m)

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
        x = self._descriptors(descriptors, "descriptors")
        ids = self._ids(image_ids, x.shape[0], "image_ids")
        words = self._words(words, x.shape[0], self.params.multiple_assignment)
        if x.shape[0] == 0:
            return
        batch_ids = torch.unique(ids)
        self.ivf.check_new(batch_ids)
        if words is None:
            words = self.quantizer(x, self.params.multiple_assignment)
        self.ivf.add(F.aggregate_images(x, words, ids, self.codebook, binary=self.params.binary), batch_ids)

    def aggregate_segment(self, descriptors: Tensor | np.ndarray, image_ids: Tensor | np.ndarray, *,
                          words: Tensor | np.ndarray | None = None) -> tuple[Segment, Tensor]:
        """The entries of new images as a CSR segment, without adding them.

        Returns:
            ``(segment, ids)``: the segment (:class:`lit.asmk.ivf.Segment`) and the sorted
            distinct image ids it holds, for :meth:`append_segment` (also of another
            index with the same codebook and parameters, e.g. after writing it to a file).
        """
        x = self._descriptors(descriptors, "descriptors")
        ids = self._ids(image_ids, x.shape[0], "image_ids")
        words = self._words(words, x.shape[0], self.params.multiple_assignment)
        batch_ids = torch.unique(ids)
        if x.shape[0] and words is None:
            words = self.quantizer(x, self.params.multiple_assignment)
        batches = F.aggregate_images(x, words, ids, self.codebook, binary=self.params.binary) if x.shape[0] else []
        return self.ivf.segment_of(batches), batch_ids

    def append_segment(self, segment: Segment, image_ids: Tensor | np.ndarray) -> None:
        """Add new images as a segment of their own (:meth:`aggregate_segment`): the cost is
        theirs, the inverted file is not rewritten (live collections; :mod:`lit.asmk.ivf`).

        Raises:
            UsageError: an id already present or removed.
        """
        self.ivf.append_segment(segment, torch.as_tensor(np.asarray(image_ids) if not isinstance(image_ids, Tensor)
                                                         else image_ids))

    def remove(self, image_ids: Tensor | np.ndarray) -> int:
        """Remove database images: they are never ranked again and no longer count in idf;
        their entries stay in memory until :meth:`compact` (tombstones).

        Returns:
            How many of the ids were in the index.
        """
        ids = torch.as_tensor(np.asarray(image_ids) if not isinstance(image_ids, Tensor) else image_ids)
        return self.ivf.remove(ids.reshape(-1).to(torch.int64))

    def compact(self, new_ids: Tensor | np.ndarray | None = None, n_images: int | None = None) -> None:
        """Merge the inverted file's segments into one, dropping removed images' entries;
        ``new_ids`` (one per id, ``-1``: drop) renumbers the images
        (:meth:`lit.asmk.ivf.InvertedFile.compact`)."""
        if new_ids is not None and not isinstance(new_ids, Tensor):
            new_ids = torch.as_tensor(np.asarray(new_ids))
        self.ivf.compact(None if new_ids is None else new_ids.to(self.device, torch.int64), n_images)

    def flush(self) -> None:
        """Merge pending entries into the inverted file (automatic before queries, ``stats``
        and ``save``; :meth:`lit.asmk.ivf.InvertedFile.flush`)."""
        self.ivf.flush()

    # ------------------------------------------------------------------ queries

    def _queries(self, qdescriptors: Any, qimage_ids: Any, words: Any) -> tuple[Tensor, Tensor, Tensor | None]:
        x = self._descriptors(qdescriptors, "qdescriptors")
        ids = self._ids(qimage_ids, x.shape[0], "qimage_ids")
        words = self._words(words, x.shape[0], self.params.query_multiple_assignment)
        return x, ids, words

    def _score_blocks(self, x: Tensor, ids: Tensor, words: Tensor | None, lo: int,
                      hi: int) -> Iterator[tuple[int, Tensor]]:
        """Blocks of scores of whole query images against database ids ``lo..hi-1``
        (:func:`lit.asmk.scoring.score_blocks`; rows = sorted distinct query ids).

        Merges pending entries and quantises the queries now, unless there is nothing to
        score."""
        qids, rows = torch.unique(ids, sorted=True, return_inverse=True)
        if qids.shape[0] == 0 or hi - lo <= 0:
            return iter(())
        self.flush()
        if words is None:
            words = self.quantizer(x, self.params.query_multiple_assignment)
        return scoring.score_blocks(self.ivf, self._statistics, self.codebook, x, rows, words, lo, hi,
                                    alpha=self.params.alpha, threshold=self.params.similarity_threshold)

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
        x, ids, words = self._queries(qdescriptors, qimage_ids, words)
        n_q = int(torch.unique(ids).shape[0])
        width = self.n_images
        return scoring.dense_scores(self._score_blocks(x, ids, words, 0, width), n_q, width, self.device)

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
        if topk is not None:
            topk = check_int(topk, "topk", minimum=1)
        lo, hi = (0, self.n_images) if columns is None else (int(columns[0]), int(columns[1]))
        if not 0 <= lo <= hi:
            raise UsageError(f"columns must be (lo, hi) with 0 <= lo <= hi, got {columns!r}")
        x, ids, words = self._queries(qdescriptors, qimage_ids, words)
        n_q = int(torch.unique(ids).shape[0])
        excluded = None
        if self.ivf.num_removed:  # removed images (live collections) are never ranked
            excluded = torch.zeros(hi - lo, dtype=torch.bool, device=self.device)
            top = min(hi, self.n_images)
            if top > lo:
                excluded[: top - lo] = self.ivf.removed[lo:top]
        width = (hi - lo) - (int(excluded.sum()) if excluded is not None else 0)
        k = width if topk is None else min(topk, width)
        blocks = self._score_blocks(x, ids, words, lo, hi) if k else iter(())
        return scoring.top_k(blocks, n_q, k, lo, hi, self.device, excluded)

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
        return {
            "images": self.ivf.num_images,
            "n_images": self.n_images,
            "vectors": self.ivf.num_entries,
            "words": self.num_words,
            "dim": self.dim,
            "binary": self.params.binary,
            "bytes_per_vector": self.ivf.bytes_per_vector,
            "bytes": self.ivf.nbytes(),
            "codebook_bytes": int(self.codebook.numel() * 4),
        }

    # ------------------------------------------------------------------ persistence

    def state_dict(self) -> dict[str, Any]:
        """Plain state: ``type``, ``version``, ``params``, ``n_images`` and numpy arrays
        ``codebook`` (K, D) float32, ``offsets`` (K + 1,) int64, ``image_ids`` (E,) int32 and
        ``vectors``: (E, B) uint8 packed bits (binary) or (E, D) float32 (real)."""
        self.flush()
        offsets, image_ids = self.ivf.arrays()
        return {
            "type": FORMAT_TYPE,
            "version": FORMAT_VERSION,
            "params": asdict(self.params),
            "n_images": self.n_images,
            "codebook": self.codebook.cpu().numpy(),
            "offsets": offsets,
            "image_ids": image_ids,
            "vectors": self.ivf.vector_rows(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], device: str | torch.device = "cpu") -> ASMK:
        """Rebuild an index from :meth:`state_dict` (or :func:`lit.asmk.io.read_state`).

        Raises:
            TypeError: ``state`` is not a dict.
            UsageError: the state is of another type or version, or inconsistent.
        """
        if not isinstance(state, dict):
            raise TypeError(f"state must be a dict, got {type(state)}")
        missing = {"type", "version", "params", "n_images", "codebook", "offsets", "image_ids", "vectors"} - set(state)
        if missing:
            raise UsageError(f"ASMK state lacks {sorted(missing)}")
        if state["type"] != FORMAT_TYPE:
            raise UsageError(f"state is of type {state['type']!r}, expected {FORMAT_TYPE!r}")
        if int(state["version"]) != FORMAT_VERSION:
            raise UsageError(
                f"ASMK format version {state['version']!r} is not supported (this lit reads version {FORMAT_VERSION})"
            )
        params = dict(state["params"])
        unknown = set(params) - set(ASMKParams.__dataclass_fields__)
        if unknown:
            raise UsageError(f"unknown ASMK parameters {sorted(unknown)}")
        index = cls(np.asarray(state["codebook"]), device=device, **params)
        vectors = state["vectors"]
        if not isinstance(vectors, asmk_io.RowSource):
            vectors = np.asarray(vectors)
        index.ivf.load(np.asarray(state["offsets"]), np.asarray(state["image_ids"]), vectors,
                       int(state["n_images"]), chunk_rows=asmk_io.IO_ROWS)
        return index

    @classmethod
    def from_group(cls, group: Any, device: str | torch.device = "cpu", *, source: str | None = None) -> ASMK:
        """Read the index that :func:`lit.asmk.io.write_asmk` wrote into an open HDF5 group.

        Args:
            group: an open ``h5py.Group`` or ``h5py.File``.
            device: where the index lives.
            source: the name messages give the file (default: the group's file name).

        Raises:
            IndexFileError: not an ASMK index, another format version, or damaged; the
                message names the file.
        """
        source = source or asmk_io.source_name(group)
        state = asmk_io.read_state(group, source=source)
        with asmk_io.reading(source):
            try:
                return cls.from_state(state, device=device)
            except (ValueError, TypeError) as err:
                raise IndexFileError(f"{source}: {err}") from err

    def save(self, path: str | os.PathLike, *, attrs: dict[str, Any] | None = None) -> None:
        """Write the index (codebook, parameters, inverted file) to an HDF5 file.

        The file is created anew (an existing file is replaced); the layout is
        :mod:`lit.asmk.io`'s, in the root group. Readers ignore groups and attributes
        they do not know, so other tools may add their own (e.g. a ``/pipeline`` group)
        after saving.

        Args:
            path: output file.
            attrs: extra file attributes (numbers or strings), e.g. the id range of a part
                of a sharded index.
        """
        import h5py

        self.flush()
        with h5py.File(path, "w") as f:
            asmk_io.write_asmk(f, self, attrs=attrs)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> ASMK:
        """Read an index written by :meth:`save`.

        The inverted file is read in chunks of rows straight into its in-memory layout on
        ``device``: the peak is the index itself plus one chunk. Unknown groups, datasets
        and attributes in the file are ignored.

        Raises:
            FileNotFoundError: no such file.
            IndexFileError: the file is not HDF5, is truncated or corrupt, is not an ASMK
                index, or has another format version; the message names the file.
        """
        path = os.fspath(path)
        f = asmk_io.open_file(path)
        with asmk_io.reading(path), f:
            return cls.from_group(f, device, source=path)

    # ------------------------------------------------------------------ input checks

    def _descriptors(self, x: Any, name: str) -> Tensor:
        """Float32 ``(N, D)`` descriptors on the index device, finite (checked after the
        conversion: a float64 value beyond the float32 range is refused)."""
        x = check_matrix(x, name, dim=self.dim, dim_of="the codebook", finite=False)
        return check_finite(x.to(device=self.device, dtype=torch.float32), name).contiguous()

    def _ids(self, ids: Any, n: int, name: str) -> Tensor:
        return check_ids(ids, n, name, max_id=MAX_IMAGE_ID).to(self.device)

    def _words(self, words: Any, n: int, m: int) -> Tensor | None:
        if words is None:
            return None
        words = as_tensor(words, "words")
        if words.is_floating_point() or words.dtype == torch.bool:
            raise TypeError(f"words must be integers, got {words.dtype}")
        if words.dim() == 1 and m == 1:
            words = words.unsqueeze(1)
        if words.shape != (n, m):
            raise UsageError(f"words must be ({n}, {m}), got shape {tuple(words.shape)}")
        words = words.to(device=self.device, dtype=torch.int64)
        if n and (int(words.min()) < 0 or int(words.max()) >= self.num_words):
            raise UsageError(f"words must be in 0..{self.num_words - 1}")
        return words.contiguous()
