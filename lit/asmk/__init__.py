"""ASMK retrieval: aggregated selective match kernel with a vectorised inverted file.

``ASMK`` is the index (SPEC sections 3 and 8), a facade over its parts:
:mod:`lit.asmk.quantize` (nearest words, :class:`~lit.asmk.quantize.Quantizer`),
:mod:`lit.asmk.ivf` (the inverted file), :mod:`lit.asmk.scoring` (idf, norms, blocks of
scores, top-k) and :mod:`lit.asmk.io` (the index in an HDF5 group);
:mod:`lit.asmk.functional` holds the pure tensor functions they are made of,
:func:`kmeans` learns codebooks (faiss when it is importable, a seedable torch
implementation otherwise) and :mod:`lit.asmk.sharded` searches an index split by image-id
range as one.
"""

from .codebook import kmeans
from .functional import (
    aggregate_residuals,
    binarize,
    binary_similarity,
    hamming_packed,
    inverse_document_frequency,
    l2_normalize,
    pack_bits,
    popcount64,
    popcount_rows,
    popcount_sum,
    posting_pairs,
    real_similarity,
    selective_kernel,
    smallest_stable,
    topk_stable,
    unpack_bits,
)
from .index import ASMK, FORMAT_VERSION, ASMKParams, SearchResult
from .quantize import faiss_available, nearest_words

__all__ = [
    "ASMK", "ASMKParams", "FORMAT_VERSION", "SearchResult", "aggregate_residuals", "binarize",
    "binary_similarity", "faiss_available", "hamming_packed", "inverse_document_frequency",
    "kmeans", "l2_normalize", "nearest_words", "pack_bits", "popcount64", "popcount_rows",
    "popcount_sum", "posting_pairs", "real_similarity", "selective_kernel", "smallest_stable", "topk_stable", "unpack_bits",
]
