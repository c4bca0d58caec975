"""ASMK retrieval: aggregated selective match kernel with a vectorised inverted file.

``ASMK`` is the index (SPEC sections 3 and 8); :mod:`lit.asmk.functional` holds the pure
tensor functions it is made of, and :func:`kmeans` learns codebooks (faiss when it is
importable, a seedable torch implementation otherwise).
"""

from .codebook import kmeans
from .functional import (
    aggregate_residuals,
    binarize,
    binary_similarity,
    faiss_available,
    hamming_packed,
    inverse_document_frequency,
    l2_normalize,
    nearest_words,
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

__all__ = [
    "ASMK", "ASMKParams", "FORMAT_VERSION", "SearchResult", "aggregate_residuals", "binarize",
    "binary_similarity", "faiss_available", "hamming_packed", "inverse_document_frequency",
    "kmeans", "l2_normalize", "nearest_words", "pack_bits", "popcount64", "popcount_rows",
    "popcount_sum", "posting_pairs", "real_similarity", "selective_kernel", "smallest_stable", "topk_stable", "unpack_bits",
]
